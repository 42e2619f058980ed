"""Source ``deepfashion2``: DeepFashion2's shop/consumer photos → 2-frame image samples of the same garments."""

from __future__ import annotations

from functools import partial

from datagen import deepfashion2
from datagen.models import ModelSpec
from datagen.params import ExistingPath, Params
from datagen.units import Unit
from pipelines.stages import Resources, Stage, TaskStage


class Config(Params):
    root: ExistingPath  # a DeepFashion2 split: the folder holding image/ and annos/
    params: deepfashion2.DeepFashion2Params = deepfashion2.DeepFashion2Params()
    load: Resources = Resources()


class DeepFashion2Source:
    name = "deepfashion2"
    kind = "image"
    Config = Config

    def units(self, cfg: Config) -> list[Unit]:
        return deepfashion2.list_units(cfg.root)

    def roles(self, cfg: Config) -> list[str]:
        return []

    def stages(self, cfg: Config, models: dict[str, ModelSpec]) -> list[Stage]:
        return [TaskStage("load", partial(deepfashion2.load_pairs, p=cfg.params), cfg.load)]


SOURCE = DeepFashion2Source()
