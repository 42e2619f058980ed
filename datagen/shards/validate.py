"""``python -m datagen.shards validate DIR``: check a dataset directory against the shard format (v2.2).

Checks every tar (readable, names parse, a sample's files adjacent), every sample (meta.json present and of
version 1, frames 0…F−1 decode at the sizes meta states, masks are 8-bit, of their frame's size and name a
known subject, boxes inside frames), keys unique, and the index, quarantine and manifest consistent with the
shards. Each violation is reported; any violation makes the exit status 1.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import fsspec
from PIL import Image

from datagen import shards

_MAX_LISTED = 50


@dataclass
class Report:
    dataset: str
    shards: int = 0
    samples: int = 0
    violations: list[str] = field(default_factory=list)
    per_source: Counter = field(default_factory=Counter)

    def add(self, where: str, what: str) -> None:
        self.violations.append(f"{where}: {what}")

    @property
    def ok(self) -> bool:
        return not self.violations

    def render(self) -> str:
        head = (f"{self.dataset}: {self.shards} shards, {self.samples} samples "
                f"({', '.join(f'{k} {v}' for k, v in sorted(self.per_source.items())) or 'none'})")
        if self.ok and not self.samples:  # every unit quarantined, or --limit 0: valid, and worth saying
            return (f"{head}\nOK: empty dataset (no samples), shard format "
                    f"v{shards.FORMAT_VERSION}.{shards.FORMAT_MINOR}, no violations")
        if self.ok:
            return f"{head}\nOK: shard format v{shards.FORMAT_VERSION}.{shards.FORMAT_MINOR}, no violations"
        listed = self.violations[:_MAX_LISTED]
        more = len(self.violations) - len(listed)
        tail = [f"  ... and {more} more"] if more else []
        return "\n".join([head, f"INVALID: {len(self.violations)} violation(s)", *(f"  {v}" for v in listed),
                          *tail])


def _members(url: str, report: Report, name: str) -> list[tuple[str, str, bytes]]:
    """(key, file name, bytes) of a tar in order; unreadable tars are reported, not raised."""
    out = []
    try:
        with fsspec.open(url, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
            end = 0
            for m in tar:
                end = m.offset_data + -(-m.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
                if not m.isfile():
                    continue
                base = m.name.rsplit("/", 1)[-1]
                if "." not in base:
                    report.add(name, f"member {m.name!r} has no extension")
                    continue
                key, ext = base.split(".", 1)
                data = tar.extractfile(m).read()
                if len(data) != m.size:
                    raise tarfile.ReadError(f"{m.name} truncated ({len(data)} of {m.size} bytes)")
                out.append((key, ext, data))
            # tarfile stops quietly at a cut header; a whole tar ends with two zero blocks after its last file
            f.seek(end)
            if f.read(2 * tarfile.BLOCKSIZE) != bytes(2 * tarfile.BLOCKSIZE):
                raise tarfile.ReadError(f"truncated: no end-of-archive marker after byte {end}")
    except (tarfile.TarError, OSError, EOFError) as e:
        report.add(name, f"unreadable tar: {e}")
    return out


def _image(data: bytes, where: str, report: Report, modes: tuple[str, ...],
           empty_is_violation: bool = False) -> tuple[int, int] | None:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.mode not in modes:
                report.add(where, f"image mode {im.mode}, expected {'/'.join(modes)}")
            elif empty_is_violation and not im.getbbox():  # a mask with no pixel: a subject that is not there
                report.add(where, "mask is all zero")
            return im.size
    except Exception as e:  # noqa: BLE001 — any decoder error is a violation to report
        report.add(where, f"does not decode: {e}")
        return None


def _check_sample(key: str, files: dict[str, bytes], report: Report) -> dict[str, Any] | None:
    where = key
    if "meta.json" not in files:
        report.add(where, "missing meta.json")
        return None
    try:
        meta = json.loads(files["meta.json"])
    except ValueError as e:
        report.add(where, f"meta.json is not JSON: {e}")
        return None
    if not isinstance(meta, dict):
        report.add(where, f"meta.json is a JSON {type(meta).__name__}, not an object")
        return None
    for name in shards.corrupt_members(files, meta):
        report.add(where, f"{name} does not match the sha256 meta.json records (corrupted)")
    if meta.get("version") != shards.SAMPLE_VERSION:
        report.add(where, f"meta version {meta.get('version')!r}, expected {shards.SAMPLE_VERSION}")
    if meta.get("source") not in shards.KINDS:
        report.add(where, f"meta source {meta.get('source')!r} not one of {shards.KINDS}")
    frames = meta.get("frames")
    subjects = meta.get("subjects")
    if not isinstance(frames, list) or not frames or not isinstance(subjects, list):
        report.add(where, "meta needs a non-empty `frames` list and a `subjects` list")
        return None
    wrong = [f"frames[{j}]" for j, fm in enumerate(frames) if not isinstance(fm, dict)]
    wrong += [f"subjects[{i}]" for i, sm in enumerate(subjects) if not isinstance(sm, dict)]
    if wrong:
        report.add(where, f"meta {', '.join(wrong)} must be objects")
        return None
    sizes = {}
    for j, fm in enumerate(frames):
        name = f"frame.{j}.jpg"
        if not isinstance(fm.get("caption", ""), str):
            report.add(where, f"frame {j} caption is {fm['caption']!r}, not a string")
        if name not in files:
            report.add(where, f"missing {name}")
            continue
        size = _image(files[name], f"{where}/{name}", report, ("RGB",))
        if size and size != (fm.get("width"), fm.get("height")):
            report.add(where, f"{name} is {size[0]}x{size[1]}, meta says {fm.get('width')}x{fm.get('height')}")
        sizes[j] = size
        for box in fm.get("ignore") or []:  # 2.1
            if size and not (0 <= box[0] < box[2] <= size[0] and 0 <= box[1] < box[3] <= size[1]):
                report.add(where, f"frame {j} ignore box {box} outside the frame ({size[0]}x{size[1]})")
    ids = [s.get("id") for s in subjects]
    if len(set(ids)) != len(ids):
        report.add(where, f"duplicate subject ids {ids}")
    for s in subjects:
        if not isinstance(s.get("phrase"), str):
            report.add(where, f"subject {s.get('id')} has no phrase")
        boxes = s.get("boxes") or {}
        if not isinstance(boxes, dict):
            report.add(where, f"subject {s.get('id')} boxes must be an object (frame → box)")
            continue
        for j, box in boxes.items():
            size = sizes.get(int(j)) if str(j).isdigit() else None
            if size is None:
                report.add(where, f"subject {s.get('id')} has a box for unknown frame {j}")
                continue
            if not (isinstance(box, list) and len(box) == 4 and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
                report.add(where, f"subject {s.get('id')} box {box!r} in frame {j} is not 4 numbers")
                continue
            x0, y0, x1, y1 = box
            if not (0 <= x0 < x1 <= size[0] and 0 <= y0 < y1 <= size[1]):
                report.add(where, f"subject {s.get('id')} box {box} outside frame {j} ({size[0]}x{size[1]})")
    for p in meta.get("pairs") or []:  # 2.1: each pair is one subject with a mask in both of its frames
        masks = [f"mask.{j}.{p.get('subject')}.png" for j in p.get("frames", [])]
        if len(set(masks)) != 2 or not all(m in files for m in masks):
            report.add(where, f"pair {p.get('subject')}@{p.get('frames')}: the subject is not masked in two frames")
        if not 0.0 <= p.get("change_score", -1) <= 1.0:
            report.add(where, f"pair {p.get('subject')}@{p.get('frames')}: change_score {p.get('change_score')!r} "
                              "outside [0, 1]")
    for name, data in files.items():
        if name == "meta.json" or shards.FRAME_FILE.match(name):
            if name != "meta.json" and int(shards.FRAME_FILE.match(name)["j"]) >= len(frames):
                report.add(where, f"{name} beyond the {len(frames)} frames of meta")
            continue
        m = shards.MASK_FILE.match(name)
        if not m:
            report.add(where, f"unexpected file {name}")
            continue
        j, i = int(m["j"]), int(m["i"])
        if i not in ids:
            report.add(where, f"{name} names subject {i}, not in meta")
        size = _image(data, f"{where}/{name}", report, ("L",), empty_is_violation=True)
        if size and sizes.get(j) and size != sizes[j]:
            report.add(where, f"{name} is {size[0]}x{size[1]}, frame {j} is {sizes[j][0]}x{sizes[j][1]}")
        if j not in sizes:
            report.add(where, f"{name} belongs to missing frame {j}")
    return meta


def validate(dataset: str) -> Report:
    report = Report(dataset)
    fs, root = fsspec.core.url_to_fs(dataset)
    if not fs.isdir(root):
        report.add(dataset, "not a directory")
        return report
    found: dict[str, tuple[str, dict[str, Any]]] = {}  # key -> (shard, meta)
    names = shards.list_shards(dataset)
    for p in fs.ls(shards.join(root, shards.SHARDS_DIR), detail=False) if fs.exists(
            shards.join(root, shards.SHARDS_DIR)) else []:
        base = p.rstrip("/").rsplit("/", 1)[-1]
        if base.endswith(".tar") and not shards.SHARD_NAME.match(base):
            report.add(base, "shard name does not match <source>-<NNNNNN>.tar")
    for name in names:
        report.shards += 1
        members = _members(shards.join(dataset, shards.SHARDS_DIR, name), report, name)
        groups: dict[str, dict[str, bytes]] = {}
        order: list[str] = []
        for key, ext, data in members:
            if key not in groups:
                if key in order:
                    report.add(name, f"files of {key} are not adjacent")
                groups[key] = {}
                order.append(key)
            elif order[-1] != key:
                report.add(name, f"files of {key} are not adjacent")
            groups[key][ext] = data
        for key in order:
            if key in found:
                report.add(name, f"key {key} already in {found[key][0]}")
                continue
            meta = _check_sample(key, groups[key], report)
            report.samples += 1
            if meta is not None:
                found[key] = (name, meta)
                report.per_source[f"{shards.pipeline_of(name)} ({meta.get('source')})"] += 1
    _check_index(dataset, found, report)
    _check_quarantine_and_manifest(dataset, len(found), report)
    return report


def _check_index(dataset: str, found: dict[str, tuple[str, dict[str, Any]]], report: Report) -> None:
    try:
        index = shards.read_table(dataset, shards.INDEX_FILE).to_pylist()
    except Exception as e:  # noqa: BLE001
        report.add(shards.INDEX_FILE, f"unreadable: {e}")
        return
    if index:
        missing_cols = [c for c in shards.INDEX_COLUMNS if c not in index[0]]
        if missing_cols:
            report.add(shards.INDEX_FILE, f"missing columns {missing_cols}")
            return
    keys = Counter(r["key"] for r in index)
    for k, n in keys.items():
        if n > 1:
            report.add(shards.INDEX_FILE, f"key {k} listed {n} times")
    for k in sorted(set(found) - set(keys)):
        report.add(shards.INDEX_FILE, f"sample {k} (in {found[k][0]}) missing from the index")
    for k in sorted(set(keys) - set(found)):
        report.add(shards.INDEX_FILE, f"lists {k}, which no shard holds")
    for row in index:
        if row["key"] not in found:
            continue
        shard, meta = found[row["key"]]
        expect = {"shard": shard, "source": meta.get("source"), "n_frames": len(meta["frames"]),
                  "n_subjects": len(meta["subjects"]), "width": meta["frames"][0].get("width"),
                  "height": meta["frames"][0].get("height")}
        if row.get("n_pairs") is not None or meta.get("pairs") is not None:  # both absent before 2.1
            expect.update(shards.pair_summary(meta.get("pairs")))
        for col, value in expect.items():
            if row[col] != value:
                report.add(shards.INDEX_FILE, f"{row['key']}: {col} = {row[col]!r}, shard says {value!r}")


def _check_quarantine_and_manifest(dataset: str, n_samples: int, report: Report) -> None:
    try:
        q = shards.read_table(dataset, shards.QUARANTINE_FILE)
        missing = [c for c in shards.QUARANTINE_COLUMNS if c not in q.column_names]
        if missing:
            report.add(shards.QUARANTINE_FILE, f"missing columns {missing}")
    except Exception as e:  # noqa: BLE001
        report.add(shards.QUARANTINE_FILE, f"unreadable: {e}")
    try:
        manifest = shards.read_manifest(dataset)
    except Exception as e:  # noqa: BLE001
        report.add(shards.MANIFEST_FILE, f"unreadable: {e}")
        return
    if manifest.get("format_version") != shards.FORMAT_VERSION:
        report.add(shards.MANIFEST_FILE, f"format_version {manifest.get('format_version')!r}, "
                                         f"expected {shards.FORMAT_VERSION}")
    if not 0 <= manifest.get("format_minor", 0) <= shards.FORMAT_MINOR:
        report.add(shards.MANIFEST_FILE, f"format_minor {manifest.get('format_minor')!r}, this reader knows "
                                         f"{shards.FORMAT_VERSION}.0 to {shards.FORMAT_VERSION}.{shards.FORMAT_MINOR}")
    for fld in shards.MANIFEST_FIELDS:
        if fld not in manifest:
            report.add(shards.MANIFEST_FILE, f"missing field {fld!r}")
    samples = (manifest.get("counts") or {}).get("samples")
    if samples != n_samples:
        report.add(shards.MANIFEST_FILE, f"counts.samples = {samples!r}, shards hold {n_samples}")
