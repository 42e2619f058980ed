"""The same run on a two-node Ray cluster (`ray start --head` + `ray start --address=…` on this machine) writes
the same keys as a local run, with work spread over both nodes."""

import os
import socket
import subprocess
import sys

import fsspec
import pyarrow.parquet as pq
import pytest

from datagen import shards
from datagen.shards.validate import validate
from pipelines import ledger
from pipelines.config import PipelineConfig, RayConfig, WriterConfig
from pipelines.runner import run_source
from tests.pipelines.toy_source import ToyConfig, ToySource

pytestmark = pytest.mark.slow

UNITS = [f"ok-{i}" for i in range(16)] + ["two-0", "bad-0"]
RAY = [os.path.join(os.path.dirname(sys.executable), "ray")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster(tmp_path):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    port = free_port()
    common = ["--num-cpus=1", "--object-store-memory=200000000", "--disable-usage-stats"]
    subprocess.run(RAY + ["start", "--head", f"--port={port}", "--include-dashboard=false", *common],
                   check=True, env=env, capture_output=True, timeout=120)
    try:
        subprocess.run(RAY + ["start", f"--address=127.0.0.1:{port}", *common], check=True, env=env,
                       capture_output=True, timeout=120)
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run(RAY + ["stop", "--force"], env=env, capture_output=True, timeout=120)


def run(out, address=None):
    import ray

    cfg = PipelineConfig(out=str(out), ray=RayConfig(address=address, num_cpus=None if address else 2),
                         writer=WriterConfig(units_per_shard=2, input_blocks=18))
    try:
        return run_source(ToySource(), cfg, source_cfg=ToyConfig(units=UNITS, actor=False, seconds_per_unit=0.5))
    finally:
        ray.shutdown()


def writer_nodes(out) -> set[str]:
    """The nodes whose writers recorded the units: the ``node`` column of the ledger's parquet parts (its folder also
    holds the source's manifest section, a JSON file)."""
    fs, path = fsspec.core.url_to_fs(shards.join(str(out), ledger.LEDGER_DIR, "toy"))
    parts = [p for p in fs.ls(path, detail=False) if p.endswith(".parquet")]
    return set(pq.read_table(parts, filesystem=fs, columns=["node"])["node"].to_pylist())


def test_cluster_run_writes_the_same_keys_as_a_local_run(cluster, tmp_path):
    local, remote = tmp_path / "local", tmp_path / "cluster"
    run(local)
    result = run(remote, cluster)
    assert result.processed == {"kept": 17, "failed": 1}
    keys = lambda d: sorted(r["key"] for r in shards.read_table(str(d), shards.INDEX_FILE).to_pylist())  # noqa
    assert keys(remote) == keys(local) and len(keys(local)) == 18
    assert validate(str(remote)).ok
    assert len(writer_nodes(remote)) == 2, f"writers ran on {writer_nodes(remote)}"


def test_cluster_run_into_a_bucket_writes_the_same_keys_as_a_local_run(s3_server, cluster, tmp_path):
    """Both nodes' writers put into the local S3 server (the nodes inherit its endpoint from the environment)."""
    local, remote = tmp_path / "local", f"{s3_server.bucket()}/ds"
    run(local)
    result = run(remote, cluster)
    assert result.processed == {"kept": 17, "failed": 1}
    keys = lambda d: sorted(shards.read_table(str(d), shards.INDEX_FILE).column("key").to_pylist())  # noqa
    assert keys(remote) == keys(local) and len(keys(local)) == 18
    assert validate(remote).ok
    assert len(writer_nodes(remote)) == 2, f"writers ran on {writer_nodes(remote)}"
