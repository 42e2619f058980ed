"""Instance filters of Subject-Diffusion appendix B.1 (plus MS-Diffusion's cap of 4 subjects per sample).

Each rule is a small function over ``Instance``s of one frame and returns the survivors plus the number
dropped per reason, so every drop is counted. Bounds are inclusive: a value exactly at a threshold is kept.
Rule (7) (groups and body parts) acts on phrases, before detection: ``entities.EntityParams``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from datagen.params import Params
from datagen.units import Rejected


class FilterParams(Params):
    min_score: float = 0.2  # (5) detection score below → dropped
    aspect_min: float = 0.3  # (1) box width/height kept in [0.3, 3]
    aspect_max: float = 3.0
    area_min: float = 0.05  # (2) box area / image area kept in [0.05, 0.7]
    area_max: float = 0.70
    dedupe_iou: float = 0.8  # (3) of two boxes with IoU above, the lower-scored is dropped
    max_phrase_repeats: int = 5  # (4) a phrase detected more often than this in a frame is dropped
    min_mask_box_ratio: float = 0.6  # (6) mask area / box area below → dropped
    # Short side below → the image is rejected. B.1's "> 1024" is a LAION rule (the urls source applies it at
    # download); here the photo and video sources' default: the trainer upscales to its 1024² area by at most
    # 4x. Each source sets its own (README "Filters").
    min_image_side: int = 256
    max_subjects: int = 4  # MS-Diffusion: at most 4 subjects per sample
    # A frame holding an instance a rule below dropped (``UNLABELED``) has a person or object without a subject
    # slot: the routing loss would teach it as background. drop_frame: the frame goes (a sample when fewer than
    # its minimum frames remain, ``unlabeled_instance``); ignore: it stays, the instances' boxes recorded as the
    # frame's ``ignore`` region, which the trainer leaves out of the routing loss.
    unlabeled: Literal["drop_frame", "ignore"] = "drop_frame"


# Reasons whose drop leaves a real instance in the frame: B.1 (1) aspect, (2) area, (4) repeats, (6) mask/box
# ratio and the subject cap. Not (5) a low score (maybe no instance at all) nor (3) a duplicate (its twin is kept).
UNLABELED = ("box_aspect", "box_area_small", "box_area_large", "phrase_repeated", "mask_box_ratio",
             "too_many_subjects")
DROP_REASON = "drop_reason"  # Instance.fields key a rule sets on the instances it drops


@dataclass
class Instance:
    """One detected (or annotated) instance in one frame; ``box`` is [x0, y0, x1, y1] in pixels."""

    phrase: str
    box: list[float]
    score: float = 1.0
    mask: np.ndarray | None = None
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def box_area(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)


Kept = tuple[list[Instance], Counter]


def box_iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _dropped(instances: list[Instance], kept: list[Instance], reason: str) -> Counter:
    """Tag the instances not kept with ``reason`` (``unlabeled`` reads it) and count them."""
    ids = set(map(id, kept))
    for x in instances:
        if id(x) not in ids:
            x.fields[DROP_REASON] = reason
    return Counter({reason: len(instances) - len(kept)}) if len(kept) < len(instances) else Counter()


def unlabeled(instances: list[Instance]) -> list[Instance]:
    """The instances a rule in ``UNLABELED`` dropped: real instances left without a subject."""
    return [x for x in instances if x.fields.get(DROP_REASON) in UNLABELED]


def ignore_box(box: list[float], width: int, height: int) -> list[float]:
    """An unlabeled instance's box as a frame's ignore region: inside the frame (annotations may overhang it)."""
    x0, y0, x1, y1 = box
    return [round(max(0.0, x0), 2), round(max(0.0, y0), 2), round(min(float(width), x1), 2),
            round(min(float(height), y1), 2)]


def _split(instances: list[Instance], keep, reason: str) -> Kept:
    kept = [x for x in instances if keep(x)]
    return kept, _dropped(instances, kept, reason)


def by_score(instances: list[Instance], p: FilterParams) -> Kept:
    return _split(instances, lambda x: x.score >= p.min_score, "low_score")


def by_aspect(instances: list[Instance], p: FilterParams) -> Kept:
    def keep(x: Instance) -> bool:
        w, h = x.box[2] - x.box[0], x.box[3] - x.box[1]
        return h > 0 and p.aspect_min <= w / h <= p.aspect_max

    return _split(instances, keep, "box_aspect")


def by_area(instances: list[Instance], width: int, height: int, p: FilterParams) -> Kept:
    image_area = float(width * height)
    small, rest = _split(instances, lambda x: x.box_area / image_area >= p.area_min, "box_area_small")
    large, rest2 = _split(small, lambda x: x.box_area / image_area <= p.area_max, "box_area_large")
    return large, rest + rest2


def by_phrase_repeats(instances: list[Instance], p: FilterParams) -> Kept:
    counts = Counter(x.phrase for x in instances)
    return _split(instances, lambda x: counts[x.phrase] <= p.max_phrase_repeats, "phrase_repeated")


def by_duplicates(instances: list[Instance], p: FilterParams) -> Kept:
    """Greedy NMS-style: visit by score, drop any box overlapping an already kept one above the IoU."""
    kept: list[Instance] = []
    for x in sorted(instances, key=lambda x: -x.score):
        if all(box_iou(x.box, k.box) <= p.dedupe_iou for k in kept):
            kept.append(x)
    order = {id(x): i for i, x in enumerate(instances)}
    kept.sort(key=lambda x: order[id(x)])
    return kept, _dropped(instances, kept, "duplicate_iou")


def by_mask_box_ratio(instances: list[Instance], p: FilterParams) -> Kept:
    """Rule (6): applies to instances that carry a mask; the area is counted inside the box."""

    def keep(x: Instance) -> bool:
        if x.mask is None:
            return True
        x0, y0, x1, y1 = (int(round(v)) for v in x.box)
        inside = float(np.count_nonzero(x.mask[max(y0, 0):y1, max(x0, 0):x1]))
        return x.box_area > 0 and inside / x.box_area >= p.min_mask_box_ratio

    return _split(instances, keep, "mask_box_ratio")


def filter_boxes(instances: list[Instance], width: int, height: int, p: FilterParams) -> Kept:
    """Rules (1)–(5), the ones that need only boxes, scores and phrases (run before segmentation).

    De-duplication (3) runs before the repeat count (4): a person detected twice is one entity, so three people
    each found twice count 3, not 6.
    """
    drops: Counter = Counter()
    for rule in (by_score, by_aspect, lambda xs, q: by_area(xs, width, height, q), by_duplicates,
                 by_phrase_repeats):
        instances, d = rule(instances, p)
        drops += d
    return instances, drops


def filter_instances(instances: list[Instance], width: int, height: int, p: FilterParams) -> Kept:
    """All of B.1's instance rules; mask rule (6) applies to instances that have masks."""
    instances, drops = filter_boxes(instances, width, height, p)
    instances, d = by_mask_box_ratio(instances, p)
    return instances, drops + d


def check_image_size(width: int, height: int, p: FilterParams) -> None:
    if min(width, height) < p.min_image_side:
        raise Rejected("image_too_small", f"{width}x{height}, short side < {p.min_image_side}")


def cap_subjects(instances: list[Instance], p: FilterParams) -> Kept:
    """Keep the ``max_subjects`` largest instances (by box area), in their original order."""
    if len(instances) <= p.max_subjects:
        return instances, Counter()
    largest = set(map(id, sorted(instances, key=lambda x: -x.box_area)[: p.max_subjects]))
    kept = [x for x in instances if id(x) in largest]
    return kept, _dropped(instances, kept, "too_many_subjects")
