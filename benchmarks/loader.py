"""Training loader throughput against raw ``webdataset`` decoding of the same shards, measured in the same run.

- baseline: ``webdataset.WebDataset(urls).decode("rgb8")``: read and decode every frame and mask of each sample;
- ours: ``training.loader.SubjectStream`` at real sizes (SDXL buckets at 1024², ReferenceNet 512², CLIP 224²):
  pair choice, decoding the frames it uses, target resize/crop, routing masks, two augmented references per
  sample, collation. Both single-process (``num_workers=0``), so the ratio compares work, not parallelism.

- the same loader reading the same shards from a local S3 server (moto's, as the tests use) over HTTP against local
  disk: what streaming from a bucket costs per sample on top of the work (a real bucket adds network latency and
  bandwidth; this measures the client path: fsspec/s3fs requests, no page cache).

The loader does much more than decode (a 1024² target resize plus per subject a rotation and two resizes), so a
ratio below 1 is expected; what matters is samples/s per worker against the trainer's step time
(``benchmarks/train_step.py``): workers needed = step rate × batch / this rate.

    python benchmarks/loader.py [--samples 96] [--frames 2] [--width 1280 --height 960] [--batch 4]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import webdataset as wds

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from datagen import shards  # noqa: E402
from tests import s3_server  # noqa: E402
from tests.shard_factory import make_sample, write_dataset  # noqa: E402
from training.config import DataConfig  # noqa: E402
from training.loader import DataPosition, SubjectStream, open_sources  # noqa: E402

SDXL_ATTENTION_FACTORS = (2, 4)  # latent / 2 and / 4: SDXL's cross-attention grids (64² and 32² at 1024²)


def timed(fn) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = fn()
    return time.perf_counter() - t0, n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=96)
    p.add_argument("--frames", type=int, default=2)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=960)
    p.add_argument("--batch", type=int, default=4)
    args = p.parse_args()
    per_shard = 16
    groups = [[make_sample(f"b-{g}-{k}", n_frames=args.frames, n_subjects=2, size=(args.width, args.height),
                           seed=g * per_shard + k) for k in range(per_shard)]
              for g in range(-(-args.samples // per_shard))]
    root = write_dataset(tempfile.mkdtemp(prefix="bench-loader-"), groups)
    n = sum(len(g) for g in groups)
    urls = shards.shard_urls(root)

    def baseline() -> int:
        count = 0
        for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("rgb8"):
            count += all(isinstance(v, np.ndarray) for k, v in s.items() if k.endswith((".jpg", ".png")))
        return count

    def subject_stream(path: str) -> SubjectStream:
        cfg = DataConfig.model_validate({"sources": [{"path": path}], "batch_size": args.batch, "num_workers": 0,
                                         "round_samples": n, "shuffle_buffer": 64})
        return SubjectStream(open_sources(cfg), cfg, SDXL_ATTENTION_FACTORS, 0, DataPosition(1))

    stream = subject_stream(root)

    def ours(s: SubjectStream = stream) -> int:
        return sum(len(b["keys"]) for b in s.round_batches(0, 1, 0))

    def skip_only() -> int:  # what a resume pays per skipped batch: read and plan, no decoding
        assert not list(stream.round_batches(0, 1, 0, skip=n))
        return n

    baseline(), ours()  # warm the page cache and imports
    t_base, n_base = timed(baseline)
    t_ours, n_ours = timed(ours)
    t_skip, _ = timed(skip_only)
    mb = sum(os.path.getsize(u) for u in urls) / 1e6
    print(f"loader: {n} samples of {args.frames} frames {args.width}x{args.height}, 2 subjects, {mb:.0f} MB")
    print(f"  raw webdataset decode {n_base / t_base:8.1f} samples/s | SubjectStream {n_ours / t_ours:8.1f} "
          f"samples/s (batches of {args.batch}) | ratio {t_base / t_ours:.2f}x")
    print(f"  resume skip (read + plan, no decode) {n / t_skip:8.1f} samples/s | "
          f"{t_skip / t_base:.2f}x the time of raw decoding")

    server, moto = s3_server.start()
    os.environ.update(server.env())
    import fsspec

    remote = f"{server.bucket()}/ds"
    fsspec.filesystem("s3").put(f"{root}/", remote, recursive=True)
    from_s3 = subject_stream(remote)
    ours(from_s3)  # warm: client, connections
    t_s3, n_s3 = timed(lambda: ours(from_s3))
    t_disk, _ = timed(ours)
    moto.stop()
    print(f"  from a local S3 server {n_s3 / t_s3:8.1f} samples/s | from disk {n / t_disk:8.1f} samples/s | "
          f"S3/disk throughput ratio {t_disk / t_s3:.2f}x")


if __name__ == "__main__":
    main()
