"""Driver cost at dataset scale: resume start-up and finalize at 100 k units against the same at 10 M.

Simulates a dataset written by earlier runs (no media): ledger segments of 1 M units each (the layout a finished
run leaves), the matching ``index.parquet`` files, one (empty) shard file per 256 units, 80 % kept / 15 %
filtered / 5 % failed. Then, in a fresh process per scale (so peak RSS is that scale's), measures what the
runner does:
- resume start-up: list the source's unit ids (a parquet list, read by Arrow), read + reconcile the ledger
  (``Ledger.read``: every shard checked), and pick the units still to do;
- finalize: a run's new work (10 loose parts of 256 units, the same at both scales) read, merged into a
  segment, counted, and the source's quarantine file written.
Prints seconds, peak RSS, and the 10 M / 100 k ratios against the 100× growth of the data.

    python benchmarks/scale.py                 # 100 k and 10 M (needs ~3 GB of disk under --dir)
    python benchmarks/scale.py --large 1000000 # a quicker check
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datagen import shards  # noqa: E402
from pipelines import ledger  # noqa: E402

SOURCE = "bench"
UNITS_PER_PART = 256
SEGMENT_UNITS = 1_000_000
NEW_PARTS = 10


def _strings(prefix: str, numbers: np.ndarray, width: int = 0) -> pa.Array:
    digits = pa.array(np.char.zfill(numbers.astype(str), width) if width else numbers.astype(str))
    return pc.binary_join_element_wise(pa.scalar(prefix), digits, "")


def _list(values: pa.Array, mask: np.ndarray) -> pa.Array:
    """One-element lists where ``mask``, empty lists elsewhere."""
    offsets = np.concatenate([[0], np.cumsum(mask)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values.filter(pa.array(mask)))


def ledger_rows(first: int, n: int, t: float, parts_prefix: str = "") -> tuple[pa.Table, pa.Table]:
    """Ledger rows and index rows of units ``first … first+n`` (256 a part, a part a shard)."""
    i = np.arange(first, first + n)
    part_no = i // UNITS_PER_PART
    shard = _strings(f"{SOURCE}-", part_no, 6)
    shard_tar = pc.binary_join_element_wise(shard, pa.scalar(".tar"), "")
    status = np.where(i % 20 < 16, ledger.KEPT, np.where(i % 20 < 19, ledger.FILTERED, ledger.FAILED))
    kept = status == ledger.KEPT
    keys = _strings("img-", i)
    reason = np.where(kept, "", np.where(status == ledger.FILTERED, "image_too_small", "http_404"))
    drops_mask = i % 3 == 0
    drop_offsets = np.concatenate([[0], np.cumsum(drops_mask)]).astype(np.int32)
    m = int(drops_mask.sum())
    rows = pa.table({
        "part": pc.binary_join_element_wise(shard, pa.scalar(f"-{parts_prefix}p"), ""),
        "time": pa.array(t + part_no * 1e-3),
        "run_id": pa.array(["r"] * n), "node": pa.array(["node-0"] * n),
        "unit_id": _strings("urls:3f2a9c0d1e7b:", i),
        "status": pa.array(status), "stage": pa.array(np.where(kept, "", "download")),
        "reason": pa.array(reason), "detail": pa.array(np.where(kept, "", "GET failed")),
        "keys": _list(keys, kept), "shards": _list(shard_tar, kept),
        "drops": pa.MapArray.from_arrays(pa.array(drop_offsets), pa.array(["filter/box_aspect"] * m),
                                         pa.array(np.ones(m, np.int64))),
    }, schema=ledger.PART_SCHEMA)
    index = pa.table({
        "key": keys.filter(pa.array(kept)), "shard": shard_tar.filter(pa.array(kept)),
        "source": pa.array(["router"] * int(kept.sum())),
        "n_frames": pa.array(np.ones(kept.sum(), np.int32)), "n_subjects": pa.array(np.full(kept.sum(), 2, np.int32)),
        "width": pa.array(np.full(kept.sum(), 640, np.int32)), "height": pa.array(np.full(kept.sum(), 480, np.int32)),
        "caption": pa.array(["two people walking a dog in a park"] * int(kept.sum())),
        "subject_area_min": pa.array(np.full(kept.sum(), 0.1)), "subject_area_max": pa.array(np.full(kept.sum(), 0.3)),
        "score_det": pa.array(np.full(kept.sum(), 0.5)), "score_match": pa.nulls(int(kept.sum()), pa.float64()),
        # router samples are one frame: no pairs
        "n_pairs": pa.array(np.zeros(kept.sum(), np.int32)),
        "pair_identity_min": pa.nulls(int(kept.sum()), pa.float64()),
        "pair_change_min": pa.nulls(int(kept.sum()), pa.float64()),
    }, schema=shards.INDEX_SCHEMA)
    return rows, index


def make_dataset(out: str, n: int) -> None:
    root = shards.join(out, ledger.LEDGER_DIR, SOURCE)
    os.makedirs(root, exist_ok=True)
    os.makedirs(shards.join(out, shards.SHARDS_DIR), exist_ok=True)
    for s, first in enumerate(range(0, n, SEGMENT_UNITS)):
        rows, index = ledger_rows(first, min(SEGMENT_UNITS, n - first), 1e9 + s)
        stem = f"{SOURCE}-{ledger.SEGMENT}-{s:04d}"
        pq.write_table(rows, f"{root}/{stem}.parquet")
        shards.write_index_part(out, stem, index)
    for k in range(-(-n // UNITS_PER_PART)):
        open(shards.join(out, shards.SHARDS_DIR, shards.shard_name(SOURCE, k)), "wb").close()
    listed = np.concatenate([np.arange(n), _new_first(n) + np.arange(NEW_PARTS * UNITS_PER_PART)])
    pq.write_table(pa.table({"id": _strings("urls:3f2a9c0d1e7b:", listed)}), shards.join(out, "list.parquet"))


def _new_first(n: int) -> int:
    """First unit of the new run: the next whole part (its shard number follows the last one)."""
    return -(-n // UNITS_PER_PART) * UNITS_PER_PART


def measure(out: str, n: int) -> dict[str, float]:
    """Runs in its own process: resume start-up, then a small run's finalize."""
    t0, c0 = time.perf_counter(), time.process_time()
    ids = pq.read_table(shards.join(out, "list.parquet"))["id"]
    state = ledger.Ledger.read(out, SOURCE)
    todo = pc.sum(pc.invert(pc.is_in(ids, value_set=state.done(retry_failed=False)))).as_py()
    startup, startup_cpu = time.perf_counter() - t0, time.process_time() - c0
    assert todo == NEW_PARTS * UNITS_PER_PART, todo

    # the run's new work: loose parts, with their shards and index rows, as writers leave them
    for k in range(NEW_PARTS):
        first = _new_first(n) + k * UNITS_PER_PART
        rows, index = ledger_rows(first, UNITS_PER_PART, 2e9 + k, parts_prefix="new")
        stem = rows["part"][0].as_py()
        shards.write_index_part(out, stem, index)
        pq.write_table(rows, shards.join(out, ledger.LEDGER_DIR, SOURCE, f"{stem}.parquet"))
        open(shards.join(out, shards.SHARDS_DIR, shards.shard_name(SOURCE, first // UNITS_PER_PART)), "wb").close()
    t1, c1 = time.perf_counter(), time.process_time()
    state.refresh(retried=False)
    state.merge_loose()
    counts = state.summarize()
    shards.write_quarantine(out, state.quarantine(), SOURCE)
    finalize, finalize_cpu = time.perf_counter() - t1, time.process_time() - c1
    assert counts["units"] == n + NEW_PARTS * UNITS_PER_PART, counts["units"]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {"units": n, "startup_s": startup, "startup_cpu_s": startup_cpu, "finalize_s": finalize,
            "finalize_cpu_s": finalize_cpu, "peak_rss_gb": rss / 1e9}


def build_and_measure(script: str, make, out: str, n: int, *child_args: str) -> dict[str, float]:
    """Build the simulated dataset of ``n`` units at ``out`` with ``make``, measure it with ``script --measure out
    ...`` in a fresh process (its peak RSS is the measurement's own; its last stdout line is the JSON result),
    then remove it."""
    t = time.perf_counter()
    make(out, n)
    made = time.perf_counter() - t
    proc = subprocess.run([sys.executable, script, "--measure", out, *child_args], capture_output=True, text=True,
                          check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["generate_s"] = made
    shutil.rmtree(out)
    return result


def run_scale(base: str, n: int) -> dict[str, float]:
    return build_and_measure(__file__, make_dataset, os.path.join(base, f"ds-{n}"), n, "--units", str(n))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", type=int, default=100_000)
    ap.add_argument("--large", type=int, default=10_000_000)
    ap.add_argument("--dir", default=None, help="where to build the simulated datasets (default: a temp dir)")
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    ap.add_argument("--units", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.units)))
        return
    base = tempfile.mkdtemp(prefix="scale-", dir=args.dir)
    try:
        small, large = run_scale(base, args.small), run_scale(base, args.large)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    growth = large["units"] / small["units"]
    print("wall seconds, and CPU seconds of the process (all threads; steadier on a shared machine)")
    print(f"{'units':>12} {'start-up s':>11} {'(cpu)':>7} {'finalize s':>11} {'(cpu)':>7} {'peak RSS GB':>12} "
          f"{'(generate s)':>13}")
    for r in (small, large):
        print(f"{r['units']:>12,} {r['startup_s']:>11.2f} {r['startup_cpu_s']:>7.2f} {r['finalize_s']:>11.2f} "
              f"{r['finalize_cpu_s']:>7.2f} {r['peak_rss_gb']:>12.2f} {r['generate_s']:>13.1f}")
    ratio = lambda k: large[k] / max(small[k], 1e-9)  # noqa: E731
    print(f"data grew {growth:.0f}×: start-up {ratio('startup_s'):.1f}× (cpu {ratio('startup_cpu_s'):.1f}×), finalize "
          f"{ratio('finalize_s'):.1f}× (cpu {ratio('finalize_cpu_s'):.1f}×), peak RSS {ratio('peak_rss_gb'):.1f}× "
          f"(≤ {growth:.0f}× is at most linear)")
    print(f"targets at {large['units']:,} units: start-up ≤ 60 s: {large['startup_s']:.1f} s; driver RSS ≤ 4 GB: "
          f"{large['peak_rss_gb']:.2f} GB")


if __name__ == "__main__":
    main()
