"""``python -m training.train``: expected stops print one line naming the file or key and the setting, exit 2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.training.test_loader import truncate_shard
from training import train as cli
from training import trainer

CONFIG = str(Path(__file__).parents[2] / "configs" / "train" / "stage1_tiny.yaml")


def run(capsys, root: str, tmp_path, *extra: str) -> tuple[int, str]:
    code = cli.main(["--config", CONFIG, f"data.sources=[{{path: {root}}}]", f"train.output_dir={tmp_path / 'run'}",
                     "train.tracker=null", *extra])
    return code, capsys.readouterr().err


def the_error(err: str) -> str:
    """The one error line (logging may print warnings before it); no traceback anywhere."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_broken_shards_met_in_a_dataloader_worker_are_one_line(colour_dataset, tmp_path, capsys):
    root = colour_dataset(4, 3)
    broken = truncate_shard(root, 2)  # 1 of 4 > the default data.max_broken_fraction 0.05
    code, err = run(capsys, root, tmp_path, "data.num_workers=1")
    line = the_error(err)
    assert code == 2 and broken in line and "data.max_broken_fraction 0.05" in line
    assert "DataLoader worker" not in line  # torch's wrapper around the worker's traceback is taken off


def test_a_missing_shard_stops_before_the_models_load(colour_dataset, tmp_path, capsys, monkeypatch):
    root = colour_dataset(4, 3)
    gone = sorted((Path(root) / "shards").iterdir())[1]
    os.remove(gone)
    monkeypatch.setattr(trainer, "build", lambda *a: pytest.fail("models built before the data was checked"))
    code, err = run(capsys, root, tmp_path, "--allow-synthetic")
    line = the_error(err)
    assert code == 2 and str(gone) in line and "missing" in line and "data.max_broken_fraction" in line


def test_synthetic_data_and_bad_keys_are_one_line(colour_dataset, tmp_path, capsys):
    root = colour_dataset(1, 3, synthetic=True)
    code, err = run(capsys, root, tmp_path)
    line = the_error(err)
    assert code == 2 and root in line and "--allow-synthetic" in line
    code, err = run(capsys, root, tmp_path, "train.max_stepz=3")
    line = the_error(err)
    assert code == 2 and CONFIG in line and "train.max_stepz" in line
