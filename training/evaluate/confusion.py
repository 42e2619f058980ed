"""Subject confusion, lost subjects and copy-paste, from the DINO similarities of located regions and references.

Detect-and-compare, after MuDI (Jang et al. 2024, arXiv:2404.04243 §5): each subject is located in the generated
image, every located region is compared with every subject's reference, and the regions are given to subjects by
Hungarian matching (``scipy.optimize.linear_sum_assignment``) on similarities normalised per reference, so a
reference that resembles everything (a white background, a plain texture) does not win by its offset:

    z[r, j] = (S[r, j] - u_j) / (1 - u_j)

with u_j reference j's mean similarity to unrelated crops of the same image (background cells away from the
regions, cut out the same way): 0 = as alike as an unrelated crop, 1 = identical. Per subject j:
- **lost**: no located region is matched to it (the image does not show it);
- **confused**: its matched region was located for a subject with another phrase (identities swapped), or looks
  more like another subject than like j (z[r, k] > z[r, j]), or is the same region as another subject's (IoU
  >= 0.5: two subjects in one region — the collapse that MuDI's Subject Collapse Rate counts).
The confusion rate counts confused *and* lost subjects, so dropping a subject never improves it; the lost rate is
reported beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

SAME_REGION_IOU = 0.5
GRID = 4  # background cells: a GRID x GRID split of the image
BACKGROUND_CELLS = 4  # the cells least covered by subjects


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


def background_cells(regions: np.ndarray) -> list[np.ndarray]:
    """Masks of the ``BACKGROUND_CELLS`` grid cells least covered by any region, minus the regions."""
    h, w = regions.shape[1:]
    covered = regions.any(0)
    cells = []
    for y in range(GRID):
        for x in range(GRID):
            cell = np.zeros((h, w), bool)
            cell[y * h // GRID:(y + 1) * h // GRID, x * w // GRID:(x + 1) * w // GRID] = True
            cells.append((covered[cell].mean(), len(cells), cell & ~covered))
    return [m for _, _, m in sorted(cells, key=lambda c: c[:2])[:BACKGROUND_CELLS] if m.any()]


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
