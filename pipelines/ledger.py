"""Resume ledger: which units are finished, in which shards their samples are, and the dataset files.

Every writer batch leaves one *part* file, ``<out>/_ledger/<source>/<part>.json``, written after its shards
are in place: the units it handled with their outcome, the shards it wrote with their keys, and the index
rows of its samples. A rerun trusts a part only while all its shards exist, so:
- deleting a shard invalidates its part: the part's other shards are removed too and its units are redone
  (nothing is written twice);
- a shard that no part names is a leftover of a crash and is removed;
- ``index.parquet``, ``quarantine.parquet`` and the manifest counts are rebuilt from the valid parts, the
  latest outcome of a unit winning (so retried quarantined units replace their old failure).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import fsspec

from datagen import shards

log = logging.getLogger(__name__)

LEDGER_DIR = "_ledger"
KEPT, FILTERED, FAILED = "kept", "filtered", "failed"


@dataclass
class Part:
    name: str
    time: float
    run_id: str
    shards: dict[str, list[str]]
    units: list[dict[str, Any]]
    index: list[dict[str, Any]] = field(default_factory=list)
    node: str = ""  # the Ray node that wrote it (debugging a cluster run)

    def to_json(self) -> str:
        return json.dumps(
            {"time": self.time, "run_id": self.run_id, "node": self.node, "shards": self.shards,
             "units": self.units, "index": self.index}
        )


def _fs(out: str, source: str) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(shards.join(out, LEDGER_DIR, source))


def write_part(out: str, source: str, run_id: str, shard_keys: dict[str, list[str]],
               units: list[dict[str, Any]], index: list[dict[str, Any]], node: str = "") -> str:
    first = min(shard_keys) if shard_keys else "none"
    name = f"{first.removesuffix('.tar')}-{uuid.uuid4().hex[:12]}.json"
    part = Part(name, time.time(), run_id, shard_keys, units, index, node)
    with shards.atomic_open(shards.join(out, LEDGER_DIR, source, name), "w") as f:
        f.write(part.to_json())
    return name


def read_parts(out: str, source: str) -> list[Part]:
    fs, root = _fs(out, source)
    if not fs.exists(root):
        return []
    parts = []
    for path in sorted(fs.glob(f"{root}/*.json")):
        with fs.open(path, "r") as f:
            doc = json.load(f)
        parts.append(Part(path.rsplit("/", 1)[-1], doc["time"], doc["run_id"], doc["shards"], doc["units"],
                          doc.get("index", []), doc.get("node", "")))
    return sorted(parts, key=lambda p: (p.time, p.name))


def _remove_shard(out: str, name: str) -> None:
    fs, path = fsspec.core.url_to_fs(shards.join(out, shards.SHARDS_DIR, name))
    if fs.exists(path):
        fs.rm(path)


def reconcile(out: str, source: str) -> list[Part]:
    """Drop parts whose shards are gone (and their remaining shards) and shards no part names.

    Returns the valid parts, oldest first. A part whose keys repeat an earlier valid part's (a writer
    retried after a crash) is dropped the same way, so no key is ever in two shards.
    """
    fs, root = _fs(out, source)
    present = set(shards.list_shards(out, source))
    valid, seen_keys, named = [], set(), set()
    for part in read_parts(out, source):
        keys = [k for ks in part.shards.values() for k in ks]
        missing = [s for s in part.shards if s not in present]
        if missing or seen_keys.intersection(keys):
            why = f"shard {missing[0]} missing" if missing else "keys already written by an earlier part"
            log.warning("ledger: redoing the %d units of %s (%s)", len(part.units), part.name, why)
            for s in part.shards:
                if s in present:
                    _remove_shard(out, s)
                    present.discard(s)
            fs.rm(f"{root}/{part.name}")
            continue
        valid.append(part)
        seen_keys.update(keys)
        named.update(part.shards)
    for orphan in sorted(present - named):
        log.warning("ledger: removing %s, written by a run that stopped before recording it", orphan)
        _remove_shard(out, orphan)
    return valid


def latest_outcomes(parts: list[Part]) -> dict[str, dict[str, Any]]:
    """unit id → its latest record (parts are oldest first)."""
    latest: dict[str, dict[str, Any]] = {}
    for part in parts:
        for u in part.units:
            latest[u["unit_id"]] = u
    return latest


def done_units(parts: list[Part], retry_failed: bool) -> set[str]:
    return {
        uid for uid, u in latest_outcomes(parts).items() if not (retry_failed and u["status"] == FAILED)
    }


def summarize(parts: list[Part]) -> dict[str, Any]:
    """Counts of one source: units kept / filtered / failed by reason, samples, subject-level drops."""
    latest = latest_outcomes(parts)
    status = Counter(u["status"] for u in latest.values())
    by_reason = {
        kind: dict(sorted(Counter(f"{u['stage']}/{u['reason']}" for u in latest.values()
                                  if u["status"] == kind).items()))
        for kind in (FILTERED, FAILED)
    }
    drops: Counter = Counter()
    for u in latest.values():
        drops.update(u.get("drops", {}))
    return {
        "units": len(latest),
        "units_kept": status[KEPT],
        "units_filtered": status[FILTERED],
        "units_failed": status[FAILED],
        "samples": sum(len(p.index) for p in parts),
        "filtered": by_reason[FILTERED],
        "failed": by_reason[FAILED],
        "dropped": dict(sorted(drops.items())),
    }


def index_rows(parts: list[Part]) -> list[dict[str, Any]]:
    return [row for p in parts for row in p.index]


def quarantine_rows(source: str, parts: list[Part]) -> list[dict[str, Any]]:
    return [
        {"unit_id": uid, "stage": u["stage"], "reason": u["reason"], "detail": u.get("detail", ""),
         "source": source, "kind": u["status"]}
        for uid, u in sorted(latest_outcomes(parts).items())
        if u["status"] != KEPT
    ]


def sources(out: str) -> list[str]:
    fs, root = fsspec.core.url_to_fs(shards.join(out, LEDGER_DIR))
    if not fs.exists(root):
        return []
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False) if fs.isdir(p))
