"""Objaverse 7-view renders (AnyStory's "3D" data, ~5.6 M samples in the paper): objects → units → samples.

Inputs: uids of the ``objaverse`` package filtered by their annotations (license, category/tags, face count,
animation; LVIS categories), downloaded into its cache by ``load_objects``; or local mesh files (a folder, or a
list) in GLB, glTF, OBJ or PLY. One unit per object; its sample is the 7 views of the object, with the object as
its one subject: ``frame.<j>.jpg``, ``mask.<j>.0.png`` and the camera of each view in meta.json
(``datagen.render.rig`` states the convention). Keys are ``obj-<uid>`` or ``obj-<sha1 of the file>``.

Captions: the object's metadata (name, tags, category: an Objaverse annotation, or ``<file stem>.json`` beside a
local file) when no captioner is configured; else Qwen2-VL on one view (``ObjectCaptioner``, a later stage). The
subject's phrase is the head noun (spaCy) of the caption or name, else the category.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import posixpath
import re
import shutil
import tempfile
from collections import Counter
from typing import Any, Iterator

import trimesh
from pydantic import Field

from datagen import files
from datagen.labeling import captions as captioning
from datagen.labeling import entities
from datagen.labeling import pairs
from datagen.models import ModelSpec
from datagen.params import Params
from datagen.render import RenderParams
from datagen.render import render as render_views
from datagen.render.meshes import FORMATS
from datagen.shards import Frame, Sample, Subject
from datagen.filecache import FileCache
from datagen.units import BadInput, Item, Rejected, Unit

log = logging.getLogger(__name__)

STAGE = "render"
KIND = "objaverse"
# Sketchfab licence slugs whose terms allow derivatives (renders): the "-nd" ones are left out by default.
DERIVATIVE_LICENSES = ["cc0", "by", "by-sa", "by-nc", "by-nc-sa"]


class ObjaverseQuery(Params):
    """Which Objaverse (1.0) objects: every filter left at None lets all through."""

    uids: list[str] | None = None  # explicit uids (the other filters still apply)
    lvis_categories: list[str] | None = None  # objects of these LVIS categories (load_lvis_annotations)
    licenses: list[str] | None = DERIVATIVE_LICENSES
    categories: list[str] | None = None  # Sketchfab category names or slugs, any of
    tags: list[str] | None = None  # tag names or slugs, any of
    max_faces: int | None = 500_000  # annotation faceCount; the render stage checks the real count again
    animated: bool | None = False  # False: no animations; True: only animated; None: both
    limit: int | None = None  # first N uids (sorted) after filtering
    prefetch: bool = False  # download every selected object in the driver first, else each unit downloads its own
    download_processes: int = Field(8, ge=1)  # with prefetch: load_objects' download processes


OBJECT_PROMPT = "Describe the object in this image in one sentence, starting with what it is."


class CaptionParams(Params):
    max_tags: int = 5  # metadata caption: the name, then up to this many tags
    view: int = Field(0, ge=0, lt=7)  # the view the captioner looks at (0: frontal)
    model: captioning.CaptionParams = captioning.CaptionParams(prompt=OBJECT_PROMPT)


class ObjaverseParams(Params):
    render: RenderParams = RenderParams()
    min_mask_area: float = Field(0.005, ge=0, lt=1)  # fraction of the frame the object must cover in every view
    seed: int = 0  # with the unit id, decides the rig's jitter and the lights: reruns render the same pixels
    captions: CaptionParams = CaptionParams()


# ------------------------------------------------------------------------------------------------- units


def _slugs(entries: list[dict]) -> set[str]:
    return {str(e.get(k, "")).lower() for e in entries or [] for k in ("name", "slug")} - {""}


def annotation_reason(ann: dict, q: ObjaverseQuery) -> str | None:
    """Why an annotated object is left out (None: kept)."""
    if q.licenses is not None and ann.get("license") not in q.licenses:
        return "license"
    if q.categories is not None and not _slugs(ann.get("categories")) & {c.lower() for c in q.categories}:
        return "category"
    if q.tags is not None and not _slugs(ann.get("tags")) & {t.lower() for t in q.tags}:
        return "tags"
    if q.max_faces is not None and (ann.get("faceCount") or 0) > q.max_faces:
        return "too_many_faces"
    if q.animated is not None and bool(ann.get("animationCount") or 0) != q.animated:
        return "animated" if not q.animated else "not_animated"
    return None


def object_meta(ann: dict) -> dict[str, Any]:
    """The few annotation fields a sample keeps (caption fallback + provenance)."""
    return {
        "name": ann.get("name") or "",
        "tags": [t.get("name", "") for t in ann.get("tags") or []],
        "categories": [c.get("name", "") for c in ann.get("categories") or []],
        "license": ann.get("license"),
        "url": ann.get("viewerUrl") or ann.get("uri"),
        "face_count": ann.get("faceCount"),
    }


def list_objaverse_units(q: ObjaverseQuery) -> tuple[list[Unit], Counter]:
    """Units of the selected Objaverse objects (sorted by uid) and how many were left out, by reason."""
    import objaverse

    if q.lvis_categories is not None:
        lvis = objaverse.load_lvis_annotations()
        uids = sorted({u for c in q.lvis_categories for u in lvis.get(c, [])})
        category_of = {u: c for c in q.lvis_categories for u in lvis.get(c, [])}
    else:
        uids = sorted(q.uids if q.uids is not None else objaverse.load_uids())
        category_of = {}
    if q.uids is not None:
        uids = sorted(set(uids) & set(q.uids))
    annotations = objaverse.load_annotations(uids)
    dropped: Counter = Counter()
    kept: list[tuple[str, dict]] = []
    for uid in uids:
        ann = annotations.get(uid)
        reason = "no_annotation" if ann is None else annotation_reason(ann, q)
        if reason:
            dropped[reason] += 1
            continue
        meta = object_meta(ann)
        if uid in category_of:
            meta["categories"] = [category_of[uid], *meta["categories"]]
        kept.append((uid, meta))
        if q.limit is not None and len(kept) >= q.limit:
            break
    paths = objaverse.load_objects([uid for uid, _ in kept], download_processes=q.download_processes) \
        if q.prefetch else {}
    units = [Unit(f"objaverse:{uid}", {"uid": uid, "path": paths.get(uid), "meta": meta}) for uid, meta in kept]
    return units, dropped


def mesh_files(folder: str) -> list[str]:
    """Mesh files under ``folder`` (recursively; a local path or an fsspec URL), sorted."""
    if not files.is_local(folder):
        fs, root = files.url_to_fs(folder)
        return sorted(fs.unstrip_protocol(p) for p in fs.find(root) if os.path.splitext(p)[1].lower() in FORMATS)
    found = []
    for root, _, names in os.walk(folder):  # not fsspec's find: os.walk does not follow links into a loop
        found += [os.path.join(root, n) for n in names if os.path.splitext(n)[1].lower() in FORMATS]
    return sorted(found)


def file_sha1(path: str) -> str:
    h = hashlib.sha1()
    with files.open_url(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _name(path: str) -> str:
    """How a unit names its file: absolute when local, the URL itself in an object store."""
    return os.path.abspath(path) if files.is_local(path) else path


def sidecar_meta(path: str) -> dict[str, Any]:
    """``<stem>.json`` beside a mesh file ({"name", "tags", "categories", "license", ...}), else its stem as name.
    A sidecar that is not such an object raises BadInput (``bad_sidecar``) naming it."""
    side = os.path.splitext(path)[0] + ".json"
    meta: dict[str, Any] = {"name": os.path.splitext(os.path.basename(path))[0], "tags": [], "categories": []}
    fs, side_path = files.url_to_fs(side)
    if not fs.exists(side_path):
        return meta
    if not files.is_regular_file(fs, side_path):
        raise BadInput("bad_sidecar", f"{side}: a FIFO, device or socket, not a file")
    try:
        with fs.open(side_path, "rb") as f:
            found = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadInput("bad_sidecar", f"{side}: {e}") from None
    if not isinstance(found, dict):
        raise BadInput("bad_sidecar", f"{side}: a JSON object is expected, not {type(found).__name__}")
    wrong = [k for k in ("tags", "categories") if k in found and not (
        isinstance(found[k], list) and all(isinstance(t, str) for t in found[k]))]
    wrong += [k for k in ("name", "license") if k in found and not isinstance(found[k], (str, type(None)))]
    if wrong:
        raise BadInput("bad_sidecar", f"{side}: wrong type for {wrong} (name/license strings, tags/categories "
                                      "lists of strings)")
    return {**meta, **found}


def list_file_units(paths: list[str], cache: FileCache | None = None) -> tuple[list[Unit], Counter]:
    """One unit per distinct file content (objaverse-xl also names objects by a hash of their file); with a
    ``cache``, a file unchanged since an earlier run is not hashed again. A file that cannot be read or whose
    sidecar is unusable becomes an unusable unit (quarantined by name)."""
    units, seen, dropped = [], set(), Counter()
    for path in paths:
        if not files.is_regular_file(files.url_to_fs(path)[0], path):  # a FIFO blocks, /dev/zero never ends
            units.append(Unit.unusable(f"file:{_name(path)}",
                                       BadInput("not_a_regular_file", f"{path}: a FIFO, device or socket")))
            continue
        try:  # the cache is keyed by local mtimes; an object in a store is hashed at each listing
            sha1 = cache.get("sha1", path, file_sha1) if cache is not None and files.is_local(path) \
                else file_sha1(path)
        except OSError as e:
            units.append(Unit.unusable(f"file:{_name(path)}", BadInput("unreadable_file", f"{path}: {e}")))
            continue
        if sha1 in seen:
            dropped["duplicate_file"] += 1
            continue
        seen.add(sha1)
        try:
            meta = sidecar_meta(path)
        except BadInput as e:
            units.append(Unit.unusable(f"file:{sha1}", e))
            continue
        units.append(Unit(f"file:{sha1}", {"sha1": sha1, "path": _name(path), "meta": meta}))
    return units, dropped


@contextlib.contextmanager
def fetch(ref: dict) -> Iterator[str]:
    """Local path of the unit's mesh for the renderers (trimesh in a child process, Blender: both read local files):
    the file itself, a copy of one in an object store, or an Objaverse object downloaded into the package's cache."""
    if ref.get("path"):
        if files.is_local(ref["path"]):
            yield ref["path"]
        else:
            with local_copy(ref["path"]) as path:
                yield path
        return
    import objaverse

    try:
        paths = objaverse.load_objects([ref["uid"]], download_processes=1)
    except OSError as e:  # urllib's errors are OSErrors
        raise BadInput("download_failed", f"{ref['uid']}: {e}") from None
    if ref["uid"] not in paths:
        raise BadInput("download_failed", f"{ref['uid']}: not in objaverse's object paths")
    yield paths[ref["uid"]]


