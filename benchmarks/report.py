"""The data-quality report at index scale: time and peak RSS of ``datagen.shards report`` at 100 k and 10 M rows.

The index is benchmarks/scale.py's simulated one (segments of 1 M units, 80 % kept, quarantine of the rest), with
the pair columns added (``n_pairs``, ``pair_identity_min``, ``pair_change_min``: random, a fifth of the rows
without pairs) and varied frame sizes, subject counts and captions so every histogram has work to do. The shards
are empty files, as in scale.py: the thumbnails' bounded reads find nothing and the page says so; their cost is
at most ``2 * THUMBS + CAMERA_OBJECTS`` shard reads at any scale. Each scale runs in a fresh process (its own peak
RSS).

    python benchmarks/report.py                  # 100 k and 10 M rows (~1 GB of disk under --dir)
    python benchmarks/report.py --large 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import scale  # noqa: E402
from datagen import shards  # noqa: E402
from datagen.shards import report  # noqa: E402


def make_dataset(out: str, n: int) -> None:
    rng = np.random.default_rng(0)
    os.makedirs(shards.join(out, shards.SHARDS_DIR), exist_ok=True)
    quarantine = []
    os.makedirs(shards.join(out, shards.INDEX_FILE), exist_ok=True)
    for s, first in enumerate(range(0, n, scale.SEGMENT_UNITS)):
        rows, index = scale.ledger_rows(first, min(scale.SEGMENT_UNITS, n - first), 1e9 + s)
        m = index.num_rows
        has = rng.random(m) < 0.8
        sizes = rng.choice([[640, 480], [1536, 864], [512, 512], [740, 500]], m)
        columns = {"width": pa.array(sizes[:, 0], pa.int32()), "height": pa.array(sizes[:, 1], pa.int32()),
                   "n_subjects": pa.array(rng.integers(1, 5, m), pa.int32()),
                   "subject_area_max": pa.array(rng.uniform(0.05, 0.7, m)),
                   "n_pairs": pa.array(np.where(has, rng.integers(1, 6, m), 0), pa.int32()),
                   "pair_identity_min": pa.array(rng.beta(8, 2, m), mask=~has),
                   "pair_change_min": pa.array(rng.beta(2, 5, m), mask=~has)}
        for name, values in columns.items():  # the writer's columns (null pair measures), given values
            index = index.set_column(index.schema.get_field_index(name), name, values)
        pq.write_table(index, shards.join(out, shards.INDEX_FILE, f"{scale.SOURCE}-{s:04d}.parquet"))
        kept = np.asarray(rows["status"]) == "kept"
        quarantine.append(rows.filter(pa.array(~kept)).select(list(shards.QUARANTINE_COLUMNS)))
    table = pa.concat_tables(quarantine)
    table = table.append_column("source", pa.array([scale.SOURCE] * len(table))).append_column(
        "kind", pa.array(["router"] * len(table)))
    shards.write_quarantine(out, table, scale.SOURCE)
    kept = int(n * 0.8)
    shards.write_manifest(out, {"format_version": shards.FORMAT_VERSION, "synthetic_models": False, "sources": {
        scale.SOURCE: {"counts": {"units_kept": kept, "units_filtered": int(n * 0.15),
                                  "units_failed": n - kept - int(n * 0.15)}}}})
    for k in range(-(-n // scale.UNITS_PER_PART)):
        open(shards.join(out, shards.SHARDS_DIR, shards.shard_name(scale.SOURCE, k)), "wb").close()


def measure(out: str) -> dict[str, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    size = report.write_report(out, shards.join(out, "report.html"))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rows = pq.ParquetDataset(shards.join(out, shards.INDEX_FILE)).read(columns=["key"]).num_rows  # after the RSS
    return {"report_s": wall, "report_cpu_s": cpu, "peak_rss_gb": rss / 1e9, "page_mb": size / 1e6, "rows": rows}


def run_scale(base: str, n: int) -> dict[str, float]:
    return scale.build_and_measure(__file__, make_dataset, os.path.join(base, f"ds-{n}"), n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", type=int, default=100_000)
    ap.add_argument("--large", type=int, default=10_000_000)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return
    base = tempfile.mkdtemp(prefix="report-", dir=args.dir)
    try:
        results = [run_scale(base, args.small), run_scale(base, args.large)]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"{'units':>12} {'index rows':>11} {'report s':>9} {'(cpu)':>7} {'peak RSS GB':>12} {'page MB':>8}")
    for r, n in zip(results, (args.small, args.large)):
        print(f"{n:>12,} {r['rows']:>11,} {r['report_s']:>9.1f} {r['report_cpu_s']:>7.1f} {r['peak_rss_gb']:>12.2f} "
              f"{r['page_mb']:>8.2f}")
    small, large = results
    print(f"index grew {large['rows'] / small['rows']:.0f}×: time {large['report_s'] / small['report_s']:.1f}×, "
          f"peak RSS {large['peak_rss_gb'] / small['peak_rss_gb']:.1f}×")


if __name__ == "__main__":
    main()
