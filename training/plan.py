"""Per-sample choices, made from ``meta.json`` and file names alone (no image decoding), so that a resume can
replay them cheaply: the target frame, a reference frame per subject, the aspect bucket and the condition drop.

AnyStory §3.4: one image of a pair is the reference, another image of the same subject in a different context the
target; a subject seen in one frame only (router data, unmatched video subjects) is its own reference, augmented.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
from PIL import Image

from datagen import shards
from training.config import AugmentParams

log = logging.getLogger(__name__)


@dataclass
class Plan:
    raw: dict[str, Any]  # the sample's files (bytes), decoded later for the chosen frames only
    meta: dict[str, Any]
    target: int  # target frame
    subjects: list[tuple[int, int]]  # (subject id, reference frame), at most max_subjects
    bucket: tuple[int, int]  # (height, width) of the target
    drop: bool  # drop the subject conditions of this sample (classifier-free guidance)
    seed: int  # for the augmentations of this sample
    # per subject: change_score of its (reference, target) pair; None: its own reference, or unmeasured (2.0 data)
    pair_change: list[float | None] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.raw["__key__"]


def sdxl_buckets(resolution: int, step: int, max_aspect: float) -> list[tuple[int, int]]:
    """SDXL-style aspect buckets: sides multiples of ``step``, area close to resolution² (SDXL paper §2.3)."""
    area = resolution * resolution
    out = set()
    for h in range(step, int(resolution * math.sqrt(max_aspect)) + 1, step):
        w = max(step, round(area / h / step) * step)
        if max(h / w, w / h) <= max_aspect:
            out.add((h, w))
    return sorted(out)


def nearest_bucket(height: int, width: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket closest in log aspect ratio (ties: the larger area)."""
    aspect = math.log(height / width)
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - aspect), -b[0] * b[1]))


def subject_frames(raw: dict[str, Any], meta: dict[str, Any]) -> dict[int, list[int]]:
    """Subject id → frames where it has a mask."""
    n = len(meta["frames"])
    return {s["id"]: [j for j in range(n) if f"mask.{j}.{s['id']}.png" in raw] for s in meta["subjects"]}


def reference_options(subject: int, target: int, frames: list[int],
                      pairs: list[dict[str, Any]] | None) -> dict[int, float | None]:
    """Frames that may give ``subject``'s reference for ``target`` → the pair's change_score.

    With measures (meta ``pairs``, format 2.1), only the pairs the data engine kept: a pair its rules dropped
    (near-duplicate, identity mismatch) is no reference. Without (2.0 data): every other frame, unmeasured."""
    if pairs is None:
        return {j: None for j in frames if j != target}
    out = {}
    for p in pairs:
        a, b = p["frames"]
        if p["subject"] == subject and target in (a, b):
            out[b if a == target else a] = float(p["change_score"])
    return out


def pick_reference(options: dict[int, float | None], how: str, rng: np.random.Generator) -> int | None:
    """``most_changed``: the frame of the highest change_score (ties: the first frame); ``random``, or no measures:
    uniform. None when there is no option (the subject is its own reference)."""
    if not options:
        return None
    if how == "most_changed" and all(c is not None for c in options.values()):
        return max(sorted(options), key=lambda j: options[j])
    return int(rng.choice(sorted(options)))


class BrokenSample(ValueError):
    """A sample whose files cannot be trained on: meta.json not JSON, a file that differs from its recorded sha256,
    a frame or mask that is not an image or not the size meta.json and its frame say."""