class _StoreResolver(trimesh.resolvers.Resolver):
    """Side files of a glTF/OBJ in an object store (buffers, materials, textures), fetched as trimesh's loader asks
    for them and kept beside the local copy under their relative names, so every renderer finds them."""

    def __init__(self, root: str, local_dir: str):
        self.root, self.local_dir = root, local_dir

    def get(self, name: str) -> bytes:
        url = files.inside_root(self.root, name.strip())  # a name in the file is untrusted: it stays under root
        with files.open_url(url) as f:
            data = f.read()
        self.write(name.strip(), data)
        return data

    def write(self, name: str, data: bytes) -> None:
        local = os.path.join(self.local_dir, os.path.normpath(name))
        os.makedirs(os.path.dirname(local), exist_ok=True)
        with open(local, "wb") as f:
            f.write(data)

    def namespaced(self, namespace: str) -> "_StoreResolver":
        return _StoreResolver(f"{self.root}/{namespace}", os.path.join(self.local_dir, namespace))

    def keys(self):
        return []


@contextlib.contextmanager
def local_copy(url: str) -> Iterator[str]:
    """The mesh at ``url`` (an object store) copied into a temporary folder with the side files it names."""
    with tempfile.TemporaryDirectory(prefix="anystory-mesh-") as tmp:
        local = os.path.join(tmp, posixpath.basename(url))
        with files.open_url(url) as src, open(local, "wb") as dst:
            shutil.copyfileobj(src, dst)
        if os.path.splitext(local)[1].lower() in (".gltf", ".obj"):  # GLB and PLY are self-contained
            try:
                trimesh.load(local, force="scene", resolver=_StoreResolver(url.rsplit("/", 1)[0], tmp))
            except Exception:  # noqa: BLE001 — the renderer loads it again and quarantines it with the reason
                pass
        yield local


