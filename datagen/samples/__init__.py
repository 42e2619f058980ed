"""Small sample inputs the project makes itself (no downloads), one module per source.

Each module defines ``make(root: str) -> dict`` writing its inputs under ``root/<source>/`` (deterministic, and
skipped when already there) and returning the paths it made. ``python -m datagen.samples DIR`` runs them all;
``make dataset`` does that before running ``configs/sample.yaml``.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable


def generators() -> dict[str, Callable[[str], dict]]:
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "make"):
            found[info.name] = module.make
    return found


def make_all(root: str) -> dict[str, dict]:
    return {name: make(root) for name, make in generators().items()}
