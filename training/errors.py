"""Stops a person can act on: the CLIs print one line naming the file or key and the setting to change, exit 2.

Only these are expected; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pydantic import ValidationError

from anystory.model import MissingAdapterPart
from datagen.models import MissingModelError
from datagen.shards import FormatError
from training.checkpoints import UnsafeCheckpoint
from training.evaluate.sets import SpecError
from training.streams import BrokenShardsError, SyntheticDataError

EXPECTED = (BrokenShardsError, SyntheticDataError, FormatError, MissingModelError, MissingAdapterPart, SpecError,
            UnsafeCheckpoint)


def one_line(e: BaseException) -> str:
    """The error's own message. A DataLoader worker's error arrives in the main process re-raised as the same
    class around the worker's whole traceback ("Caught X in DataLoader worker process 0. Original Traceback ...",
    torch's ``ExceptionWrapper``); its last line is the original ``module.X: message``."""
    text = str(e)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        text = last.split(f"{type(e).__name__}: ", 1)[-1]
    if isinstance(e, ValidationError):  # pydantic: one "key: problem" per error, not its multi-line report
        text = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'config'}: {err['msg']}" for err in e.errors())
    return " ".join(text.split())
