"""Source ``deepfashion2``: DeepFashion2's shop/consumer photos → 2-frame image samples of the same garments.

Stages: ``load`` (a task), optionally ``caption``, then ``pairs`` (an actor pool of the matcher's embedder: each
garment's identity across the two photos, the pair measures and rules, ``datagen.labeling.pairs``)."""

from __future__ import annotations

from functools import partial

from datagen.filecache import FileCache
from datagen.readers import deepfashion2
from datagen.models import ModelSpec
from datagen.params import ExistingPath
from datagen.units import Unit
from datagen.labeling.chain import MeasurePairs
from datagen.labeling.matching import MatchParams
from datagen.labeling.pairs import PairRules
from pipelines.captioning import LoadResources, LoadThenCaption
from pipelines.sources import frame_bytes
from pipelines.stages import ActorStage, Resources, Stage


class DeepFashion2Resources(LoadResources):
    pairs: Resources = Resources(num_cpus=0.25, batch_size=4)


class Config(LoadThenCaption):
    root: ExistingPath  # a DeepFashion2 split: the folder holding image/ and annos/
    params: deepfashion2.DeepFashion2Params = deepfashion2.DeepFashion2Params()
    matching: MatchParams = MatchParams()  # the embedder's batch size (the garments are matched by annotation)
    pairs: PairRules = PairRules()
    resources: DeepFashion2Resources = DeepFashion2Resources()


class DeepFashion2Source:
    name = "deepfashion2"
    kind = "image"
    Config = Config

    def units(self, cfg: Config) -> list[Unit]:
        return deepfashion2.list_units(cfg.root, FileCache(), cfg.params.allow_symlinks)

    def roles(self, cfg: Config) -> list[str]:
        return [*cfg.caption_roles(), "embedder"]

    def unit_bytes(self, cfg: Config) -> int:
        # A unit is a pair_id group: up to max_pairs_per_group 2-photo samples, each photo held once however many
        # pairs share it, so at most two distinct photos (with their subjects' masks) a pair.
        p = cfg.params
        return 2 * p.max_pairs_per_group * frame_bytes(p.max_side, p.max_pixels, p.filters.max_subjects)

    def stages(self, cfg: Config, models: dict[str, ModelSpec]) -> list[Stage]:
        measure = partial(MeasurePairs, models["embedder"], cfg.matching, cfg.pairs)
        return [*cfg.load_then_caption(partial(deepfashion2.load_pairs, p=cfg.params), models),
                ActorStage("pairs", measure, cfg.resources.pairs)]


SOURCE = DeepFashion2Source()
