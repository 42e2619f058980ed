"""What the sources with exact labels (``coco``, ``deepfashion2``) share: one load task, then optionally Qwen2-VL
(model registry role ``captioner``) re-captioning every frame; the phrases stay the category names."""

from __future__ import annotations

from functools import partial
from typing import Callable, Literal

from datagen.labeling import chain as labeling
from datagen.labeling.captions import CaptionParams
from datagen.models import ModelSpec
from datagen.params import Params
from datagen.units import Item
from pipelines.stages import ActorStage, Resources, Stage, TaskStage


class LoadResources(Params):
    load: Resources = Resources()
    # A model actor takes a quarter core, as the video and urls sources' model stages do: on 2 cores the
    # captioner, deepfashion2's pair-measure embedder and the tasks' core fit together.
    caption: Resources = Resources(num_cpus=0.25, batch_size=8)


class LoadThenCaption(Params):
    """Base of such a source's ``Config``: the caption choice and the two stages' resources."""

    captions: Literal["categories", "captioner"] = "categories"  # captioner: Qwen2-VL (registry.captioner)
    caption: CaptionParams = CaptionParams()
    resources: LoadResources = LoadResources()

    def caption_roles(self) -> list[str]:
        return ["captioner"] if self.captions == "captioner" else []

    def load_then_caption(self, load: Callable[[Item], Item], models: dict[str, ModelSpec]) -> list[Stage]:
        stages: list[Stage] = [TaskStage("load", load, self.resources.load)]
        if self.captions == "captioner":
            stages.append(ActorStage("caption", partial(labeling.CaptionFrames, models["captioner"], self.caption),
                                     self.resources.caption))
        return stages
