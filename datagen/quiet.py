"""Known-harmless library messages, silenced at their source; every CLI calls ``quiet()`` once at start.

Each filter is scoped to one logger and, where the logger says other things too, one exact message; the README
(Quiet logs) lists them and why. Nothing else is touched: any other warning still shows.
"""

from __future__ import annotations

import logging
import re
import warnings


class _DropMessage(logging.Filter):
    """Drops the records of one logger whose message matches ``pattern``."""

    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


# (logger, message): the same filter object is never added twice to a logger.
_MESSAGES = {
    # bitsandbytes on a CPU with AVX512-BF16 tries a hub kernel for 4-bit matmuls at import; we use its 8-bit AdamW
    # only, which does not need it.
    "bitsandbytes.backends.cpu.ops": r"Failed to load CPU gemm_4bit_forward from kernels-community",
    # Ray Data says once per process that we turned its per-operator bars off: the runner draws its own bar.
    "ray.data._internal.progress": r"^Progress bars (for operators )?disabled\. To enable",
    # accelerate's line before its per-file lines (below); training.checkpoints logs the checkpoint in one line.
    "accelerate.accelerator": r"Saving current state to",
    # Ray Data's INFO line at the end of each dataset: the runner's report follows with the same time.
    "ray.data._internal.execution.streaming_executor": r"Dataset .* execution finished in",
}
_FILTERS = {name: _DropMessage(pattern) for name, pattern in _MESSAGES.items()}
# Loggers whose INFO lines are bookkeeping a user does not act on (warnings and errors still show).
_INFO_ONLY = (
    "accelerate.checkpointing",  # six "saved ... to <file>" lines per checkpoint; ours prints one line naming it
)


# The same for Ray's worker processes, which do not run ``quiet()``: PYTHONWARNINGS entries (action:message:
# category:module, the module matched exactly). Ray's own runtime_context calls its deprecated ``actor_id`` in every
# actor; transformers' image processors: as above.
WORKER_WARNINGS = ("ignore::DeprecationWarning:ray.runtime_context",
                   "ignore:The given NumPy array is not writable:UserWarning:transformers.image_processing_backends")


def worker_env(runtime_env: dict | None) -> dict:
    """``runtime_env`` with ``WORKER_WARNINGS`` added to its ``env_vars`` (a PYTHONWARNINGS given there kept)."""
    env = dict(runtime_env or {})
    env_vars = dict(env.get("env_vars") or {})
    env_vars["PYTHONWARNINGS"] = ",".join(filter(None, [env_vars.get("PYTHONWARNINGS"), *WORKER_WARNINGS]))
    return {**env, "env_vars": env_vars}


def quiet() -> None:
    for name, f in _FILTERS.items():
        logger = logging.getLogger(name)
        if f not in logger.filters:
            logger.addFilter(f)
    for name in _INFO_ONLY:
        logging.getLogger(name).setLevel(logging.WARNING)
    # Images decoded from shard bytes are read-only NumPy views; transformers' processors turn them into tensors
    # without writing to them, and torch warns that it could not (it never does here).
    warnings.filterwarnings("ignore", message=r"The given NumPy array is not writable", category=UserWarning,
                            module=r"(transformers|torchvision)(\.|$)")
