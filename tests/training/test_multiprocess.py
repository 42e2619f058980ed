"""Two processes (DDP over gloo on CPU, launched by torchrun): each rank's data position is checkpointed and a
resume reproduces the straight run bit for bit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.shard_factory import write_dataset
from tests.training.conftest import colour_sample

CONFIG = Path(__file__).parents[2] / "configs" / "train" / "stage1_tiny.yaml"


@pytest.mark.slow
def test_two_processes_resume_exactly(tmp_path):
    data = write_dataset(str(tmp_path / "ds"), [[colour_sample(f"mp-{g}-{k}", {0: [0, 1], 1: [0, 1]}, size=(64, 64))
                                                 for k in range(3)] for g in range(4)])
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "training.train",
                "--config", str(CONFIG), f"data.sources=[{{path: {data}}}]", "data.round_samples=3",
                "train.tracker=null"]

    def run(out, steps, *extra):
        subprocess.run([*torchrun, f"train.output_dir={out}", f"train.max_steps={steps}", *extra], env=env,
                       check=True, capture_output=True, cwd=Path(__file__).parents[2])

    run(tmp_path / "a", 4)
    run(tmp_path / "b", 2)
    run(tmp_path / "b", 4, "--resume", "latest")
    for name in ("subject_encoder", "reference_net"):
        a, b = (load_file(tmp_path / r / "adapters" / f"{name}.safetensors") for r in "ab")
        assert all(torch.equal(a[k], b[k]) for k in a)
    state = tmp_path / "b" / "checkpoints" / "step-4" / "state"
    ranks = torch.load(state / "custom_checkpoint_2.pkl", weights_only=False)["ranks"]
    assert [r["world_size"] for r in ranks] == [2, 2] and all(r["batches"] == 4 for r in ranks)
    assert (state / "random_states_1.pkl").exists()
