"""The optimizer of a stage: AdamW (torch) or 8-bit AdamW (bitsandbytes, blockwise-quantised moments), and the
bytes its state takes per parameter tensor (``training.memory`` counts with the same rule).

Stage 1 trains ≈ 2.65 B parameters: AdamW's two fp32 moments are 21 GB, 8-bit AdamW's 5.3 GB.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch

from training.config import OptimConfig

OPTIMIZERS = ("adamw", "adamw8bit")
# bitsandbytes' defaults: tensors under 4096 elements keep 32-bit moments; 8-bit moments are quantised in blocks of
# 256 with one fp32 absmax per block and a 256-entry fp32 code (qmap) per moment.
BNB_MIN_8BIT_SIZE, BNB_BLOCK, BNB_CODE = 4096, 256, 256


def require(kind: str) -> None:
    """Fail at start-up, not at the first step, when the optimizer's package is missing."""
    if kind not in OPTIMIZERS:
        raise ValueError(f"optim.optimizer {kind!r}: one of {OPTIMIZERS}")
    if kind == "adamw8bit":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as e:
            raise ImportError("optim.optimizer: adamw8bit needs bitsandbytes: pip install -e '.[train8bit]' "
                              f"(or set optim.optimizer: adamw) ({e})") from e


def make_optimizer(params: Iterable[torch.nn.Parameter], o: OptimConfig) -> torch.optim.Optimizer:
    require(o.optimizer)
    kwargs = dict(lr=o.lr, betas=o.betas, weight_decay=o.weight_decay, eps=o.eps)
    if o.optimizer == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, min_8bit_size=BNB_MIN_8BIT_SIZE, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def state_bytes(numel: int, kind: str) -> int:
    """Device bytes of the optimizer state of one parameter tensor with ``numel`` elements (fp32 parameters).
    torch AdamW: exp_avg + exp_avg_sq in fp32 (its ``step`` counter is a CPU scalar). 8-bit AdamW: two uint8 moments,
    their per-block absmax and codes; small tensors as 32-bit AdamW."""
    if kind == "adamw" or numel < BNB_MIN_8BIT_SIZE:
        return 2 * 4 * numel
    if kind == "adamw8bit":
        return 2 * (numel + 4 * math.ceil(numel / BNB_BLOCK) + 4 * BNB_CODE)
    raise ValueError(f"optimizer {kind!r}: one of {OPTIMIZERS}")
