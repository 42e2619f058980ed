"""Per-pair measures: for every subject seen in two frames of a sample, how identical the subject is and how
different the two views are (issue: pairs that teach identity, not copy-paste; AnyStory §5 names copy-paste as
its main limitation, MS-Diffusion §3 pairs video frames to avoid it). Computed where the frames are in memory.

A pair is ``{"subject", "frames": [a, b], "identity", "change": {...}, "change_score"}`` (docs/format.md):

- ``identity``: cosine similarity of the subject's masked, square-padded crops (``matching.masked_crop``) under the
  matcher's embedder, in [-1, 1] (1: the same pixels); exactly 1 for renders, where identity is by construction;
- ``change.silhouette_iou`` [0, 1]: IoU of the two masks after aligning their boxes (each box's mask centred on
  a square and resized to ``SILHOUETTE_GRID``²; the square keeps the box's aspect, so a turn or a flip shows);
  1 = the same outline (pose);
- ``change.scale_ratio`` (0, 1]: smaller over larger box side, sides as sqrt(box area / frame area); 1 = same size;
- ``change.shift`` [0, 1]: distance of the box centres in frame-normalised coordinates, over sqrt(2);
- ``change.background_similarity`` [0, 1] or null: of the pixels outside every subject in both frames (frames
  area-resized to ``BACKGROUND_GRID``²), the fraction whose colour differs by at most ``BACKGROUND_TOLERANCE``
  (RGB L∞ over 255); null when the subjects leave no common background;
- ``change.time_gap_s`` (video, seconds) or ``change.view_angle_deg`` (renders: angle between the two cameras'
  viewing directions, [0, 180]);
- ``change_score`` [0, 1]: ``1 − Π(1 − t)`` over the terms t = 1 − silhouette_iou, 1 − scale_ratio, shift,
  1 − background_similarity, view_angle_deg / 180: 0 only when nothing changed, and as large as its largest term
  (one big change — a new background, the object's back — makes a different view whatever the rest). The time gap
  is recorded, not scored: a static shot changes nothing in a minute, a pan everything in a second.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Callable

import numpy as np
from PIL import Image

from datagen.params import Params
from datagen.shards import Sample
from datagen.units import Rejected

SILHOUETTE_GRID = 64
BACKGROUND_GRID = 32
BACKGROUND_TOLERANCE = 0.1
ROUND = 4  # decimals written to meta.json


class PairRules(Params):
    """Pairs dropped by rule, each counted as ``pairs/<reason>``; a sample whose pairs are all dropped is
    filtered with the commonest reason. Defaults: README "Pair measures" (measured on the sample and on clips)."""

    # near_duplicate_pair: the same subject in (almost) the same view teaches copy-paste, not identity
    near_duplicate_identity: float = 0.9  # identity at or above ...
    near_duplicate_change: float = 0.1  # ... and change_score at or below → dropped
    # identity_mismatch: the two crops do not show one subject (a matcher's slip, a re-used track)
    min_identity: float = 0.5


def _square_mask(mask: np.ndarray, box: list[float], grid: int) -> np.ndarray:
    """The box's part of ``mask`` centred on a square (keeps the aspect) resized to grid × grid booleans."""
    h, w = mask.shape
    x0, y0 = max(int(np.floor(box[0])), 0), max(int(np.floor(box[1])), 0)
    x1, y1 = min(int(np.ceil(box[2])), w), min(int(np.ceil(box[3])), h)
    crop = mask[y0:y1, x0:x1]
    side = max(crop.shape)
    square = np.zeros((side, side), np.uint8)
    top, left = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
    square[top:top + crop.shape[0], left:left + crop.shape[1]] = crop * 255
    return np.asarray(Image.fromarray(square).resize((grid, grid), Image.Resampling.BOX)) >= 128


def silhouette_iou(mask_a: np.ndarray, box_a: list[float], mask_b: np.ndarray, box_b: list[float]) -> float:
    a, b = _square_mask(mask_a, box_a, SILHOUETTE_GRID), _square_mask(mask_b, box_b, SILHOUETTE_GRID)
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _side(box: list[float], size: tuple[int, int]) -> float:
    return float(np.sqrt((box[2] - box[0]) * (box[3] - box[1]) / (size[0] * size[1])))


def scale_ratio(box_a: list[float], size_a: tuple[int, int], box_b: list[float], size_b: tuple[int, int]) -> float:
    """``size`` is the frame's (width, height)."""
    sa, sb = _side(box_a, size_a), _side(box_b, size_b)
    return min(sa, sb) / max(sa, sb)


def shift(box_a: list[float], size_a: tuple[int, int], box_b: list[float], size_b: tuple[int, int]) -> float:
    def centre(box, size):
        return np.array([(box[0] + box[2]) / 2 / size[0], (box[1] + box[3]) / 2 / size[1]])

    return float(np.linalg.norm(centre(box_a, size_a) - centre(box_b, size_b)) / np.sqrt(2))


