"""Shard streams of the training loader: which raw samples each rank and DataLoader worker reads, in what order.

Every source (a dataset directory, optionally one shard prefix of it) has an infinite per-(rank, worker) shard
schedule: a seeded order per epoch split with ``webdataset.split_by_node`` and by worker, or shards drawn with
replacement (``webdataset.ResampledShards``, for multi-node runs where ranks must not wait on each other).
The mixed stream is cut into **rounds** of ``round_samples`` raw samples: round r takes a multinomial count from
each source by its weight and interleaves them in a seeded order. A round's content is a pure function of
(seed, rank, worker, r) plus the shard sizes in ``index.parquet``, so a resume opens round r directly (no IO for
earlier rounds) and replays at most one round.

A shard that breaks while read (truncated tar, unreadable file, fewer samples than the index says) is skipped
from that point with a warning and a count of the source's broken shards; the stream goes on with the next
shard. Only when more than ``max_broken_fraction`` of a source's shards are broken does the loader stop, naming
them (a stopped run would lose the steps since the last checkpoint; a quietly shrinking dataset would go
unnoticed). Which shards break, and where, is fixed by the files, so rounds stay reproducible.
"""

from __future__ import annotations

import itertools
import logging
import tarfile
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import webdataset as wds

from datagen import shards

log = logging.getLogger(__name__)
# what reading a broken shard raises: tarfile's errors (truncated), OSError (unreadable), the count check below
SHARD_ERRORS = (tarfile.TarError, OSError, EOFError, shards.FormatError)


class SyntheticDataError(RuntimeError):
    """A dataset built with tiny random models (``synthetic_models: true``) given to the trainer."""


class BrokenShardsError(RuntimeError):
    """More of a source's shards are broken than ``data.max_broken_fraction`` allows."""


@dataclass(frozen=True)
class SourceShards:
    """One source of the mix: its shard URLs with their sample counts (from the dataset's index)."""

    name: str
    urls: tuple[str, ...]
    sizes: tuple[int, ...]
    weight: float
    max_broken_fraction: float = 0.0
    broken: dict[int, str] = field(default_factory=dict, hash=False, compare=False)  # this process's count

    def shard_broke(self, k: int, read: int, error: str) -> None:
        """Count shard k as broken after ``read`` samples; warn, or raise past ``max_broken_fraction``."""
        if k not in self.broken:
            self.broken[k] = error
            log.warning("%s: broken after %d of %d samples, rest of the shard skipped (%s); broken shards of %s: "
                        "%d of %d", self.urls[k], read, self.sizes[k], error, self.name, len(self.broken),
                        len(self.urls))
        self.check_broken()

    def check_broken(self) -> None:
        if len(self.broken) > self.max_broken_fraction * len(self.urls) or len(self.broken) == len(self.urls):
            listed = "; ".join(f"{self.urls[i]}: {e}" for i, e in sorted(self.broken.items()))
            raise BrokenShardsError(f"{self.name}: {len(self.broken)} of {len(self.urls)} shards broken, more "
                                    f"than data.max_broken_fraction {self.max_broken_fraction}: {listed}")


def open_source(path: str, source: str | None, weight: float, allow_synthetic: bool,
                max_broken_fraction: float = 0.0) -> SourceShards:
    """List a dataset's shards and their sizes; refuse synthetic datasets unless ``allow_synthetic``."""
    name = f"{path}:{source}" if source else path
    try:
        manifest = shards.read_manifest(path)
    except FileNotFoundError as e:
        raise shards.FormatError(f"{name}: no {shards.MANIFEST_FILE}; cannot tell whether it is synthetic") from e
    if manifest.get("synthetic_models", True) and not allow_synthetic:
        raise SyntheticDataError(
            f"{name}: manifest says synthetic_models: true (built with tiny random models); "
            "its captions and masks are noise. Pass --allow-synthetic (data.allow_synthetic) for smoke runs only."
        )
    counts = {}
    for shard in shards.read_table(path, shards.INDEX_FILE).column("shard").to_pylist():
        counts[shard] = counts.get(shard, 0) + 1
    names = sorted(n for n in counts if (m := shards.SHARD_NAME.match(n)) and source in (None, m["source"]))
    if not names:
        raise shards.FormatError(f"{name}: no shards with samples")
    src = SourceShards(name, tuple(shards.shard_urls(path, names)), tuple(counts[n] for n in names), weight,
                       max_broken_fraction)
    # A shard the index lists but the folder lacks is known broken now: past the fraction, stop before training.
    present = set(shards.list_shards(path, source))
    for k, n in enumerate(names):
        if n not in present:
            src.broken[k] = f"missing: {shards.INDEX_FILE} lists {counts[n]} samples in it"
            log.warning("%s: %s", src.urls[k], src.broken[k])
    src.check_broken()
    return src


