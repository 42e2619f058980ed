"""A COCO-format file with router-style images: people drawn on a real photo backdrop, one image per case the
source must handle (2, 3 and 4 people, a single person, 5 thin people, a crowd annotation, a corrupt file), at
COCO's own sizes (640×480, 640×427, 480×640)."""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image, ImageDraw

from datagen.samples.photos import backdrop

# people per image, style, (width, height); "thin" people have a box aspect below the 0.3 of filter (1)
CASES = [(2, "wide", (480, 640)), (3, "wide", (640, 480)), (4, "wide", (640, 427)), (1, "wide", (640, 480)),
         (5, "thin", (640, 427)), (2, "crowd", (640, 480)), (2, "corrupt", (480, 640))]


def person_polygon(x0: float, y0: float, w: float, h: float) -> list[float]:
    """A rough person silhouette (head + body) as one COCO polygon, so masks are not just boxes."""
    cx = x0 + w / 2
    return [cx - 0.15 * w, y0, cx + 0.15 * w, y0, cx + 0.2 * w, y0 + 0.25 * h, x0 + w, y0 + 0.35 * h,
            x0 + 0.85 * w, y0 + h, x0 + 0.15 * w, y0 + h, x0, y0 + 0.35 * h, cx - 0.2 * w, y0 + 0.25 * h]


def make(root: str) -> dict:
    out = os.path.join(root, "coco")
    ann_path = os.path.join(out, "instances.json")
    if os.path.exists(ann_path):
        return {"annotations": ann_path, "images": os.path.join(out, "images")}
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i, (n, style, (w, h)) in enumerate(CASES):
        im = backdrop(w, h, seed=i)
        draw = ImageDraw.Draw(im)
        slot = w / n
        for k in range(n):
            bw = slot * (0.2 if style == "thin" else 0.7)
            bh = h * 0.6
            x0, y0 = k * slot + (slot - bw) / 2, h * 0.3
            poly = person_polygon(x0, y0, bw, bh)
            draw.polygon(poly, fill=tuple(int(c) for c in rng.integers(30, 220, 3)))
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "bbox": [x0, y0, bw, bh],
                         "area": bw * bh, "iscrowd": int(style == "crowd" and k == 0), "segmentation": [poly]})
        name = f"{i:06d}.jpg"
        path = os.path.join(out, "images", name)
        if style == "corrupt":
            with open(path, "wb") as f:
                f.write(b"\xff\xd8\xff\xe0 truncated jpeg")
        else:
            im.save(path, quality=92)
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h, "license": 1})
    doc = {"info": {"description": "anystory-data sample"}, "licenses": [{"id": 1, "name": "CC0"}],
           "images": images, "annotations": anns, "categories": [{"id": 1, "name": "person", "supercategory": "person"}]}
    with open(ann_path, "w") as f:
        json.dump(doc, f)
    return {"annotations": ann_path, "images": os.path.join(out, "images")}