def _small(image: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((BACKGROUND_GRID, BACKGROUND_GRID), Image.Resampling.BOX))


def background_similarity(image_a: np.ndarray, subjects_a: np.ndarray, image_b: np.ndarray,
                          subjects_b: np.ndarray) -> float | None:
    """``subjects_*``: the union of every subject's mask in that frame (they are not background)."""
    visible = (_small((subjects_a * 255).astype(np.uint8)) == 0) & (_small((subjects_b * 255).astype(np.uint8)) == 0)
    if not visible.any():
        return None
    diff = np.abs(_small(image_a).astype(np.int16) - _small(image_b).astype(np.int16)).max(axis=-1) / 255.0
    return float((diff[visible] <= BACKGROUND_TOLERANCE).mean())


def view_angle_deg(view_a: dict, view_b: dict) -> float:
    """Angle between the viewing directions (OpenCV camera-to-world: the camera looks along its +z column)."""
    za, zb = np.asarray(view_a["pose"], float)[:3, 2], np.asarray(view_b["pose"], float)[:3, 2]
    cos = za @ zb / (np.linalg.norm(za) * np.linalg.norm(zb))
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def change_score(change: dict[str, float | None]) -> float:
    terms = [1 - change["silhouette_iou"], 1 - change["scale_ratio"], change["shift"]]
    if change.get("background_similarity") is not None:
        terms.append(1 - change["background_similarity"])
    if "view_angle_deg" in change:
        terms.append(change["view_angle_deg"] / 180)
    return float(1 - np.prod([1 - min(max(t, 0.0), 1.0) for t in terms]))


def _subjects_union(sample: Sample, j: int) -> np.ndarray:
    out = np.zeros(sample.frames[j].image.shape[:2], bool)
    for s in sample.subjects:
        if j in s.masks:
            out |= s.masks[j]
    return out


def measure(sample: Sample, identity: Callable[[int, int, int], float] | None = None) -> list[dict]:
    """The pairs of a sample: every subject (by its position in ``sample.subjects``) masked in two frames.

    ``identity(subject index, a, b)`` gives the pair's identity; None: 1 by construction (renders).
    """
    backgrounds: dict[int, np.ndarray] = {}
    pairs = []
    for k, s in enumerate(sample.subjects):
        for a, b in itertools.combinations(sorted(s.masks), 2):
            fa, fb = sample.frames[a], sample.frames[b]
            size_a, size_b = (fa.width, fa.height), (fb.width, fb.height)
            box_a, box_b = s.box(a), s.box(b)
            for j in (a, b):
                if j not in backgrounds:
                    backgrounds[j] = _subjects_union(sample, j)
            change = {
                "silhouette_iou": silhouette_iou(s.masks[a], box_a, s.masks[b], box_b),
                "scale_ratio": scale_ratio(box_a, size_a, box_b, size_b),
                "shift": shift(box_a, size_a, box_b, size_b),
                "background_similarity": background_similarity(fa.image, backgrounds[a], fb.image, backgrounds[b]),
            }
            if "time_s" in fa.fields and "time_s" in fb.fields:
                change["time_gap_s"] = abs(float(fb.fields["time_s"]) - float(fa.fields["time_s"]))
            if "view" in fa.fields and "view" in fb.fields:
                change["view_angle_deg"] = view_angle_deg(fa.fields["view"], fb.fields["view"])
            pairs.append({
                "subject": s.id, "frames": [a, b],
                "identity": round(1.0 if identity is None else float(identity(k, a, b)), ROUND),
                "change": {n: (None if v is None else round(v, ROUND)) for n, v in change.items()},
                "change_score": round(change_score(change), ROUND),
            })
    return pairs


def drop_reason(pair: dict, rules: PairRules) -> str | None:
    if pair["identity"] < rules.min_identity:
        return "identity_mismatch"
    if pair["identity"] >= rules.near_duplicate_identity and pair["change_score"] <= rules.near_duplicate_change:
        return "near_duplicate_pair"
    return None


def keep_pairs(sample: Sample, pairs: list[dict], rules: PairRules, drop: Callable[[str, int], None]) -> None:
    """Set ``sample.pairs`` to the pairs no rule drops; ``drop(reason, n)`` counts the others. Raises ``Rejected``
    with the commonest reason when the sample had pairs and none is left (a sample that never had a pair — one
    frame, unmatched subjects — is not this rule's to judge)."""
    reasons = Counter()
    kept = []
    for p in pairs:
        reason = drop_reason(p, rules)
        if reason is None:
            kept.append(p)
        else:
            reasons[reason] += 1
    for reason, n in reasons.items():
        drop(reason, n)
    if pairs and not kept:
        reason, _ = reasons.most_common(1)[0]
        raise Rejected(reason, f"all {len(pairs)} pairs dropped: {dict(reasons)}")
    sample.pairs = kept
