"""Source ``deepfashion2``: DeepFashion2's shop/consumer photos → 2-frame image samples of the same garments."""

from __future__ import annotations

from functools import partial
from typing import Literal

from datagen import deepfashion2, labeling
from datagen.captions import CaptionParams
from datagen.models import ModelSpec
from datagen.params import ExistingPath, Params
from datagen.units import Unit
from pipelines.stages import ActorStage, LoadResources, Stage, TaskStage


class Config(Params):
    root: ExistingPath  # a DeepFashion2 split: the folder holding image/ and annos/
    params: deepfashion2.DeepFashion2Params = deepfashion2.DeepFashion2Params()
    captions: Literal["categories", "captioner"] = "categories"  # captioner: Qwen2-VL (registry.captioner)
    caption: CaptionParams = CaptionParams()
    resources: LoadResources = LoadResources()


class DeepFashion2Source:
    name = "deepfashion2"
    kind = "image"
    Config = Config

    def units(self, cfg: Config) -> list[Unit]:
        return deepfashion2.list_units(cfg.root)

    def roles(self, cfg: Config) -> list[str]:
        return ["captioner"] if cfg.captions == "captioner" else []

    def stages(self, cfg: Config, models: dict[str, ModelSpec]) -> list[Stage]:
        stages: list[Stage] = [TaskStage("load", partial(deepfashion2.load_pairs, p=cfg.params), cfg.resources.load)]
        if cfg.captions == "captioner":  # re-captions every frame; phrases stay the category names
            stages.append(ActorStage("caption", partial(labeling.CaptionFrames, models["captioner"], cfg.caption),
                                     cfg.resources.caption))
        return stages


SOURCE = DeepFashion2Source()