def check_sample(raw: dict[str, Any]) -> dict[str, Any]:
    """The sample's meta, after checking what can be checked without decoding pixels (image headers only)."""
    try:
        meta = json.loads(raw["meta.json"])
        frames = meta["frames"]
        sizes = [(int(f["width"]), int(f["height"])) for f in frames]
        [s["id"] for s in meta["subjects"]]  # noqa: B018 — every subject has an id
    except (KeyError, TypeError, ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise BrokenSample(f"meta.json unusable: {type(e).__name__}: {e}") from None
    corrupt = shards.corrupt_members(raw, meta)
    if corrupt:
        raise BrokenSample(f"{', '.join(corrupt)} differ from the sha256 in meta.json")
    for name, data in raw.items():
        frame, mask = shards.FRAME_FILE.match(name), shards.MASK_FILE.match(name)
        if not (frame or mask):
            continue
        j = int((frame or mask)["j"])
        try:
            with Image.open(io.BytesIO(data)) as im:
                size = im.size
        except Exception as e:  # noqa: BLE001 — whatever Pillow cannot open is not an image
            raise BrokenSample(f"{name} is not an image: {e}") from None
        if j >= len(sizes) or size != sizes[j]:
            raise BrokenSample(f"{name} is {size[0]}x{size[1]}, frame {j} is "
                               f"{'missing' if j >= len(sizes) else '%dx%d' % sizes[j]}")
    return meta


def choose(raw: dict[str, Any], params: AugmentParams, buckets: list[tuple[int, int]],
           rng: np.random.Generator) -> Plan | None:
    """The choices for one raw sample; None when no frame shows a subject; BrokenSample when it is broken."""
    meta = check_sample(raw)
    frames_of = subject_frames(raw, meta)
    candidates = sorted({j for js in frames_of.values() for j in js})
    if not candidates:
        return None
    target = int(rng.choice(candidates))
    present = [i for i, js in frames_of.items() if target in js]
    if len(present) > params.max_subjects:
        present = sorted(rng.choice(present, params.max_subjects, replace=False).tolist())
    subjects, changes = [], []
    for i in present:
        options = reference_options(i, target, frames_of[i], meta.get("pairs"))
        ref = pick_reference(options, params.reference, rng)
        subjects.append((i, target if ref is None else ref))
        changes.append(None if ref is None else options[ref])
    frame = meta["frames"][target]
    return Plan(
        raw=raw,
        meta=meta,
        target=target,
        subjects=subjects,
        pair_change=changes,
        bucket=nearest_bucket(frame["height"], frame["width"], buckets),
        drop=bool(rng.random() < params.drop_rate),
        seed=int(rng.integers(2**63)),
    )


def plan_samples(raws: Iterator[dict[str, Any]], params: AugmentParams, buckets: list[tuple[int, int]],
                 rng: np.random.Generator, broken: Counter | None = None) -> Iterator[Plan]:
    """Stage: raw samples → plans. A sample without any subject mask is skipped with a warning naming it; a broken
    one too, counted per source in ``broken`` (like a broken shard: one bad sample never stops a run)."""
    broken = Counter() if broken is None else broken
    for raw in raws:
        try:
            plan = choose(raw, params, buckets, rng)
        except BrokenSample as e:
            source = raw.get("__source__")
            broken[source] += 1
            log.warning("%s (%s): broken sample skipped: %s; broken samples of %s: %d", raw["__key__"], source, e,
                        source, broken[source])
            continue
        if plan is None:
            log.warning("%s (%s): plan: no frame shows a subject; skipped", raw["__key__"], raw.get("__source__"))
            continue
        yield plan


def bucket_batches(plans: Iterator[Plan], batch_size: int) -> Iterator[list[Plan]]:
    """Stage: group plans into batches of one bucket each.

    The input is one finite round; at its end, plans left in incomplete buckets are batched together at the
    bucket of each batch's first plan (so at most batch_size − 1 plans per round are dropped, not one per bucket).
    """
    pending: dict[tuple[int, int], list[Plan]] = {}
    for plan in plans:
        group = pending.setdefault(plan.bucket, [])
        group.append(plan)
        if len(group) == batch_size:
            yield group
            pending[plan.bucket] = []
    rest = [p for group in pending.values() for p in group]
    for i in range(0, len(rest) - batch_size + 1, batch_size):
        batch = rest[i:i + batch_size]
        for p in batch[1:]:
            p.bucket = batch[0].bucket
        yield batch
