"""Source ``coco``: COCO-format instance annotations → router samples (single images, exact masks)."""

from __future__ import annotations

from functools import partial

from datagen.readers import coco
from datagen.models import ModelSpec
from datagen.params import ExistingPath
from datagen.units import Unit
from pipelines.captioning import LoadThenCaption
from pipelines.sources import frame_bytes
from pipelines.stages import Stage


class Config(LoadThenCaption):
    annotations: ExistingPath  # instances_*.json
    images: ExistingPath  # folder the annotations' file_name are relative to
    params: coco.CocoParams = coco.CocoParams()


class CocoSource:
    name = "coco"
    kind = "router"
    Config = Config

    def units(self, cfg: Config) -> list[Unit]:
        return coco.list_units(cfg.annotations, cfg.images, cfg.params)

    def roles(self, cfg: Config) -> list[str]:
        return cfg.caption_roles()

    def unit_bytes(self, cfg: Config) -> int:
        p = cfg.params  # one image, one mask per subject
        return frame_bytes(p.max_side, p.max_pixels, p.filters.max_subjects)

    def stages(self, cfg: Config, models: dict[str, ModelSpec]) -> list[Stage]:
        return cfg.load_then_caption(partial(coco.load_sample, p=cfg.params), models)


SOURCE = CocoSource()