# ----------------------------------------------------------------------------------------------- captions

# Words of asset names that say how a model was made, not what it is.
_NAME_NOISE = {"3d", "model", "models", "lowpoly", "low-poly", "highpoly", "free", "game", "ready", "asset", "scan",
               "obj", "fbx", "glb", "blend", "pbr", "textured", "sm", "lp", "hp", "wip", "final"}


def clean_name(name: str) -> str:
    """'SM_Wooden_Chair_01 (3D model)' → 'wooden chair'."""
    words = re.sub(r"([a-z])([A-Z])", r"\1 \2", name)
    words = re.sub(r"[_\-()\[\]#.,:;/]+", " ", words).lower().split()
    return " ".join(w for w in words if w not in _NAME_NOISE and not w.isdigit())


def head_noun(text: str) -> str | None:
    """The head of the first subject phrase spaCy finds ('a red ceramic mug with a handle' → 'mug')."""
    found = entities.phrases(text, entities.EntityParams(max_words=1, max_phrases=1))
    return found[0] if found else None


def metadata_caption(meta: dict, p: CaptionParams) -> tuple[str, str]:
    """(caption, subject phrase) from an object's name, tags and categories."""
    name = clean_name(meta.get("name", ""))
    subject = name or clean_name(_category(meta)) or "object"
    article = "an" if subject[0] in "aeiou" else "a"
    tags = [t for t in (clean_name(t) for t in meta.get("tags", [])) if t and t not in subject][: p.max_tags]
    caption = f"{article} {subject}" + (f", {', '.join(tags)}" if tags else "")
    # parsed with its article: spaCy tags a bare name ("orange ring") as a proper noun more often
    return caption, (head_noun(f"{article} {name}") if name else None) or category_phrase(meta)


