"""COCO-format instance annotations → single-image router samples with exact masks.

Any COCO-style ``instances_*.json`` (+ its images folder) works. One unit per image that has annotations of
the chosen categories; masks are rasterised from the annotation polygons/RLE by pycocotools (exact, no
model); then the router rules of ``datagen.labeling.router_data`` apply (B.1 filters, 2–N subjects per image).
The box rules run first on the annotation boxes: masks are built only for the instances that survive them
(memory then grows with the subjects kept, not with the annotations listed), and an image with more than
``max_annotations`` is refused before anything is read. An image whose long side exceeds ``max_side`` is decoded
downscaled (a JPEG at a reduced size already); the rules run on the annotations in the original's pixels, then the
kept boxes and masks are scaled to the stored image.

A file is untrusted input: an image id listed twice with different entries, or a ``file_name`` shared by two
image ids (the sample key would repeat), and entries missing their fields become quarantined units with the
reason; the rest of the file runs.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from dataclasses import replace

import numpy as np
from pycocotools import mask as mask_utils

from datagen import files, images
from datagen.labeling import filters
from datagen.labeling import router_data
from datagen.labeling.filters import Instance
from datagen.labeling.router_data import RouterRules
from datagen.shards import stable_key
from datagen.units import BadInput, Item, Rejected, Unit

log = logging.getLogger(__name__)

STAGE = "coco"
IMAGE_FIELDS = ("id", "file_name", "width", "height")


class CocoParams(RouterRules):
    categories: list[str] = ["person"]  # category names whose instances become subjects
    # more annotations of the chosen categories on one image: refused before reading it (COCO's most is ~90)
    max_annotations: int = 1000
    max_pixels: int = images.MAX_PIXELS  # an image declaring more is refused before decoding (too_many_pixels)
    max_side: int | None = images.MAX_SIDE  # a longer image side is downscaled at decode, masks and boxes with it
    allow_symlinks: bool = False  # follow a symlink in the images folder that points out of it (else path_outside_root)


def list_units(annotations: str, images_dir: str, p: CocoParams) -> list[Unit]:
    """One unit per image holding at least one instance of the chosen categories (sorted by image id), then
    the unusable entries (quarantined with their reason)."""
    with files.open_url(annotations, "r") as f:
        doc = json.load(f)
    if not isinstance(doc, dict):
        raise ValueError(f"{annotations}: not a COCO annotation file (top level is {type(doc).__name__})")
    dataset = os.path.basename(annotations)
    bad: list[Unit] = []
    names = {}
    for k, c in enumerate(_listed(doc, "categories", annotations)):
        if isinstance(c, dict) and _is_id(c.get("id")) and isinstance(c.get("name"), str):
            names[c["id"]] = c["name"]
        else:
            bad.append(Unit.unusable(f"coco:{dataset}:categories[{k}]", BadInput(
                "bad_category", f"{annotations}: category {k} needs a number or string id and a string name: "
                                f"{str(c)[:200]}")))
    unknown = sorted(set(p.categories) - set(names.values()))
    if unknown:  # a misspelt category would silently select nothing
        raise ValueError(f"{annotations}: categories {unknown} are not in the file (it has {sorted(names.values())})")
    wanted = {i: n for i, n in names.items() if n in p.categories}
    by_image = defaultdict(list)
    for k, ann in enumerate(_listed(doc, "annotations", annotations)):
        if not isinstance(ann, dict) or not _is_id(ann.get("image_id")) or not _is_id(ann.get("category_id")):
            bad.append(Unit.unusable(f"coco:{dataset}:annotations[{k}]",
                                     BadInput("bad_annotation", f"{annotations}: annotation {k} has no number or "
                                                                f"string image_id and category_id: {str(ann)[:200]}")))
        elif ann["category_id"] in wanted:
            by_image[ann["image_id"]].append({**ann, "category_name": wanted[ann["category_id"]]})
    entries: dict[object, list[dict]] = defaultdict(list)
    for k, im in enumerate(_listed(doc, "images", annotations)):
        missing = [f for f in IMAGE_FIELDS if f not in im] if isinstance(im, dict) else list(IMAGE_FIELDS)
        if missing or not _is_id(im["id"]) or not isinstance(im["file_name"], str) or not all(
                _is_id(im[f]) and not isinstance(im[f], str) and im[f] > 0 for f in ("width", "height")):
            bad.append(Unit.unusable(f"coco:{dataset}:images[{k}]",
                                     BadInput("bad_image_entry", f"{annotations}: image {k} lacks {missing}, or its "
                                                                 "id is not a number or string, its file_name not a "
                                                                 "string or its size not positive integers")))
        else:
            entries[im["id"]].append(im)
    units, owner = [], {}
    for image_id in sorted(entries, key=lambda i: (isinstance(i, str), i if isinstance(i, int) else 0, str(i))):
        uid = f"coco:{dataset}:{image_id}"
        anns = by_image.get(image_id)
        if not anns:
            continue
        listed = entries[image_id]
        im = listed[0]
        if any({f: e[f] for f in IMAGE_FIELDS} != {f: im[f] for f in IMAGE_FIELDS} for e in listed[1:]):
            bad.append(Unit.unusable(uid, BadInput("conflicting_image_entries",
                                                   f"{annotations}: image id {image_id} listed {len(listed)} "
                                                   f"times with different file_name/size")))
            continue
        if len(listed) > 1:  # the same entry twice: one unit (unit ids, like sample keys, are unique)
            log.warning("%s: image id %s listed %d times (identical entries, used once)", annotations, image_id,
                        len(listed))
        if im["file_name"] in owner:  # the sample key is the file name: a second id would write it twice
            bad.append(Unit.unusable(uid, Rejected("duplicate_file_name",
                                                   f"{im['file_name']} is also image {owner[im['file_name']]}")))
            continue
        try:
            path = files.inside_root(images_dir, im["file_name"], p.allow_symlinks)
        except BadInput as e:
            bad.append(Unit.unusable(uid, e))
            continue
        owner[im["file_name"]] = image_id
        ref = {"dataset": dataset, "image": path, "file_name": im["file_name"],
               "width": im["width"], "height": im["height"], "annotations": anns,
               "license": im.get("license"), "url": im.get("coco_url") or im.get("flickr_url")}
        units.append(Unit(uid, ref))
    return units + bad


def _is_id(value: object) -> bool:
    """A usable COCO id: an int or a string (JSON gives bools, floats, lists and objects too)."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _listed(doc: dict, name: str, annotations: str) -> list:
    """A top-level COCO list; any other type means the file cannot be listed (the run stops naming it)."""
    value = doc.get(name, [])
    if not isinstance(value, list):
        raise ValueError(f"{annotations}: `{name}` is a {type(value).__name__}, not a list")
    return value


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


