"""DeepFashion2 shop/consumer pairs → 2-frame image samples of the same garments, with exact masks.

Official layout: ``<root>/image/<name>.jpg`` and ``<root>/annos/<name>.json``; each annotation has top-level
``source`` (``shop`` | ``user``) and ``pair_id``, and ``item1``, ``item2``, … with ``category_name``,
``category_id``, ``style``, ``bounding_box`` [x1, y1, x2, y2], ``segmentation`` (COCO polygons), ``occlusion``,
``viewpoint``, ... Within one ``pair_id``, items of a shop image and a user image with the same ``style > 0`` are
the same garment; style 0 matches nothing (DeepFashion2 paper §3).

One unit per ``pair_id`` group. Each user (consumer) image is paired with the ``pairs_per_user`` shop images that
share the most styles with it; a sample is (shop image, user image), its subjects the matched garments with masks
rasterised from the polygons (pycocotools, exact). Items without a partner, style-0 items and items failing the
filters are dropped with their reason; a group with no pair left is rejected. A garment a filter rule dropped, or
one over the subject cap, stays visible without a slot: by default its pair is dropped (``unlabeled_instance``),
with ``filters.unlabeled: ignore`` its boxes are the frames' ``ignore`` regions.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter, defaultdict
from typing import Any

import numpy as np

from datagen import files, images
from datagen.filecache import FileCache
from datagen.labeling import filters
from datagen.readers.coco import downscaled, segmentation_mask
from datagen.labeling.filters import FilterParams, Instance
from datagen.params import Params
from datagen.shards import Frame, Sample, Subject, join, stable_key
from datagen.units import BadInput, Item, Rejected, Unit

STAGE = "deepfashion2"
LICENSE = "DeepFashion2: non-commercial research use only"
NO_ARTICLE = {"shorts", "trousers"}  # DeepFashion2's plural category names


class DeepFashion2Params(Params):
    pairs_per_user: int = 1  # shop images paired with each user image (the best-matching ones)
    max_pairs_per_group: int = 32  # samples per pair_id group (bounds a unit's memory), extra pairs counted
    max_pixels: int = images.MAX_PIXELS  # an image declaring more is refused before decoding (too_many_pixels)
    max_side: int | None = images.MAX_SIDE  # a longer image side is downscaled at decode, masks and boxes with it
    allow_symlinks: bool = False  # follow image/ or annos/ symlinks that point out of the root (else path_outside_root)
    # Exact polygons: B.1's mask/box rule guards SAM masks and its 70 % area cap drops background-sized boxes;
    # neither fits product photos where the garment fills the frame.
    filters: FilterParams = FilterParams(area_max=1.0, min_mask_box_ratio=0.0)


def _item_keys(anno: dict) -> list[str]:
    return sorted((k for k in anno if re.fullmatch(r"item\d+", k)), key=lambda k: int(k[4:]))


def _group_of(anno: object) -> tuple[int, str]:
    """(pair_id, source) of an annotation, or BadInput saying what is wrong with it."""
    if not isinstance(anno, dict) or anno.get("source") not in ("shop", "user") or "pair_id" not in anno:
        raise BadInput("not_a_deepfashion2_annotation", "needs source shop|user and pair_id")
    pid = anno["pair_id"]
    # JSON gives floats (Infinity and NaN too, which int() cannot take), bools, strings: only a whole number is an id
    if isinstance(pid, bool) or not isinstance(pid, (int, float)) or not float(pid).is_integer():
        raise BadInput("not_a_deepfashion2_annotation", f"pair_id {pid!r} is not a whole number")
    return int(pid), anno["source"]


def _read_group(fs, path: str) -> dict[str, Any]:
    """What listing needs of one annotation file: ``{"pair_id", "side"}``, or ``{"reason", "detail"}`` when it
    cannot be read or grouped (JSON-serialisable: kept by the file cache)."""
    try:
        with fs.open(path, "r") as f:
            pid, side = _group_of(json.load(f))
        return {"pair_id": pid, "side": side}
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        return {"reason": "corrupt_annotation", "detail": f"{path}: {e}"}
    except BadInput as e:
        return {"reason": e.reason, "detail": f"{path}: {e.detail}"}


def list_units(root: str, cache: FileCache | None = None, allow_symlinks: bool = False) -> list[Unit]:
    """One unit per ``pair_id`` (sorted), listing its shop and user images by name. An annotation file that
    cannot be read or grouped becomes an unusable unit named by its file (quarantined); the rest run. The root
    is a name, not a pattern (``[v2]`` in it is literal). With a ``cache``, a local annotation unchanged since an
    earlier listing (path, size, mtime) is not parsed again: a 390 k-file split is listed from the cache. An
    annotation that is a symlink out of the root is quarantined (``path_outside_root``) unless ``allow_symlinks``."""
    fs, base = files.url_to_fs(root)
    annos_dir = join(base, "annos")
    if not fs.isdir(annos_dir):
        raise FileNotFoundError(f"{root}: no annos/ folder (not a DeepFashion2 split)")
    groups: dict[int, dict[str, list[str]]] = defaultdict(lambda: {"shop": [], "user": []})
    dataset = os.path.basename(root.rstrip("/"))
    bad = []
    cached = cache is not None and files.is_local(root)
    for path in sorted(p for p in fs.ls(annos_dir, detail=False) if p.endswith(".json")):
        name = os.path.basename(path)[: -len(".json")]
        if not files.is_regular_file(fs, path):  # a FIFO would block the listing, a device read without end
            bad.append(Unit.unusable(f"deepfashion2:{dataset}:annos/{name}.json",
                                     BadInput("not_a_regular_file", f"{path}: a FIFO, device or socket")))
            continue
        try:
            files.inside_root(root, f"annos/{name}.json", allow_symlinks)
        except BadInput as e:
            bad.append(Unit.unusable(f"deepfashion2:{dataset}:annos/{name}.json", e))
            continue
        found = (cache.get("deepfashion2-group", path, lambda p: _read_group(fs, p)) if cached
                 else _read_group(fs, path))
        if "reason" in found:
            bad.append(Unit.unusable(f"deepfashion2:{dataset}:annos/{name}.json",
                                     BadInput(found["reason"], found["detail"])))
            continue
        groups[found["pair_id"]][found["side"]].append(name)
    return [Unit(f"deepfashion2:{dataset}:{pid}", {"root": root, "dataset": dataset, "pair_id": pid, **g})
            for pid, g in sorted(groups.items())] + bad


def caption(annotated: list[dict]) -> str:
    """A caption from the category names of every item in the image (worn when a viewpoint says so)."""
    names = list(dict.fromkeys(a["category_name"] for a in annotated))
    garments = " and ".join(n if n in NO_ARTICLE else f"a {n}" for n in names)
    worn = any(a.get("viewpoint", 1) >= 2 for a in annotated)  # 1 = no wear, 2 = frontal, 3 = side or back
    return f"a photo of a person wearing {garments}" if worn else f"a photo of {garments}"


def _matchable(anno: dict, item: Item) -> dict[int, str]:
    """style → item key of the items that can match (style > 0, the style once in the image)."""
    styles = Counter(anno[k]["style"] for k in _item_keys(anno))
    out = {}
    for k in _item_keys(anno):
        s = anno[k]["style"]
        if s == 0:
            item.drop(STAGE, "style_0")
        elif styles[s] > 1:  # two items claiming one garment: no way to tell which is the match
            item.drop(STAGE, "duplicate_style")
        else:
            out[s] = k
    return out


def choose_pairs(shop: dict[str, set[int]], user: dict[str, set[int]], per_user: int) -> list[tuple[str, str]]:
    """For each user image, the ``per_user`` shop images sharing the most styles with it (ties rotate over the
    shop images by the user image's rank, so each gets used)."""
    shops = sorted(shop)
    pairs = []
    for rank, u in enumerate(sorted(user)):
        scored = [(-len(shop[s] & user[u]), (i - rank) % len(shops), s) for i, s in enumerate(shops)]
        pairs += [(s, u) for score, _, s in sorted(scored)[:per_user] if score < 0]
    return pairs


class _Images:
    """The group's images and item instances, each decoded/rasterised and filtered once."""

    def __init__(self, root: str, p: DeepFashion2Params, item: Item):
        self.root, self.p, self.item = root, p, item
        self.frames: dict[str, np.ndarray] = {}
        self.original: dict[str, tuple[int, int]] = {}  # (width, height) before the downscale
        self.kept: dict[str, dict[str, Instance]] = {}
        self.unlabeled: dict[str, list[list[float]]] = {}  # boxes (stored pixels) of garments a rule dropped

    def load(self, name: str, anno: dict) -> None:
        if name in self.frames:
            return
        path = files.inside_root(self.root, f"image/{name}.jpg", self.p.allow_symlinks)  # a link out: refused
        image, (w, h) = images.read_rgb(path, self.p.max_pixels, self.p.max_side)
        filters.check_image_size(w, h, self.p.filters)  # Rejected: the caller drops this image's pairs
        instances = []
        for k in _item_keys(anno):
            a = anno[k]
            x0, y0, x1, y1 = a["bounding_box"]
            box = [max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1)]
            instances.append(Instance(a["category_name"], box, 1.0, segmentation_mask(a["segmentation"], h, w),
                                      {"item": k}))
        empty = [x for x in instances if not x.mask.any()]
        if empty:
            self.item.drop(STAGE, "empty_mask", len(empty))
        kept, drops = filters.filter_instances([x for x in instances if x.mask.any()], w, h, self.p.filters)
        for reason, n in drops.items():
            self.item.drop(STAGE, reason, n)
        self.frames[name] = image
        self.original[name] = (w, h)
        size = (image.shape[1], image.shape[0])  # the polygons are in the original's pixels: rules there, then scaled
        self.kept[name] = {x.fields["item"]: downscaled(x, (w, h), size) for x in kept}
        self.unlabeled[name] = [downscaled(x, (w, h), size).box for x in filters.unlabeled(instances)]


