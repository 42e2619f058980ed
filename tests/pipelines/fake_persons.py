"""The ``urls`` source with its two model stages replaced by stand-ins that know where the test drew the people
(boxes by image name, box-shaped masks), so a pipeline test can check which images land. Everything else —
download, the filters, the 2–N rule, the writer — is the real source."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import numpy as np

from datagen.labeling.filters import Instance
from datagen.models import ModelSpec
from pipelines.sources.urls import UrlsSource


class FakeDetect:
    def __init__(self, boxes: dict[str, list[list[float]]]):
        self.boxes = boxes

    def __call__(self, items):
        for it in items:
            name = it.samples[0].provenance["url"].rsplit("/", 1)[1]
            it.scratch["instances"] = [[Instance("person", list(b), 0.9) for b in self.boxes.get(name, [])]]
        return items


class FakeSegment:
    def __call__(self, items):
        for it in items:
            frame = it.samples[0].frames[0]
            for x in it.scratch["instances"][0]:
                x.mask = np.zeros((frame.height, frame.width), bool)
                x0, y0, x1, y1 = (int(v) for v in x.box)
                x.mask[y0:y1, x0:x1] = True
        return items


class FakePersonsUrls(UrlsSource):
    def __init__(self, boxes: dict[str, list[list[float]]]):
        self.boxes = boxes

    def roles(self, cfg):
        return []

    def stages(self, cfg, models):
        specs = {r: ModelSpec(r, "fake", "main", "tiny") for r in ("detector", "segmenter")}
        fakes = {"detect": partial(FakeDetect, self.boxes), "segment": FakeSegment}
        return [replace(s, factory=fakes[s.name]) if s.name in fakes else s for s in super().stages(cfg, specs)]
