"""Fault tests on a real local Ray: processes killed mid-run (a task worker, a model actor, the driver three
times); after the rerun the dataset holds exactly the keys of an uninterrupted run, each once."""

import os
import random
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from datagen import shards
from datagen.shards.validate import validate
from pipelines.config import PipelineConfig, RayConfig, WriterConfig
from pipelines.runner import run_source
from tests.pipelines.toy_source import ToyConfig, ToySource

UNITS = [f"ok-{i}" for i in range(16)] + ["two-0", "two-1", "bad-0", "reject-0"]
# Every unit kept, each "two" making two samples; "bad" and "reject" are quarantined.
EXPECTED = sorted([f"toy-ok-{i}-0" for i in range(16)] + [f"toy-two-{i}-{k}" for i in range(2) for k in range(2)])


def config(out, num_cpus=None):
    # a writer of half a CPU runs beside the stages, so shards appear all along the run (kills land mid-writing)
    writer = WriterConfig(units_per_shard=2, num_cpus=0.5)
    return PipelineConfig(out=str(out), ray=RayConfig(num_cpus=num_cpus), writer=writer)


def toy(seconds):
    return ToyConfig(units=UNITS, seconds_per_unit=seconds)


def index_keys(out):
    return sorted(r["key"] for r in shards.read_table(str(out), shards.INDEX_FILE).to_pylist())


def shard_keys(out):
    return sorted(s.key for s in shards.iter_samples(str(out)))


def assert_complete(out):
    assert index_keys(out) == EXPECTED  # sorted lists: a duplicate would show
    assert shard_keys(out) == EXPECTED
    report = validate(str(out))
    assert report.ok, report.violations


def kill_first(title_part, deadline, killed):
    """SIGKILL the first worker of this test's own Ray whose title names ``title_part`` (never another Ray's:
    other runs may share the machine). Workers are children of the raylet, found through Ray's node record."""
    import ray._private.worker

    raylet = psutil.Process(ray._private.worker._global_node.all_processes["raylet"][0].process.pid)
    while time.time() < deadline:
        for p in raylet.children(recursive=True):
            try:
                if title_part in " ".join(p.cmdline()):
                    p.send_signal(signal.SIGKILL)
                    killed.append(title_part)
                    return
            except psutil.Error:
                continue
        time.sleep(0.05)


def test_killed_task_worker_and_model_actor_are_redone_without_duplicates(ray_local, tmp_path):
    out = tmp_path / "ds"
    killed = []
    deadline = time.time() + 120

    def killer():
        kill_first("ray::MapWorker(", deadline, killed)  # the model actor (load fused into it), once it works
        kill_first("write_batch", deadline, killed)  # a shard writer task, mid-batch

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    result = run_source(ToySource(), config(out), source_cfg=toy(0.4))
    thread.join(timeout=1)
    assert killed == ["ray::MapWorker(", "write_batch"], "the run ended before both kills"
    assert result.processed == {"kept": 18, "failed": 1, "filtered": 1}
    assert_complete(out)


DRIVER = """
import sys
from pipelines.runner import run_source
from tests.pipelines.test_faults import config, toy
from tests.pipelines.toy_source import ToySource

run_source(ToySource(), config(sys.argv[1], num_cpus=2), source_cfg=toy(float(sys.argv[2])))
"""


def start_driver(out, seconds):
    """A run in its own process; its output goes to ``<out>.<n>.log`` (a pipe would fill and block it)."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    n = len(list(out.parent.glob(f"{out.name}.*.log")))
    with open(out.parent / f"{out.name}.{n}.log", "w") as log:
        p = subprocess.Popen([sys.executable, "-c", DRIVER, str(out), str(seconds)], env=env, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
    p.log = log.name
    return p


def finish(driver, timeout=600):
    """Wait for a driver; its exit status and the end of its output."""
    code = driver.wait(timeout=timeout)
    with open(driver.log) as f:
        return code, f.read()[-3000:]


@pytest.mark.slow
def test_two_runs_started_at_once_into_one_output(tmp_path):
    """The issue's case: both runs 'succeeded' and left an empty, invalid dataset. Now one is refused."""
    out = tmp_path / "ds"
    runs = [start_driver(out, 0.1) for _ in range(2)]
    results = [finish(r) for r in runs]
    assert sorted(code for code, _ in results) == [0, 1], [err[-2000:] for _, err in results]
    refused = next(err for code, err in results if code)
    assert "OutputLocked" in refused and "is in use by another run (source toy on host" in refused
    assert_complete(out)


@pytest.mark.slow
def test_driver_killed_three_times_then_rerun_writes_each_key_once(tmp_path):
    reference = tmp_path / "uninterrupted"
    t0 = time.time()
    code, log = finish(start_driver(reference, 0.3))
    assert code == 0, log
    duration = time.time() - t0
    assert_complete(reference)

    out = tmp_path / "ds"
    rng = random.Random(int(os.environ.get("FAULT_SEED", time.time())))
    kills = []
    for _ in range(3):
        driver = start_driver(out, 0.3)
        at = rng.uniform(0.3, 0.9) * duration  # a random point of a run (reruns are shorter: some land late)
        end, ray_processes = time.time() + at, []
        while time.time() < end and driver.poll() is None:
            ray_processes = psutil.Process(driver.pid).children(recursive=True) or ray_processes
            time.sleep(0.1)
        kills.append((round(at, 1), driver.poll() is None, len(shards.list_shards(str(out)))))
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        # Ray's processes share the driver's fate: no worker may go on writing into the output. (Ray's dashboard
        # and runtime-env agents, which write nothing there, can linger for minutes: the test ends them.)
        _, alive = psutil.wait_procs(ray_processes, timeout=30)
        workers = [p for p in alive if "Agent" not in p.name()]
        for p in alive:
            p.kill()
        assert not workers, f"Ray processes outlived their driver: {workers}"
    print(f"uninterrupted run {duration:.0f}s; kills (after s, still running, shards then): {kills}")
    assert sum(running for _, running, _ in kills) >= 2, "the kills missed the runs"
    code, log = finish(start_driver(out, 0.0))
    assert code == 0, log
    assert index_keys(out) == index_keys(reference)
    assert_complete(out)
