"""A dataset where subjects recur across units: the same synthetic subject (one texture inside one silhouette) on
other backgrounds, at other places and sizes, in other units (a cross-context pair to find), and look-alikes (the
same silhouette and phrase, another texture) that must not pair."""

from __future__ import annotations

import numpy as np

from datagen import shards
from tests.shard_factory import smooth_image, write_dataset

SIZE = (160, 120)  # frame width, height


def subject_patch(identity: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """(side × side × 3 texture, side × side silhouette): a striped, dotted ellipse whose colours and stripe
    frequency are the identity's (a look-alike differs in those, not in shape)."""
    rng = np.random.default_rng(1000 + identity)
    yy, xx = np.mgrid[0:side, 0:side] / side
    silhouette = ((xx - 0.5) / 0.42) ** 2 + ((yy - 0.5) / 0.48) ** 2 <= 1
    colours = rng.integers(0, 256, (2, 3))
    stripes = (np.sin(2 * np.pi * (rng.uniform(2, 6) * xx + rng.uniform(1, 4) * yy)) > 0)[..., None]
    texture = np.where(stripes, colours[0], colours[1]).astype(np.uint8)
    return texture, silhouette


def place(frame: np.ndarray, identity: int, x: int, y: int, side: int) -> np.ndarray:
    texture, silhouette = subject_patch(identity, side)
    frame[y:y + side, x:x + side][silhouette] = texture[silhouette]
    mask = np.zeros(frame.shape[:2], bool)
    mask[y:y + side, x:x + side] = silhouette
    return mask


def unit_sample(key: str, url: str, subjects: list[tuple[int, str]], background_seed: int,
                n_frames: int = 2) -> shards.Sample:
    """A video-like sample of one clip (``url``): each (identity, phrase) subject in every frame, moving a little,
    on a background of its own."""
    w, h = SIZE
    rng = np.random.default_rng(background_seed)
    frames, masks = [], [dict() for _ in subjects]
    for j in range(n_frames):
        image = smooth_image(rng, h, w)
        for i, (identity, _) in enumerate(subjects):
            side = 40 + 8 * ((background_seed + i) % 3)
            masks[i][j] = place(image, identity, 6 + 70 * i + 4 * j, 20 + 6 * ((background_seed + j) % 4), side)
        frames.append(shards.Frame(image, f"a clip with {' and '.join(p for _, p in subjects)}", {"time_s": j}))
    subs = [shards.Subject(i, phrase, masks[i], det_score=0.9, match_score=0.95)
            for i, (_, phrase) in enumerate(subjects)]
    return shards.Sample(key, "video", frames, subs, {"url": url, "license": "cc0"}, {"captioner": "test"})


def recurring_dataset(root: str) -> str:
    """Five units: identity 1 ("dog") in clips a, b and (in the same clip as a) a2; a look-alike dog (identity 2)
    in clip c; identity 1 called "car" in clip d (phrases disagree); clip b also holds a "ball" (identity 3) seen
    nowhere else. Expected pairs: (a, b) only: a2 shares a's clip, c is another dog, d another phrase."""
    return write_dataset(root, [
        [unit_sample("vid-a", "clips/a.mp4", [(1, "brown dog")], 1),
         unit_sample("vid-a2", "clips/a.mp4", [(1, "brown dog")], 2)],
        [unit_sample("vid-b", "clips/b.mp4", [(3, "ball"), (1, "small dog")], 3),
         unit_sample("vid-c", "clips/c.mp4", [(2, "brown dog")], 4),
         unit_sample("vid-d", "clips/d.mp4", [(1, "red car")], 5)],
    ])
