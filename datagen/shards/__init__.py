"""Shard format v2.1 (the contract written out in docs/format.md): samples, their WebDataset encoding,
the size-capped atomic shard writer, and the dataset-level files (index, quarantine, manifest).

A dataset directory holds ``shards/<source>-<NNNNNN>.tar``, ``index.parquet``, ``quarantine.parquet``
and ``manifest.json``. Every path here may be a local path or an fsspec URL (s3://, gs://, ...).
v2 changed only the dataset files: ``index.parquet`` and ``quarantine.parquet`` are folders of parquet files
of one schema (a run appends its own file instead of rewriting millions of rows); ``pyarrow.parquet.read_table``
and every parquet dataset reader read such a folder as one table. Samples (``meta.json`` version 1) are as in v1.

CLI: ``python -m datagen.shards validate|stats|view DIR``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import fsspec
import fsspec.config
import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 (pa.compute)
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import webdataset as wds
from PIL import Image

from datagen import files

# A dataset is written by many processes at once (writers on every node, the driver), so what one process listed
# is stale a moment later: object-store clients must not cache listings (s3fs and gcsfs do by default). fsspec
# applies these defaults to every filesystem made in a process that imports this module; a config may override.
for _protocol in ("s3", "gs", "gcs"):
    fsspec.config.conf.setdefault(_protocol, {}).setdefault("use_listings_cache", False)

FORMAT_VERSION = 2  # the dataset layout (manifest.json); v2: index/quarantine are folders of parquet files
# Additive changes within a version (manifest.json ``format_minor``, 0 when absent); readers of 2.x read 2.0 data.
# 2.1: per-pair measures (meta.json ``pairs``, index ``n_pairs``, ``pair_identity_min``, ``pair_change_min``);
# 2.2: meta.json's ``sha256`` of the sample's other files
FORMAT_MINOR = 2
SAMPLE_VERSION = 1  # meta.json of a sample
KINDS = ("video", "objaverse", "image", "router")
SHARDS_DIR = "shards"
INDEX_FILE = "index.parquet"
QUARANTINE_FILE = "quarantine.parquet"
MANIFEST_FILE = "manifest.json"
LEDGER_DIR = "_ledger"  # the pipelines' resume ledger (pipelines/ledger.py), one folder per source
INDEX_COLUMNS = (
    "key", "shard", "source", "n_frames", "n_subjects", "width", "height", "caption",
    "subject_area_min", "subject_area_max",
)
QUARANTINE_COLUMNS = ("unit_id", "stage", "reason", "detail")
SCORES = ("det", "match")  # the per-stage scores a sample may carry: index columns score_<name>, one schema
PAIR_COLUMNS = ("n_pairs", "pair_identity_min", "pair_change_min")  # 2.1: summary of meta.json ``pairs``
MANIFEST_FIELDS = (
    "format_version", "config", "config_hash", "code_version", "models", "synthetic_models", "counts",
    "start_time", "end_time",
)
SHARD_NAME = re.compile(r"^(?P<source>[a-z0-9_]+)-(?P<number>\d{6})\.tar$")
FRAME_FILE = re.compile(r"^frame\.(?P<j>\d+)\.jpg$")
MASK_FILE = re.compile(r"^mask\.(?P<j>\d+)\.(?P<i>\d+)\.png$")
DEFAULT_MAX_SHARD_BYTES = 1_000_000_000
# A file being written is ``.<final name>.anystory-tmp-<8 hex digits>`` beside it, renamed when whole: a name no
# user file has, so the clean-up of killed runs' leftovers never takes a user's ``holiday.jpg.tmp-0badcafe``.
TMP_SUFFIX = ".anystory-tmp-"
TMP_NAME = re.compile(r"^\..+\.anystory-tmp-[0-9a-f]{8}$")


@dataclass
class Frame:
    """One RGB frame (H×W×3 uint8) with its caption and source fields (``time_s`` or ``view``)."""

    image: np.ndarray
    caption: str = ""
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])


@dataclass
class Subject:
    """One subject identity across the frames of a sample.

    ``masks[j]`` is the H×W boolean instance mask in frame j (absent where the subject is not in frame j);
    ``boxes[j]`` its [x0, y0, x1, y1] pixel box (derived from the mask when not given).
    ``fields`` holds source extras written into meta.json, e.g. ``{"reference": "target_crop"}``.
    """

    id: int
    phrase: str
    masks: dict[int, np.ndarray] = field(default_factory=dict)
    boxes: dict[int, list[float]] = field(default_factory=dict)
    det_score: float | None = None
    match_score: float | None = None
    fields: dict[str, Any] = field(default_factory=dict)

    def box(self, j: int) -> list[float]:
        if j in self.boxes:
            return [float(v) for v in self.boxes[j]]
        return mask_box(self.masks[j])


@dataclass
class Sample:
    """A group of frames of the same subjects (docs/format.md). ``scores`` become ``score_<name>`` index columns;
    ``pairs`` are the per-pair measures of ``datagen.labeling.pairs`` (one dict per subject seen in two frames)."""

    key: str
    source: str
    frames: list[Frame]
    subjects: list[Subject] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
    models: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    pairs: list[dict[str, Any]] | None = None  # None: not measured (see ``pairs_of``)


class FormatError(ValueError):
    """A sample or dataset that breaks the shard contract."""


def stable_key(prefix: str, identity: str, *parts: object) -> str:
    """Deterministic sample key: ``<prefix>-<sha1(identity)[:20]>[-<parts>]`` (no dots, safe in tar names)."""
    digest = hashlib.sha1(identity.encode("utf-8")).hexdigest()[:20]
    tail = "-".join(str(p) for p in parts)
    key = f"{prefix}-{digest}" + (f"-{tail}" if tail else "")
    return re.sub(r"[^A-Za-z0-9_-]", "_", key)


def mask_box(mask: np.ndarray) -> list[float]:
    """Tight [x0, y0, x1, y1] pixel box of a mask (x1, y1 exclusive)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise FormatError("empty mask has no box")
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


