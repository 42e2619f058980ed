"""Tiny shard datasets with known subjects: flat green frames, subject i a solid rectangle of colour COLOURS[i]."""

from __future__ import annotations

import numpy as np
import pytest

from datagen import shards
from tests.shard_factory import write_dataset

COLOURS = [(220, 30, 30), (30, 30, 220), (230, 200, 20), (200, 30, 200), (30, 200, 200), (120, 60, 20)]
BACKGROUND = (40, 160, 40)


def subject_box(i: int, j: int) -> tuple[int, int, int, int]:
    """Subject i's rectangle [x0, y0, x1, y1] in frame j (moves 3 px right and 2 px down per frame)."""
    x0, y0 = 6 + 14 * i + 3 * j, 8 + 2 * j
    return x0, y0, x0 + 12, y0 + 30


def colour_sample(key: str, frames_of: dict[int, list[int]], n_frames: int = 2, size: tuple[int, int] = (96, 64),
                  source: str = "video") -> shards.Sample:
    """``frames_of``: subject id → the frames it appears in (its mask exists only there)."""
    w, h = size
    frames = []
    for j in range(n_frames):
        img = np.empty((h, w, 3), np.uint8)
        img[:] = BACKGROUND
        for i, js in frames_of.items():
            if j in js:
                x0, y0, x1, y1 = subject_box(i, j)
                img[y0:y1, x0:x1] = COLOURS[i]
        frames.append(shards.Frame(img, f"{key} frame {j}"))
    subjects = []
    for i, js in frames_of.items():
        masks = {}
        for j in js:
            m = np.zeros((h, w), bool)
            x0, y0, x1, y1 = subject_box(i, j)
            m[y0:y1, x0:x1] = True
            masks[j] = m
        subjects.append(shards.Subject(i, f"thing {i}", masks))
    return shards.Sample(key, source, frames, subjects, {"uid": key}, {"captioner": "test"})


def set_synthetic(root: str, synthetic: bool) -> None:
    manifest = shards.read_manifest(root)
    manifest["synthetic_models"] = synthetic
    shards.write_manifest(root, manifest)


@pytest.fixture
def colour_dataset(tmp_path):
    """``make(n_shards, per_shard, name=…, source=…, synthetic=False)`` → dataset dir of 2-frame, 2-subject samples
    (subject 0 in both frames, subject 1 in frame 0 only)."""

    def make(n_shards: int, per_shard: int, name: str = "ds", source: str = "test", synthetic: bool = False) -> str:
        groups = [[colour_sample(f"{name}-{g}-{k}", {0: [0, 1], 1: [0]}) for k in range(per_shard)]
                  for g in range(n_shards)]
        root = write_dataset(str(tmp_path / name), groups, source=source)
        set_synthetic(root, synthetic)
        return root

    return make
