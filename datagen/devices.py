"""Where a model stage runs: the first CUDA device when there is one (Ray sets ``CUDA_VISIBLE_DEVICES`` per
actor from its ``num_gpus``), else the CPU; dtype from the model's config, ``auto`` meaning bf16 on a GPU."""

from __future__ import annotations

import torch

from datagen.models import ModelSpec

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def placement(spec: ModelSpec) -> tuple[torch.device, torch.dtype]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.mode == "tiny":
        return device, torch.float32  # tiny models are smoke tests: full precision, exact comparisons
    if spec.dtype == "auto":
        return device, torch.bfloat16 if device.type == "cuda" else torch.float32
    return device, _DTYPES[spec.dtype]
