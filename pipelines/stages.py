"""How a source declares its stage graph, and how each stage becomes a Ray Data operator.

A source lists stages in order. ``TaskStage`` wraps a stateless ``fn(item) -> item`` (run as Ray tasks);
``ActorStage`` wraps a factory building a stateful callable ``model(items) -> items`` once per actor
(loaded in the actor, reused across batches; pool size, GPUs and batch size from config).

Every call is guarded: an exception quarantines that unit with the stage and reason instead of failing
the run. A batch that raises is retried item by item, so one bad input does not sink its batch-mates.
"""

from __future__ import annotations

import pickle
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from datagen.params import Params
from datagen.units import BadInput, Item, Outcome, Rejected, Unit


class Resources(Params):
    """Per-stage resources, from config (Ray schedules by these; ``memory`` is heap bytes per task/actor)."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory: int | None = None
    batch_size: int = 8
    concurrency: int = 1  # actor pool size (actor stages only)


@dataclass
class TaskStage:
    name: str
    fn: Callable[[Item], Item]
    resources: Resources = Resources()


@dataclass
class ActorStage:
    name: str
    factory: Callable[[], Callable[[list[Item]], list[Item]]]
    resources: Resources = Resources()


Stage = TaskStage | ActorStage

_DETAIL_CHARS = 4000


def _fail(item: Item, stage: str, error: BaseException) -> None:
    if isinstance(error, Rejected):
        item.outcome = Outcome("filtered", stage, error.reason, error.detail)
    elif isinstance(error, BadInput):
        item.outcome = Outcome("failed", stage, error.reason, error.detail)
    else:
        tb = "".join(traceback.format_exception(error)[-6:])
        item.outcome = Outcome("failed", stage, type(error).__name__, f"{error}\n{tb}"[-_DETAIL_CHARS:])


def guarded(stage: str, fn: Callable[[Item], Item], item: Item) -> Item:
    """Apply ``fn`` unless the item already ended; an exception ends the item with its reason."""
    if not item.alive:
        return item
    try:
        return fn(item)
    except Exception as e:  # noqa: BLE001 — every failure is recorded in quarantine, none is lost
        _fail(item, stage, e)
        return item


def guarded_batch(stage: str, model: Callable[[list[Item]], list[Item]], items: list[Item]) -> list[Item]:
    """Apply a batch model to the live items; on an exception retry one by one to isolate the culprit."""
    live = [i for i, it in enumerate(items) if it.alive]
    if not live:
        return items
    out = list(items)
    try:
        results = model([items[i] for i in live])
        if len(results) != len(live):
            raise RuntimeError(f"stage {stage} returned {len(results)} items for {len(live)}")
        for i, r in zip(live, results):
            out[i] = r
    except Exception:  # noqa: BLE001 — narrowed below, item by item
        for i in live:
            out[i] = guarded(stage, lambda it: model([it])[0], items[i])
    return out


# ------------------------------------------------------------------------------ rows ↔ items for Ray Data


def to_row(item: Item) -> dict[str, Any]:
    return {"unit_id": item.unit.id, "item": pickle.dumps(item, protocol=5)}


def from_row(row: dict[str, Any]) -> Item:
    return pickle.loads(row["item"])


def unit_row(unit: Unit) -> dict[str, Any]:
    return to_row(Item(unit))


def items_of(batch: dict[str, np.ndarray]) -> list[Item]:
    return [pickle.loads(b) for b in batch["item"]]


def batch_of(items: list[Item]) -> dict[str, np.ndarray]:
    return {
        "unit_id": np.array([it.unit.id for it in items], dtype=object),
        "item": np.array([pickle.dumps(it, protocol=5) for it in items], dtype=object),
    }


class TaskOp:
    """Row → row callable Ray runs as a task (``Dataset.map``)."""

    def __init__(self, stage: TaskStage):
        self.stage = stage

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        return to_row(guarded(self.stage.name, self.stage.fn, from_row(row)))


class ActorOp:
    """Batch → batch callable class Ray runs in an actor pool; the model loads once, in ``__init__``.

    A model that fails to load is a start-up problem of the whole stage: it is raised, not quarantined.
    """

    def __init__(self, stage: ActorStage):
        self.name = stage.name
        self.model = stage.factory()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return batch_of(guarded_batch(self.name, self.model, items_of(batch)))


def apply(ds, stage: Stage):
    """Append one stage to a Ray Dataset."""
    import ray.data

    r = stage.resources
    common = {"num_cpus": r.num_cpus, "num_gpus": r.num_gpus}
    if r.memory:
        common["memory"] = r.memory
    if isinstance(stage, TaskStage):
        return ds.map(TaskOp(stage), **common)
    return ds.map_batches(
        ActorOp,
        fn_constructor_args=(stage,),
        compute=ray.data.ActorPoolStrategy(size=r.concurrency),
        batch_size=r.batch_size,
        batch_format="numpy",
        **common,
    )
