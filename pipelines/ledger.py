"""Resume ledger: which units are finished, in which shards their samples are, and the dataset files.

Every writer batch leaves one *part*: its sample rows in ``<out>/index.parquet/<part>.parquet``, then (the
commit) its unit rows in ``<out>/_ledger/<source>/<part>.parquet`` — outcome, keys, the shards holding the
unit's samples. At the end of a run the loose parts are merged into one *segment* (same stem in both
directories), so a dataset of 10 M units is a few files per run, not one per batch.

The runner reads a source's ledger once into a ``Ledger`` (Arrow columns, never a Python row per unit);
reconcile, skip and finalize all use it. A part is trusted only while all its shards exist, so:
- deleting a shard invalidates its part: the part's other shards and its index rows go too and its units are
  redone (nothing is written twice);
- a part that repeats keys of an earlier part (a writer batch Ray retried after a crash) is dropped the same
  way; the writer itself turns a key another *unit* already wrote into that unit's ``write/duplicate_key``
  outcome (``KeyClaims``), so two units never loop on one key;
- shards, index files and loose parts that no committed part names are crash leftovers and are removed;
- the manifest counts and ``quarantine.parquet/<source>.parquet`` come from the latest outcome of each unit
  (a retried quarantined unit replaces its old failure).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from datagen import shards

log = logging.getLogger(__name__)

LEDGER_DIR = shards.LEDGER_DIR
KEPT, FILTERED, FAILED = "kept", "filtered", "failed"
SEGMENT = "seg"  # stem of a merged file: "<source>-seg-<id>"
PART_SCHEMA = pa.schema([
    ("part", pa.string()), ("time", pa.float64()), ("run_id", pa.string()), ("node", pa.string()),
    ("unit_id", pa.string()), ("status", pa.string()), ("stage", pa.string()), ("reason", pa.string()),
    ("detail", pa.string()), ("keys", pa.list_(pa.string())), ("shards", pa.list_(pa.string())),
    ("drops", pa.map_(pa.string(), pa.int64())),
])
# Values repeated across rows are read dictionary-encoded: 10 M rows stay small, and a test on them ("is this
# shard gone", "is this unit failed") is decided once per distinct value, not hashed per row.
_DICT = pa.dictionary(pa.int32(), pa.string())
_DICT_COLUMNS = ["part", "status", "stage", "reason", "shards.list.element", "drops.key_value.key"]
_READ_COLUMNS = ["part", "time", "unit_id", "status", "stage", "reason", "detail", "keys", "shards", "drops"]
READ_SCHEMA = pa.schema([
    ("part", _DICT), ("time", pa.float64()), ("unit_id", pa.string()), ("status", _DICT), ("stage", _DICT),
    ("reason", _DICT), ("detail", pa.string()), ("keys", pa.list_(pa.string())), ("shards", pa.list_(_DICT)),
    ("drops", pa.map_(_DICT, pa.int64())),
])


def _fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(url)


def _names(url: str, suffix: str) -> list[str]:
    """File names in a folder ending with ``suffix``. Listing, never glob: a user's path may hold ``[``."""
    fs, root = _fs(url)
    if not fs.exists(root):
        return []
    names = (p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))
    return sorted(n for n in names if n.endswith(suffix) and not n.startswith("."))


def _rm(url: str) -> None:
    fs, path = _fs(url)
    if fs.exists(path):
        fs.rm(path)


def _write(table: pa.Table, url: str) -> None:
    with shards.atomic_open(url) as f:
        pq.write_table(table, f)


class CorruptLedger(RuntimeError):
    """A ledger file that cannot be read (truncated, overwritten, not parquet): the run stops before any work."""


def _read(urls: list[str], schema: pa.Schema = READ_SCHEMA) -> pa.Table:
    """Many parquet files as one table, read by Arrow's threads (``READ_SCHEMA``: the columns a run needs).
    A file that cannot be read raises ``CorruptLedger`` naming it and the repair."""
    if not urls:
        return schema.empty_table()
    fs, _ = _fs(urls[0])
    paths = [_fs(u)[1] for u in urls]
    fmt = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(
        dictionary_columns=_DICT_COLUMNS if schema is READ_SCHEMA else []))
    try:
        return ds.dataset(paths, schema=schema, format=fmt, filesystem=fs).to_table()
    except (pa.ArrowException, OSError) as e:
        bad = next((p for p in paths if not _readable(fs, p, schema)), paths[0])
        raise CorruptLedger(
            f"ledger file {bad} cannot be read ({type(e).__name__}: {e}). Move it out of the output and rerun: "
            "the units it recorded are redone, and the shards and index rows only it named are removed as "
            "leftovers") from None


