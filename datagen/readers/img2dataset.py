"""img2dataset output folders as input of the ``urls`` source: images already downloaded are read, not fetched again.

img2dataset (``img2dataset/writer.py``) writes one of three layouts in its output folder, shard ``NNNNN`` named with
``oom_shard_count`` digits (5 by default) and sample keys ``shard * 10**oom_sample_per_shard + row`` zero-padded:

- ``output_format=webdataset``: ``NNNNN.tar`` holding ``<key>.jpg`` (or ``.png`` / ``.webp``: ``encode_format``),
  ``<key>.txt`` (caption, when ``caption_col`` was given) and ``<key>.json`` (the input columns, ``url``,
  ``caption``, ``key``, ``status``, ``error_message``, ``width``, ``height``, ``original_width``,
  ``original_height``, ``exif``, ``sha256``); beside it ``NNNNN.parquet`` (the same metadata for every row, failed
  ones too, no image) and ``NNNNN_stats.json``;
- ``output_format=files``: a folder ``NNNNN/`` with the same three files per sample, and ``NNNNN.parquet``;
- ``output_format=parquet``: ``NNNNN.parquet`` with the metadata columns, ``txt`` and the image bytes in a column
  named after ``encode_format`` (``jpg``), null for rows that failed.

Only samples img2dataset stored (``status == "success"``) become units; the rows it failed to download are in its
own ``NNNNN_stats.json`` and metadata parquet, and are not fetched again here. A unit's sample key is the one a URL
list gives the same URL (``stable_key("url", url)``), so a URL list and its img2dataset output never make two
samples of one URL; its id names the folder (a hash of its full path) and img2dataset's key.

Listing (in the driver) reads only metadata: for tars, the ``NNNNN.parquet`` img2dataset wrote beside each (one
columnar read), and the download stage finds the members in the tar's headers, once per tar per actor; for tars
without that parquet (copied alone), the tar headers and the small ``.json`` / ``.txt`` members in the driver. For
parquet output, its columns without the image column; for files, the small files. An image is then one ranged
read. ``webdataset.WebDataset`` would read every image to list a tar, hence ``tarfile`` (seeking over members).
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
import threading
from collections import OrderedDict
from typing import Any

import pyarrow.parquet as pq

from datagen import files
from datagen.units import BadInput, Unit

IMAGE_EXTS = ("jpg", "png", "webp", "jpeg")  # img2dataset's encode_format values (jpeg: other webdatasets)
FORMATS = ("webdataset", "files", "parquet")  # img2dataset's output_format values this reads
_SHARD = re.compile(r"^\d+$")
# webdataset's split of a member name into key and extension: the extension starts at the first dot of the name
_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")


def detect_format(folder: str) -> str:
    """The ``output_format`` img2dataset wrote ``folder`` with: tars, shard folders, or parquet holding images."""
    fs, root = files.url_to_fs(folder)
    names = {i["name"].rstrip("/").rsplit("/", 1)[-1]: i["type"] for i in fs.ls(root, detail=True)}
    if any(n.endswith(".tar") for n in names):
        return "webdataset"
    if any(t == "directory" and _SHARD.match(n) for n, t in names.items()):
        return "files"
    if any(_image_column(fs, f"{root}/{n}") for n in names if n.endswith(".parquet")):
        return "parquet"
    raise ValueError(f"{folder}: no img2dataset output (NNNNN.tar, NNNNN/ folders or NNNNN.parquet with an image "
                     f"column); found {sorted(names)[:10]}")


def list_units(folder: str, keep_columns: tuple[str, ...] = ()) -> list[Unit]:
    """One unit per stored sample, in the order img2dataset stored them; a URL stored twice (LAION repeats URLs) is marked a
    duplicate of its first unit, as in a URL list. ``keep_columns``: metadata fields copied into provenance (the
    columns img2dataset kept with ``save_additional_columns``, e.g. LAION's ``LICENSE``)."""
    fmt = detect_format(folder)
    fs, root = files.url_to_fs(folder)
    prefix = f"img2dataset:{hashlib.sha1(fs.unstrip_protocol(root).encode()).hexdigest()[:12]}"
    rows = {"webdataset": _tar_rows, "files": _files_rows, "parquet": _parquet_rows}[fmt](fs, root)
    first: dict[str, str] = {}
    units = []
    for shard, key, meta, caption, stored in rows:
        missing = [c for c in keep_columns if c not in meta]
        if missing:
            raise ValueError(f"{folder}/{shard}: sample {key} has no field {missing} (fields: {sorted(meta)})")
        uid = f"{prefix}:{key}"
        url = (meta.get("url") or "").strip()
        extra = {c: meta[c] for c in keep_columns}
        extra["img2dataset"] = {"shard": shard, "key": key, "original_size": [meta.get("original_width"),
                                                                             meta.get("original_height")]}
        units.append(Unit(uid, {"dataset": shard, "row": key, "url": url, "caption": caption, "extra": extra,
                                "duplicate_of": first.get(url) if url else None, "stored": stored}))
        if url:
            first.setdefault(url, uid)
    return units


def _image_column(fs, path: str) -> str | None:
    with fs.open(path, "rb") as f:
        names = pq.ParquetFile(f).schema_arrow.names
    return next((c for c in IMAGE_EXTS if c in names), None)


def _members(fs, root: str, suffix: str) -> list[str]:
    """Files of ``root`` ending in ``suffix``, sorted; a listing, not a glob (a ``[`` in the folder is a name)."""
    return sorted(p for p in fs.ls(root, detail=False) if p.endswith(suffix) and fs.isfile(p))


def _caption(text: str | None, meta: dict) -> str | None:
    return text if text is not None else meta.get("caption")


def _group(names_and_values) -> OrderedDict:
    """Members ``<key>.<ext>`` grouped by key, in order of first appearance."""
    groups: OrderedDict[str, dict[str, Any]] = OrderedDict()
    for name, value in names_and_values:
        m = _KEY_EXT.match(name)
        if m:
            groups.setdefault(m.group(1), {})[m.group(2).lower()] = value
    return groups


def _rows_of(shard: str, groups: OrderedDict, read_small, locate) -> list:
    """(shard, key, metadata, caption, where the image is) per sample; only stored samples are in tars/folders."""
    rows = []
    for key, members in groups.items():
        meta = json.loads(read_small(members["json"])) if "json" in members else {}
        text = read_small(members["txt"]).decode("utf-8") if "txt" in members else None
        ext = next((e for e in IMAGE_EXTS if e in members), None)
        rows.append((shard, key, meta, _caption(text, meta), locate(members[ext]) if ext else None))
    return rows


def _tar_rows(fs, root: str) -> list:
    rows = []
    for path in _members(fs, root, ".tar"):
        url, shard = fs.unstrip_protocol(path), path.rsplit("/", 1)[-1]
        meta_path = path[:-len(".tar")] + ".parquet"
        if fs.exists(meta_path):  # img2dataset's metadata of the shard: the stored rows are status == success
            with fs.open(meta_path, "rb") as f:
                metas = pq.read_table(f).to_pylist()
            rows += [(shard, m["key"], m, m.get("caption"), {"format": "webdataset", "path": url, "key": m["key"]})
                     for m in metas if m.get("status") == "success"]
            continue
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:  # "r:" seeks over the images
            groups = _group((m.name, m) for m in tar if m.isfile())
            rows += _rows_of(shard, groups, lambda m: tar.extractfile(m).read(),
                             lambda m: {"format": "webdataset", "path": url, "offset": m.offset_data, "size": m.size})
    return rows


def _files_rows(fs, root: str) -> list:
    rows = []
    for folder in sorted(p for p in fs.ls(root) if _SHARD.match(p.rsplit("/", 1)[-1]) and fs.isdir(p)):
        groups = _group((p.rsplit("/", 1)[-1], p) for p in sorted(fs.ls(folder)))
        rows += _rows_of(folder.rsplit("/", 1)[-1], groups, fs.cat_file,
                         lambda p: {"format": "files", "path": fs.unstrip_protocol(p)})
    return rows


def _parquet_rows(fs, root: str) -> list:
    rows = []
    for path in _members(fs, root, ".parquet"):
        shard = path.rsplit("/", 1)[-1]
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            column = next((c for c in IMAGE_EXTS if c in pf.schema_arrow.names), None)
            if column is None:
                continue  # a metadata parquet of another layout
            table = pf.read(columns=[c for c in pf.schema_arrow.names if c != column])
            sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]
        places = [(g, i) for g, n in enumerate(sizes) for i in range(n)]
        for (group, index), meta in zip(places, table.to_pylist()):
            if meta.get("status", "success") != "success":
                continue
            stored = {"format": "parquet", "path": fs.unstrip_protocol(path), "column": column,
                      "row_group": group, "index": index}
            rows.append((shard, str(meta.get("key", f"{shard}:{group}:{index}")), meta,
                         _caption(meta.get("txt"), meta), stored))
    return rows


