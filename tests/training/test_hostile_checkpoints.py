"""Issue 24 (hostile inputs, round 2): a resume never runs a pickle planted in a checkpoint. accelerate unpickles
``custom_checkpoint_*.pkl`` with ``weights_only=False``; ``checkpoints.load`` opens every state file the safe way
first and refuses what needs more than tensors, numbers, strings and containers."""

import os
import pickle

import pytest
import torch
from accelerate import Accelerator

from training import checkpoints


class Planted:
    """What an attacker writes: unpickling it calls os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def saved(tmp_path, steps=7):
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model, optimizer = accelerator.prepare(model, optimizer)
    counter = checkpoints.Counter(steps)
    accelerator.register_for_checkpointing(counter)
    checkpoints.install_hooks(accelerator, lambda folder: None)
    path = checkpoints.save_checkpoint(accelerator, lambda folder: folder.mkdir(parents=True), tmp_path, steps, 2)
    return accelerator, counter, path


def test_a_checkpoint_of_tensors_and_numbers_resumes(tmp_path):
    accelerator, counter, path = saved(tmp_path)
    counter.value = 0
    checkpoints.load(accelerator, path)
    assert counter.value == 7


@pytest.mark.parametrize("victim", ["custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin"])
def test_a_planted_pickle_is_refused_and_never_runs(tmp_path, victim):
    accelerator, counter, path = saved(tmp_path)
    marker = tmp_path / "pwned"
    target = path / checkpoints.STATE / victim
    assert target.exists()
    target.write_bytes(pickle.dumps(Planted(marker)))
    with pytest.raises(checkpoints.UnsafeCheckpoint, match=f"{victim} cannot be loaded safely"):
        checkpoints.load(accelerator, path)
    assert not marker.exists()