def _readable(fs: fsspec.AbstractFileSystem, path: str, schema: pa.Schema) -> bool:
    try:
        pq.read_table(path, filesystem=fs, schema=schema, columns=["unit_id"])
        return True
    except (pa.ArrowException, OSError):
        return False


def unit_record(unit_id: str, status: str, keys: list[str] = (), shard_names: Iterable[str] = (), stage: str = "",
                reason: str = "", detail: str = "", drops: dict[str, int] | None = None) -> dict[str, Any]:
    return {"unit_id": unit_id, "status": status, "keys": list(keys), "shards": sorted(set(shard_names)),
            "stage": stage, "reason": reason, "detail": detail, "drops": dict(drops or {})}


def write_part(out: str, source: str, run_id: str, units: list[dict[str, Any]], index: pa.Table | None,
               node: str = "") -> str:
    """Record one writer batch: its index rows, then its unit rows (the commit). Returns the part's stem."""
    written = sorted({s for u in units for s in u["shards"]})
    first = written[0].removesuffix(".tar") if written else f"{source}-none"
    name = f"{first}-{uuid.uuid4().hex[:12]}"
    if index is not None and index.num_rows:
        shards.write_index_part(out, name, index)
    now = time.time()
    rows = [{"part": name, "time": now, "run_id": run_id, "node": node, **u, "drops": list(u["drops"].items())}
            for u in units]
    _write(pa.Table.from_pylist(rows, schema=PART_SCHEMA), shards.join(out, LEDGER_DIR, source, f"{name}.parquet"))
    return name


SECTION_FILE = "manifest-section.json"  # the source's manifest section, kept beside its ledger


def read_section(out: str, source: str) -> dict[str, Any] | None:
    """The source's manifest section as its last run left it (None when it has none, or it cannot be read)."""
    fs, path = _fs(shards.join(out, LEDGER_DIR, source, SECTION_FILE))
    try:
        with fs.open(path, "r") as f:
            section = json.load(f)
    except (FileNotFoundError, ValueError):
        return None
    return section if isinstance(section, dict) else None


def write_section(out: str, source: str, section: dict[str, Any]) -> None:
    """Keep the source's section (models, ``synthetic_models``, counts) with its ledger: the manifest is rebuilt
    from these, so deleting or truncating ``manifest.json`` never loses what another source's samples are."""
    with shards.atomic_open(shards.join(out, LEDGER_DIR, source, SECTION_FILE), "w") as f:
        json.dump(section, f, indent=2, sort_keys=True)


def sources(out: str) -> list[str]:
    """The sources that have a ledger folder in ``out``."""
    fs, root = _fs(shards.join(out, LEDGER_DIR))
    if not fs.isdir(root):
        return []
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False) if fs.isdir(p))


