"""The retrieval index at 1 M subjects: build and query time, peak RSS, recall@10 against exact search.

Vectors are simulated as subject embeddings are structured: 1,000 categories (dogs, cars, ...), identities around
them, and several views of each identity around those (the neighbours a retrieval looks for), L2-normalised, at the
DINOv2-base width (768). They live in a float32 file memory-mapped like ``find_pairs``'s; the index is
``retrieval.SubjectIndex`` with its defaults at that size (IVF, √n lists, 8-bit scalar quantiser, nprobe 32,
re-rank of 4·k candidates on the exact vectors). Exact search over the file gives the truth for ``--truth``
queries. Queries are timed on ``--queries`` vectors (a retrieval run queries every subject once: the full time is
that rate times n).

    python benchmarks/retrieval.py               # 1 M vectors, d 768 (~3 GB of disk under --dir)
    python benchmarks/retrieval.py --n 100000
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datagen import retrieval  # noqa: E402

CHUNK = 50_000


def make_vectors(path: str, n: int, d: int, seed: int = 0) -> None:
    """Categories → identities (5 views each on average) → views, into an (n, d) float32 .npy file. Run in its own
    process, so the measured one holds only what retrieval holds."""
    rng = np.random.default_rng(seed)
    categories = rng.standard_normal((1000, d)).astype(np.float32)
    n_ids = max(1, n // 5)
    id_category = rng.integers(0, len(categories), n_ids)
    identities = np.lib.format.open_memmap(path + ".ids.npy", "w+", np.float32, (n_ids, d))
    for start in range(0, n_ids, CHUNK):
        identities[start:start + CHUNK] = rng.standard_normal((min(CHUNK, n_ids - start), d), np.float32)
    vectors = np.lib.format.open_memmap(path, "w+", np.float32, (n, d))
    views = rng.integers(0, n_ids, n)
    for start in range(0, n, CHUNK):
        ids = views[start:start + CHUNK]
        x = categories[id_category[ids]] + 0.8 * identities[ids] + 0.5 * rng.standard_normal((len(ids), d), np.float32)
        vectors[start:start + len(ids)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    vectors.flush()
    del identities
    os.remove(path + ".ids.npy")


def anon_gb() -> float:
    """The process's anonymous memory now (its heap: the index, batches), without page cache of mapped files."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:")) * 1024 / 1e9


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.zeros((len(queries), k), np.int64)
    for start in range(0, len(vectors), CHUNK):
        s = queries @ np.asarray(vectors[start:start + CHUNK]).T
        s_all = np.concatenate([best_s, s], 1)
        i_all = np.concatenate([best_i, np.arange(start, start + s.shape[1])[None].repeat(len(queries), 0)], 1)
        top = np.argpartition(-s_all, k, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(s_all, top, 1), np.take_along_axis(i_all, top, 1)
    return best_i


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--queries", type=int, default=20_000)
    ap.add_argument("--truth", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--make", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make:
        make_vectors(args.make, args.n, args.d)
        return
    base = tempfile.mkdtemp(prefix="retrieval-", dir=args.dir)
    try:
        t = time.perf_counter()
        path = os.path.join(base, "vectors.npy")
        subprocess.run([sys.executable, __file__, "--make", path, "--n", str(args.n), "--d", str(args.d)], check=True)
        vectors = np.load(path, mmap_mode="r")
        print(f"generated {args.n:,} × {args.d} vectors in {time.perf_counter() - t:.1f}s")
        p = retrieval.AnnParams()
        index = retrieval.SubjectIndex(args.d, args.n, p)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        anon0 = anon_gb()
        t0, c0 = time.perf_counter(), time.process_time()
        pick = np.sort(np.random.default_rng(0).choice(args.n, min(args.n, p.train_size), replace=False))
        if index.needs_training:
            index.train(np.asarray(vectors[pick]))
        t_train = time.perf_counter() - t0
        for start in range(0, args.n, 65_536):
            index.add(np.asarray(vectors[start:start + 65_536]))
        build, build_cpu = time.perf_counter() - t0, time.process_time() - c0
        anon_build = anon_gb()
        qs = np.random.default_rng(1).choice(args.n, args.queries, replace=False)
        t1, c1 = time.perf_counter(), time.process_time()
        found = []
        for start in range(0, len(qs), p.query_batch):
            found.append(index.search(np.asarray(vectors[qs[start:start + p.query_batch]]), args.k, vectors)[1])
        query, query_cpu = time.perf_counter() - t1, time.process_time() - c1
        ids = np.concatenate(found)
        truth = exact_top(vectors, np.asarray(vectors[qs[:args.truth]]), args.k)
        recall = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(ids[:args.truth], truth)])
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        kind = "exact (IndexFlatIP)" if index.exact else (
            f"IVF{index.index.nlist},SQ8 nprobe {index.index.nprobe}, re-rank {p.rerank}·k")
        print(f"index: {kind}; vectors {args.n:,} × {args.d}")
        print(f"build {build:.1f}s (train {t_train:.1f}s; cpu {build_cpu:.1f}s); query {args.queries:,} in {query:.1f}s "
              f"(cpu {query_cpu:.1f}s) = {args.queries / query:,.0f} queries/s → all {args.n:,} subjects in "
              f"{args.n / (args.queries / query) / 60:.1f} min")
        print(f"recall@{args.k} vs exact search on {args.truth} queries: {recall:.3f}")
        print(f"anonymous memory before the index {anon0:.2f} GB (interpreter, numpy, torch), after build "
              f"{anon_build:.2f} GB, after queries {anon_gb():.2f} GB; peak RSS "
              f"{rss / 1e9:.2f} GB counting the mapped vectors' page cache (before the index {rss0 / 1e9:.2f} GB); "
              "index codes "
              f"{args.n * args.d / 1e9:.2f} GB (SQ8: d bytes a vector); exact vectors on disk "
              f"{args.n * args.d * 4 / 1e9:.2f} GB, memory-mapped")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