# ---------------------------------------------------------------------------------------------- codec


def _encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _encode_mask(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), "L").save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def pairs_of(sample: Sample) -> list[dict[str, Any]] | None:
    """meta.json's ``pairs``: the measured ones; ``[]`` when no subject is in two frames (nothing to measure, e.g.
    router samples); None when a sample with such subjects was not measured (the key is left out, as in 2.0)."""
    if sample.pairs is not None:
        return sample.pairs
    return None if any(len(s.masks) > 1 for s in sample.subjects) else []


def sample_meta(sample: Sample) -> dict[str, Any]:
    """The ``meta.json`` document of a sample."""
    frames = [
        {"caption": fr.caption, "width": fr.width, "height": fr.height, **fr.fields} for fr in sample.frames
    ]
    subjects = [
        {
            "id": s.id,
            "phrase": s.phrase,
            "boxes": {str(j): s.box(j) for j in sorted(set(s.masks) | set(s.boxes))},
            "det_score": s.det_score,
            "match_score": s.match_score,
            **s.fields,
        }
        for s in sample.subjects
    ]
    meta = {
        "version": SAMPLE_VERSION,
        "source": sample.source,
        "frames": frames,
        "subjects": subjects,
        "provenance": sample.provenance,
        "models": sample.models,
        "scores": sample.scores,
    }
    pairs = pairs_of(sample)
    if pairs is not None:
        meta["pairs"] = pairs
    return meta