def load_pairs(item: Item, p: DeepFashion2Params) -> Item:
    ref = item.unit.ref
    root, pid = ref["root"], ref["pair_id"]
    annos = {}
    for name in ref["shop"] + ref["user"]:
        try:
            with files.open_url(files.inside_root(root, f"annos/{name}.json", p.allow_symlinks), "r") as f:
                annos[name] = json.load(f)
        except FileNotFoundError:
            raise BadInput("missing_file", join(root, "annos", f"{name}.json")) from None
    styles = {name: _matchable(a, item) for name, a in annos.items()}
    shop = {n: set(styles[n]) for n in ref["shop"]}
    user = {n: set(styles[n]) for n in ref["user"]}
    shop_styles, user_styles = set().union(*shop.values()), set().union(*user.values())
    for side, other in ((shop, user_styles), (user, shop_styles)):
        for n, ss in side.items():
            if ss - other:
                item.drop(STAGE, "no_partner", len(ss - other))
    pairs = choose_pairs(shop, user, p.pairs_per_user)
    if not pairs:
        raise Rejected("no_pairs", f"pair_id {pid}: {len(shop)} shop and {len(user)} user images share no style > 0")
    if len(pairs) > p.max_pairs_per_group:
        item.drop(STAGE, "pairs_over_cap", len(pairs) - p.max_pairs_per_group)
        pairs = pairs[: p.max_pairs_per_group]

    loaded = _Images(root, p, item)
    refused: set[str] = set()
    for s, u in pairs:
        for name in (s, u):
            if name in refused:
                continue
            try:
                loaded.load(name, annos[name])
            except Rejected as e:  # image_too_small, too_many_pixels
                refused.add(name)
                item.drop(STAGE, e.reason)
    for s, u in pairs:
        if s in refused or u in refused:
            item.drop(STAGE, "pair_without_image")
            continue
        sample = _pair_sample(item, ref, (s, u), annos, styles, loaded, p)
        if sample is not None:
            item.samples.append(sample)
    if not item.samples:
        raise Rejected("no_pairs_after_filters",
                       f"pair_id {pid}: {len(pairs)} pairs, none left; dropped {dict(item.drops)}")
    return item


