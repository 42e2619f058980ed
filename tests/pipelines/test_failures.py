"""Failure behaviour of the runner: the output lock, unusable outputs and arguments refused before any work,
empty datasets, leftovers of killed runs, durable shards, and model actors whose CUDA context fails."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from datagen import shards
from datagen.shards.validate import validate
from pipelines import runner
from pipelines.cli import main as cli_main
from pipelines.config import PipelineConfig, WriterConfig
from pipelines.lock import OutputError, OutputLocked
from pipelines.runner import run_source
from tests.pipelines.toy_source import ToyConfig, ToySource


def run(out, units, **kw):
    cfg = PipelineConfig(out=str(out), writer=WriterConfig(units_per_shard=3))
    return run_source(ToySource(), cfg, source_cfg=ToyConfig(units=units), **kw)


def keys(out):
    return [r["key"] for r in shards.read_table(str(out), shards.INDEX_FILE).to_pylist()]


def no_work(monkeypatch):
    """Make starting Ray fail the test: what is checked must be refused before it."""
    monkeypatch.setattr(runner, "init_ray", lambda cfg: pytest.fail("the run started work"))


HOLDER = ("import sys, time; from pipelines.lock import output_lock; "
          "lock = output_lock(sys.argv[1], 'coco'); lock.__enter__(); print('held', flush=True); time.sleep(600)")


def hold_lock(out):
    """Another process (a run of `coco`) holding the output's lock until killed."""
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_second_run_into_the_same_output_is_refused_naming_the_owner(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    holder = hold_lock(out)
    try:
        no_work(monkeypatch)
        with pytest.raises(OutputLocked) as e:
            run(out, ["ok-0"])
        message = str(e.value)
        assert f"source coco on host {socket.gethostname()}, pid {holder.pid}, started 20" in message
        assert str(out) in message
        assert not (out / "shards").exists() and not (out / "manifest.json").exists()
    finally:
        holder.kill()
        holder.wait()


def test_lock_of_a_killed_run_is_taken_over(ray_local, tmp_path):
    out = tmp_path / "ds"
    holder = hold_lock(out)
    holder.send_signal(signal.SIGKILL)  # dies holding the lock, as a killed run does
    holder.wait()
    result = run(out, ["ok-0", "two-0"])
    assert result.samples == 3 and validate(str(out)).ok
    owner = json.loads((out / ".lock.owner.json").read_text())
    assert owner["pid"] == os.getpid() and owner["source"] == "toy"


def test_unusable_output_is_refused_before_any_work_naming_it(tmp_path, monkeypatch, capsys):
    no_work(monkeypatch)
    a_file = tmp_path / "file"
    a_file.write_text("not a dataset")
    for out, why in ((a_file, "is a file"), (a_file / "ds", "is not a writable directory: NotADirectoryError")):
        with pytest.raises(OutputError, match=f"output {out} {why}"):
            run(out, ["ok-0"])
    # the CLI: exit 2 with the message, not a traceback (COCO listing no image: nothing else can fail)
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"out: {tmp_path}/unused\nsources:\n  coco:\n    annotations: {ann}\n    images: {tmp_path}\n")
    assert cli_main(["coco", "--config", str(cfg), "--out", str(a_file), "--models", "tiny"]) == 2
    assert f"error: output {a_file} is a file" in capsys.readouterr().err
    assert a_file.read_text() == "not a dataset"


def test_negative_limit_is_refused(tmp_path, monkeypatch, capsys):
    no_work(monkeypatch)
    with pytest.raises(SystemExit) as e:
        cli_main(["coco", "--config", str(tmp_path / "cfg.yaml"), "--limit", "-1"])
    assert e.value.code == 2 and "--limit: must be 0 or more, got -1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="limit must be 0 or more"):
        run(tmp_path / "ds", ["ok-0", "ok-1"], limit=-1)


def test_limit_0_and_a_run_keeping_nothing_leave_a_valid_empty_dataset(ray_local, tmp_path):
    zero = tmp_path / "zero"
    result = run(zero, ["ok-0", "ok-1"], limit=0)
    assert result.listed == 0 and result.samples == 0
    report = validate(str(zero))
    assert report.ok, report.violations
    assert "OK: empty dataset (no samples)" in report.render()

    nothing = tmp_path / "nothing"
    result = run(nothing, ["bad-0", "reject-0"])
    assert result.processed == {"failed": 1, "filtered": 1} and result.samples == 0
    report = validate(str(nothing))
    assert report.ok, report.violations
    assert "empty dataset" in report.render()
    quarantined = shards.read_table(str(nothing), shards.QUARANTINE_FILE).column("unit_id").to_pylist()
    assert sorted(quarantined) == ["bad-0", "reject-0"]


