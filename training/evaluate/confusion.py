"""Subject confusion, lost subjects and copy-paste, from the DINO similarities of located regions and references.

Detect-and-compare, after MuDI (Jang et al. 2024, arXiv:2404.04243 §5): each subject is located in the generated
image, every located region is compared with every subject's reference, and the regions are given to subjects by
Hungarian matching (``scipy.optimize.linear_sum_assignment``) on similarities normalised per reference, so a
reference that resembles everything (a white background, a plain texture) does not win by its offset:

    z[r, j] = (S[r, j] - u_j) / (1 - u_j)

with u_j reference j's mean similarity to unrelated crops of the same image (each region's shape moved onto the
background, cut out the same way): 0 = as alike as an unrelated crop, 1 = identical. Per subject j:
- **lost**: no located region is matched to it (the image does not show it);
- **confused**: its matched region was located for a subject with another phrase (identities swapped), or looks
  more like another subject than like j (z[r, k] > z[r, j]), or is the same region as another subject's (IoU
  >= 0.5: two subjects in one region, the collapse a Subject Collapse Rate counts).
The confusion rate counts confused *and* lost subjects, so dropping a subject never improves it; the lost rate is
reported beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

SAME_REGION_IOU = 0.5
SHIFTS = 4  # unrelated crops: each region's shape moved by multiples of a quarter of the image
MIN_PIXELS = 16


@dataclass
class Outcome:
    matched: list[int | None]  # per subject the index of its region (None: lost)
    confused: np.ndarray  # (N,) bool
    lost: np.ndarray  # (N,) bool

    @property
    def confusion(self) -> float | None:
        """Share of subjects confused or lost; None for one subject (nothing to confuse it with)."""
        return float((self.confused | self.lost).mean()) if len(self.lost) > 1 else None


def normalise(similarity: np.ndarray, unrelated: np.ndarray) -> np.ndarray:
    """z[r, j] = (S[r, j] - u_j) / (1 - u_j); ``unrelated`` (N,) each reference's mean similarity to unrelated crops."""
    return (similarity - unrelated) / np.clip(1 - unrelated, 1e-6, None)


def unrelated_masks(regions: np.ndarray) -> list[np.ndarray]:
    """Per located region, its own shape moved to where it covers the fewest subject pixels (shifts on a
    ``SHIFTS`` x ``SHIFTS`` grid, wrapping at the borders), minus the subjects: background cut out exactly as the
    regions are, so a crop's white margin or outline favours no reference."""
    h, w = regions.shape[1:]
    covered = regions.any(0)
    out = []
    for region in regions:
        if not region.any():
            continue
        shifts = [(dy * h // SHIFTS, dx * w // SHIFTS) for dy in range(SHIFTS) for dx in range(SHIFTS)]
        moved = min((np.roll(region, s, (0, 1)) for s in shifts[1:]), key=lambda m: (m & covered).sum())
        free = moved & ~covered
        if free.sum() >= max(region.sum() / 2, MIN_PIXELS):  # a sliver is not the region's shape
            out.append(free)
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def match(z: np.ndarray, regions: np.ndarray, located_for: list[int], phrases: list[str]) -> Outcome:
    """``z`` (R, N): normalised similarity of each non-empty region to each subject; ``regions`` (R, H, W) those
    regions; ``located_for[r]``: the subject whose phrase (or routing map) located region r."""
    n = len(phrases)
    matched: list[int | None] = [None] * n
    if len(z):
        for r, j in zip(*linear_sum_assignment(z, maximize=True)):
            matched[j] = int(r)
    lost = np.array([r is None for r in matched])
    confused = np.zeros(n, bool)
    for j, r in enumerate(matched):
        if r is None:
            continue
        swapped = phrases[located_for[r]].lower().strip() != phrases[j].lower().strip()
        other_likes = any(z[r, k] > z[r, j] for k in range(n) if k != j)
        shared = any(_iou(regions[r], regions[s]) >= SAME_REGION_IOU for k, s in enumerate(matched)
                     if k != j and s is not None)
        confused[j] = swapped or other_likes or shared
    return Outcome(matched, confused, lost)


def copy_paste(similarity_ref: np.ndarray, similarity_target: np.ndarray, matched: list[int | None]
               ) -> float | None:
    """Share of found subjects whose matched region is closer to the reference it was given than to the real
    target frame's crop of it (``similarity_*``: (R, N) raw DINO cosines); None when no subject was found."""
    found = [(r, j) for j, r in enumerate(matched) if r is not None]
    if not found:
        return None
    return float(np.mean([similarity_ref[r, j] > similarity_target[r, j] for r, j in found]))