def seeded(*parts: int | str) -> np.random.Generator:
    """A generator seeded by ints and strings, the same in every process (``hash(str)`` is salted per process)."""
    return np.random.default_rng([zlib.crc32(p.encode()) if isinstance(p, str) else int(p) for p in parts])


def shard_schedule(src: SourceShards, seed: int, resampled: bool, role: int, workers: int) -> Iterator[int]:
    """Infinite sequence of shard indices of ``src`` read by this rank and worker ``role`` of ``workers``.

    Split mode: epoch e visits all shards in a seeded order shared by every rank, ``split_by_node`` keeps this
    rank's share, then every ``workers``-th from ``role`` (the role, not the DataLoader's worker id, because a
    resume rotates roles so the DataLoader's round robin continues where it stopped; see loader.py).
    """
    indices = list(range(len(src.urls)))
    if resampled:
        # ResampledShards seeds itself from rank*1000 + worker id; give it the role in place of the worker id.
        rank = wds.utils.pytorch_worker_info()[0]
        draws = wds.ResampledShards([str(i) for i in indices], seed=seed,
                                    worker_seed=lambda: rank * 1000 + role, deterministic=True)
        yield from (int(d["url"]) for d in draws)
        return
    for epoch in itertools.count():
        order = seeded(seed, epoch).permutation(indices).tolist()
        mine = list(itertools.islice(wds.split_by_node(order), role, None, workers))
        if not mine:
            rank, world = wds.utils.pytorch_worker_info()[:2]
            raise ValueError(
                f"{src.name}: {len(indices)} shards cannot be split over {world} ranks × {workers} workers "
                f"(rank {rank}, worker {role} gets none); set data.resampled: true or write smaller shards"
            )
        yield from mine


def locate(src: SourceShards, schedule: Iterator[int], n: int) -> tuple[int, int, Iterator[int]]:
    """Skip the first ``n`` samples of a schedule by shard sizes alone: (shard index, offset in it, rest)."""
    for k in schedule:
        if n < src.sizes[k]:
            return k, n, schedule
        n -= src.sizes[k]
    raise AssertionError("schedules are infinite")


def read_shard(src: SourceShards, k: int, start: int = 0) -> Iterator[dict[str, Any]]:
    """Raw samples ``start…`` of shard k, as many as the index says; a shard that breaks before is counted
    broken (``SourceShards.shard_broke``) and its remaining samples skipped."""
    url, size = src.urls[k], src.sizes[k]
    n = 0
    try:
        for n, raw in enumerate(shards.iter_raw([url]), 1):
            if n > start:
                yield raw
            if n == size:
                return
        raise shards.FormatError(f"index lists {size} samples, tar holds {n}")
    except SHARD_ERRORS as e:
        src.shard_broke(k, n, f"{type(e).__name__}: {e.args[0] if e.args else e}")  # tarfile adds file reprs


def source_samples(src: SourceShards, schedule: Iterator[int], start: int) -> Iterator[dict[str, Any]]:
    """Raw samples of a source from sample number ``start`` of its schedule on."""
    k, offset, rest = locate(src, schedule, start)
    yield from read_shard(src, k, offset)
    for k in rest:
        yield from read_shard(src, k)


def round_counts(weights: list[float], round_samples: int, seed: int, role: int, r: int) -> np.ndarray:
    """Samples taken from each source in round r (multinomial by weight, seeded per rank/worker/round)."""
    rank = wds.utils.pytorch_worker_info()[0]
    p = np.asarray(weights, float) / np.sum(weights)
    return seeded(seed, "mix", rank, role, r).multinomial(round_samples, p)


def round_samples(sources: list[SourceShards], seed: int, resampled: bool, round_size: int, role: int,
                  workers: int, r: int) -> Iterator[dict[str, Any]]:
    """The raw samples of round r for this rank and worker role: per-source counts interleaved in seeded order.

    (``webdataset.RandomMix`` draws from the global ``random`` module, so its streams cannot be replayed.)
    """
    weights = [s.weight for s in sources]
    done = sum((round_counts(weights, round_size, seed, role, q) for q in range(r)), np.zeros(len(sources), int))
    counts = round_counts(weights, round_size, seed, role, r)
    rank = wds.utils.pytorch_worker_info()[0]
    order = seeded(seed, "order", rank, role, r).permutation(np.repeat(np.arange(len(sources)), counts))
    streams = [
        source_samples(s, shard_schedule(s, seed + 1009 * i, resampled, role, workers), int(done[i]))
        if counts[i] else iter(())
        for i, s in enumerate(sources)
    ]
    for i in order:
        raw = next(streams[i])
        raw["__source__"] = sources[i].name
        yield raw
