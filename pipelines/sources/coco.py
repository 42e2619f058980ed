"""Source ``coco``: COCO-format instance annotations → router samples (single images, exact masks)."""

from __future__ import annotations

from functools import partial
from typing import Literal

from datagen import coco, labeling
from datagen.captions import CaptionParams
from datagen.models import ModelSpec
from datagen.params import ExistingPath, Params
from datagen.units import Unit
from pipelines.stages import ActorStage, LoadResources, Stage, TaskStage


class Config(Params):
    annotations: ExistingPath  # instances_*.json
    images: ExistingPath  # folder the annotations' file_name are relative to
    params: coco.CocoParams = coco.CocoParams()
    captions: Literal["categories", "captioner"] = "categories"  # captioner: Qwen2-VL (registry.captioner)
    caption: CaptionParams = CaptionParams()
    resources: LoadResources = LoadResources()


class CocoSource:
    name = "coco"
    kind = "router"
    Config = Config

    def units(self, cfg: Config) -> list[Unit]:
        return coco.list_units(cfg.annotations, cfg.images, cfg.params)

    def roles(self, cfg: Config) -> list[str]:
        return ["captioner"] if cfg.captions == "captioner" else []

    def stages(self, cfg: Config, models: dict[str, ModelSpec]) -> list[Stage]:
        stages: list[Stage] = [TaskStage("load", partial(coco.load_sample, p=cfg.params), cfg.resources.load)]
        if cfg.captions == "captioner":  # re-captions every frame; phrases stay the category names
            stages.append(ActorStage("caption", partial(labeling.CaptionFrames, models["captioner"], cfg.caption),
                                     cfg.resources.caption))
        return stages


SOURCE = CocoSource()