@dataclass
class Ledger:
    """Every committed unit row of one source (Arrow, oldest first) and the files they came from."""

    out: str
    source: str
    rows: pa.Table
    files: dict[str, list[str]] = field(default_factory=dict)  # ledger file stem → the part names it holds
    _latest: Any = False  # row positions of each unit's latest outcome; None: every row (no unit twice)
    _present: set[str] = field(default_factory=set)  # shard files on disk
    _named: set[str] = field(default_factory=set)  # shards the committed rows name
    # Segments hold one row per unit (merging drops superseded rows), so only loose parts left by a crash, or
    # the parts of a run that retried failed units, can give a unit a second row.
    _may_repeat: bool = False

    @property
    def root(self) -> str:
        return shards.join(self.out, LEDGER_DIR, self.source)

    # ------------------------------------------------------------------------------------- reading

    @classmethod
    def read(cls, out: str, source: str) -> "Ledger":
        """Read the source's ledger once and reconcile it with the shards on disk."""
        ledger = cls(out, source, READ_SCHEMA.empty_table())
        if [n for n in _names(ledger.root, ".json") if n != SECTION_FILE]:  # reconciling with a ledger it cannot read would delete every shard
            raise ValueError(f"{ledger.root} holds a format v1 ledger (.json parts): write format v2 into a new `out`")
        stems = ledger._stems()
        ledger._may_repeat = any(not _is_segment(s) for s in stems)  # a run stopped before merging its parts
        ledger._load(stems)
        ledger._drop_orphans()
        return ledger

    def refresh(self, retried: bool) -> list[str]:
        """Add the parts written since ``read`` (only those are read) and reconcile them; ``retried``: the run
        redid units that had failed before (their new rows supersede old ones). Returns the new stems."""
        new = [s for s in self._stems() if s not in self.files]
        self._load(new)
        self._may_repeat |= retried
        self._drop_orphans()
        return new

    def _stems(self) -> list[str]:
        return [n.removesuffix(".parquet") for n in _names(self.root, ".parquet")]

    def _load(self, stems: list[str]) -> None:
        """Read these ledger files, drop loose parts a segment already holds, then reconcile what was read."""
        url = lambda s: shards.join(self.root, f"{s}.parquet")  # noqa: E731
        tables = []
        for s in (s for s in stems if _is_segment(s)):  # few and large: one read each, threads inside
            table = _read([url(s)])
            self.files[s] = sorted(_value_counts(table["part"]))
            tables.append(table)
        merged = {p for s, parts in self.files.items() if _is_segment(s) for p in parts}
        loose = []
        for s in (s for s in stems if not _is_segment(s)):
            if s in merged:  # a crash while merging: the segment was committed, its loose copy not yet deleted
                log.warning("ledger: removing %s, already merged into a segment", s)
                _rm(url(s))
                shards.remove_index_part(self.out, s)
            else:
                loose.append(s)
                self.files[s] = [s]
        # Loose parts are the batches of one run; a Ray retry of a writer batch shows as repeated keys among them.
        # (Segments were reconciled before merging, and the writer's KeyClaims checked new keys against them.)
        loose_rows = _read([url(s) for s in loose])
        table = pa.concat_tables([self.rows, *tables, loose_rows])
        bad = self._missing_shard_parts(pa.concat_tables([*tables, loose_rows]))
        bad.update(self._repeated_key_parts(loose_rows, bad))
        if bad:
            table = self._drop(table, bad)
        self.rows = table  # chunks kept: a refresh appends, never copies the old rows
        self._latest = False

    # ----------------------------------------------------------------------------------- reconcile

    def _missing_shard_parts(self, table: pa.Table) -> dict[str, str]:
        """Parts one of whose shards is gone → why (shard names are dictionary values: no per-row work)."""
        self._present = set(shards.list_shards(self.out, self.source))
        flat = pc.list_flatten(table["shards"]) if table.num_rows else pa.chunked_array([], _DICT)
        named = {v for ch in flat.chunks for v in ch.dictionary.to_pylist()}
        self._named |= named
        missing = named - self._present
        if not missing:
            return {}
        rows = table.filter(pc.list_value_length(table["shards"]).cast(pa.bool_()))
        pairs = _explode(rows, "shards")
        hit = pairs.filter(_isin(pairs["value"], missing))
        return {p: f"shard {v} missing" for p, v in zip(hit["part"].to_pylist(), hit["value"].to_pylist())}

    def _repeated_key_parts(self, table: pa.Table, bad: dict[str, str]) -> dict[str, str]:
        keys = _explode(table, "keys", extra=("time",))
        counts = keys.group_by("value").aggregate([("value", "count")])
        repeated = counts.filter(pc.greater(counts["value_count"], 1))["value"]
        if not len(repeated):
            return {}
        rows = keys.filter(pc.is_in(keys["value"], repeated)).to_pylist()
        claimed: dict[str, str] = {}
        out: dict[str, str] = {}
        by_part: dict[str, list[str]] = {}
        times: dict[str, float] = {}
        for r in rows:
            by_part.setdefault(str(r["part"]), []).append(r["value"])
            times[str(r["part"])] = r["time"]
        for part in sorted(by_part, key=lambda p: (times[p], p)):
            if part in bad:
                continue
            clash = [k for k in by_part[part] if claimed.get(k, part) != part]
            if clash:
                out[part] = f"key {clash[0]} already written by part {claimed[clash[0]]}"
                continue
            claimed.update({k: part for k in by_part[part]})
        return out

    def _drop(self, table: pa.Table, bad: dict[str, str]) -> pa.Table:
        """Remove the bad parts: their shards, index rows and ledger rows (rewriting a segment that holds one)."""
        is_bad = _isin(table["part"], bad)
        dropped = table.filter(is_bad)
        doomed = set(pc.list_flatten(dropped["shards"]).cast(pa.string()).to_pylist())
        sizes = _value_counts(dropped["part"])
        for part, why in sorted(bad.items()):
            n = sizes.get(part, 0)
            log.warning("ledger: dropping part %s of %d units (%s); units it alone held are redone", part, n, why)
        self._named -= doomed
        for s in sorted(doomed & self._present):
            _remove_shard(self.out, s)
            self._present.discard(s)
        for stem, parts in list(self.files.items()):
            hit = [p for p in parts if p in bad]
            if not hit:
                continue
            if not _is_segment(stem):
                shards.remove_index_part(self.out, stem)
                _rm(shards.join(self.root, f"{stem}.parquet"))
                del self.files[stem]
            else:  # rare: rewrite the segment without them (index first: a crash in between drops them again)
                shards.filter_index_part(self.out, stem, doomed)
                url = shards.join(self.root, f"{stem}.parquet")
                full = _read([url], PART_SCHEMA)
                _write(full.filter(pc.invert(pc.is_in(full["part"], pa.array(hit)))), url)
                self.files[stem] = [p for p in parts if p not in bad]
        return table.filter(pc.invert(is_bad))

    def _drop_orphans(self) -> None:
        """Shards and index files of this source that no committed part names: leftovers of a crash."""
        for orphan in sorted(self._present - self._named):
            log.warning("ledger: removing %s, written by a run that stopped before recording it", orphan)
            _remove_shard(self.out, orphan)
            self._present.discard(orphan)
        for stem in shards.index_parts(self.out):
            if stem.startswith(f"{self.source}-") and stem not in self.files:
                log.warning("ledger: removing index part %s, whose ledger part was never written", stem)
                shards.remove_index_part(self.out, stem)

    # --------------------------------------------------------------------------------------- state

    def _latest_rows(self) -> Any:
        """Positions of each unit's latest row (by part time), or None when no unit has two rows (the usual case:
        then nothing is copied). One hash pass over the unit ids."""
        if self._latest is False:
            n = self.rows.num_rows
            if not self._may_repeat or not n or pc.count_distinct(self.rows["unit_id"]).as_py() == n:
                self._latest = None
            else:
                codes = pc.dictionary_encode(self.rows["unit_id"].combine_chunks())
                idx = codes.indices.to_numpy()
                times = self.rows["time"].to_numpy()
                order = np.argsort(times, kind="stable")  # later rows win; within a time, file order
                best = np.full(len(codes.dictionary), -1, np.int64)
                np.maximum.at(best, idx[order], np.arange(len(order)))
                self._latest = pa.array(np.sort(order[best]))
        return self._latest

    def column(self, name: str) -> pa.Array:
        """A column over the latest row of each unit."""
        col = self.rows[name]
        rows = self._latest_rows()
        return col if rows is None else col.take(rows)

    def done(self, retry_failed: bool) -> pa.Array:
        """Unit ids whose work is finished (failed ones too, unless they are to be retried)."""
        ids = self.column("unit_id")
        return ids.filter(pc.invert(_isin(self.column("status"), [FAILED]))) if retry_failed else ids

    def kept_keys(self) -> pa.Array:
        return pc.list_flatten(self.column("keys"))

    def shard_numbers(self) -> list[int]:
        return [int(shards.SHARD_NAME.match(n)["number"]) for n in sorted(self._present)]

    def summarize(self) -> dict[str, Any]:
        """Counts of one source: units kept / filtered / failed by reason, samples, subject-level drops."""
        status = self.column("status")
        counts = _value_counts(status)
        by_reason = {}
        for kind in (FILTERED, FAILED):
            pick = _isin(status, [kind])
            names = pc.binary_join_element_wise(self.column("stage").filter(pick).cast(pa.string()),
                                                self.column("reason").filter(pick).cast(pa.string()), "/")
            by_reason[kind] = dict(sorted(_value_counts(names).items()))
        dropped: Counter = Counter()
        for ch in self.column("drops").chunks:  # map<dictionary, int64>: sum the values per dictionary entry
            keys, values = ch.keys, ch.items.to_numpy(zero_copy_only=False)
            sums = np.bincount(keys.indices.to_numpy(zero_copy_only=False), weights=values,
                               minlength=len(keys.dictionary))
            dropped.update({k: int(v) for k, v in zip(keys.dictionary.to_pylist(), sums) if v})
        return {
            "units": len(status),
            "units_kept": counts.get(KEPT, 0),
            "units_filtered": counts.get(FILTERED, 0),
            "units_failed": counts.get(FAILED, 0),
            "samples": int(pc.sum(pc.list_value_length(self.column("keys"))).as_py() or 0),
            "filtered": by_reason[FILTERED],
            "failed": by_reason[FAILED],
            "dropped": dict(sorted(dropped.items())),
        }

    def quarantine(self) -> pa.Table:
        """The quarantine rows of this source (latest outcome not kept)."""
        pick = pc.invert(_isin(self.column("status"), [KEPT]))
        cols = {c: self.column(c).filter(pick).cast(pa.string())
                for c in ("unit_id", "stage", "reason", "detail", "status")}
        n = len(cols["unit_id"])
        return pa.table({**{c: cols[c] for c in ("unit_id", "stage", "reason", "detail")},
                         "source": pa.array([self.source] * n, pa.string()), "kind": cols["status"]},
                        schema=shards.QUARANTINE_SCHEMA)

    # -------------------------------------------------------------------------------------- merging

    def merge_loose(self) -> None:
        """Merge the loose parts into one segment (index rows and ledger rows), then delete them."""
        self._drop_superseded()
        loose = sorted(s for s in self.files if not _is_segment(s))
        if not loose:  # even one: a loose part at the next start means "a run stopped", checked at O(dataset)
            return
        stem = f"{self.source}-{SEGMENT}-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}"
        shards.merge_index_parts(self.out, loose, stem)
        _write(_read([shards.join(self.root, f"{s}.parquet") for s in loose], PART_SCHEMA),
               shards.join(self.root, f"{stem}.parquet"))  # the commit of the merge
        parts = []
        for s in loose:
            _rm(shards.join(self.root, f"{s}.parquet"))
            shards.remove_index_part(self.out, s)
            parts += self.files.pop(s)
        self.files[stem] = parts

    def _drop_superseded(self) -> None:
        """Rewrite the segments that hold an outcome a later row replaced (a retried failure): only runs that
        retried units pay this, and only for the segments concerned."""
        latest = self._latest_rows()
        if latest is None:
            return
        old = np.ones(self.rows.num_rows, bool)
        old[latest.to_numpy()] = False
        stale = self.rows.filter(pa.array(old)).select(["part", "unit_id"])
        pairs = set(zip(stale["part"].to_pylist(), stale["unit_id"].to_pylist()))
        parts = {p for p, _ in pairs}
        for stem in [s for s in self.files if _is_segment(s) and parts.intersection(self.files[s])]:
            url = shards.join(self.root, f"{stem}.parquet")
            full = _read([url], PART_SCHEMA)
            tag = pc.binary_join_element_wise(full["part"], full["unit_id"], "\x00")
            drop = pc.is_in(tag, value_set=pa.array([f"{p}\x00{u}" for p, u in pairs], pa.string()))
            _write(full.filter(pc.invert(drop)), url)