def downscaled(x: Instance, original: tuple[int, int], size: tuple[int, int]) -> Instance:
    """An annotated instance (box, exact mask) of an image of ``original`` (width, height), in that image as decoded
    at ``size``. The annotations are in the original's pixels; the rules run there, the kept few are scaled."""
    if size == original:
        return x
    sx, sy = size[0] / original[0], size[1] / original[1]
    x0, y0, x1, y1 = x.box
    return replace(x, box=[x0 * sx, y0 * sy, x1 * sx, y1 * sy], mask=images.resize_mask(x.mask, *size))


def load_sample(item: Item, p: CocoParams) -> Item:
    ref = item.unit.ref
    anns = ref["annotations"]
    if any(a.get("iscrowd") for a in anns):  # a crowd region hides people that have no mask of their own
        raise Rejected("crowd", "image has a crowd annotation of a chosen category")
    if len(anns) < p.min_subjects:  # decided before reading the image: most COCO images hold one person
        raise Rejected("too_few_subjects", f"{len(anns)} annotated < {p.min_subjects}")
    if len(anns) > p.max_annotations:
        raise Rejected("too_many_annotations", f"{len(anns)} annotations > {p.max_annotations}")
    images.check_pixels(ref["width"], ref["height"], p.max_pixels, ref["image"])  # as the file says, unread
    image, (w, h) = images.read_rgb(ref["image"], p.max_pixels, p.max_side)
    if (w, h) != (ref["width"], ref["height"]):
        raise BadInput("size_mismatch", f"{ref['image']}: annotation says {ref['width']}x{ref['height']}, "
                                        f"image is {w}x{h}")
    filters.check_image_size(w, h, p.filters)
    boxes = []
    for ann in anns:
        x, y, bw, bh = ann["bbox"]
        boxes.append(Instance(ann["category_name"], [x, y, x + bw, y + bh], 1.0, None,
                              {"annotation_id": ann["id"], "segmentation": ann["segmentation"]}))
    survivors, drops = filters.filter_boxes(boxes, w, h, p.filters)  # rules (1)-(5) need no mask
    for reason, n in drops.items():
        item.drop(STAGE, reason, n)
    if len(survivors) < p.min_subjects:
        raise Rejected("too_few_subjects", f"{len(survivors)} < {p.min_subjects} after the box rules "
                                           f"({len(boxes)} before; dropped {dict(drops)})")
    left = filters.unlabeled(boxes)
    if left and p.filters.unlabeled == "drop_frame":  # an annotated person without a subject slot
        raise Rejected("unlabeled_instance", f"{len(left)} annotated instance(s) dropped by "
                                             f"{sorted({x.fields[filters.DROP_REASON] for x in left})}")
    item.scratch["ignore"] = [list(x.box) for x in left]
    for x in survivors:  # masks only now, for the few that can become subjects
        x.mask = segmentation_mask(x.fields.pop("segmentation"), h, w)
        if x.mask.shape != (h, w):
            raise BadInput("mask_size_mismatch", f"annotation {x.fields['annotation_id']}: RLE is {x.mask.shape}, "
                                                 f"image {h}x{w}")
    kept = router_data.select(item, STAGE, survivors, w, h, p)  # the box rules again drop none of them
    size = (image.shape[1], image.shape[0])
    sx, sy = size[0] / w, size[1] / h  # ignore boxes, like the annotations, are in the original's pixels
    ignore = [[x0 * sx, y0 * sy, x1 * sx, y1 * sy] for x0, y0, x1, y1 in item.scratch.pop("ignore")]
    item.samples = [router_data.sample(
        key=stable_key("coco", f"{ref['dataset']}/{ref['file_name']}"),
        image=image,
        text=router_data.caption([x.phrase for x in kept]),
        kept=[downscaled(x, (w, h), size) for x in kept],
        provenance={"dataset": ref["dataset"], "file_name": ref["file_name"], "url": ref.get("url"),
                    "license": ref.get("license"), "original_size": [w, h]},
        models={"captioner": "category_names"},
        exact=True,
        ignore=ignore,
    )]
    return item
