"""How a source declares its stage graph, and how each stage becomes a Ray Data operator.

A source lists stages in order. ``TaskStage`` wraps a stateless ``fn(item) -> item`` (run as Ray tasks);
``ActorStage`` wraps a factory building a stateful callable ``model(items) -> items`` once per actor
(loaded in the actor, reused across batches; pool size, GPUs and batch size from config).

Every call is guarded: an exception quarantines that unit with the stage and reason instead of failing
the run. A batch that raises is retried item by item, so one bad input does not sink its batch-mates.
"""

from __future__ import annotations

import os
import pickle
import sys
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
    # a quarantined unit writes nothing: its frames and masks need not travel on (the writer's per-unit bound)
    item.samples, item.scratch = [], {}
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


# Messages of errors after which the process's CUDA context is unusable: every later call fails the same way.
# (PyTorch raises them as plain RuntimeErrors; "CUDA out of memory" is not one, the context survives it.)
_CONTEXT_LOST = ("CUDA error", "CUBLAS_STATUS_", "CUDNN_STATUS_", "device-side assert")


class ContextLost(RuntimeError):
    """A model call broke its process's CUDA context: the actor must be replaced, not its later units failed."""


def context_lost(error: BaseException) -> bool:
    return any(m in str(error) for m in _CONTEXT_LOST)


def _checked(stage: str, model: Callable[[list[Item]], list[Item]], items: list[Item]) -> list[Item]:
    try:
        results = model(items)
    except Exception as e:  # noqa: BLE001 — re-raised as is unless it killed the context
        if context_lost(e):
            raise ContextLost(f"{type(e).__name__}: {e}") from e
        raise
    if len(results) != len(items):
        raise RuntimeError(f"stage {stage} returned {len(results)} items for {len(items)}")
    return results


def guarded_batch(stage: str, model: Callable[[list[Item]], list[Item]], items: list[Item]) -> list[Item]:
    """Apply a batch model to the live items; on an exception retry one by one to isolate the culprit.

    ContextLost is raised, not recorded: after it no call of this process can succeed.
    """
    live = [i for i, it in enumerate(items) if it.alive]
    if not live:
        return items
    out = list(items)
    try:
        for i, r in zip(live, _checked(stage, model, [items[i] for i in live])):
            out[i] = r
    except ContextLost:
        raise
    except Exception:  # noqa: BLE001 — narrowed below, item by item
        for i in live:
            try:
                out[i] = _checked(stage, model, [items[i]])[0]
            except ContextLost:
                raise
            except Exception as e:  # noqa: BLE001 — every failure is recorded in quarantine, none is lost
                _fail(items[i], stage, e)
    return out


class CrashLog:
    """Units that were being run when a model actor lost its CUDA context (one small actor per run).

    Ray restarts a dead actor and retries its call on the new one; the new actor asks here whether the call's
    units crashed an actor before, and then runs them one at a time. A unit that crashes an actor alone is the
    culprit: the next retry quarantines it without running it, so each bad unit costs two restarts at most.
    """

    def __init__(self):
        self.units: dict[str, tuple[bool, str]] = {}  # unit id → (alone, error)

    def record(self, unit_ids: list[str], error: str) -> None:
        alone = len(unit_ids) == 1
        for u in unit_ids:
            if not self.units.get(u, (False, ""))[0]:
                self.units[u] = (alone, error)

    def lookup(self, unit_ids: list[str]) -> dict[str, tuple[bool, str]]:
        return {u: self.units[u] for u in unit_ids if u in self.units}


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
    A model call that loses the CUDA context ends the actor's process after noting the units in ``crashes``
    (a CrashLog): Ray Data's actors restart and retry their calls (max_restarts = max_task_retries = -1).
    """

    def __init__(self, stage: ActorStage, crashes: Any):
        import ray

        self.name = stage.name
        self.model = stage.factory()
        self.crashes = crashes
        # Only a restarted actor receives retried calls, so only it has a reason to look at the crash log.
        self.restarted = ray.get_runtime_context().was_current_actor_reconstructed

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import ray

        items = items_of(batch)
        live = [it for it in items if it.alive]
        crashed = ray.get(self.crashes.lookup.remote([it.unit.id for it in live])) if self.restarted else {}
        running = live
        try:
            if not crashed:
                return batch_of(guarded_batch(self.name, self.model, items))
            results = []
            for it in items:  # the call crashed an actor before: one unit at a time finds the culprit
                alone, error = crashed.get(it.unit.id, (False, ""))
                if alone:
                    it.outcome = Outcome("failed", self.name, "cuda_context_lost",
                                         f"this unit alone broke the model's CUDA context: {error}")
                elif it.alive:
                    running = [it]
                    it = guarded_batch(self.name, self.model, [it])[0]
                results.append(it)
            return batch_of(results)
        except ContextLost as e:
            ray.get(self.crashes.record.remote([it.unit.id for it in running], str(e)))
            print(f"stage {self.name}: {e}; restarting the actor", file=sys.stderr, flush=True)
            os._exit(1)  # not ray.actor.exit_actor(): an intentional exit is not restarted


def apply(ds, stage: Stage, crashes: Any):
    """Append one stage to a Ray Dataset; ``crashes`` is the run's CrashLog actor (model stages use it)."""
    import ray.data

    r = stage.resources
    common = {"num_cpus": r.num_cpus, "num_gpus": r.num_gpus}
    if r.memory:
        common["memory"] = r.memory
    if isinstance(stage, TaskStage):
        return ds.map(TaskOp(stage), **common)
    return ds.map_batches(
        ActorOp,
        fn_constructor_args=(stage, crashes),
        compute=ray.data.ActorPoolStrategy(size=r.concurrency),
        batch_size=r.batch_size,
        batch_format="numpy",
        **common,
    )
