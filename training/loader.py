"""The training loader: webdataset-style generator stages over shard rounds, one batch per aspect bucket.

Per DataLoader worker (its *role*, see below) and round r::

    round_samples → shuffle (seeded) → plan_samples → bucket_batches → skip (resume) → realize + collate

Planning (pair choice, bucket, condition drop) reads only ``meta.json``; decoding and augmentation happen after
batching, so a resume skips batches of a round without decoding them.

Exact resume. ``torch.utils.data.DataLoader`` takes batch n from worker n mod W, and each stream here is a pure
function of (seed, rank, worker role, round). ``DataPosition`` records, per role, the (round, index) of the last
batch the trainer consumed and how many batches it consumed in all; a resumed DataLoader gives worker w the role
(w + consumed) mod W, so its round robin continues with the role that was next, and each role restarts at its
round and skips the batches it already gave.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset

from training.augment import collate, realize
from training.config import DataConfig
from training.plan import bucket_batches, plan_samples, sdxl_buckets
from training.streams import SourceShards, open_source, round_samples, seeded


@dataclass
class DataPosition:
    """How far the trainer has read: batches consumed, and per worker role the last (round, batch index)."""

    workers: int
    world_size: int = 1
    batches: int = 0
    last: dict[int, tuple[int, int]] = field(default_factory=dict)

    def consumed(self, position: tuple[int, int, int]) -> None:
        role, r, index = position
        self.batches += 1
        self.last[role] = (r, index)

    def start(self, role: int) -> tuple[int, int]:
        """(round, batches of it to skip) where role's stream resumes."""
        r, index = self.last.get(role, (0, -1))
        return r, index + 1

    def state_dict(self) -> dict[str, Any]:
        return {"workers": self.workers, "world_size": self.world_size, "batches": self.batches,
                "last": {str(k): list(v) for k, v in self.last.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state["workers"], state["world_size"]) != (self.workers, self.world_size):
            raise ValueError(
                f"resume needs the same data.num_workers and number of processes as the run it resumes "
                f"(saved {state['workers']} workers × {state['world_size']} processes, now {self.workers} × "
                f"{self.world_size})"
            )
        self.batches = state["batches"]
        self.last = {int(k): tuple(v) for k, v in state["last"].items()}

    @classmethod
    def from_state(cls, state: dict[str, Any], workers: int, world_size: int) -> "DataPosition":
        position = cls(workers, world_size)
        position.load_state_dict(state)
        return position


class SubjectStream(IterableDataset):
    """Infinite stream of collated batches for this rank; each batch carries its ``position`` (role, round, index)."""

    def __init__(self, sources: list[SourceShards], cfg: DataConfig, factors: tuple[int, ...], seed: int,
                 position: DataPosition):
        self.sources, self.cfg, self.factors, self.seed, self.position = sources, cfg, tuple(factors), seed, position
        self.broken_samples: Counter = Counter()  # per source, in this process (warned as they come)
        aug = cfg.augment
        self.buckets = [tuple(b) for b in aug.buckets] if aug.buckets else sdxl_buckets(
            aug.resolution, aug.bucket_step, aug.max_aspect)

    def round_batches(self, role: int, workers: int, r: int, skip: int = 0) -> Iterator[dict[str, Any]]:
        cfg, aug = self.cfg, self.cfg.augment
        rank = wds.utils.pytorch_worker_info()[0]
        raws = round_samples(self.sources, self.seed, cfg.resampled, cfg.round_samples, role, workers, r)
        raws = wds.shuffle(cfg.shuffle_buffer, cfg.shuffle_buffer, rng=random.Random(f"{self.seed}:{rank}:{role}:{r}"))(raws)
        plans = plan_samples(raws, aug, self.buckets, seeded(self.seed, "plan", rank, role, r), self.broken_samples)
        n = 0
        for n, group in enumerate(bucket_batches(plans, cfg.batch_size), 1):
            if n <= skip:
                continue
            batch = collate([realize(p, aug, self.factors) for p in group], aug, self.factors)
            batch["position"] = (role, r, n - 1)
            yield batch
        if n == 0:
            raise ValueError(f"round {r} of worker {role} gave no batch of {cfg.batch_size}: "
                             f"raise data.round_samples ({cfg.round_samples})")

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        role = (worker + self.position.batches) % workers
        start, skip = self.position.start(role)
        for r in itertools.count(start):
            yield from self.round_batches(role, workers, r, skip if r == start else 0)


def open_sources(cfg: DataConfig) -> list[SourceShards]:
    return [open_source(s.path, s.source, s.weight, cfg.allow_synthetic, cfg.max_broken_fraction) for s in cfg.sources]


def make_loader(cfg: DataConfig, factors: tuple[int, ...], seed: int, position: DataPosition,
                sources: list[SourceShards] | None = None) -> DataLoader:
    """DataLoader over this rank's stream (batches come collated from the workers: ``batch_size=None``);
    ``sources`` are ``open_sources(cfg)``, opened here unless given (the trainer opens them before the models).

    Not for ``accelerator.prepare``: the stream already splits shards by rank and worker.
    """
    stream = SubjectStream(sources if sources is not None else open_sources(cfg), cfg, factors, seed, position)
    # Its own generator: the DataLoader draws a base seed per iterator, which must not advance the global RNG
    # that a resume restores (noise and timesteps come from it).
    return DataLoader(stream, batch_size=None, num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0,
                      pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(seed))
