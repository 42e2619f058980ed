"""Router data (AnyStory §3.4, router training): one unpaired image with 2–N subjects, one exact or SAM mask each.

Every source of router samples (COCO-format files, URL lists) ends here: the instances of one image pass the
Subject-Diffusion B.1 filters, then the image is kept only if 2 to ``filters.max_subjects`` subjects remain —
the router learns to tell subjects apart, so a single subject teaches it nothing. Every drop is counted.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal

import numpy as np

from datagen.labeling import filters
from datagen.labeling.filters import FilterParams, Instance
from datagen.params import Params
from datagen.shards import Frame, Sample, Subject
from datagen.units import Item, Rejected

NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PLURALS = {"person": "people", "man": "men", "woman": "women", "child": "children"}


class RouterRules(Params):
    min_subjects: int = 2
    too_many: Literal["reject", "cap"] = "reject"  # more than filters.max_subjects left: reject, or keep the largest
    filters: FilterParams = FilterParams()


def select(item: Item, stage: str, instances: list[Instance], width: int, height: int,
           rules: RouterRules) -> list[Instance]:
    """The instances of one image that become subjects; drops are counted on ``item`` under ``stage``.

    Raises ``Rejected`` (``too_few_subjects`` / ``too_many_subjects``) when the image cannot be router data.
    """
    empty = [x for x in instances if x.mask is not None and not x.mask.any()]
    if empty:  # a mask with no pixel (degenerate polygon, SAM miss) cannot route anything
        item.drop(stage, "empty_mask", len(empty))
        instances = [x for x in instances if x.mask is None or x.mask.any()]
    kept, drops = filters.filter_instances(instances, width, height, rules.filters)
    if len(kept) > rules.filters.max_subjects:
        if rules.too_many == "reject":
            _record(item, stage, drops)
            raise Rejected("too_many_subjects", f"{len(kept)} > {rules.filters.max_subjects} after filters")
        kept, capped = filters.cap_subjects(kept, rules.filters)
        drops += capped
    _record(item, stage, drops)
    if len(kept) < rules.min_subjects:
        raise Rejected("too_few_subjects", f"{len(kept)} < {rules.min_subjects} after filters "
                                           f"({len(instances)} before; dropped {dict(drops)})")
    left = filters.unlabeled(instances)
    if left and rules.filters.unlabeled == "drop_frame":  # the image is the sample's one frame
        reasons = sorted({x.fields[filters.DROP_REASON] for x in left})
        raise Rejected("unlabeled_instance", f"{len(left)} instance(s) dropped by {reasons} would stay in the "
                                             "image without a subject")
    item.scratch.setdefault("ignore", []).extend([float(v) for v in x.box] for x in left)
    return kept


def _record(item: Item, stage: str, drops: Counter) -> None:
    for reason, n in drops.items():
        item.drop(stage, reason, n)


def caption(phrases: list[str]) -> str:
    """A caption from the subjects' names: ``["person", "person"]`` → "a photo of two people"."""
    parts = []
    for name, n in sorted(Counter(phrases).items()):
        if n == 1:
            parts.append(f"{'an' if name[:1] in 'aeiou' else 'a'} {name}")
        else:
            count = NUMBERS[n] if n < len(NUMBERS) else str(n)
            parts.append(f"{count} {PLURALS.get(name, name + 's')}")
    return "a photo of " + " and ".join(parts)


def sample(key: str, image: np.ndarray, text: str, kept: list[Instance], provenance: dict[str, Any],
           models: dict[str, Any], exact: bool, ignore: list[list[float]] | None = None) -> Sample:
    """One router sample: a single frame, one subject per kept instance (``fields`` go to meta.json).

    ``exact``: the instances come from annotations (no detection score to record). ``ignore``: boxes of instances
    the rules dropped (``FilterParams.unlabeled = ignore``), the frame's region the routing loss leaves out.
    """
    subjects = [
        Subject(id=i, phrase=x.phrase, masks={0: x.mask}, boxes={0: [float(v) for v in x.box]},
                det_score=None if exact else float(x.score), fields=dict(x.fields))
        for i, x in enumerate(kept)
    ]
    h, w = image.shape[:2]
    fields = {"ignore": [filters.ignore_box(b, w, h) for b in ignore]} if ignore else {}
    return Sample(key=key, source="router", frames=[Frame(image, text, fields)], subjects=subjects,
                  provenance=provenance, models=models)
