"""Model registry: the one place naming each model the data engine and trainer use.

``resolve(roles, registry, mode)`` runs once at start-up, in the driver:
- ``real``: every weight must be on this machine (a local ``path`` or the Hugging Face cache); otherwise it
  fails before any work with the models' names and how to fetch them;
- ``tiny``: stages build small random models from config classes (tests, smoke runs; output is marked
  ``synthetic_models: true``);
- ``auto``: ``real`` when every weight is present, else ``tiny`` with a loud warning.

Stages receive a ``ModelSpec`` and load from it in their ``__init__`` (on the worker that runs them).
``python -m datagen.models`` lists each role, where its weights are, and how to fetch the missing ones.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Literal

from datagen.params import Params

log = logging.getLogger(__name__)

Mode = Literal["auto", "real", "tiny"]


class ModelConfig(Params):
    """One model: a hub id (+ revision) resolved from the HF cache, or a local ``path`` that wins over it.

    ``backend`` picks the implementation where two exist (transformers' native classes or the official
    package); for ``official`` backends ``path`` is the checkpoint file the package loads.
    """

    id: str
    revision: str = "main"
    path: str | None = None
    subfolder: str | None = None
    backend: Literal["transformers", "official"] = "transformers"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"


class RegistryConfig(Params):
    captioner: ModelConfig = ModelConfig(id="Qwen/Qwen2-VL-2B-Instruct")
    detector: ModelConfig = ModelConfig(id="IDEA-Research/grounding-dino-base")
    segmenter: ModelConfig = ModelConfig(id="facebook/sam-vit-huge")
    embedder: ModelConfig = ModelConfig(id="facebook/dinov2-base")
    clip: ModelConfig = ModelConfig(id="h94/IP-Adapter", subfolder="models/image_encoder")
    sdxl: ModelConfig = ModelConfig(id="stabilityai/stable-diffusion-xl-base-1.0")


ROLES = tuple(RegistryConfig.model_fields)


@dataclass(frozen=True)
class ModelSpec:
    """What a stage needs to load its model: ``mode`` is ``real`` (load from ``path``) or ``tiny``."""

    role: str
    id: str
    revision: str
    mode: Literal["real", "tiny"]
    backend: str = "transformers"
    path: str | None = None
    dtype: str = "auto"

    def describe(self) -> dict[str, str]:
        """The manifest's record of this model: id + revision, or ``tiny``."""
        return {
            "id": self.id,
            "revision": "tiny" if self.mode == "tiny" else self.revision,
            "backend": self.backend,
        }


class MissingModelError(RuntimeError):
    """Weights named in the config are not on this machine (raised at start-up, never mid-run)."""


def fetch_hint(cfg: ModelConfig) -> str:
    if cfg.backend == "official" or cfg.path:
        return f"put the checkpoint at {cfg.path!r} (or fix `path` in the config)"
    return f"hf download {cfg.id} --revision {cfg.revision}  (or set `path:` to a local copy)"


def locate(cfg: ModelConfig) -> str | None:
    """Local directory/file holding the weights, or None when they are not on this machine."""
    if cfg.path:
        return cfg.path if os.path.exists(cfg.path) else None
    if cfg.backend == "official":
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        root = snapshot_download(cfg.id, revision=cfg.revision, local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    path = os.path.join(root, cfg.subfolder) if cfg.subfolder else root
    return path if os.path.exists(path) else None


def resolve(roles: list[str] | tuple[str, ...], registry: RegistryConfig, mode: Mode,
            announce: bool = True) -> dict[str, ModelSpec]:
    """Resolve the models a run needs, once, before any work starts. ``mode="auto"`` falls back to tiny random
    models for missing weights, with a banner (``announce=False``: the caller calls ``announce_missing`` once it
    knows the run has work)."""
    cfgs = {r: getattr(registry, r) for r in roles}
    if mode == "tiny":
        return {r: _spec(r, c, "tiny", None) for r, c in cfgs.items()}
    paths = {r: locate(c) for r, c in cfgs.items()}
    missing = [r for r, p in paths.items() if p is None]
    if not missing:
        return {r: _spec(r, c, "real", paths[r]) for r, c in cfgs.items()}
    if mode == "real":
        lines = "\n".join(f"  - {r}: {cfgs[r].id} — fetch: {fetch_hint(cfgs[r])}" for r in missing)
        raise MissingModelError(f"model weights missing for --models real:\n{lines}")
    if announce:
        announce_missing(missing, registry)
    return {r: _spec(r, c, "tiny", None) for r, c in cfgs.items()}


_announced: set[str] = set()  # roles whose missing weights this process has already shown


def announce_missing(roles: list[str], registry: RegistryConfig) -> None:
    """The WEIGHTS MISSING banner for those of ``roles`` whose weights are missing and were not shown before in
    this process (so ``python -m pipelines all`` shows each once)."""
    new = [r for r in roles if r not in _announced and locate(getattr(registry, r)) is None]
    if not new:
        return
    _announced.update(new)
    lines = "\n".join(f"  - {r}: {getattr(registry, r).id} — fetch: {fetch_hint(getattr(registry, r))}" for r in new)
    log.warning(
        "\n%s\nWEIGHTS MISSING — using TINY RANDOM models (output marked synthetic_models: true):\n%s\n%s",
        "!" * 78, lines, "!" * 78,
    )


def _spec(role: str, cfg: ModelConfig, mode: str, path: str | None) -> ModelSpec:
    return ModelSpec(role=role, id=cfg.id, revision=cfg.revision, mode=mode, backend=cfg.backend, path=path,
                     dtype=cfg.dtype)


def describe(specs: dict[str, ModelSpec]) -> dict[str, dict[str, str]]:
    return {r: s.describe() for r, s in specs.items()}


def synthetic(specs: dict[str, ModelSpec]) -> bool:
    return any(s.mode == "tiny" for s in specs.values())


def main(argv: list[str] | None = None) -> int:
    import argparse

    argparse.ArgumentParser(prog="python -m datagen.models", description="every model of the default registry: "
                            "where it was found, or the command that fetches it").parse_args(argv)
    registry = RegistryConfig()
    for role in ROLES:
        cfg = getattr(registry, role)
        path = locate(cfg)
        status = f"found at {path}" if path else f"MISSING — {fetch_hint(cfg)}"
        print(f"{role:10s} {cfg.id}@{cfg.revision} ({cfg.backend}): {status}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

