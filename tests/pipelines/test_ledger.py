"""The ledger without Ray: parts as writers leave them, then what a rerun reads, keeps, drops and counts.

Datasets live under ``data/coco[1]``: a path a glob would read as a pattern (matching a sibling ``coco1``)."""

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datagen import shards
from pipelines import ledger
from pipelines.run_actors import KeyClaims
from tests.shard_factory import make_sample


@pytest.fixture
def out(tmp_path):
    return str(tmp_path / "data" / "coco[1]")


def write(out, number, units, status="kept"):
    """One writer batch: a shard with the units' samples (unit id → keys), its index rows, its ledger part."""
    name = shards.shard_name("toy", number)
    index, records = [], []
    with shards.ShardWriter(shards.join(out, shards.SHARDS_DIR), lambda: name) as w:
        for uid, keys in units.items():
            for k in keys:
                s = make_sample(key=k)
                index.append(shards.index_row(s, w.write(shards.encode_sample(s))))
            if status == "kept":
                records.append(ledger.unit_record(uid, status, keys, [name], drops={"load/box_aspect": 1}))
            else:
                records.append(ledger.unit_record(uid, status, stage="load", reason="corrupt", detail=uid))
    return ledger.write_part(out, "toy", "run", records, pa.Table.from_pylist(index, schema=shards.INDEX_SCHEMA))


def index_keys(out):
    return sorted(shards.read_table(out, shards.INDEX_FILE)["key"].to_pylist())


def test_key_claims_refuse_another_units_key_and_allow_a_retry():
    claims = KeyClaims(pa.array(["k-old"]))
    refused = claims.claim({"u1": ["k-old"], "u2": ["k2", "k3"], "u3": ["k9", "k3"], "u4": ["k4", "k4"]})
    assert set(refused) == {"u1", "u3", "u4"}
    assert "already in the dataset" in refused["u1"] and "unit u2" in refused["u3"]
    assert claims.claim({"u2": ["k2", "k3"]}) == {}  # the same unit again: a retried writer batch
    assert claims.claim({"u5": ["k9"]}) == {}  # u3 was refused, so its other key stayed free


def test_retried_batch_keeps_the_first_copy_only(out):
    write(out, 0, {"u0": ["k0"], "u1": ["k1"]})
    write(out, 1, {"u0": ["k0"], "u1": ["k1"]})  # Ray ran the writer batch again after a crash
    state = ledger.Ledger.read(out, "toy")
    assert shards.list_shards(out) == ["toy-000000.tar"]
    assert index_keys(out) == ["k0", "k1"]
    assert len(state.files) == 1 and state.summarize()["samples"] == 2
    assert sorted(state.done(retry_failed=False).to_pylist()) == ["u0", "u1"]


def test_missing_shard_redoes_its_part_alone_and_orphans_go(out):
    write(out, 0, {"u0": ["k0"]})
    write(out, 1, {"u1": ["k1"], "u2": ["k2"]})
    write(out, 2, {"u3": ["k3"]})
    with shards.ShardWriter(shards.join(out, shards.SHARDS_DIR), lambda: "toy-000009.tar") as w:
        w.write(shards.encode_sample(make_sample(key="k9")))  # a crash before its part was written
    state = ledger.Ledger.read(out, "toy")
    state.merge_loose()  # the end of that run: one segment
    assert len(state.files) == 1 and shards.list_shards(out) == [f"toy-00000{i}.tar" for i in range(3)]
    os.remove(shards.join(out, shards.SHARDS_DIR, "toy-000001.tar"))
    state = ledger.Ledger.read(out, "toy")
    assert sorted(state.done(retry_failed=False).to_pylist()) == ["u0", "u3"]
    assert index_keys(out) == ["k0", "k3"]  # the segment's index file was rewritten without that shard
    assert ledger.Ledger.read(out, "toy").summarize()["units"] == 2  # and its ledger file too


def test_a_sibling_that_a_glob_would_match_is_left_alone(out, tmp_path):
    sibling = str(tmp_path / "data" / "coco1")  # "coco[1]" as a glob pattern matches "coco1"
    write(sibling, 0, {"s0": ["s0"]})
    write(out, 0, {"u0": ["k0"]})
    ledger.Ledger.read(out, "toy")
    ledger.Ledger.read(out, "toy").merge_loose()
    assert shards.list_shards(sibling) == ["toy-000000.tar"] and index_keys(sibling) == ["s0"]
    assert len(os.listdir(os.path.join(sibling, ledger.LEDGER_DIR, "toy"))) == 1


def test_retried_failure_replaces_the_old_outcome_and_merging_drops_it(out):
    write(out, 0, {"u0": []}, status="failed")
    write(out, 1, {"u1": ["k1"]})
    state = ledger.Ledger.read(out, "toy")
    state.merge_loose()
    assert state.summarize()["units_failed"] == 1
    assert state.quarantine()["unit_id"].to_pylist() == ["u0"]
    write(out, 2, {"u0": ["k0"]})  # a run with --retry-failed
    state.refresh(retried=True)
    state.merge_loose()
    counts = state.summarize()
    assert (counts["units"], counts["units_kept"], counts["units_failed"]) == (2, 2, 0)
    assert counts["dropped"] == {"load/box_aspect": 2}
    assert state.quarantine().num_rows == 0
    rows = pq.read_table(os.path.join(out, ledger.LEDGER_DIR, "toy"))
    assert sorted(rows["unit_id"].to_pylist()) == ["u0", "u1"]  # the superseded row is gone from the segment


def test_crash_while_merging_leaves_no_second_copy(out):
    write(out, 0, {"u0": ["k0"]})
    loose = write(out, 1, {"u1": ["k1"]})
    root = os.path.join(out, ledger.LEDGER_DIR, "toy")
    keep = open(os.path.join(root, f"{loose}.parquet"), "rb").read()
    state = ledger.Ledger.read(out, "toy")
    state.merge_loose()
    with open(os.path.join(root, f"{loose}.parquet"), "wb") as f:  # as if deleting the loose copy never happened
        f.write(keep)
    state = ledger.Ledger.read(out, "toy")
    assert sorted(os.listdir(root)) == [f"{s}.parquet" for s in state.files] and len(state.files) == 1
    assert state.summarize()["units"] == 2 and index_keys(out) == ["k0", "k1"]


def test_a_v1_ledger_is_refused_before_anything_is_deleted(out):
    write(out, 0, {"u0": ["k0"]})
    with open(os.path.join(out, ledger.LEDGER_DIR, "toy", "toy-000000-0123abcd.json"), "w") as f:
        f.write("{}")
    with pytest.raises(ValueError, match="format v1 ledger"):
        ledger.Ledger.read(out, "toy")
    assert shards.list_shards(out) == ["toy-000000.tar"]
