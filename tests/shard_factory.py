"""Builders of samples and small valid datasets with known content, for tests of everything that reads shards."""

from __future__ import annotations

import numpy as np

from datagen import shards


def smooth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Low-frequency colour noise: a 4×4 random grid upsampled by pixel repetition, then blurred by averaging."""
    grid = rng.integers(0, 255, (4, 4, 3)).astype(np.float32)
    big = np.repeat(np.repeat(grid, -(-h // 4), 0), -(-w // 4), 1)[:h, :w]
    k = 5
    pad = np.pad(big, ((k, k), (k, k), (0, 0)), mode="edge")
    out = sum(pad[k + dy:k + dy + h, k + dx:k + dx + w] for dy in range(-k, k + 1, k) for dx in range(-k, k + 1, k))
    return (out / 9).astype(np.uint8)


def make_sample(key: str = "s-0", n_frames: int = 2, n_subjects: int = 2, size: tuple[int, int] = (64, 48),
                source: str = "video", seed: int = 0) -> shards.Sample:
    """Smooth random frames (JPEG-friendly); subject i is a rectangle shifted 2 px per frame (known masks)."""
    rng = np.random.default_rng(seed)
    w, h = size
    frames = [shards.Frame(smooth_image(rng, h, w), f"caption {j}", {"time_s": 0.5 * j}) for j in range(n_frames)]
    subjects = []
    for i in range(n_subjects):
        masks = {}
        for j in range(n_frames):
            m = np.zeros((h, w), bool)
            x0 = 4 + 14 * i + 2 * j
            m[6:6 + h // 2, x0:x0 + 10] = True
            masks[j] = m
        subjects.append(shards.Subject(i, f"thing {i}", masks, det_score=0.5 + 0.1 * i, match_score=0.9))
    return shards.Sample(key, source, frames, subjects, {"uid": key, "license": "cc0"}, {"captioner": "test"},
                         {"det": 0.7})


def write_dataset(root: str, samples_per_shard: list[list[shards.Sample]], source: str = "test") -> str:
    """A valid dataset of the current format: the given samples in one shard per inner list, with index, quarantine, manifest."""
    numbers = iter(range(10**6))
    index = []
    for group in samples_per_shard:
        with shards.ShardWriter(shards.join(root, shards.SHARDS_DIR),
                                lambda: shards.shard_name(source, next(numbers))) as w:
            for s in group:
                index.append(shards.index_row(s, w.write(shards.encode_sample(s))))
    shards.write_index(root, index)
    shards.write_quarantine(root, [{"unit_id": "u-bad", "stage": "load", "reason": "corrupt_image",
                                    "detail": "test"}])
    shards.write_manifest(root, {
        "format_version": shards.FORMAT_VERSION, "config": {}, "config_hash": "0", "code_version": "test",
        "models": {}, "synthetic_models": False, "counts": {"samples": len(index)}, "start_time": "",
        "end_time": "",
    })
    return root
