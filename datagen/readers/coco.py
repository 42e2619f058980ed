"""COCO-format instance annotations → single-image router samples with exact masks.

Any COCO-style ``instances_*.json`` (+ its images folder) works. One unit per image that has annotations of
the chosen categories; masks are rasterised from the annotation polygons/RLE by pycocotools (exact, no
model); then the router rules of ``datagen.labeling.router_data`` apply (B.1 filters, 2–N subjects per image).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict

import fsspec
import numpy as np
from pycocotools import mask as mask_utils

from datagen import images
from datagen.labeling import filters
from datagen.labeling import router_data
from datagen.labeling.filters import Instance
from datagen.labeling.router_data import RouterRules
from datagen.shards import stable_key
from datagen.units import BadInput, Item, Rejected, Unit

STAGE = "coco"


class CocoParams(RouterRules):
    categories: list[str] = ["person"]  # category names whose instances become subjects


def list_units(annotations: str, images_dir: str, p: CocoParams) -> list[Unit]:
    """One unit per image holding at least one instance of the chosen categories (sorted by image id)."""
    with fsspec.open(annotations, "r") as f:
        doc = json.load(f)
    names = {c["id"]: c["name"] for c in doc.get("categories", [])}
    unknown = sorted(set(p.categories) - set(names.values()))
    if unknown:  # a misspelt category would silently select nothing
        raise ValueError(f"{annotations}: categories {unknown} are not in the file (it has {sorted(names.values())})")
    wanted = {i: n for i, n in names.items() if n in p.categories}
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


def segmentation_mask(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """COCO segmentation (polygons, uncompressed or compressed RLE) → H×W bool mask, with pycocotools as
    COCO's own API does. Also the format of DeepFashion2's polygons."""
    if isinstance(segmentation, list):
        # fewer than 3 points has no area, and frPyObjects would read a 4-number polygon as a box
        polygons = [poly for poly in segmentation if len(poly) >= 6]
        if not polygons:
            return np.zeros((height, width), bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle).astype(bool)


def load_sample(item: Item, p: CocoParams) -> Item:
    ref = item.unit.ref
    anns = ref["annotations"]
    if any(a.get("iscrowd") for a in anns):  # a crowd region hides people that have no mask of their own
        raise Rejected("crowd", "image has a crowd annotation of a chosen category")
    if len(anns) < p.min_subjects:  # decided before reading the image: most COCO images hold one person
        raise Rejected("too_few_subjects", f"{len(anns)} annotated < {p.min_subjects}")
    image = images.read_rgb(ref["image"])
    h, w = image.shape[:2]
    if (w, h) != (ref["width"], ref["height"]):
        raise BadInput("size_mismatch", f"{ref['image']}: annotation says {ref['width']}x{ref['height']}, "
                                        f"image is {w}x{h}")
    filters.check_image_size(w, h, p.filters)
    instances = []
    for ann in anns:
        mask = segmentation_mask(ann["segmentation"], h, w)
        if mask.shape != (h, w):
            raise BadInput("mask_size_mismatch", f"annotation {ann['id']}: RLE is {mask.shape}, image {h}x{w}")
        x, y, bw, bh = ann["bbox"]
        instances.append(Instance(ann["category_name"], [x, y, x + bw, y + bh], 1.0, mask,
                                  {"annotation_id": ann["id"]}))
    kept = router_data.select(item, STAGE, instances, w, h, p)
    item.samples = [router_data.sample(
        key=stable_key("coco", f"{ref['dataset']}/{ref['file_name']}"),
        image=image,
        text=router_data.caption([x.phrase for x in kept]),
        kept=kept,
        provenance={"dataset": ref["dataset"], "file_name": ref["file_name"], "url": ref.get("url"),
                    "license": ref.get("license")},
        models={"captioner": "category_names"},
        exact=True,
    )]
    return item