def check_sample(sample: Sample) -> None:
    """Raise FormatError when a sample cannot be written as v1."""
    if not sample.key or "." in sample.key or "/" in sample.key:
        raise FormatError(f"bad key {sample.key!r}: must be non-empty, without dots or slashes")
    if sample.source not in KINDS:
        raise FormatError(f"{sample.key}: source {sample.source!r} not one of {KINDS}")
    if not sample.frames:
        raise FormatError(f"{sample.key}: no frames")
    unknown = sorted(set(sample.scores) - set(SCORES))
    if unknown:
        raise FormatError(f"{sample.key}: scores {unknown} not among the index's {SCORES}")
    ids = [s.id for s in sample.subjects]
    if len(set(ids)) != len(ids):
        raise FormatError(f"{sample.key}: duplicate subject ids {ids}")
    for fr in sample.frames:
        if fr.image.ndim != 3 or fr.image.shape[2] != 3:
            raise FormatError(f"{sample.key}: frame must be H×W×3, got {fr.image.shape}")
    frames_of = {s.id: set(s.masks) | set(s.boxes) for s in sample.subjects}
    for p in sample.pairs or []:
        a, b = p["frames"]
        if a == b or not {a, b} <= frames_of.get(p["subject"], set()):
            raise FormatError(f"{sample.key}: pair {p['subject']}@{p['frames']} is not a subject seen in two frames")
    for s in sample.subjects:
        for j, m in s.masks.items():
            if not 0 <= j < len(sample.frames):
                raise FormatError(f"{sample.key}: subject {s.id} has a mask for missing frame {j}")
            if m.shape != sample.frames[j].image.shape[:2]:
                raise FormatError(
                    f"{sample.key}: mask {j}.{s.id} is {m.shape}, frame is {sample.frames[j].image.shape[:2]}"
                )


def encode_sample(sample: Sample, jpeg_quality: int = 95) -> dict[str, Any]:
    """Sample → WebDataset dict (``__key__`` plus file name → bytes)."""
    check_sample(sample)
    out: dict[str, Any] = {"__key__": sample.key}
    for j, fr in enumerate(sample.frames):
        out[f"frame.{j}.jpg"] = _encode_jpeg(fr.image, jpeg_quality)
    for s in sample.subjects:
        for j, m in sorted(s.masks.items()):
            out[f"mask.{j}.{s.id}.png"] = _encode_mask(m)
    meta = {**sample_meta(sample), "sha256": {k: hashlib.sha256(v).hexdigest() for k, v in out.items() if k != "__key__"}}
    out["meta.json"] = json.dumps(meta, default=_json_default).encode("utf-8")
    return out


def corrupt_members(raw: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    """The files of a raw sample whose bytes differ from the ``sha256`` its meta.json records (format 2.1; a
    sample written before records none). A flipped byte in a JPEG still decodes: only this tells."""
    recorded = meta.get("sha256") or {}
    if not isinstance(recorded, dict):
        return ["meta.json"]
    return sorted(name for name, digest in recorded.items()
                  if not isinstance(raw.get(name), bytes) or hashlib.sha256(raw[name]).hexdigest() != digest)


def decode_image(data: bytes, mode: str = "RGB") -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert(mode))


def decode_sample(raw: dict[str, Any]) -> Sample:
    """WebDataset dict (raw bytes, as ``webdataset.WebDataset`` yields it) → Sample."""
    meta = json.loads(raw["meta.json"])
    if meta.get("version") != SAMPLE_VERSION:
        raise FormatError(f"{raw.get('__key__')}: meta version {meta.get('version')} != {SAMPLE_VERSION}")
    frames = []
    for j, fm in enumerate(meta["frames"]):
        fields_ = {k: v for k, v in fm.items() if k not in ("caption", "width", "height")}
        frames.append(Frame(decode_image(raw[f"frame.{j}.jpg"]), fm.get("caption", ""), fields_))
    subjects = []
    for sm in meta["subjects"]:
        masks = {}
        for j in range(len(frames)):
            name = f"mask.{j}.{sm['id']}.png"
            if name in raw:
                masks[j] = decode_image(raw[name], "L") > 127
        subjects.append(
            Subject(
                id=int(sm["id"]),
                phrase=sm["phrase"],
                masks=masks,
                boxes={int(j): b for j, b in sm.get("boxes", {}).items()},
                det_score=sm.get("det_score"),
                match_score=sm.get("match_score"),
                fields={k: v for k, v in sm.items() if k not in _SUBJECT_KEYS},
            )
        )
    return Sample(
        key=raw["__key__"],
        source=meta["source"],
        frames=frames,
        subjects=subjects,
        provenance=meta.get("provenance", {}),
        models=meta.get("models", {}),
        scores=meta.get("scores", {}),
        pairs=meta.get("pairs"),  # absent before 2.1
    )


_SUBJECT_KEYS = ("id", "phrase", "boxes", "det_score", "match_score")


