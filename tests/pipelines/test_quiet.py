"""Quiet logs: known-harmless library lines silenced at their source, the WEIGHTS MISSING banner once per run."""

from __future__ import annotations

import logging

import pytest
import torch

from datagen import models
from datagen.quiet import quiet
from pipelines.config import PipelineConfig
from pipelines.runner import run_source
from tests.pipelines.toy_source import ToyConfig, ToySource


@pytest.fixture
def restore_loggers():
    names = ("accelerate.checkpointing", "accelerate.accelerator", "bitsandbytes.backends.cpu.ops",
             "ray.data._internal.progress")
    saved = {n: (logging.getLogger(n).level, list(logging.getLogger(n).filters)) for n in names}
    for n in names:  # as before any CLI of this test process called quiet()
        logging.getLogger(n).setLevel(logging.NOTSET)
        logging.getLogger(n).filters.clear()
    yield
    for n, (level, filters) in saved.items():
        logging.getLogger(n).setLevel(level)
        logging.getLogger(n).filters[:] = filters


def checkpoint_lines(tmp_path, caplog) -> list[str]:
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    model, opt = acc.prepare(torch.nn.Linear(2, 2), torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), 0.1))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        acc.save_state(str(tmp_path / "state"))
    return [r.getMessage() for r in caplog.records if r.name.startswith("accelerate")]


def test_accelerate_checkpoint_bookkeeping_is_silenced(tmp_path, caplog, restore_loggers):
    assert checkpoint_lines(tmp_path / "a", caplog)  # accelerate's own INFO lines, one per saved file
    quiet()
    assert checkpoint_lines(tmp_path / "b", caplog) == []


def test_only_the_exact_known_messages_are_dropped(caplog, restore_loggers):
    quiet()
    quiet()  # idempotent: every CLI may call it
    bnb = logging.getLogger("bitsandbytes.backends.cpu.ops")
    ray_progress = logging.getLogger("ray.data._internal.progress")
    with caplog.at_level(logging.INFO):
        bnb.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure ...",
                    "No module named 'kernels'")
        ray_progress.warning("Progress bars disabled. To enable, set `ray.data.DataContext...`")
        bnb.warning("some other bitsandbytes problem")
        ray_progress.warning("something else about progress")
    assert [r.getMessage() for r in caplog.records] == ["some other bitsandbytes problem",
                                                        "something else about progress"]
    assert len(bnb.filters) == 1


class ModelToy(ToySource):
    def roles(self, cfg):
        return ["captioner", "detector"]


def test_weights_missing_banner_once_and_not_on_runs_without_work(tmp_path, caplog, monkeypatch):
    registry = models.RegistryConfig()
    if models.locate(registry.captioner) or models.locate(registry.detector):
        pytest.skip("real weights are on this machine: no banner to check")
    monkeypatch.setattr(models, "_announced", set())
    cfg = PipelineConfig(out=str(tmp_path / "out"))
    with caplog.at_level(logging.WARNING):
        run_source(ModelToy(), cfg, limit=0, source_cfg=ToyConfig(units=["ok-0"]))  # lists, has nothing to do
    assert "WEIGHTS MISSING" not in caplog.text
    with caplog.at_level(logging.WARNING):
        models.announce_missing(["captioner", "detector"], registry)
        models.announce_missing(["detector", "captioner"], registry)  # the next source of `all`
    assert caplog.text.count("WEIGHTS MISSING") == 1 and "Qwen/Qwen2-VL-2B-Instruct" in caplog.text


def test_worker_warning_filters_are_valid_pythonwarnings_and_scoped(tmp_path):
    import subprocess
    import sys

    from datagen.quiet import worker_env

    env = worker_env({"working_dir": ".", "env_vars": {"PYTHONWARNINGS": "error::ResourceWarning", "X": "1"}})
    assert env["working_dir"] == "." and env["env_vars"]["X"] == "1"
    value = env["env_vars"]["PYTHONWARNINGS"]
    assert value.startswith("error::ResourceWarning,")  # the user's own entries kept, first
    # what a Ray worker started with that environment does with Ray's own deprecation warning, and with another
    code = ("import warnings\n"
            "warnings.warn_explicit('This API is deprecated', DeprecationWarning, 'rc.py', 468, "
            "module='ray.runtime_context')\n"
            "warnings.warn_explicit('This API is deprecated', DeprecationWarning, 'x.py', 1, module='ours')\n")
    # "default" first shows every warning once (as Ray's workers do with RayDeprecationWarning); ours come after
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONWARNINGS": f"default,{value}", "PATH": ""})
    assert done.returncode == 0 and done.stderr.count("This API is deprecated") == 1 and "x.py" in done.stderr
