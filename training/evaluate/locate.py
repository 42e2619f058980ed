"""Locating each subject in a generated image by its phrase, for the region metrics (M-DINO, confusion, lost,
copy-paste) of every system alike (the default; AnyStory's routing maps are scored beside): Grounding DINO boxes
the phrases, SAM segments inside the boxes, as the data engine labels its frames (MS-Diffusion §A); the stages
are the data engine's own (``datagen.labeling.detection`` / ``segmentation``), with models from its registry.

Assignment rule: each detection belongs to one phrase (the detector's best-scoring phrase for it) and each box to
at most one subject, so the subjects sharing a phrase take that phrase's best-scored boxes, the i-th of them (in
subject order) the i-th best; which of them is whose is then settled by appearance (``confusion.match``). A
subject with no box left for its phrase (or an empty SAM mask) gets an empty region: it is lost.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Callable

import numpy as np

from datagen import models
from datagen.labeling.detection import DetectionParams, Detector
from datagen.labeling.filters import FilterParams, Instance
from datagen.labeling.segmentation import Segmenter

ROUTING, GROUNDING = "routing", "grounding"
ROLES = ("detector", "segmenter")
# The labels' own bar: B.1 rule (5) drops boxes scoring below it in the data engine, so the evaluation does too.
DETECTION = DetectionParams(box_threshold=FilterParams().min_score)


def resolve(size: str, detector: str | None = None, segmenter: str | None = None) -> dict[str, models.ModelSpec]:
    """The detector and segmenter specs (``size="tiny"``: tiny random models), each from the registry or a given
    hub id / local folder; a weight not on this machine raises ``MissingModelError`` (call before generating)."""
    registry = models.RegistryConfig()
    given = {"detector": detector, "segmenter": segmenter}
    registry = registry.model_copy(update={
        role: models.ModelConfig(id=where, path=where if os.path.exists(where) else None)
        for role, where in given.items() if where})
    return models.resolve(ROLES, registry, "tiny" if size == "tiny" else "real")


def assign(phrases: list[str], instances: list[Instance]) -> list[Instance | None]:
    """Per subject its box (the rule in the module docstring), or None when its phrase has no box left."""
    boxes = defaultdict(list)
    for x in sorted(instances, key=lambda x: -x.score):
        boxes[_key(x.phrase)].append(x)
    taken = defaultdict(int)
    out = []
    for ph in phrases:
        k = _key(ph)
        out.append(boxes[k][taken[k]] if taken[k] < len(boxes[k]) else None)
        taken[k] += 1
    return out


def _key(phrase: str) -> str:
    return phrase.lower().strip()  # as ``detection.prompt`` writes it into the detector's text


class PhraseLocator:
    """``locator(image, phrases)`` → (N, H, W) bool subject regions. ``detector(images, phrases)`` and
    ``segmenter(images, boxes)`` have the labeling stages' signatures (``PhraseLocator.build`` makes them)."""

    def __init__(self, detector: Callable, segmenter: Callable, described: dict | None = None,
                 synthetic: bool = False):
        self.detector, self.segmenter = detector, segmenter
        self.described, self.synthetic = described or {}, synthetic

    @classmethod
    def build(cls, specs: dict[str, models.ModelSpec]) -> PhraseLocator:
        return cls(Detector(specs["detector"], DETECTION), Segmenter(specs["segmenter"]), models.describe(specs),
                   models.synthetic(specs))

    def __call__(self, image: np.ndarray, phrases: list[str]) -> np.ndarray:
        unique = list(dict.fromkeys(_key(ph) for ph in phrases))  # one prompt segment per phrase
        [instances] = self.detector([image], [unique])
        chosen = assign(phrases, instances)
        found = [x for x in chosen if x is not None]
        [masks] = self.segmenter([image], [[x.box for x in found]]) if found else [[]]
        mask_of = {id(x): m for x, m in zip(found, masks)}
        regions = np.zeros((len(phrases), *image.shape[:2]), bool)
        for i, x in enumerate(chosen):
            if x is not None:
                regions[i] = mask_of[id(x)]
        return regions
