"""Source ``deepfashion2``: DeepFashion2's shop/consumer photos → 2-frame image samples of the same garments."""

from __future__ import annotations

from functools import partial

from datagen.filecache import FileCache
from datagen.readers import deepfashion2
from datagen.models import ModelSpec
from datagen.params import ExistingPath
from datagen.units import Unit
from pipelines.captioning import LoadThenCaption
from pipelines.sources import frame_bytes
from pipelines.stages import Stage


class Config(LoadThenCaption):
    root: ExistingPath  # a DeepFashion2 split: the folder holding image/ and annos/
    params: deepfashion2.DeepFashion2Params = deepfashion2.DeepFashion2Params()


class DeepFashion2Source:
    name = "deepfashion2"
    kind = "image"
    Config = Config

    def units(self, cfg: Config) -> list[Unit]:
        return deepfashion2.list_units(cfg.root, FileCache())

    def roles(self, cfg: Config) -> list[str]:
        return cfg.caption_roles()

    def unit_bytes(self, cfg: Config) -> int:
        # A unit is a pair_id group: up to max_pairs_per_group 2-photo samples, each photo held once however many
        # pairs share it, so at most two distinct photos (with their subjects' masks) a pair.
        p = cfg.params
        return 2 * p.max_pairs_per_group * frame_bytes(p.max_side, p.max_pixels, p.filters.max_subjects)

    def stages(self, cfg: Config, models: dict[str, ModelSpec]) -> list[Stage]:
        return cfg.load_then_caption(partial(deepfashion2.load_pairs, p=cfg.params), models)


SOURCE = DeepFashion2Source()
