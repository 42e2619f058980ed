"""Base class of every stage's parameters: typed, defaults from the papers, unknown keys refused.

Pipelines nest these in their YAML config, so a misspelt threshold fails at load time with its key path.
"""

from __future__ import annotations

import os
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

from datagen import files


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


def _exists(path: str) -> str:
    try:
        fs, p = files.url_to_fs(os.path.expanduser(path))
        found = fs.exists(p)
    except (ImportError, OSError) as e:  # a protocol whose package is missing (s3fs, gcsfs), no access
        raise ValueError(f"cannot check {path}: {e}") from None
    if not found:
        raise ValueError(f"path does not exist: {path}")
    return path


# A config path (local or fsspec URL) checked when the config loads, so a typo fails before any work.
ExistingPath = Annotated[str, AfterValidator(_exists)]