class StoredImages:
    """Reads the image bytes of a listed sample; thread-safe (the download stage reads a batch on a thread pool).
    A parquet row group, or the member index of a tar listed from its metadata parquet, is read once for all its
    samples: the last ``cache`` of each are kept, read under a lock so threads asking for the same one wait for
    one read instead of each reading it."""

    def __init__(self, cache: int = 2):
        self.cache = cache
        self._groups: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    def read(self, stored: dict | None, name: str) -> bytes:
        if stored is None:
            raise BadInput("missing_image", f"{name}: img2dataset sample without an image member")
        try:
            if stored["format"] == "webdataset":
                offset, size = (stored["offset"], stored["size"]) if "offset" in stored else self._member(stored, name)
                with files.open_url(stored["path"]) as f:
                    f.seek(offset)
                    data = f.read(size)
                if len(data) != size:
                    raise BadInput("truncated", f"{name}: {len(data)} of {size} bytes in {stored['path']}")
                return data
            if stored["format"] == "files":
                with files.open_url(stored["path"]) as f:
                    return f.read()
            data = self._column(stored["path"], stored["row_group"], stored["column"])[stored["index"]].as_py()
        except FileNotFoundError:
            raise BadInput("missing_file", f"{name}: {stored['path']}") from None
        if data is None:
            raise BadInput("missing_image", f"{name}: null {stored['column']} in {stored['path']}")
        return data

    def _member(self, stored: dict, name: str) -> tuple[int, int]:
        images = self._cached(("tar", stored["path"]), lambda: _tar_images(stored["path"]))
        if stored["key"] not in images:
            raise BadInput("missing_image", f"{name}: no image of key {stored['key']} in {stored['path']}")
        return images[stored["key"]]

    def _column(self, path: str, group: int, column: str):
        def read():
            with files.open_url(path) as f:
                return pq.ParquetFile(f).read_row_group(group, columns=[column]).column(0)
        return self._cached((path, group, column), read)

    def _cached(self, key: tuple, read):
        with self._lock:
            if key not in self._groups:
                self._groups[key] = read()
                while len(self._groups) > self.cache:
                    self._groups.popitem(last=False)
            self._groups.move_to_end(key)
            return self._groups[key]


def _tar_images(url: str) -> dict[str, tuple[int, int]]:
    """key → (offset, size) of each image member of a tar, from its headers (seeking over the data)."""
    with files.open_url(url) as f, tarfile.open(fileobj=f, mode="r:") as tar:
        groups = _group((m.name, m) for m in tar if m.isfile())
    found = {}
    for key, members in groups.items():
        ext = next((e for e in IMAGE_EXTS if e in members), None)
        if ext:
            found[key] = (members[ext].offset_data, members[ext].size)
    return found
