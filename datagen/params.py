"""Base class of every stage's parameters: typed, defaults from the papers, unknown keys refused.

Pipelines nest these in their YAML config, so a misspelt threshold fails at load time with its key path.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, ClassVar

import fsspec
import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo, field_validator, model_validator

from datagen import files


class Params(BaseModel):
    # NaN and infinities are refused: a NaN threshold compares false with everything (every image filtered)
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=(), allow_inf_nan=False)
    # Numbers are counts, sizes, thresholds and rates: below zero they mean nothing (``max_side: -100`` wrote 1×1
    # frames). A section names here the fields that are signed by nature (angles).
    signed: ClassVar[tuple[str, ...]] = ()

    @field_validator("*")
    @classmethod
    def _not_negative(cls, value: Any, info: ValidationInfo) -> Any:
        numbers = value if isinstance(value, tuple) else (value,)
        if info.field_name not in cls.signed and any(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0 for v in numbers):
            raise ValueError(f"must be 0 or more, got {value}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _over_field_defaults(cls, data: Any) -> Any:
        """A section given in part overrides only the keys it names; the others keep the *field's* default, so a
        source's own defaults (video's ``filters: FilterParams(min_image_side=360)``) survive a YAML line such as
        ``filters: {area_min: 0}`` instead of falling back to the section class's defaults."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, field in cls.model_fields.items():
            if isinstance(field.default, Params) and isinstance(out.get(name), dict):
                out[name] = _merged(field.default.model_dump(exclude_unset=True), out[name])
        return out


def _merged(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _exists(path: str) -> str:
    try:
        fs, p = files.url_to_fs(os.path.expanduser(path))
        found = fs.exists(p)
    # A protocol whose package is missing (s3fs, gcsfs), no access, or a store client's own error type
    # (botocore's NoCredentialsError is no OSError): a config error naming the path, never a traceback.
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"cannot check {path}: {type(e).__name__}: {e}") from None
    if not found:
        raise ValueError(f"path does not exist: {path}")
    return path


# A config path (local or fsspec URL) checked when the config loads, so a typo fails before any work.
ExistingPath = Annotated[str, AfterValidator(_exists)]


class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` without aliases: ``*name`` repeats a node by reference, so a 1 KB file of nested
    aliases (a "billion laughs") expands to gigabytes once a config reads it as plain data. Configs never need
    them."""

    def compose_node(self, parent, index):  # noqa: ANN001 (PyYAML's signature)
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a config",
                                              self.peek_event().start_mark)
        return super().compose_node(parent, index)


def load_yaml(text: str) -> Any:
    """A config's YAML as plain data: safe tags only, no aliases. Raises ``yaml.YAMLError`` with the line."""
    return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 (a SafeLoader subclass)
