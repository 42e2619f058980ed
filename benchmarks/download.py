"""Downloader throughput against a plain thread-pool ``urllib`` loop, same local server, same run.

- baseline: ``concurrent.futures.ThreadPoolExecutor`` + ``urllib.request.urlopen(url, timeout).read()``, then
  a PIL decode (the least any image pipeline does);
- ours: ``datagen.readers.download`` (``Fetcher`` + ``fetch_image``: header checks, chunked read under a deadline,
  retries, decode, size rule) on a pool of the same size.

Two lists: all good images, then the same with a share of URLs whose server drips the body (a byte chunk every
``--drip`` seconds: each read returns before the socket timeout, so only a deadline on the whole body ends it).
The server runs in a child process (``tests/image_server.py``) with ``--latency`` per request to mimic remote hosts.

    python benchmarks/download.py [--images 400] [--threads 32] [--latency 0.02] [--dripping 0.05] [--timeout 2]
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import os
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from datagen.readers.download import DownloadParams, Fetcher, fetch_image  # noqa: E402
from datagen.units import BadInput, Rejected  # noqa: E402
from tests.image_server import ImageServer  # noqa: E402


def photo(seed: int, side: int) -> bytes:
    """A smooth random image (JPEG of realistic size, not noise)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (side // 32, side // 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(small).resize((side, side), Image.BICUBIC).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def serve(images: dict[str, bytes], latency: float, drip: float, port: mp.Queue, stop: mp.Event) -> None:
    with ImageServer(images, latency_s=latency, drip_s=drip) as server:
        port.put(server.server_address[1])
        stop.wait()


def baseline(urls: list[str], threads: int, timeout: float) -> int:
    def one(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                data = r.read()
            Image.open(io.BytesIO(data)).convert("RGB").load()
            return True
        except Exception:  # noqa: BLE001 — the baseline only counts successes
            return False

    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(one, urls))


def ours(urls: list[str], threads: int, timeout: float) -> int:
    fetcher = Fetcher(DownloadParams(timeout_s=timeout, retries=0, threads=threads, min_side=0,
                                     allow_private_addresses=True))

    def one(url: str) -> bool:
        try:
            fetch_image(fetcher, url)
            return True
        except (BadInput, Rejected):
            return False

    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(one, urls))


def timed(fn, urls, threads, timeout) -> tuple[float, int]:
    t0 = time.perf_counter()
    landed = fn(urls, threads, timeout)
    return time.perf_counter() - t0, landed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--side", type=int, default=512)
    ap.add_argument("--latency", type=float, default=0.02, help="server delay per request (s)")
    ap.add_argument("--dripping", type=float, default=0.05, help="share of URLs with a dripping body")
    ap.add_argument("--drip", type=float, default=0.5, help="seconds between the dripping server's chunks")
    ap.add_argument("--timeout", type=float, default=2.0, help="timeout given to both (ours: whole attempt)")
    args = ap.parse_args()

    images = {f"{i}.jpg": photo(i, args.side) for i in range(args.images)}
    images["tiny.jpg"] = photo(0, 64)  # what the dripping server sends: ~2 KB, 64 bytes per chunk
    ctx = mp.get_context("spawn")
    port, stop = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=serve, args=(images, args.latency, args.drip, port, stop), daemon=True)
    proc.start()
    try:
        base = f"http://127.0.0.1:{port.get(timeout=60)}"
        clean = [f"{base}/good/{i}.jpg" for i in range(args.images)]
        n_drip = int(round(args.images * args.dripping))
        faulty = clean[n_drip:] + [f"{base}/drip/tiny.jpg?{k}" for k in range(n_drip)]
        kb = sum(len(v) for v in images.values()) / len(images) / 1024
        print(f"{args.images} images of {args.side}² (~{kb:.0f} KB), {args.threads} threads, server latency "
              f"{args.latency * 1000:.0f} ms, timeout {args.timeout:g} s")
        ours(clean[:20], args.threads, args.timeout)  # warm up: imports, connection paths
        for name, urls in (("good images", clean),
                           (f"{args.dripping:.0%} dripping bodies", faulty)):
            tb, nb = timed(baseline, urls, args.threads, args.timeout)
            to, no = timed(ours, urls, args.threads, args.timeout)
            rb, ro = nb / tb, no / to
            print(f"{name:22s} baseline {rb:7.1f} img/s ({nb} landed in {tb:5.2f} s)   ours {ro:7.1f} img/s "
                  f"({no} landed in {to:5.2f} s)   ratio ours/baseline {ro / rb:.2f}")
    finally:
        stop.set()
        proc.join(timeout=10)
        if proc.is_alive():
            proc.terminate()


if __name__ == "__main__":
    main()