def test_an_empty_dataset_that_lost_its_shards_is_still_invalid(ray_local, tmp_path):
    out = tmp_path / "ds"
    run(out, ["ok-0"])
    for name in shards.list_shards(str(out)):
        os.remove(out / "shards" / name)
    report = validate(str(out))
    assert not report.ok and any("which no shard holds" in v for v in report.violations)


def test_leftover_temporaries_of_a_killed_run_are_removed_at_start(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    leftovers = [out / "shards" / ".toy-000003.tar.anystory-tmp-0badc0de",
                 out / "_ledger" / "toy" / ".x.parquet.anystory-tmp-12345678",
                 out / "index.parquet" / ".x.parquet.anystory-tmp-abcdef01", out / ".manifest.json.anystory-tmp-0000ffff"]
    kept = [out / "shards" / "notes.tmp-keep", out / "shards" / "README",
            # a user's files: names like temporaries, outside the engine's folders or not named as it names them
            out / "photos" / "2024" / "holiday.jpg.tmp-0badcafe", out / "photos" / ".a.jpg.anystory-tmp-0badcafe",
            out / "shards" / "holiday.jpg.tmp-0badcafe"]
    for p in leftovers + kept:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half")
    no_work(monkeypatch)
    run(out, ["ok-0"], limit=0)  # nothing to process: the start alone cleans up
    assert [p for p in leftovers if p.exists()] == []
    assert all(p.exists() for p in kept)


def test_shards_and_ledger_records_are_fsynced_before_their_rename(tmp_path, monkeypatch, sample_factory):
    """A rename published before the data is on disk leaves, after a power cut, a shard name over zero bytes."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.fspath(src)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    with shards.ShardWriter(str(tmp_path / "shards"), lambda: "toy-000000.tar") as w:
        w.write(shards.encode_sample(sample_factory(key="k0")))
    from pipelines import ledger

    unit = {"unit_id": "u0", "status": "kept", "stage": "", "reason": "", "detail": "", "keys": ["k0"],
            "shards": ["toy-000000.tar"], "drops": {}}
    ledger.write_part(str(tmp_path), "toy", "r1", [unit], None)
    renamed = [path for kind, path in events if kind == "replace"]
    assert len(renamed) == 2 and ".toy-000000.tar.anystory-tmp-" in renamed[0] and ".parquet.anystory-tmp-" in renamed[1]
    for path in renamed:
        assert ("fsync", path) in events[:events.index(("replace", path))], f"{path} renamed before fsync"


def test_cuda_context_errors_are_told_from_recoverable_ones():
    from pipelines.stages import context_lost

    assert context_lost(RuntimeError("CUDA error: device-side assert triggered"))
    assert context_lost(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert context_lost(RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR"))
    assert not context_lost(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))  # the context survives
    assert not context_lost(ValueError("expected 3 channels"))


def test_a_quarantined_unit_carries_no_pixels_to_the_writer():
    """The writer's per-unit byte bound counts a unit's samples: one that fails after loading (frames, scratch
    masks) drops them with its outcome, so the later stages and the writer do not hold them."""
    from datagen.units import Item, Rejected, Unit
    from pipelines.stages import guarded
    from tests.shard_factory import make_sample

    def loaded_then_rejected(item):
        item.samples = [make_sample()]
        item.scratch["instances"] = [[object()]]
        raise Rejected("no_match", "none matched")

    item = guarded("match", loaded_then_rejected, Item(Unit("u0", {})))
    assert (item.outcome.kind, item.outcome.reason) == ("filtered", "no_match")
    assert item.samples == [] and item.scratch == {}


def test_a_model_actor_that_loses_its_cuda_context_is_restarted(ray_local, tmp_path):
    """Today's failure: every later unit sent to the broken actor is quarantined. Here the actor is replaced:
    one restart finds the unit that breaks the context alone, the next quarantines it without running it."""
    out = tmp_path / "ds"
    units = [f"ok-{i}" for i in range(9)] + ["cuda-0"] + [f"ok-{i}" for i in range(9, 14)]
    result = run(out, units)
    assert result.processed == {"kept": 14, "failed": 1}
    (q,) = shards.read_table(str(out), shards.QUARANTINE_FILE).to_pylist()
    assert (q["unit_id"], q["stage"], q["reason"]) == ("cuda-0", "model", "cuda_context_lost")
    # only a restarted actor reads the crash log, and only a second one finds the unit alone in it
    assert q["detail"].startswith("this unit alone broke the model's CUDA context: RuntimeError: CUDA error")
    samples = list(shards.iter_samples(str(out)))
    assert len(samples) == 14 and all(s.models["toy"] == "v1" for s in samples)
    assert validate(str(out)).ok