def _pair_sample(item: Item, ref: dict, pair: tuple[str, str], annos: dict, styles: dict, loaded: _Images,
                 p: DeepFashion2Params) -> Sample | None:
    s, u = pair
    subjects = []
    for style in sorted(set(styles[s]) & set(styles[u])):
        ks, ku = styles[s][style], styles[u][style]
        a, b = annos[s][ks], annos[u][ku]
        if a["category_id"] != b["category_id"]:  # the same garment cannot change category: a labelling error
            item.drop(STAGE, "category_mismatch")
            continue
        xs, xu = loaded.kept[s].get(ks), loaded.kept[u].get(ku)
        if xs is None or xu is None:  # failed a filter in one of the two images (counted there)
            continue
        subjects.append(Subject(id=len(subjects), phrase=a["category_name"], masks={0: xs.mask, 1: xu.mask},
                                boxes={0: xs.box, 1: xu.box},
                                fields={"style": style, "category_id": a["category_id"], "items": [ks, ku]}))
    # garments left in a photo without a slot: those a rule dropped, and those over the subject cap
    ignore = [list(loaded.unlabeled[s]), list(loaded.unlabeled[u])]
    if len(subjects) > p.filters.max_subjects:
        item.drop(STAGE, "too_many_subjects", len(subjects) - p.filters.max_subjects)
        for x in subjects[p.filters.max_subjects:]:
            ignore[0].append(x.boxes[0])
            ignore[1].append(x.boxes[1])
        subjects = subjects[: p.filters.max_subjects]
    if not subjects:
        item.drop(STAGE, "pair_without_subjects")
        return None
    if any(ignore) and p.filters.unlabeled == "drop_frame":  # a pair is its two frames: dropping one drops it
        item.drop(STAGE, "unlabeled_instance")
        return None
    frames = []
    for n, boxes in zip((s, u), ignore):
        image = loaded.frames[n]
        fields = {"image": n, "domain": annos[n]["source"], "original_size": list(loaded.original[n])}
        if boxes:  # filters.unlabeled = ignore: left out of the routing loss
            fields["ignore"] = [filters.ignore_box(b, image.shape[1], image.shape[0]) for b in boxes]
        frames.append(Frame(image, caption([annos[n][k] for k in _item_keys(annos[n])]), fields))
    return Sample(
        key=stable_key("df2", f"{ref['dataset']}/{s}/{u}"),
        source="image",
        frames=frames,
        subjects=subjects,
        provenance={"dataset": f"DeepFashion2/{ref['dataset']}", "pair_id": ref["pair_id"], "shop": s, "user": u,
                    "license": LICENSE},
        models={"captioner": "category_names"},
    )
