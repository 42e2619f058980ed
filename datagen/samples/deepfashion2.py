"""A small DeepFashion2-format tree (``image/``, ``annos/``): garments drawn on real photo backdrops, each garment
(pair_id, style) in one colour wherever it appears. Cases: a group with two consumer photos (one also wearing a
style-0 skirt), a group where each side has a garment the other lacks, a shop image with no consumer photo, and a
group whose consumer photo is a corrupt file. Photos come at DeepFashion2's spread of real sizes (shop images
large and often portrait, consumer photos from ~375×500 up), not at sizes chosen to clear a filter."""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import ImageDraw

from datagen.samples.photos import backdrop

# (width, height) of each photo
SIZES = {"000001": (740, 500), "000002": (740, 493), "000003": (375, 500), "000004": (800, 1067),
         "000005": (468, 624), "000006": (600, 600), "000007": (554, 738), "000008": (640, 480)}
# garment outlines in a unit box, by category (category_id as DeepFashion2 numbers them)
SHAPES = {
    "top": [(0.3, 0), (0.7, 0), (1, 0.2), (0.85, 0.35), (0.75, 0.3), (0.75, 1), (0.25, 1), (0.25, 0.3),
            (0.15, 0.35), (0, 0.2)],
    "trousers": [(0.1, 0), (0.9, 0), (1, 1), (0.6, 1), (0.5, 0.35), (0.4, 1), (0, 1)],
    "skirt": [(0.25, 0), (0.75, 0), (1, 1), (0, 1)],
    "dress": [(0.3, 0), (0.7, 0), (0.75, 0.35), (1, 1), (0, 1), (0.25, 0.35)],
    "strap": [(0.25, 0), (0.75, 0), (0.8, 1), (0.2, 1)],
}
CATEGORIES = {"short sleeve top": (1, "top"), "vest": (5, "strap"), "sling": (6, "strap"), "shorts": (7, "skirt"),
              "trousers": (8, "trousers"), "skirt": (9, "skirt"), "long sleeve dress": (11, "dress")}

# name: (source, pair_id, [(category, style, box x0, y0, x1, y1 as fractions of the image)])
IMAGES = {
    "000001": ("shop", 1, [("short sleeve top", 1, 0.15, 0.05, 0.85, 0.45), ("trousers", 2, 0.2, 0.5, 0.8, 0.97)]),
    "000002": ("user", 1, [("short sleeve top", 1, 0.3, 0.15, 0.8, 0.5), ("trousers", 2, 0.35, 0.52, 0.75, 0.95)]),
    "000003": ("user", 1, [("short sleeve top", 1, 0.1, 0.1, 0.6, 0.45), ("skirt", 0, 0.1, 0.48, 0.6, 0.8)]),
    "000004": ("shop", 2, [("long sleeve dress", 1, 0.1, 0.05, 0.6, 0.95), ("vest", 2, 0.62, 0.1, 0.95, 0.5)]),
    "000005": ("user", 2, [("long sleeve dress", 1, 0.4, 0.1, 0.9, 0.9), ("sling", 3, 0.05, 0.2, 0.35, 0.6)]),
    "000006": ("shop", 3, [("shorts", 1, 0.2, 0.3, 0.8, 0.7)]),
    "000007": ("shop", 4, [("trousers", 1, 0.2, 0.1, 0.8, 0.9)]),
    "000008": ("user", 4, [("trousers", 1, 0.3, 0.2, 0.7, 0.9)]),
}
CORRUPT = {"000008"}


def _polygon(shape: str, box: tuple[float, float, float, float], size: tuple[int, int]) -> list[float]:
    x0, y0, x1, y1 = box[0] * size[0], box[1] * size[1], box[2] * size[0], box[3] * size[1]
    return [round(v, 2) for u, v in SHAPES[shape] for v in (x0 + u * (x1 - x0), y0 + v * (y1 - y0))]


def make(root: str) -> dict:
    out = os.path.join(root, "deepfashion2")
    if os.path.exists(os.path.join(out, "annos", f"{max(IMAGES)}.json")):
        return {"root": out}
    os.makedirs(os.path.join(out, "image"), exist_ok=True)
    os.makedirs(os.path.join(out, "annos"), exist_ok=True)
    for n, (name, (source, pair_id, garments)) in enumerate(sorted(IMAGES.items())):
        im = backdrop(*SIZES[name], seed=100 + n)
        draw = ImageDraw.Draw(im)
        anno = {"source": source, "pair_id": pair_id}
        for k, (category, style, *box) in enumerate(garments):
            cid, shape = CATEGORIES[category]
            poly = _polygon(shape, tuple(box), SIZES[name])
            # one colour per garment identity; style-0 garments get their own
            rng = np.random.default_rng(pair_id * 10 + style if style else 1000 + n)
            draw.polygon(poly, fill=tuple(int(c) for c in rng.integers(20, 235, 3)))
            xs, ys = poly[0::2], poly[1::2]
            anno[f"item{k + 1}"] = {
                "category_name": category, "category_id": cid, "style": style,
                "bounding_box": [min(xs), min(ys), max(xs), max(ys)], "segmentation": [poly], "landmarks": [],
                "occlusion": 1, "zoom_in": 1, "scale": 2, "viewpoint": 2 if source == "user" else 1,
            }
        path = os.path.join(out, "image", f"{name}.jpg")
        if name in CORRUPT:
            with open(path, "wb") as f:
                f.write(b"\xff\xd8\xff\xe0 truncated jpeg")
        else:
            im.save(path, quality=92)
        with open(os.path.join(out, "annos", f"{name}.json"), "w") as f:
            json.dump(anno, f)
    return {"root": out}