def _category(meta: dict) -> str:
    return next((c for c in meta.get("categories", []) if c), "")


def category_phrase(meta: dict) -> str:
    """The last word of the first category ('Electronics Gadgets' → 'gadgets'), else 'object'."""
    return clean_name(_category(meta)).split(" ")[-1] or "object"


# ------------------------------------------------------------------------------------------------- stage


def unit_seed(seed: int, unit_id: str) -> int:
    return int.from_bytes(hashlib.sha1(f"{seed}:{unit_id}".encode()).digest()[:8], "little")


def sample_key(ref: dict) -> str:
    return f"obj-{ref['uid']}" if ref.get("uid") else f"obj-{ref['sha1']}"


def render_unit(item: Item, p: ObjaverseParams) -> Item:
    """Fetch, render the 7 views, filter, and build the unit's sample (metadata caption; a captioner may follow)."""
    ref = item.unit.ref
    with fetch(ref) as local:
        views = render_views(local, p.render, unit_seed(p.seed, item.unit.id))
    path = ref.get("path") or local  # messages name the input, not a local copy of it
    areas = views.masks.mean(axis=(1, 2))
    if (areas == 0).any():
        raise Rejected("empty_render", f"{path}: nothing drawn in views {[int(j) for j in (areas == 0).nonzero()[0]]}")
    if areas.min() < p.min_mask_area:
        raise Rejected("tiny_render", f"{path}: mask area {areas.min():.4f} < {p.min_mask_area} in view "
                                      f"{int(areas.argmin())}")
    caption, phrase = metadata_caption(ref["meta"], p.captions)
    frames = [Frame(views.rgb[j], caption, {"view": v.fields()}) for j, v in enumerate(views.views)]
    subject = Subject(id=0, phrase=phrase, masks={j: views.masks[j] for j in range(len(frames))})
    provenance = {"uid": ref.get("uid"), "sha1": ref.get("sha1"), "file": posixpath.basename(path),
                  **{k: ref["meta"].get(k) for k in ("name", "tags", "categories", "license", "url")},
                  "mesh": {k: v for k, v in views.info.items() if not k.endswith("_s")}}
    sample = Sample(key=sample_key(ref), source=KIND, frames=frames, subjects=[subject], provenance=provenance,
                    models={"renderer": views.info["renderer"], "captioner": "metadata"})
    # One object in every view: identity 1 by construction, the views' change measured from masks and cameras. The
    # pair rules have nothing to drop here (identity is exact; the default rig puts views >= 30 degrees apart, a
    # change_score >= 0.17 from the view term alone).
    sample.pairs = pairs.measure(sample)
    item.samples = [sample]
    return item


class ObjectCaptioner:
    """Qwen2-VL (model registry role ``captioner``) captions one view of each object; the caption goes on every
    frame (the views show one object) and its head noun becomes the subject's phrase (else the category)."""

    def __init__(self, spec: ModelSpec, p: CaptionParams):
        self.p = p
        self.model = captioning.Captioner(spec, p.model)
        self.describe = spec.describe()

    def __call__(self, items: list[Item]) -> list[Item]:
        texts = self.model([it.samples[0].frames[self.p.view].image for it in items])
        for it, text in zip(items, texts):
            sample = it.samples[0]
            if not text:
                it.drop("caption", "empty_caption")  # the metadata caption stays
                continue
            for frame in sample.frames:
                frame.caption = text
            sample.subjects[0].phrase = head_noun(text) or category_phrase(it.unit.ref["meta"])
            sample.models["captioner"] = self.describe
        return items
