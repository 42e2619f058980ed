"""Real-photo backdrops for sample inputs, from a photo an installed package ships (no download)."""

from __future__ import annotations

import os

import matplotlib
import numpy as np
from PIL import Image

PHOTO = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "grace_hopper.jpg")


def backdrop(width: int, height: int, seed: int = 0) -> Image.Image:
    """A random crop of the photo, resized to width×height: real texture, different per seed."""
    with Image.open(PHOTO) as im:
        photo = im.convert("RGB")
    rng = np.random.default_rng(seed)
    pw, ph = photo.size
    cw, ch = int(pw * rng.uniform(0.5, 1.0)), int(ph * rng.uniform(0.5, 1.0))
    x, y = int(rng.integers(0, pw - cw + 1)), int(rng.integers(0, ph - ch + 1))
    return photo.crop((x, y, x + cw, y + ch)).resize((width, height), Image.BICUBIC)
