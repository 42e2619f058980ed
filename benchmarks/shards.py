"""Shard writer and reader throughput against plain baselines measured in the same run.

- writer: `datagen.shards.ShardWriter` (size cap, atomic rename, adjacency) vs plain `tarfile` writing the same
  member bytes (target ≥ 0.8×);
- reader: `datagen.shards.iter_samples` (decoded Sample objects) vs raw `webdataset` with `.decode("rgb8")`
  doing the same decoding, and our raw byte iterator vs `webdataset` bytes (target ≥ 0.9×).

    python benchmarks/shards.py [--samples 400] [--size 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tarfile
import tempfile
import time

import numpy as np
import webdataset as wds

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from datagen import shards  # noqa: E402
from tests.shard_factory import make_sample  # noqa: E402


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=400)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    docs = [shards.encode_sample(make_sample(f"k{i}", n_frames=3, n_subjects=2, size=(args.size, args.size),
                                             seed=i)) for i in range(args.samples)]
    total = sum(len(v) for d in docs for k, v in d.items() if not k.startswith("_"))
    cap = total // 4 + 1  # four shards
    tmp = tempfile.mkdtemp(prefix="bench-shards-")

    def ours():
        out = tempfile.mkdtemp(dir=tmp)
        numbers = iter(range(10**6))
        with shards.ShardWriter(out, lambda: shards.shard_name("bench", next(numbers)), cap) as w:
            for d in docs:
                w.write(d)

    def plain():
        out = tempfile.mkdtemp(dir=tmp)
        n, size, tar = 0, 0, None
        for d in docs:
            if tar is None or size > cap:
                if tar:
                    tar.close()
                tar, size, n = tarfile.open(os.path.join(out, f"plain-{n:06d}.tar"), "w"), 0, n + 1
            for k in sorted(d):
                if k == "__key__":
                    continue
                info = tarfile.TarInfo(f"{d['__key__']}.{k}")
                info.size = len(d[k])
                tar.addfile(info, io.BytesIO(d[k]))
                size += len(d[k])
        tar.close()

    t_plain, t_ours = best_of(plain, args.repeats), best_of(ours, args.repeats)
    mb = total / 1e6
    print(f"writer: {args.samples} samples, {mb:.1f} MB into 4 shards")
    print(f"  plain tarfile {mb / t_plain:8.1f} MB/s | ShardWriter {mb / t_ours:8.1f} MB/s | "
          f"ratio {t_plain / t_ours:.2f}x (target >= 0.8x)")

    dataset = os.path.join(tmp, "ds")
    numbers = iter(range(10**6))
    with shards.ShardWriter(shards.join(dataset, "shards"), lambda: shards.shard_name("bench", next(numbers)),
                            cap) as w:
        for d in docs:
            w.write(d)
    urls = shards.shard_urls(dataset)

    def raw_wds():
        return sum(1 for _ in wds.WebDataset(urls, shardshuffle=False, empty_check=False))

    def raw_ours():
        return sum(1 for _ in shards.iter_raw(urls))

    def decoded_wds():
        n = 0
        for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("rgb8"):
            n += sum(isinstance(v, np.ndarray) for v in s.values())
        return n

    def decoded_ours():
        return sum(len(s.frames) for s in shards.iter_samples(dataset))

    for label, base, mine in (("reader (bytes)", raw_wds, raw_ours), ("reader (decoded)", decoded_wds, decoded_ours)):
        t_base, t_mine = best_of(base, args.repeats), best_of(mine, args.repeats)
        print(f"{label}: webdataset {args.samples / t_base:8.1f} samples/s | ours {args.samples / t_mine:8.1f} "
              f"samples/s | ratio {t_base / t_mine:.2f}x (target >= 0.9x)")


if __name__ == "__main__":
    main()
