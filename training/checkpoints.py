"""Checkpoints: adapter-only weights for the pipeline plus the full resume state, the last K kept.

Layout::

    <output_dir>/checkpoints/step-<N>/adapters/   subject_encoder.safetensors, router.safetensors, config
                                                   (``AnyStoryModel.save_adapters``; what ``AnyStoryPipeline`` loads)
                                     /state/      ``accelerator.save_state``: optimizer, LR scheduler, RNG states
                                                   of every process, step counter and data position — tensors,
                                                   numbers, strings and containers only: a resume refuses any
                                                   file that needs more to load (``check_safe``)
    <output_dir>/checkpoints/latest                name of the newest complete checkpoint

The frozen base (SDXL UNet, VAE, text and image encoders) is never written: accelerate's model-weights save is
replaced by a hook, and a resume reloads the trainable weights from ``adapters/`` (they are kept in fp32).
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator

from datagen.shards import atomic_open

log = logging.getLogger(__name__)

CHECKPOINTS, LATEST, ADAPTERS, STATE = "checkpoints", "latest", "adapters", "state"
_STEP = re.compile(r"^step-(\d+)$")


class Counter:
    """A step counter accelerate saves and restores with the rest of the state."""

    def __init__(self, value: int = 0):
        self.value = value

    def state_dict(self) -> dict[str, int]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.value = state["value"]


def install_hooks(accelerator: Accelerator, load_adapters: Callable[[Path], None]) -> None:
    """Make ``save_state``/``load_state`` skip model weights; loading restores the adapters beside the state."""

    def save(models: list[Any], weights: list[dict], output_dir: str) -> None:
        weights.clear()  # adapters are written by save_checkpoint; the frozen base never

    def load(models: list[Any], input_dir: str) -> None:
        load_adapters(Path(input_dir).parent / ADAPTERS)
        models.clear()

    accelerator.register_save_state_pre_hook(save)
    accelerator.register_load_state_pre_hook(load)


def steps(output_dir: str | Path) -> list[int]:
    root = Path(output_dir) / CHECKPOINTS
    found = [int(m[1]) for p in root.glob("step-*") if (m := _STEP.match(p.name)) and (p / STATE).is_dir()]
    return sorted(found)


def save_checkpoint(accelerator: Accelerator, save_adapters: Callable[[Path], None], output_dir: str | Path,
                    step: int, keep_last: int) -> Path:
    """Write step-<step> (adapters by the main process, state by all), point ``latest`` at it, prune to K."""
    root = Path(output_dir) / CHECKPOINTS
    target = root / f"step-{step}"
    if accelerator.is_main_process:
        save_adapters(target / ADAPTERS)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(target / STATE))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with atomic_open(str(root / LATEST), "w") as f:
            f.write(target.name)
        for old in steps(output_dir)[:-keep_last]:
            shutil.rmtree(root / f"step-{old}")
        log.info("checkpoint %s (kept %s)", target, steps(output_dir))
    accelerator.wait_for_everyone()
    return target


class UnsafeCheckpoint(ValueError):
    """A resume state file that holds more than tensors, numbers, strings and containers (a pickle that could
    run code), or that cannot be read."""


def check_safe(state_dir: Path) -> None:
    """Refuse a state folder with any file that ``torch.load(weights_only=True)`` cannot open.

    ``accelerator.load_state`` unpickles ``custom_checkpoint_*.pkl`` (step, data position, LR scheduler) with
    ``weights_only=False``, so a pickle planted there would run code on resume. Every file it may unpickle is
    opened here first the safe way, with accelerate's own allow-list for the RNG states (numpy arrays); what needs
    any other global is refused, naming the file. (The files are read twice; a resume is rare, and the state holds
    no model weights: the adapters are safetensors.)"""
    from accelerate.utils.other import TORCH_SAFE_GLOBALS

    for path in sorted(p for p in Path(state_dir).rglob("*") if p.is_file()):
        if path.suffix in (".safetensors", ".json"):  # no code in either format
            continue
        try:
            with torch.serialization.safe_globals(TORCH_SAFE_GLOBALS):
                torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 — whatever stops a safe load stops the resume
            raise UnsafeCheckpoint(f"--resume: {path} cannot be loaded safely (only tensors, numbers, strings and "
                                   f"containers may be in a checkpoint): {type(e).__name__}: "
                                   f"{str(e).splitlines()[0][:300]}") from None


def load(accelerator: Accelerator, checkpoint: Path) -> None:
    """Restore a checkpoint's state (and, through the hook, its adapters) after ``check_safe``."""
    check_safe(checkpoint / STATE)
    accelerator.load_state(str(checkpoint / STATE))


def resolve(output_dir: str | Path, resume: str | None) -> Path | None:
    """``--resume latest`` → the newest checkpoint of this run (None when it has none yet); else a path."""
    if resume is None:
        return None
    if resume != LATEST:
        path = Path(resume)
        if not (path / STATE).is_dir():
            raise FileNotFoundError(f"--resume {resume}: no {STATE}/ inside; expected a checkpoints/step-<N> folder")
        return path
    pointer = Path(output_dir) / CHECKPOINTS / LATEST
    if not pointer.exists():
        log.info("--resume latest: no checkpoint in %s yet, starting from step 0", output_dir)
        return None
    return pointer.parent / pointer.read_text().strip()
