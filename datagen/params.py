"""Base class of every stage's parameters: typed, defaults from the papers, unknown keys refused.

Pipelines nest these in their YAML config, so a misspelt threshold fails at load time with its key path.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import fsspec
from pydantic import AfterValidator, BaseModel, ConfigDict, model_validator

from datagen import files


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

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
