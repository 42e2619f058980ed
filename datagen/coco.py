"""COCO-format instance annotations → single-image router samples with exact masks.

Any COCO-style ``instances_*.json`` (+ its images folder) works. One unit per image that has annotations of
the chosen categories; masks are rasterised from the annotation polygons/RLE by pycocotools (exact, no
model); the filters of ``datagen.filters`` apply; images with too few or too many subjects left are
rejected with the reason (router data wants 2–N people, DESIGN §4).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict

import numpy as np
from pycocotools import mask as mask_utils

from datagen import filters, images
from datagen.filters import FilterParams, Instance
from datagen.params import Params
from datagen.shards import Frame, Sample, Subject, stable_key
from datagen.units import Item, Rejected, Unit

STAGE = "coco"


class CocoParams(Params):
    categories: list[str] = ["person"]  # category names whose instances become subjects
    min_subjects: int = 2
    too_many: str = "reject"  # reject | cap: an image with more than filters.max_subjects subjects
    filters: FilterParams = FilterParams()


def list_units(annotations: str, images_dir: str, p: CocoParams) -> list[Unit]:
    """One unit per image holding at least one instance of the chosen categories (sorted by image id)."""
    with open(annotations) as f:
        doc = json.load(f)
    wanted = {c["id"]: c["name"] for c in doc.get("categories", []) if c["name"] in p.categories}
    by_image = defaultdict(list)
    for ann in doc.get("annotations", []):
        if ann["category_id"] in wanted:
            by_image[ann["image_id"]].append({**ann, "category_name": wanted[ann["category_id"]]})
    dataset = os.path.basename(annotations)
    units = []
    for im in sorted(doc.get("images", []), key=lambda im: im["id"]):
        anns = by_image.get(im["id"])
        if anns:
            ref = {"dataset": dataset, "image": os.path.join(images_dir, im["file_name"]), "file_name": im["file_name"],
                   "width": im["width"], "height": im["height"], "annotations": anns,
                   "license": im.get("license"), "url": im.get("coco_url") or im.get("flickr_url")}
            units.append(Unit(f"coco:{dataset}:{im['id']}", ref))
    return units


def annotation_mask(ann: dict, height: int, width: int) -> np.ndarray:
    """Polygons, uncompressed or compressed RLE → H×W bool mask (pycocotools, as COCO's own API does)."""
    seg = ann["segmentation"]
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    elif isinstance(seg["counts"], list):
        rle = mask_utils.frPyObjects(seg, height, width)
    else:
        rle = seg
    return mask_utils.decode(rle).astype(bool)


def load_sample(item: Item, p: CocoParams) -> Item:
    ref = item.unit.ref
    image = images.read_rgb(ref["image"])
    h, w = image.shape[:2]
    if (w, h) != (ref["width"], ref["height"]):
        raise Rejected("size_mismatch", f"annotation says {ref['width']}x{ref['height']}, image is {w}x{h}")
    filters.check_image_size(w, h, p.filters)
    if any(a.get("iscrowd") for a in ref["annotations"]):
        raise Rejected("crowd", "image has a crowd annotation of a chosen category")
    instances = []
    for ann in ref["annotations"]:
        x, y, bw, bh = ann["bbox"]
        instances.append(Instance(ann["category_name"], [x, y, x + bw, y + bh], 1.0, annotation_mask(ann, h, w),
                                  {"annotation_id": ann["id"]}))
    kept, drops = filters.filter_instances(instances, w, h, p.filters)
    for reason, n in drops.items():
        item.drop(STAGE, reason, n)
    if len(kept) > p.filters.max_subjects:
        if p.too_many == "reject":
            raise Rejected("too_many_subjects", f"{len(kept)} > {p.filters.max_subjects}")
        kept, capped = filters.cap_subjects(kept, p.filters)
        for reason, n in capped.items():
            item.drop(STAGE, reason, n)
    if len(kept) < p.min_subjects:
        raise Rejected("too_few_subjects", f"{len(kept)} < {p.min_subjects} after filters")
    subjects = [
        Subject(id=i, phrase=x.phrase, masks={0: x.mask}, boxes={0: x.box}, det_score=None,
                fields={"annotation_id": x.fields["annotation_id"]})
        for i, x in enumerate(kept)
    ]
    names = sorted({x.phrase for x in kept})
    caption = f"a photo of {len(kept)} " + " and ".join(f"{n}s" if len(kept) > 1 else n for n in names)
    item.samples = [
        Sample(
            key=stable_key("coco", f"{ref['dataset']}/{ref['file_name']}"),
            source="router",
            frames=[Frame(image, caption)],
            subjects=subjects,
            provenance={"dataset": ref["dataset"], "file_name": ref["file_name"], "url": ref.get("url"),
                        "license": ref.get("license")},
            models={"captioner": "category_names"},
        )
    ]
    return item