def pair_summary(pairs: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The index's pair columns: how many pairs, the least identical pair's identity and the least changed pair's
    ``change_score`` (null without pairs; all null when not measured), so ``pair_change_min < 0.1`` finds the
    samples holding a near copy."""
    if pairs is None:
        return dict.fromkeys(PAIR_COLUMNS)
    return {
        "n_pairs": len(pairs),
        "pair_identity_min": min((float(p["identity"]) for p in pairs), default=None),
        "pair_change_min": min((float(p["change_score"]) for p in pairs), default=None),
    }


def index_row(sample: Sample, shard: str) -> dict[str, Any]:
    """One ``index.parquet`` row; ``subject_area_*`` are mask areas as fractions of their frame."""
    areas = [
        float(m.sum()) / m.size for s in sample.subjects for m in s.masks.values()
    ]
    first = sample.frames[0]
    row = {
        "key": sample.key,
        "shard": shard,
        "source": sample.source,
        "n_frames": len(sample.frames),
        "n_subjects": len(sample.subjects),
        "width": first.width,
        "height": first.height,
        "caption": first.caption,
        "subject_area_min": min(areas) if areas else None,
        "subject_area_max": max(areas) if areas else None,
    }
    row.update({f"score_{k}": float(v) for k, v in sample.scores.items()})
    row.update(pair_summary(pairs_of(sample)))
    return row


# --------------------------------------------------------------------------------------------- writer


def shard_name(source: str, number: int) -> str:
    return f"{source}-{number:06d}.tar"


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def _sync(f: Any) -> None:
    """Data on disk before the rename that publishes it: after a power cut a shard (or the ledger record
    naming it) is whole or absent, never a name over zero bytes."""
    f.flush()
    os.fsync(f.fileno())


def _sync_dir(path: str) -> None:
    """Make a rename in ``path`` durable (the directory entry is data too)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def engine_folders(dataset: str) -> list[str]:
    """The folders the engine writes into (and nowhere else under ``dataset``): its root (manifest, lock), the
    shards, the index and quarantine folders, and each source's ledger folder."""
    fs, root = fsspec.core.url_to_fs(dataset)
    ledger = f"{root}/{LEDGER_DIR}"
    sources = [p for p in fs.ls(ledger, detail=False) if fs.isdir(p)] if fs.isdir(ledger) else []
    return [root, *(f"{root}/{d}" for d in (SHARDS_DIR, INDEX_FILE, QUARANTINE_FILE, LEDGER_DIR)), *sources]


def remove_temporaries(dataset: str, subfolders: list[str] | None = None) -> list[str]:
    """Delete the half-written temporary files that killed runs left in the engine's own folders, and abort the
    multipart uploads they left dangling on S3 (invisible, but stored and billed until aborted).

    Only names the engine gives its temporaries (``TMP_NAME``), only in ``engine_folders`` (or, for another
    output such as an export, its root and the ``subfolders`` it writes): a user's files elsewhere under the
    output are never looked at. Only safe while no run writes into ``dataset`` (the runner
    holds the output lock). Returns their paths.
    """
    fs, root = fsspec.core.url_to_fs(dataset)
    aborted = _abort_uploads(fs, root)
    if not fs.isdir(root):
        return aborted
    folders = engine_folders(dataset) if subfolders is None else [root, *(f"{root}/{d}" for d in subfolders)]
    leftovers = [p for folder in folders if fs.isdir(folder)
                 for p in fs.ls(folder, detail=False) if TMP_NAME.match(p.rstrip("/").rsplit("/", 1)[-1])]
    for p in leftovers:
        fs.rm_file(p)
    return aborted + leftovers


def _abort_uploads(fs: fsspec.AbstractFileSystem, root: str) -> list[str]:
    """Abort the unfinished S3 multipart uploads under ``root``; ``upload <key>`` for each."""
    if not hasattr(fs, "call_s3"):  # only S3 has uploads that outlive their writer
        return []
    bucket, prefix, _ = fs.split_path(root)
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    aborted = []
    pages = {"IsTruncated": True}
    while pages.get("IsTruncated"):
        marker = {k: pages[n] for k, n in (("KeyMarker", "NextKeyMarker"), ("UploadIdMarker", "NextUploadIdMarker"))
                  if pages.get(n)}
        pages = fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix, **marker)
        for up in pages.get("Uploads", []):
            fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
            aborted.append(f"upload {bucket}/{up['Key']}")
    return aborted


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


