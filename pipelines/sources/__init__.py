"""Sources: one module each, defining ``SOURCE``, an object with

- ``name`` (CLI name and shard prefix), ``kind`` (meta.json ``source``: video|objaverse|image|router),
- ``Config`` (its ``Params`` section under ``sources.<name>`` in the YAML),
- ``units(cfg) -> list[Unit]`` (deterministic, run in the driver),
- ``roles(cfg) -> list[str]`` (model registry roles it needs, resolved at start-up),
- ``stages(cfg, models) -> list[Stage]`` (the datagen stages, in order, with their resources),
- ``unit_bytes(cfg) -> int`` (an upper bound of one unit's in-memory bytes when it reaches the writer, from its
  config: the runner sizes writer batches by it, see ``frame_bytes``).

Modules here are discovered by name, so adding a source is adding a file.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Protocol

from datagen.models import ModelSpec
from datagen.params import Params
from datagen.units import Unit
from pipelines.stages import Stage


class Source(Protocol):
    name: str
    kind: str
    Config: type[Params]

    def units(self, cfg: Any) -> list[Unit]: ...

    def roles(self, cfg: Any) -> list[str]: ...

    def stages(self, cfg: Any, models: dict[str, ModelSpec]) -> list[Stage]: ...

    def unit_bytes(self, cfg: Any) -> int: ...


def frame_bytes(max_side: int | None, max_pixels: int, max_subjects: int) -> int:
    """Upper bound of one frame's in-memory bytes with its masks: RGB (3 bytes a pixel) and one boolean mask (1
    byte a pixel) per subject, over at most ``max_side``² pixels (a square frame), or ``max_pixels`` when frames are
    kept at full size (``max_side`` None)."""
    pixels = min(max_side * max_side, max_pixels) if max_side else max_pixels
    return pixels * (3 + max_subjects)


def _discover() -> dict[str, Source]:
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        source = getattr(module, "SOURCE", None)
        if source is not None:
            found[source.name] = source
    return found


SOURCES: dict[str, Source] = _discover()
