"""The run's small shared-state actors: shard numbers and key claims, one of each per run (``runner.run_source``).

In a module of their own that imports nothing heavy: each actor is a process that imports its class's module,
and ``pipelines.runner`` / ``pipelines.ledger`` pull in torch through webdataset (measured: ~5 s of CPU to start
such an actor, ~0.5 s from here), paid at every run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa


class ShardNumbers:
    """Hands out shard numbers of one source: holes left by deleted shards first, then new ones."""

    def __init__(self, used: list[int]):
        self.used = set(used)
        self.next_free = 0

    def next(self) -> int:
        while self.next_free in self.used:
            self.next_free += 1
        self.used.add(self.next_free)
        return self.next_free


class KeyClaims:
    """The writers' one shared record of which keys exist (run as a Ray actor by the runner).

    A unit whose key is already in the dataset, or was claimed in this run by another unit, must not be written:
    its outcome becomes ``write/duplicate_key`` (counted, that unit only). The same unit claiming again is a Ray
    retry of its writer batch: allowed here; reconcile keeps the first committed copy. The set of the dataset's
    keys is built in the actor on the first claim (a run with nothing to do never pays for it).
    """

    def __init__(self, existing: pa.Array):
        self._existing: Any = existing
        self._claimed: dict[str, str] = {}

    def claim(self, units: dict[str, list[str]]) -> dict[str, str]:
        """unit id → keys; returns unit id → the detail of its duplicate, for units that may not write."""
        if not isinstance(self._existing, set):
            self._existing = set(self._existing.to_pylist())
        refused = {}
        for uid, keys in units.items():
            if len(set(keys)) != len(keys):
                refused[uid] = f"the unit's samples repeat a key: {sorted(keys)}"
                continue
            for k in keys:
                if k in self._existing:
                    refused[uid] = f"key {k} is already in the dataset"
                elif self._claimed.get(k, uid) != uid:
                    refused[uid] = f"key {k} was written by unit {self._claimed[k]} in this run"
                if uid in refused:
                    break
            else:
                self._claimed.update(dict.fromkeys(keys, uid))
        return refused
