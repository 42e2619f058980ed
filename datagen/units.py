"""Work units and the item that carries one unit through the stages.

A reader turns its inputs into ``Unit``s: deterministic ids (so reruns skip finished work and keys
never repeat) plus whatever the first stage needs to load the input (``ref``). Each stage takes and
returns ``Item``s. A stage that decides the unit yields nothing raises ``Rejected`` (counted as
filtered); a broken input raises ``BadInput``; any other exception is a failure. Both end in
quarantine with the stage and the reason, and the run goes on. A bad row or file found while listing becomes
a unit too (``Unit.unusable``): it enters the run already ended, so it is quarantined by name at stage
``list`` while the rest runs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # datagen.shards imports datagen.files, which raises BadInput from here
    from datagen.shards import Sample


LIST_STAGE = "list"


@dataclass(frozen=True)
class Unit:
    id: str
    ref: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @classmethod
    def unusable(cls, id: str, error: "BadInput | Rejected") -> "Unit":
        """A listed entry that cannot be processed: quarantined with ``error``'s reason, no stage runs on it."""
        kind = "filtered" if isinstance(error, Rejected) else "failed"
        return cls(id, {"listing": {"kind": kind, "reason": error.reason, "detail": error.detail}})


@dataclass
class Outcome:
    """Why a unit ended without samples: ``kind`` is ``filtered`` or ``failed``."""

    kind: str
    stage: str
    reason: str
    detail: str = ""


@dataclass
class Item:
    unit: Unit
    samples: list[Sample] = field(default_factory=list)
    scratch: dict[str, Any] = field(default_factory=dict)  # state handed from one stage to the next
    drops: Counter = field(default_factory=Counter)  # "stage/reason" → subjects or samples dropped
    outcome: Outcome | None = None

    def __post_init__(self):
        listing = self.unit.ref.get("listing")
        if listing and self.outcome is None:
            self.outcome = Outcome(listing["kind"], LIST_STAGE, listing["reason"], listing["detail"])

    @property
    def alive(self) -> bool:
        return self.outcome is None

    def drop(self, stage: str, reason: str, n: int = 1) -> None:
        self.drops[f"{stage}/{reason}"] += n


class Rejected(Exception):
    """A filter decided that this unit yields no sample."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


class BadInput(Exception):
    """The input itself is broken (corrupt file, wrong type, no stream, ...)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail
