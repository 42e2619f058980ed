"""The runner end to end on local Ray: shards + index + quarantine + manifest, resume, rebuild of a deleted
shard, retry of failed units, failure isolation in batches, bad configs refused before any work."""

import json
import os
import subprocess
import sys
import time
from collections import Counter

import pyarrow as pa
import pytest

from datagen import shards
from datagen.shards.validate import validate
from pipelines import ledger
from pipelines.cli import main as cli_main
from pipelines.config import PipelineConfig, WriterConfig
from pipelines.runner import run_source, writer_batch_units
from pipelines.sources import SOURCES
from tests.pipelines.toy_source import ToyConfig, ToySource

UNITS = [f"ok-{i}" for i in range(7)] + ["two-0", "bad-0", "crash-0", "reject-0", "poison-0"]


def run(out, units=UNITS, **kw):
    cfg = PipelineConfig(out=str(out), writer=WriterConfig(units_per_shard=3))
    return run_source(ToySource(), cfg, source_cfg=ToyConfig(units=units), **kw)


def state(out):
    names = shards.list_shards(str(out))
    mtimes = {n: os.path.getmtime(os.path.join(out, "shards", n)) for n in names}
    parts = [sorted(os.listdir(os.path.join(out, d))) for d in ("_ledger/toy", "index.parquet")]
    return names, mtimes, parts


def units_of_part_holding(out, shard):
    rows = ledger.Ledger.read(str(out), "toy").rows.to_pylist()
    part = next(r["part"] for r in rows if shard in r["shards"])
    return [r["unit_id"] for r in rows if r["part"] == part]


def test_the_runs_small_actors_come_from_modules_that_import_no_torch():
    """Each Ray actor is a process that imports its class's module: the run's shard-number, key-claim and crash-log
    actors start in ~0.5 s from light modules, ~5 s from one that imports torch (every run pays it)."""
    from pipelines import runner

    modules = {cls.__module__ for cls in (runner.ShardNumbers, runner.KeyClaims, runner.CrashLog)}
    code = f"import sys; import {', '.join(sorted(modules))}; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False", modules


def test_first_run_writes_a_valid_dataset_with_quarantine(ray_local, tmp_path):
    out = tmp_path / "ds"
    result = run(out)
    assert result.processed == {"kept": 8, "failed": 3, "filtered": 1}
    assert result.samples == 9  # "two-0" yields two samples
    report = validate(str(out))
    assert report.ok, report.violations
    assert report.samples == 9
    q = {r["unit_id"]: r for r in shards.read_table(str(out), shards.QUARANTINE_FILE).to_pylist()}
    assert q["bad-0"]["reason"] == "corrupt_input" and q["bad-0"]["stage"] == "load"
    assert q["crash-0"]["reason"] == "ZeroDivisionError" and "stage bug" in q["crash-0"]["detail"]
    assert q["reject-0"]["kind"] == "filtered" and q["reject-0"]["reason"] == "too_few_subjects"
    # the poisoned unit failed alone: its batch-mates were retried one by one and kept
    assert q["poison-0"]["stage"] == "model" and "poisoned input" in q["poison-0"]["detail"]
    assert set(q) == {"bad-0", "crash-0", "reject-0", "poison-0"}
    samples = list(shards.iter_samples(str(out)))
    assert all(s.models["toy"] == "v1" for s in samples)
    manifest = shards.read_manifest(str(out))
    counts = manifest["sources"]["toy"]["counts"]
    assert counts["units_kept"] == 8 and counts["samples"] == 9
    assert counts["failed"] == {"load/corrupt_input": 1, "load/ZeroDivisionError": 1, "model/RuntimeError": 1}
    assert counts["filtered"] == {"load/too_few_subjects": 1}
    assert counts["dropped"] == {"load/box_aspect": 9}  # drops before a later failure count too
    assert manifest["synthetic_models"] is False and manifest["format_version"] == shards.FORMAT_VERSION
    assert all(f in manifest for f in shards.MANIFEST_FIELDS)


def test_rerun_writes_nothing_and_deleted_shard_is_rebuilt_alone(ray_local, tmp_path, monkeypatch):
    out = tmp_path / "ds"
    run(out)
    names, mtimes, parts = state(out)
    keys_before = {r["key"] for r in shards.read_table(str(out), shards.INDEX_FILE).to_pylist()}
    listings = []
    with monkeypatch.context() as m:  # a listing of 100 k shards in a bucket is 100 requests: once is enough
        real = shards.list_shards
        m.setattr(shards, "list_shards", lambda *a: listings.append(a) or real(*a))
        again = run(out)
    assert sum(again.processed.values()) == 0 and again.skipped == len(UNITS)
    assert len(listings) == 1  # the reconcile at start; with nothing written there is nothing more to reconcile
    assert state(out) == (names, mtimes, parts)  # not a byte rewritten

    victim = names[1]
    n_units = len(units_of_part_holding(out, victim))
    os.remove(os.path.join(out, "shards", victim))
    rebuilt = run(out)
    assert sum(rebuilt.processed.values()) == n_units  # only that shard's units
    names2, mtimes2, _ = state(out)
    assert names2 == names  # the hole is filled with the same shard number
    assert all(mtimes2[n] == mtimes[n] for n in names if n != victim)
    keys_after = [r["key"] for r in shards.read_table(str(out), shards.INDEX_FILE).to_pylist()]
    assert sorted(keys_after) == sorted(keys_before) and len(keys_after) == len(set(keys_after))
    assert validate(str(out)).ok


def test_limit_and_retry_quarantined(ray_local, tmp_path):
    out = tmp_path / "ds"
    first = run(out, limit=3)
    assert first.listed == 3 and sum(first.processed.values()) == 3
    run(out)
    retried = run(out, retry_failed=True)
    # failed units run again (and fail again with the same reasons); filtered units stay filtered
    assert retried.processed == {"failed": 3}
    q = shards.read_table(str(out), shards.QUARANTINE_FILE).to_pylist()
    assert sorted(r["unit_id"] for r in q) == ["bad-0", "crash-0", "poison-0", "reject-0"]


def test_ray_data_reads_the_shards(ray_local, tmp_path):
    import ray.data

    out = tmp_path / "ds"
    run(out, units=["ok-0", "ok-1", "two-0"])
    rows = ray.data.read_webdataset(shards.shard_urls(str(out)), decoder=None).take_all()
    assert sorted(r["__key__"] for r in rows) == ["toy-ok-0-0", "toy-ok-1-0", "toy-two-0-0", "toy-two-0-1"]
    assert all(json.loads(r["meta.json"])["version"] == 1 for r in rows)


def test_a_key_of_another_unit_is_that_units_duplicate_key_once(ray_local, tmp_path):
    out = tmp_path / "data" / "coco[1]"
    run(out, units=["alias-0-x", "ok-0"])  # this month's list
    # next month's list names x again (a new unit id), and two of its own units share y
    second = run(out, units=["alias-0-x", "ok-0", "alias-1-x", "alias-2-y", "alias-3-y", "ok-1"])
    assert second.processed == {"kept": 2, "filtered": 2}
    q = {r["unit_id"]: r for r in shards.read_table(str(out), shards.QUARANTINE_FILE).to_pylist()}
    assert {u for u, r in q.items() if r["reason"] == "duplicate_key"} == {"alias-1-x", "alias-3-y"}
    assert "already in the dataset" in q["alias-1-x"]["detail"]
    assert second.counts["filtered"] == {"write/duplicate_key": 2}
    assert validate(str(out)).ok
    third = run(out, units=["alias-0-x", "ok-0", "alias-1-x", "alias-2-y", "alias-3-y", "ok-1"])
    assert sum(third.processed.values()) == 0  # decided once, not redone on every rerun


def test_a_retried_writer_batch_never_leaves_a_key_twice(ray_local, tmp_path, sample_factory):
    import ray

    from pipelines.run_actors import KeyClaims, ShardNumbers
    from pipelines.runner import write_batch
    from pipelines.stages import batch_of
    from datagen.units import Item, Unit

    out = str(tmp_path / "ds")
    items = [Item(Unit(f"u{i}"), samples=[sample_factory(key=f"k{i}")]) for i in range(3)]
    numbers = ray.remote(num_cpus=0)(ShardNumbers).remote([])
    claims = ray.remote(num_cpus=0)(KeyClaims).remote(pa.array([], pa.string()))
    kw = dict(out=out, source="toy", numbers=numbers, claims=claims, run_id="r", max_shard_bytes=10**9,
              jpeg_quality=90)
    first = write_batch(batch_of(items), **kw)
    again = write_batch(batch_of(items), **kw)  # Ray reran the task: its first result was lost with a worker
    assert list(first["status"]) == list(again["status"]) == ["kept"] * 3
    state = ledger.Ledger.read(out, "toy")
    keys = [r["key"] for r in shards.read_table(out, shards.INDEX_FILE).to_pylist()]
    assert sorted(keys) == ["k0", "k1", "k2"] and len(shards.list_shards(out)) == 1
    assert state.summarize()["samples"] == 3


def write_cfg(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return str(path)


def test_writer_batches_are_bounded_by_bytes_as_well_as_units(tmp_path):
    """Issue 12 §4: 256 units of 1080p video frames and masks held ~18 GB in one writer task. A video unit is now
    bounded by its config (5 frames of at most 1536² pixels, RGB plus 4 subjects' masks), so 2 GB takes 24."""
    clip, mesh = tmp_path / "a.mp4", tmp_path / "a.glb"
    clip.touch()
    mesh.touch()
    video, objaverse = SOURCES["video"], SOURCES["objaverse"]
    writer = WriterConfig()
    unit = video.unit_bytes(video.Config(inputs=[str(clip)]))
    assert unit == 5 * 1536 * 1536 * (3 + 4)
    n = writer_batch_units(unit, writer)
    assert n == 24 and n * unit <= writer.max_batch_bytes < (n + 1) * unit and n < writer.units_per_shard
    # frames kept at full size are bounded by max_pixels: one unit a batch, never none
    full = video.unit_bytes(video.Config(inputs=[str(clip)], sampling={"max_side": None}))
    assert full > writer.max_batch_bytes and writer_batch_units(full, writer) == 1
    # 7 renders at 512² fit many times over: the unit count still caps the batch
    assert writer_batch_units(objaverse.unit_bytes(objaverse.Config(files=[str(mesh)])), writer) == 256


def test_a_tiny_byte_budget_writes_small_batches_and_every_unit_once(ray_local, tmp_path, capsys):
    """max_batch_bytes room for one unit: each writer call (one ledger part) takes one unit, though
    units_per_shard allows 3, and every unit and sample is written exactly once."""
    units = ["ok-0", "ok-1", "two-0"]
    out = tmp_path / "ds"
    cfg = PipelineConfig(out=str(out), writer=WriterConfig(units_per_shard=3,
                                                           max_batch_bytes=ToySource().unit_bytes(None) + 1))
    result = run_source(ToySource(), cfg, source_cfg=ToyConfig(units=units, actor=False))
    assert "writer batches of 1 units" in capsys.readouterr().out
    assert result.processed == {"kept": 3} and result.samples == 4
    rows = ledger.Ledger.read(str(out), "toy").rows.to_pylist()
    assert sorted(r["unit_id"] for r in rows) == sorted(units)
    assert set(Counter(r["part"] for r in rows).values()) == {1}  # one unit per writer call
    keys = [r["key"] for r in shards.read_table(str(out), shards.INDEX_FILE).to_pylist()]
    assert len(keys) == len(set(keys)) == 4 and validate(str(out)).ok


def test_bad_config_fails_before_any_work_naming_the_key(tmp_path, capsys):
    out = tmp_path / "never"
    ann = tmp_path / "a.json"
    ann.write_text("{}")
    cfg = write_cfg(tmp_path, f"out: {out}\nwritr: {{}}\nsources:\n  coco:\n    annotations: {ann}\n"
                              f"    images: {tmp_path}\n    prams: {{}}\n")
    assert cli_main(["coco", "--config", cfg]) == 2
    err = capsys.readouterr().err
    assert "writr: unknown key" in err and "sources.coco.prams: unknown key" in err
    cfg = write_cfg(tmp_path, f"out: {out}\nsources:\n  coco:\n    annotations: {tmp_path}/missing.json\n"
                              f"    images: {tmp_path}\n")
    assert cli_main(["coco", "--config", cfg]) == 2
    assert "sources.coco.annotations: Value error, path does not exist" in capsys.readouterr().err
    cfg = write_cfg(tmp_path, f"out: {out}\nsources:\n  coco:\n    annotations: {ann}\n    images: {tmp_path}\n"
                              "    params: {filters: {min_score: high}}\n")
    assert cli_main(["coco", "--config", cfg]) == 2
    assert "sources.coco.params.filters.min_score" in capsys.readouterr().err
    cfg = write_cfg(tmp_path, f"out: {out}\nsources:\n  video:\n    inputs: [{tmp_path}/clips]\n")
    assert cli_main(["video", "--config", cfg, "--models", "tiny"]) == 2
    assert "sources.video.inputs.0: Value error, path does not exist" in capsys.readouterr().err
    (tmp_path / "list.csv").write_text("file,caption\nx.mp4,a clip\n")  # no `path` column
    cfg = write_cfg(tmp_path, f"out: {out}\nsources:\n  video:\n    inputs: [{tmp_path}/list.csv]\n")
    assert cli_main(["video", "--config", cfg, "--models", "tiny"]) == 2  # inputs unreadable: refused, no traceback
    assert "sources.video: cannot list the inputs" in capsys.readouterr().err
    assert not out.exists()


def test_missing_weights_fail_at_start_up_with_fetch_hint(monkeypatch):
    from datagen import models

    with pytest.raises(models.MissingModelError, match="hf download Qwen/Qwen2-VL-2B-Instruct"):
        models.resolve(["captioner", "detector"], models.RegistryConfig(), "real")
    tiny = models.resolve(["captioner"], models.RegistryConfig(), "auto")
    assert tiny["captioner"].mode == "tiny" and models.synthetic(tiny)
    assert models.describe(tiny)["captioner"]["revision"] == "tiny"


def test_actor_pools_that_cannot_fit_are_refused_before_the_run():
    from pipelines.runner import ResourceError, check_resources
    from pipelines.stages import ActorStage, Resources, TaskStage

    model = lambda n, cpu, gpu=0.0: ActorStage(f"m{n}", dict, Resources(num_cpus=cpu, num_gpus=gpu))  # noqa: E731
    load = TaskStage("load", lambda it: it, Resources(num_cpus=1))
    check_resources([load, model(1, 0.5), model(2, 0.5)], 1.0, {"CPU": 2.0}, local=True)
    with pytest.raises(ResourceError, match=r"need 2 CPUs plus 1 for tasks, the cluster has 2.*m1: 1×\(1 CPU"):
        check_resources([load, model(1, 1), model(2, 1)], 1.0, {"CPU": 2.0}, local=True)
    with pytest.raises(ResourceError, match="need 1 GPUs, the cluster has 0"):
        check_resources([model(1, 0.1, 1.0)], 1.0, {"CPU": 8.0}, local=True)
    check_resources([model(1, 0.1, 1.0)], 1.0, {"CPU": 8.0}, local=False)  # a cluster may autoscale: warn only


def test_each_run_ends_by_writing_the_dataset_card_from_its_manifest(ray_local, tmp_path):
    from datagen.shards import card

    out = tmp_path / "ds"
    run(out, units=["ok-0", "two-0"])
    first = card.read_card(str(out)).data.to_dict()
    assert first["dataset_info"]["splits"][0]["num_examples"] == 3 and first["size_categories"] == ["n<1K"]
    run(out, units=["ok-0", "two-0", "ok-1", "bad-0"])  # the rerun's card is the updated dataset's
    again = card.read_card(str(out))
    assert again.data.to_dict()["dataset_info"]["splits"][0]["num_examples"] == 4
    assert "| toy | image | 4 | 3 | 0 | 1 | unknown |" in again.text
    assert validate(str(out)).ok  # README.md at the root is part of the contract (an optional file)