class ShardWriter:
    """Writes encoded samples into tars of at most ``max_bytes`` each, named by ``allocate_name()``.

    A shard appears under its final name only when complete: it is written to a hidden temporary name
    beside it and renamed (local disk), or written locally and uploaded in one put (object stores, where
    a put is atomic; a shard above the client's multipart threshold is a multipart upload, completed or aborted,
    and one a kill left dangling is aborted by ``remove_temporaries``). ``before_publish`` (the runner's lease
    check) runs before each shard is published. ``close()`` returns ``{shard name: [keys]}`` for the shards it
    finished.
    """

    TAR_BLOCK = 512

    def __init__(
        self,
        shards_url: str,
        allocate_name: Callable[[], str],
        max_bytes: int = DEFAULT_MAX_SHARD_BYTES,
        before_publish: Callable[[], None] | None = None,
    ):
        self.fs, self.dir = fsspec.core.url_to_fs(shards_url)
        self.before_publish = before_publish
        self.local = _is_local(self.fs)
        self.fs.makedirs(self.dir, exist_ok=True)
        self.allocate_name = allocate_name
        self.max_bytes = max_bytes
        self.finished: dict[str, list[str]] = {}
        self._name: str | None = None
        self._tmp: str | None = None
        self._file: Any = None
        self._tar: tarfile.TarFile | None = None
        self._bytes = 0
        self._keys: list[str] = []

    def _size(self, encoded: dict[str, Any]) -> int:
        blocks = self.TAR_BLOCK
        return sum(
            blocks + -(-len(v) // blocks) * blocks for k, v in encoded.items() if not k.startswith("_")
        )

    def _open(self) -> None:
        self._name = self.allocate_name()
        if not SHARD_NAME.match(self._name):
            raise FormatError(f"bad shard name {self._name!r}")
        tmp_dir = self.dir if self.local else tempfile.gettempdir()
        self._tmp = os.path.join(tmp_dir, f".{self._name}{TMP_SUFFIX}{uuid.uuid4().hex[:8]}")
        self._file = open(self._tmp, "wb")
        # Members as webdataset's TarWriter writes them (USTAR, 0444, bigdata, mtime 0), but through tarfile's
        # seekable "w" mode: TarWriter opens "w|", whose stream buffer copies every byte once more (~15% slower).
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        self._bytes, self._keys = 0, []

    def _finish(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        _sync(self._file)
        self._file.close()
        final = join(self.dir, self._name)
        if self.before_publish:
            self.before_publish()
        if self.local:
            os.replace(self._tmp, final)
            _sync_dir(self.dir)
        else:
            self.fs.put_file(self._tmp, final)
            os.remove(self._tmp)
        self.finished[self._name] = self._keys
        self._tar = self._file = self._name = self._tmp = None

    def write(self, encoded: dict[str, Any]) -> str:
        size = self._size(encoded)
        if self._tar is not None and self._keys and self._bytes + size > self.max_bytes:
            self._finish()
        if self._tar is None:
            self._open()
        self._add_members(encoded)
        self._bytes += size
        self._keys.append(encoded["__key__"])
        return self._name

    def _add_members(self, encoded: dict[str, Any]) -> None:
        key = encoded["__key__"]
        for k in sorted(encoded):
            if k.startswith("_"):
                continue
            data = encoded[k]
            info = tarfile.TarInfo(f"{key}.{k}")
            info.size, info.mode, info.mtime = len(data), 0o444, 0
            info.uname = info.gname = "bigdata"
            self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> dict[str, list[str]]:
        self._finish()
        return self.finished

    def abort(self) -> None:
        """Drop the shard being written (its temp file) without publishing it."""
        if self._tar is not None:
            self._file.close()
            os.remove(self._tmp)
            self._tar = self._file = self._name = self._tmp = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
        else:
            self.abort()


# ---------------------------------------------------------------------------------- dataset-level files


def list_shards(dataset: str, source: str | None = None) -> list[str]:
    """Shard file names under ``<dataset>/shards`` (optionally of one source), sorted."""
    fs, path = fsspec.core.url_to_fs(join(dataset, SHARDS_DIR))
    if not fs.exists(path):
        return []
    names = []
    for p in fs.ls(path, detail=False):
        name = p.rstrip("/").rsplit("/", 1)[-1]
        m = SHARD_NAME.match(name)
        if m and (source is None or m["source"] == source):
            names.append(name)
    return sorted(names)


def pipeline_of(shard: str) -> str:
    """The pipeline source (video, objaverse, deepfashion2, coco, urls, ...) that wrote a shard: its name's prefix.
    A sample's ``source`` in meta and the index is its kind (video, objaverse, image, router)."""
    return SHARD_NAME.match(shard.rstrip("/").rsplit("/", 1)[-1])["source"]


def shard_urls(dataset: str, names: Iterable[str] | None = None) -> list[str]:
    names = list_shards(dataset) if names is None else names
    return [join(dataset, SHARDS_DIR, n) for n in names]


INDEX_SCHEMA = pa.schema([
    ("key", pa.string()), ("shard", pa.string()), ("source", pa.string()), ("n_frames", pa.int32()),
    ("n_subjects", pa.int32()), ("width", pa.int32()), ("height", pa.int32()), ("caption", pa.string()),
    ("subject_area_min", pa.float64()), ("subject_area_max", pa.float64()),
    *[(f"score_{n}", pa.float64()) for n in SCORES],
    # 2.1; rows of 2.0 files read as null through this schema
    ("n_pairs", pa.int32()), ("pair_identity_min", pa.float64()), ("pair_change_min", pa.float64()),
])
QUARANTINE_SCHEMA = pa.schema([(c, pa.string()) for c in (*QUARANTINE_COLUMNS, "source", "kind")])
_SCHEMAS = {INDEX_FILE: INDEX_SCHEMA, QUARANTINE_FILE: QUARANTINE_SCHEMA}


@contextmanager
def atomic_open(url: str, mode: str = "wb") -> Iterator[Any]:
    """Open ``url`` for writing so that readers see the old file or the whole new one, never a half.

    The temporary name is hidden (leading dot): parquet folder readers skip it."""
    fs, path = fsspec.core.url_to_fs(url)
    folder, name = path.rsplit("/", 1)
    fs.makedirs(folder, exist_ok=True)
    tmp = f"{folder}/.{name}{TMP_SUFFIX}{uuid.uuid4().hex[:8]}"
    with fs.open(tmp, mode) as f:
        yield f
        if _is_local(fs):
            _sync(f)
    if _is_local(fs):
        os.replace(tmp, path)
        _sync_dir(path.rsplit("/", 1)[0])
    else:
        fs.mv(tmp, path)


def _write_parquet(table: pa.Table, url: str) -> None:
    with atomic_open(url) as f:
        pq.write_table(table, f)


def _rows_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist([{c: r.get(c) for c in schema.names} for r in rows], schema=schema)


def _part_names(dataset: str, name: str) -> list[str]:
    """Stems of the parquet files of a dataset folder (listed, never globbed: paths may hold ``[``)."""
    fs, path = fsspec.core.url_to_fs(join(dataset, name))
    if not fs.isdir(path):
        return []
    files = (p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
    return sorted(f.removesuffix(".parquet") for f in files if f.endswith(".parquet") and not f.startswith("."))


def _replace_folder(dataset: str, name: str, table: pa.Table, stem: str) -> None:
    """Make the folder hold exactly one file (a whole rewrite, as tests and small tools do)."""
    fs, path = fsspec.core.url_to_fs(join(dataset, name))
    if fs.exists(path) and not fs.isdir(path):
        fs.rm(path)  # a v1 single-file table
    old = _part_names(dataset, name)
    _write_parquet(table, join(dataset, name, f"{stem}.parquet"))
    for s in old:
        if s != stem:
            fs.rm(f"{path}/{s}.parquet")


def write_index(dataset: str, rows: list[dict[str, Any]]) -> None:
    """The whole index from rows (one file); a pipeline run appends ``write_index_part`` files instead."""
    _replace_folder(dataset, INDEX_FILE, _rows_table(rows, INDEX_SCHEMA), "all")


def write_index_part(dataset: str, stem: str, table: pa.Table | list[dict[str, Any]]) -> None:
    if not isinstance(table, pa.Table):
        table = _rows_table(table, INDEX_SCHEMA)
    _write_parquet(table.cast(INDEX_SCHEMA), join(dataset, INDEX_FILE, f"{stem}.parquet"))


def index_parts(dataset: str) -> list[str]:
    return _part_names(dataset, INDEX_FILE)


def remove_index_part(dataset: str, stem: str) -> None:
    fs, path = fsspec.core.url_to_fs(join(dataset, INDEX_FILE, f"{stem}.parquet"))
    if fs.exists(path):
        fs.rm(path)


def filter_index_part(dataset: str, stem: str, drop_shards: set[str]) -> None:
    """Rewrite one index file without the rows of the given shards."""
    url = join(dataset, INDEX_FILE, f"{stem}.parquet")
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path):
        return
    table = pq.read_table(path, filesystem=fs, schema=INDEX_SCHEMA)
    keep = pa.compute.invert(pa.compute.is_in(table["shard"], pa.array(sorted(drop_shards), pa.string())))
    _write_parquet(table.filter(keep), url)


def merge_index_parts(dataset: str, stems: list[str], into: str) -> None:
    """Write the rows of several index files as one file ``into`` (the caller deletes the old ones)."""
    fs, base = fsspec.core.url_to_fs(join(dataset, INDEX_FILE))
    paths = [f"{base}/{s}.parquet" for s in stems if fs.exists(f"{base}/{s}.parquet")]
    if paths:
        table = pads.dataset(paths, schema=INDEX_SCHEMA, format="parquet", filesystem=fs).to_table()
        _write_parquet(table, join(dataset, INDEX_FILE, f"{into}.parquet"))


def write_quarantine(dataset: str, rows: list[dict[str, Any]] | pa.Table, source: str = "all") -> None:
    """One source's quarantine file (rows replace that source's earlier ones)."""
    table = rows if isinstance(rows, pa.Table) else _rows_table(rows, QUARANTINE_SCHEMA)
    fs, path = fsspec.core.url_to_fs(join(dataset, QUARANTINE_FILE))
    if fs.exists(path) and not fs.isdir(path):
        fs.rm(path)  # a v1 single-file table
    _write_parquet(table.cast(QUARANTINE_SCHEMA), join(dataset, QUARANTINE_FILE, f"{source}.parquet"))


def read_table(dataset: str, name: str) -> pa.Table:
    """``index.parquet`` / ``quarantine.parquet`` (a folder of files since v2, a single file in v1) as one table."""
    fs, path = fsspec.core.url_to_fs(join(dataset, name))
    if fs.isdir(path):
        return pq.read_table(path, filesystem=fs, schema=_SCHEMAS.get(name))
    with fs.open(path, "rb") as f:
        return pq.read_table(f)


def write_manifest(dataset: str, manifest: dict[str, Any]) -> None:
    with atomic_open(join(dataset, MANIFEST_FILE), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True, default=_json_default)


def read_manifest(dataset: str) -> dict[str, Any]:
    fs, path = fsspec.core.url_to_fs(join(dataset, MANIFEST_FILE))
    with fs.open(path, "r") as f:
        return json.load(f)


# -------------------------------------------------------------------------------------------- reading


def open_shards(urls: Iterable[str]) -> Iterator[dict[str, Any]]:
    """``{"url", "stream"}`` per shard, opened by fsspec: webdataset's own opener (``gopen``) knows files, pipes
    and http but not ``s3://``; its tar stages read these streams as they read its own."""
    for url in urls:
        with files.open_url(url) as stream:  # local paths literally (a ``::`` in a folder is no URL chain)
            yield {"url": url, "stream": stream}


def iter_raw(urls: list[str]) -> Iterator[dict[str, Any]]:
    """Raw WebDataset samples (bytes values) of the given shard URLs, in order (local or any fsspec URL)."""
    yield from wds.tariterators.group_by_keys(wds.tariterators.tar_file_expander(open_shards(urls)))


def iter_samples(dataset: str) -> Iterator[Sample]:
    """Every sample of a dataset directory, decoded."""
    for raw in iter_raw(shard_urls(dataset)):
        yield decode_sample(raw)
