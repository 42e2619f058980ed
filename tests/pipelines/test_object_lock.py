"""The output lock of an object-store output, against a local S3 server: a lease object taken with a conditional
write (pipelines/lease.py). Drivers are separate processes, as on two machines: they share only the bucket."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import fsspec
import pytest

from datagen import shards
from datagen.shards.validate import validate
from pipelines import runner
from pipelines.lease import LeaseLost
from pipelines.config import PipelineConfig, WriterConfig
from pipelines.lock import LOCK_FILE, LockConfig, OutputError, OutputLocked, OutputLost, output_lock
from pipelines.runner import run_source
from tests.pipelines.toy_source import ToyConfig, ToySource

FAST = LockConfig(expiry_s=4, heartbeat_s=0.5)  # the defaults (60 s, 10 s) scaled down for tests

HOLDER = ("import sys, time; from pipelines.lock import LockConfig, output_lock; "
          "lock = output_lock(sys.argv[1], 'coco', LockConfig(expiry_s=4, heartbeat_s=0.5)); lock.__enter__(); "
          "print('held', flush=True); time.sleep(600)")


def hold_lease(out):
    """Another driver (a run of `coco`) holding the output's lease until killed."""
    p = subprocess.Popen([sys.executable, "-c", HOLDER, out], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def lease_record(out):
    with fsspec.open(shards.join(out, LOCK_FILE), "r") as f:
        return json.load(f)


def no_work(monkeypatch):
    monkeypatch.setattr(runner, "init_ray", lambda cfg: pytest.fail("the run started work"))


def run(out, units, seconds=0.0, lock=FAST):
    cfg = PipelineConfig(out=out, writer=WriterConfig(units_per_shard=2, num_cpus=0.5), lock=lock)
    return run_source(ToySource(), cfg, source_cfg=ToyConfig(units=units, seconds_per_unit=seconds))


@pytest.mark.slow  # waits out an expiry and runs Ray
def test_second_driver_is_refused_naming_the_owner_and_takes_over_once_the_killed_ones_lease_expires(
        s3_bucket, ray_local, monkeypatch):
    out = f"{s3_bucket}/ds"
    holder = hold_lease(out)
    try:
        with monkeypatch.context() as m:
            no_work(m)
            with pytest.raises(OutputLocked) as e:
                run(out, ["ok-0"])
        assert f"source coco on host {socket.gethostname()}, pid {holder.pid}, started 20" in str(e.value)
        holder.send_signal(signal.SIGKILL)  # dies holding the lease: no release, no more heartbeats
        holder.wait()
        killed_at = time.time()
        with monkeypatch.context() as m:
            no_work(m)
            with pytest.raises(OutputLocked, match=f"pid {holder.pid}"):  # not yet expired
                run(out, ["ok-0"])
        time.sleep(max(0.0, killed_at + FAST.expiry_s + 1.5 - time.time()))
        result = run(out, ["ok-0", "two-0"])
    finally:
        holder.kill()
        holder.wait()
    assert result.samples == 3 and validate(out).ok
    fs, path = fsspec.core.url_to_fs(shards.join(out, LOCK_FILE))
    assert not fs.exists(path)  # released at the end of the run


@pytest.fixture(params=["s3", "gs"])
def bucket(request) -> str:
    """A new bucket on the local S3 server (If-None-Match / If-Match) or the local GCS emulator (generations)."""
    return request.getfixturevalue(f"{request.param.replace('gs', 'gcs')}_bucket")


def test_the_lease_is_renewed_while_held_and_released_at_the_end(bucket):
    out = f"{bucket}/ds"
    with output_lock(out, "toy", FAST) as held:
        first = lease_record(out)
        assert first["pid"] == os.getpid() and first["source"] == "toy" and first["expiry_s"] == FAST.expiry_s
        time.sleep(FAST.expiry_s + 1.5)  # longer than the expiry: only the heartbeat keeps it
        with pytest.raises(OutputLocked, match=f"pid {os.getpid()}"):
            with output_lock(out, "other", FAST):
                pass
        held.guard.check()
        assert lease_record(out)["token"] == first["token"]
    fs, path = fsspec.core.url_to_fs(shards.join(out, LOCK_FILE))
    assert not fs.exists(path)


@pytest.mark.slow  # a Ray run
def test_a_run_that_lost_its_lease_stops_writing(s3_bucket, ray_local):
    """A driver cut off past its expiry (here: its lease overwritten, as a taking-over run does) writes no shard
    and no ledger part after it learns so, and does not finish as if complete."""
    out = f"{s3_bucket}/ds"
    fs, lock_path = fsspec.core.url_to_fs(shards.join(out, LOCK_FILE))
    taken = {}

    def take_over():
        while not shards.list_shards(out):  # the run is writing
            time.sleep(0.05)
        record = {"source": "thief", "host": "elsewhere", "pid": 1, "start_time": "2026", "token": "theirs"}
        fs.pipe_file(lock_path, json.dumps(record).encode())
        taken["at"] = time.time()

    thread = threading.Thread(target=take_over, daemon=True)
    thread.start()
    units = [f"ok-{i}" for i in range(24)]
    with pytest.raises(OutputLost, match="lost its lease.*taken over by source thief on host elsewhere"):
        run(out, units, seconds=0.3)
    thread.join()
    time.sleep(3)  # writer tasks still in flight when the driver stopped
    fs.invalidate_cache()
    late = [p for p in fs.find(f"{fs._strip_protocol(out)}/")
            if ("/shards/" in p or "/_ledger/" in p) and fs.info(p)["LastModified"].timestamp() > taken["at"] + 1.5]
    assert not late, f"written after the lease was lost: {late}"
    assert len(shards.list_shards(out)) < 12, "the run went on to the end"


@pytest.mark.slow  # waits out an expiry, twice
def test_a_second_driver_is_refused_naming_the_owner_and_takes_over_once_the_killed_ones_lease_expires(bucket):
    """The lease alone (no Ray), on both stores: a live holder in another process keeps a second driver out; killed,
    its lease is taken over after its expiry."""
    out = f"{bucket}/ds"
    holder = hold_lease(out)
    try:
        with pytest.raises(OutputLocked, match=f"source coco on host {socket.gethostname()}, pid {holder.pid}"):
            with output_lock(out, "toy", FAST):
                pass
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        time.sleep(FAST.expiry_s + 1.5)
        with output_lock(out, "toy", FAST) as held:
            held.guard.check()
            assert lease_record(out)["source"] == "toy"
    finally:
        holder.kill()
        holder.wait()


def test_a_holder_whose_lease_was_overwritten_has_lost_it(bucket):
    """A taking-over run replaced the lease object: the holder's next renewal (conditional on the version it wrote)
    is refused, and both its own check and its writers' guard say so."""
    out = f"{bucket}/ds"
    fs, lock_path = fsspec.core.url_to_fs(shards.join(out, LOCK_FILE))
    with pytest.raises(OutputLost, match="taken over by source thief on host elsewhere"):
        with output_lock(out, "toy", FAST) as held:
            record = {"source": "thief", "host": "elsewhere", "pid": 1, "start_time": "2026", "token": "theirs"}
            fs.pipe_file(lock_path, json.dumps(record).encode())
            time.sleep(FAST.heartbeat_s * 4)
            with pytest.raises(LeaseLost, match="taken over by source thief"):
                held.guard.check()
            held.check()
    assert lease_record(out)["token"] == "theirs"  # the holder did not remove the new owner's lease


def test_a_store_without_conditional_writes_is_refused_unless_the_config_accepts_the_risk(monkeypatch, tmp_path):
    out = f"memory://{tmp_path.name}/ds"  # fsspec's in-memory store: no conditional writes
    no_work(monkeypatch)
    with pytest.raises(OutputError, match="no conditional writes.*lock.unsafe_without_conditional_writes"):
        run(out, ["ok-0"])
    with output_lock(out, "toy", LockConfig(unsafe_without_conditional_writes=True)) as held:
        assert held is None  # the local-file fallback
        with pytest.raises(OutputLocked):
            with output_lock(out, "toy", LockConfig(unsafe_without_conditional_writes=True)):
                pass