def _is_segment(stem: str) -> bool:
    return f"-{SEGMENT}-" in stem


def _explode(table: pa.Table, column: str, extra: tuple[str, ...] = ()) -> pa.Table:
    """(part, value[, extra...]) for every element of a list column."""
    col = table[column].combine_chunks() if table.num_rows else pa.array([], table.schema.field(column).type)
    parents = pc.list_parent_indices(col)
    cols = {"part": table["part"].take(parents), "value": pc.list_flatten(col)}
    cols.update({c: table[c].take(parents) for c in extra})
    return pa.table(cols)


def _isin(col: pa.ChunkedArray, values: Iterable[str]) -> pa.ChunkedArray:
    """Per row: is the value among ``values``? On dictionary chunks decided once per dictionary entry."""
    value_set = pa.array(sorted(values), pa.string())
    out = []
    for ch in col.chunks:
        if pa.types.is_dictionary(ch.type):
            out.append(pc.is_in(ch.dictionary, value_set=value_set).take(ch.indices))
        else:
            out.append(pc.is_in(ch, value_set=value_set))
    return pa.chunked_array(out, pa.bool_())


def _value_counts(col: pa.ChunkedArray | pa.Array) -> dict[str, int]:
    counts: Counter = Counter()
    for ch in (col.chunks if isinstance(col, pa.ChunkedArray) else [col]):
        if pa.types.is_dictionary(ch.type):
            n = np.bincount(ch.indices.to_numpy(zero_copy_only=False), minlength=len(ch.dictionary))
            counts.update({v: int(c) for v, c in zip(ch.dictionary.to_pylist(), n) if c})
        elif len(ch):
            vc = pc.value_counts(ch)
            counts.update(dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist())))
    return dict(counts)


def _remove_shard(out: str, name: str) -> None:
    _rm(shards.join(out, shards.SHARDS_DIR, name))
