"""A URL list (JSONL: url, caption) of ``file://`` URLs to group photos drawn on real-photo backdrops, with the
cases the downloader must report: a corrupt file, a missing file, an image below the size rule and a URL listed
twice."""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import ImageDraw

from datagen.samples.coco import person_polygon
from datagen.samples.photos import backdrop

# people in each good image, at LAION-Aesthetics sizes that pass the source's B.1 short-side rule (≥ 1024)
PEOPLE = ((2, (1536, 1024)), (3, (1024, 1024)), (2, (1024, 1536)), (4, (1365, 1024)))


def _group_photo(n: int, seed: int, size: tuple[int, int]):
    w, h = size
    im = backdrop(w, h, seed=seed)
    draw = ImageDraw.Draw(im)
    rng = np.random.default_rng(seed)
    slot = w / n
    for k in range(n):
        bw, bh = slot * 0.7, h * 0.6
        draw.polygon(person_polygon(k * slot + slot * 0.15, h * 0.3, bw, bh),
                     fill=tuple(int(c) for c in rng.integers(30, 220, 3)))
    return im


def make(root: str) -> dict:
    out = os.path.join(root, "urls")
    listing = os.path.join(out, "urls.jsonl")
    if os.path.exists(listing):
        return {"url_list": listing}
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    rows = []
    for i, (n, size) in enumerate(PEOPLE):
        path = os.path.join(out, "images", f"group{i}.jpg")
        _group_photo(n, 200 + i, size).save(path, quality=92)
        rows.append({"url": f"file://{os.path.abspath(path)}", "caption": f"{n} friends standing together"})
    small = os.path.join(out, "images", "small.jpg")
    _group_photo(2, 300, (640, 427)).save(small, quality=92)  # a COCO-sized photo: below the 1024 rule
    corrupt = os.path.join(out, "images", "corrupt.jpg")
    with open(corrupt, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 truncated jpeg")
    rows += [
        {"url": f"file://{os.path.abspath(small)}", "caption": "two people, a small photo"},
        {"url": f"file://{os.path.abspath(corrupt)}", "caption": "a broken download"},
        {"url": f"file://{os.path.abspath(os.path.join(out, 'images', 'gone.jpg'))}", "caption": "a dead link"},
        dict(rows[0], caption="the first photo, listed again"),
    ]
    with open(listing, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return {"url_list": listing}
