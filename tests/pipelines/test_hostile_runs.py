"""Issue 24 (hostile inputs, round 2), runs: a deleted or truncated manifest never loses another source's
synthetic flag nor the run, a corrupt ledger file is named with its repair, and SIGTERM stops a run as cleanly as
Ctrl-C (lock released, Ray stopped, the rerun resumes)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from datagen import shards
from datagen.shards.validate import validate
from pipelines import ledger, runner
from pipelines.config import PipelineConfig, WriterConfig
from pipelines.runner import run_source
from tests.pipelines.test_failures import keys, no_work, run
from tests.pipelines.toy_source import ToyConfig, ToySource


class OtherToy(ToySource):
    name = "toy2"


def test_deleting_the_manifest_does_not_make_another_sources_tiny_labels_trusted(ray_local, tmp_path, monkeypatch):
    from training.streams import SyntheticDataError, open_source

    out = tmp_path / "ds"
    monkeypatch.setattr(runner.registry, "synthetic", lambda specs: True)  # the run used tiny random models
    run(out, ["ok-0", "ok-1"])
    (out / "manifest.json").unlink()
    monkeypatch.setattr(runner.registry, "synthetic", lambda specs: False)  # real models for the other source
    cfg = PipelineConfig(out=str(out), writer=WriterConfig(units_per_shard=3))
    run_source(OtherToy(), cfg, source_cfg=ToyConfig(units=["ok-100"]))
    manifest = shards.read_manifest(str(out))
    assert manifest["synthetic_models"] is True
    assert {n: s["synthetic_models"] for n, s in manifest["sources"].items()} == {"toy": True, "toy2": False}
    assert manifest["counts"]["samples"] == 3 and validate(str(out)).ok
    with pytest.raises(SyntheticDataError):
        open_source(str(out), None, 1.0, allow_synthetic=False)
    run(out, ["ok-0", "ok-1", "ok-2"])  # the source itself, rerun with real models: its old samples are still tiny
    assert shards.read_manifest(str(out))["sources"]["toy"]["synthetic_models"] is True


def test_a_truncated_manifest_is_rebuilt_not_a_failure_after_all_the_work(ray_local, tmp_path):
    out = tmp_path / "ds"
    run(out, ["ok-0"])
    text = (out / "manifest.json").read_text()
    (out / "manifest.json").write_text(text[: len(text) // 2])
    run(out, ["ok-0", "ok-1"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["samples"] == 2 and keys(out) == ["toy-ok-0-0", "toy-ok-1-0"]
    assert validate(str(out)).ok


def test_a_corrupt_ledger_file_is_named_with_its_repair_before_any_work(ray_local, tmp_path, monkeypatch, capsys):
    out = tmp_path / "ds"
    run(out, ["ok-0", "ok-1", "ok-2", "ok-3"])
    [part] = [p for p in (out / "_ledger" / "toy").iterdir() if p.suffix == ".parquet"]
    part.write_bytes(part.read_bytes()[:100])  # truncated by a disk fault
    with monkeypatch.context() as m:
        no_work(m)
        with pytest.raises(ledger.CorruptLedger) as e:
            run(out, ["ok-0", "ok-1", "ok-2", "ok-3"])
    assert f"ledger file {part} cannot be read" in str(e.value) and "Move it out of the output" in str(e.value)
    os.rename(part, tmp_path / "moved.parquet")  # the repair the message gives
    run(out, ["ok-0", "ok-1", "ok-2", "ok-3"])
    assert keys(out) == [f"toy-ok-{i}-0" for i in range(4)] and validate(str(out)).ok


CLI = """
import sys
from pipelines import sources
from tests.pipelines.toy_source import ToySource
sources.SOURCES["toy"] = ToySource()  # before pipelines.config builds its sections
from pipelines.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigterm_stops_the_driver_like_ctrl_c_and_the_rerun_resumes(tmp_path):
    out = tmp_path / "ds"
    config = tmp_path / "toy.yaml"
    units = [f"ok-{i}" for i in range(12)]
    config.write_text(f"out: {out}\nray: {{num_cpus: 2}}\nwriter: {{units_per_shard: 1}}\n"
                      f"sources:\n  toy: {{units: {units}, seconds_per_unit: 1.5}}\n")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    log = tmp_path / "driver.log"
    with open(log, "w") as f:
        driver = subprocess.Popen([sys.executable, "-c", CLI, "toy", "--config", str(config)], env=env, stdout=f,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 300
    while not shards.list_shards(str(out)) and time.time() < deadline and driver.poll() is None:
        time.sleep(0.2)
    assert driver.poll() is None, log.read_text()[-3000:]
    driver.send_signal(signal.SIGTERM)
    code = driver.wait(timeout=120)
    text = log.read_text()
    assert code == 143, text[-3000:]
    assert "interrupted (signal 15) while running toy" in text and "SIGTERM received" not in text
    assert len(keys(out)) < len(units)  # stopped mid-run
    rerun = subprocess.run([sys.executable, "-c", CLI, "toy", "--config", str(config)], env=env,
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]  # the lock was released
    assert sorted(keys(out)) == sorted(f"toy-ok-{i}-0" for i in range(12)) and validate(str(out)).ok
