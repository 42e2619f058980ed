"""A source made for testing the runner alone: unit ids say how each unit behaves."""

from __future__ import annotations

import os
import time
from functools import partial

from datagen.params import Params
from datagen.units import BadInput, Item, Rejected, Unit
from pipelines.sources import frame_bytes
from pipelines.stages import ActorStage, Resources, TaskStage
from tests.shard_factory import make_sample

BEHAVIOURS = ("ok", "bad", "crash", "reject", "poison", "two", "alias", "cuda")  # alias-<n>-<name>: key from <name> only


class ToyConfig(Params):
    units: list[str]  # "<behaviour>-<n>"
    actor: bool = True
    seconds_per_unit: float = 0.0  # simulated work, so that a cluster has a reason to spread it


def load(item: Item, seconds: float = 0.0) -> Item:
    time.sleep(seconds)
    behaviour = item.unit.id.split("-")[0]
    if behaviour == "bad":
        raise BadInput("corrupt_input", f"{item.unit.id} is corrupt")
    if behaviour == "crash":
        raise ZeroDivisionError("stage bug")
    if behaviour == "reject":
        raise Rejected("too_few_subjects", "0 < 2")
    n = 2 if behaviour == "two" else 1
    seed = sum(map(ord, item.unit.id))
    stem = f"alias-{item.unit.id.split('-')[2]}" if behaviour == "alias" else item.unit.id
    item.samples = [make_sample(key=f"toy-{stem}-{k}", seed=seed + k, source="image") for k in range(n)]
    item.drop("load", "box_aspect", 1)
    return item


class Model:
    """A batch 'model' that fails on any batch holding a poisoned unit (so the batch is retried one by one).

    A ``cuda`` unit breaks the process's (simulated) CUDA context as a device-side assert does: that call and
    every later one in the process fail.
    """

    context_broken = False  # per process, as a CUDA context is

    def __init__(self, tag: str):
        self.tag = tag

    def __call__(self, items: list[Item]) -> list[Item]:
        if any(it.unit.id.startswith("cuda") for it in items):
            Model.context_broken = True
        if Model.context_broken:
            raise RuntimeError("CUDA error: device-side assert triggered\nCompile with `TORCH_USE_CUDA_DSA` ...")
        if any(it.unit.id.startswith("poison") for it in items):
            raise RuntimeError("stage bug on a poisoned input (simulated)")
        for it in items:
            for s in it.samples:
                s.models["toy"] = self.tag
                s.models["pid"] = os.getpid()  # which actor process ran it
        return items


class ToySource:
    name = "toy"
    kind = "image"
    Config = ToyConfig

    def units(self, cfg: ToyConfig) -> list[Unit]:
        return [Unit(u, {}) for u in cfg.units]

    def roles(self, cfg: ToyConfig) -> list[str]:
        return []

    def unit_bytes(self, cfg: ToyConfig) -> int:
        return 2 * 2 * frame_bytes(64, 64 * 48, 2)  # "two": 2 make_sample()s of 2 frames 64×48, 2 subjects

    def stages(self, cfg: ToyConfig, models):
        stages = [TaskStage("load", partial(load, seconds=cfg.seconds_per_unit), Resources(num_cpus=0.5))]
        if cfg.actor:
            stages.append(ActorStage("model", partial(Model, "v1"), Resources(num_cpus=0.5, batch_size=4)))
        return stages
