"""Object storage at length, against the local S3 server (``make test-slow``): every source from the bucket, a driver
killed mid-run, a shard upload killed mid-way, resume start-up over 100 k objects, two drivers at once."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time

import fsspec
import PIL.Image
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from datagen import shards
from datagen.samples import make_all
from datagen.shards.validate import validate
from pipelines import ledger
from pipelines.cli import main as cli_main
from pipelines.config import PipelineConfig, WriterConfig
from pipelines.lock import LockConfig
from pipelines.runner import run_source
from tests import img2dataset_layout
from tests.pipelines.test_faults import EXPECTED
from tests.pipelines.test_sample_dataset import CONFIG, relocated
from tests.pipelines.toy_source import ToyConfig, ToySource

pytestmark = pytest.mark.slow

FAST = LockConfig(expiry_s=3, heartbeat_s=0.5)


def uploads(url: str) -> list[dict]:
    fs, path = fsspec.core.url_to_fs(url)
    bucket, prefix, _ = fs.split_path(path)
    return fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix).get("Uploads", [])


def index_keys(out: str) -> list[str]:
    return sorted(shards.read_table(out, shards.INDEX_FILE).column("key").to_pylist())


def img2dataset_folder(listing: str, folder: str) -> None:
    """The URL list's photos as img2dataset stored them (webdataset output): the files that decode, the rest as
    failed downloads."""
    rows = []
    for r in map(json.loads, open(listing)):
        path = r["url"].removeprefix("file://")
        try:
            with PIL.Image.open(path) as im:
                im.load()
                size = im.size
        except (OSError, ValueError) as e:
            rows.append({**r, "status": "failed_to_download", "error": str(e)})
            continue
        rows.append({**r, "jpg": open(path, "rb").read(), "size": size})
    img2dataset_layout.write(folder, rows, "webdataset")


def test_every_source_reads_its_inputs_from_the_bucket_and_writes_there(s3_server, tmp_path):
    """Clips, meshes (GLB, glTF and OBJ with their side files, PLY), COCO and DeepFashion2 layouts, a URL list whose
    URLs point into the bucket, and an img2dataset folder: each read from the bucket, each writing samples there."""
    import ray

    bucket = s3_server.bucket()
    inputs = str(tmp_path / "inputs")
    make_all(inputs)
    remote = f"{bucket}/inputs"
    listing = os.path.join(inputs, "urls", "urls.jsonl")
    img2dataset_folder(listing, os.path.join(inputs, "laion-out"))
    rows = [json.loads(line) for line in open(listing)]
    with open(listing, "w") as f:  # the list's URLs too point into the bucket
        f.writelines(json.dumps({**r, "url": r["url"].replace(f"file://{os.path.abspath(inputs)}", remote)}) + "\n"
                     for r in rows)
    fsspec.filesystem("s3").put(f"{inputs}/", remote, recursive=True)
    with open(CONFIG) as f:
        doc = relocated(yaml.safe_load(f), remote)
    doc["sources"]["urls"]["download"]["schemes"] = ["http", "https", "s3"]
    doc["out"] = f"{bucket}/ds"
    from_img2dataset = {**doc, "sources": {"urls": {**doc["sources"]["urls"], "url_list": None,
                                                    "img2dataset": f"{remote}/laion-out"}},
                        "out": f"{bucket}/ds-img2dataset"}
    configs = {}
    for name, d in (("sample", doc), ("img2dataset", from_img2dataset)):
        configs[name] = tmp_path / f"{name}.yaml"
        configs[name].write_text(yaml.safe_dump(d))
    ray.shutdown()  # a Ray of the run's own: its workers inherit the storage variables the CLI sets before it starts
    try:
        assert cli_main(["all", "--config", str(configs["sample"]), "--models", "tiny"]) == 0
        assert cli_main(["urls", "--config", str(configs["img2dataset"]), "--models", "tiny"]) == 0
    finally:
        ray.shutdown()
    samples = {}
    for d in (doc, from_img2dataset):
        report = validate(d["out"])
        assert report.ok, report.violations
        manifest = shards.read_manifest(d["out"])
        samples |= {f"{name}{'' if d is doc else ' (img2dataset)'}": manifest["sources"][name]["counts"]["samples"]
                    for name in d["sources"]}
    assert len(samples) == 6 and all(n >= 1 for n in samples.values()), samples
    meshes = {s.provenance["file"] for s in shards.iter_samples(doc["out"]) if s.source == "objaverse"}
    assert {"teal_vase.gltf", "orange_ring.obj"} <= meshes, meshes


DRIVER = """
import sys
from pipelines.config import PipelineConfig, WriterConfig
from pipelines.lock import LockConfig
from pipelines.runner import run_source
from tests.pipelines.test_faults import toy
from tests.pipelines.toy_source import ToySource

cfg = PipelineConfig(out=sys.argv[1], writer=WriterConfig(units_per_shard=2, num_cpus=0.5),
                     lock=LockConfig(expiry_s=3, heartbeat_s=0.5))
run_source(ToySource(), cfg, source_cfg=toy(float(sys.argv[2])))
"""


def start_driver(out: str, seconds: float, log: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    with open(log, "w") as f:
        p = subprocess.Popen([sys.executable, "-c", DRIVER, out, str(seconds)], env=env, stdout=f,
                             stderr=subprocess.STDOUT, start_new_session=True)
    p.log = log
    return p


def finish(driver: subprocess.Popen) -> tuple[int, str]:
    code = driver.wait(timeout=900)
    with open(driver.log) as f:
        return code, f.read()[-3000:]


def test_driver_killed_mid_run_then_rerun_gives_each_key_once(s3_server, tmp_path):
    out = f"{s3_server.bucket()}/ds"
    driver = start_driver(out, 0.3, str(tmp_path / "1.log"))
    while not shards.list_shards(out) and driver.poll() is None:  # mid-run: shards being written
        time.sleep(0.1)
    children = psutil.Process(driver.pid).children(recursive=True)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    for survivor in psutil.wait_procs(children, timeout=30)[1]:  # its local Ray, if it outlived the driver
        with contextlib.suppress(psutil.NoSuchProcess):
            survivor.kill()
    partial = len(shards.list_shards(out))
    time.sleep(FAST.expiry_s + 1)  # the killed driver's lease expires
    code, log = finish(start_driver(out, 0.0, str(tmp_path / "2.log")))
    assert code == 0, log
    assert 0 < partial and index_keys(out) == EXPECTED and not uploads(out)
    assert sorted(s.key for s in shards.iter_samples(out)) == EXPECTED
    assert validate(out).ok


def test_two_drivers_started_at_once_one_is_refused(s3_server, tmp_path):
    out = f"{s3_server.bucket()}/ds"
    runs = [start_driver(out, 0.1, str(tmp_path / f"{i}.log")) for i in range(2)]
    results = [finish(r) for r in runs]
    assert sorted(code for code, _ in results) == [0, 1], [log for _, log in results]
    refused = next(log for code, log in results if code)
    assert "OutputLocked" in refused and "is in use by another run (source toy on host" in refused
    assert index_keys(out) == EXPECTED and validate(out).ok


UPLOADER = """
import os, sys
from datagen import shards
with shards.ShardWriter(sys.argv[1], lambda: "toy-000000.tar") as w:  # > 2 x s3fs's 50 MB part: multipart
    w.write({"__key__": "big", "bin": os.urandom(120 * 2**20)})
"""


def test_shard_upload_killed_mid_way_is_aborted_by_the_next_run(s3_server, tmp_path, ray_local):
    out = f"{s3_server.bucket()}/ds"
    uploader = subprocess.Popen([sys.executable, "-c", UPLOADER, shards.join(out, shards.SHARDS_DIR)])
    deadline = time.time() + 300
    while not uploads(out) and uploader.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    uploader.send_signal(signal.SIGKILL)  # mid-upload: parts sent, the upload neither completed nor aborted
    uploader.wait()
    assert uploads(out), "the upload finished before the kill"
    assert not shards.list_shards(out)  # no partial object is visible
    cfg = PipelineConfig(out=out, writer=WriterConfig(units_per_shard=2), lock=FAST)
    result = run_source(ToySource(), cfg, source_cfg=ToyConfig(units=["ok-0", "ok-1"]))
    assert result.samples == 2 and not uploads(out)
    assert validate(out).ok


@pytest.mark.timeout(3600)  # moto's listing scans every key of the bucket per page: ~O(n²/1000) in its thread
def test_resume_start_up_over_100k_objects(s3_server, monkeypatch, capsys):
    """A finished dataset of 100,000 shard objects (a byte each: no media) named by a ledger segment and an index
    file, put straight into the test's server; a rerun lists them all, reconciles and has nothing to do (no Ray).
    Prints what start-up cost: its list requests and seconds, and how much of it the server (moto) spent."""
    from moto.backends import get_backend
    from moto.s3.models import S3Backend

    n = 100_000
    bucket = s3_server.bucket()
    out = f"{bucket}/ds"
    name = bucket.removeprefix("s3://")
    store = get_backend("s3")["123456789012"]["global"]
    names = [shards.shard_name("toy", i) for i in range(n)]
    for shard in names:
        store.put_object(name, f"ds/shards/{shard}", b"\0")
    units = [f"ok-{i}" for i in range(n)]
    stem = "toy-seg-20260101000000-00000000"
    rows = pa.table({"part": ["p0"] * n, "time": [0.0] * n, "run_id": ["r"] * n, "node": [""] * n,
                     "unit_id": units, "status": ["kept"] * n, "stage": [""] * n, "reason": [""] * n,
                     "detail": [""] * n, "keys": [[f"toy-{u}-0"] for u in units], "shards": [[s] for s in names],
                     "drops": [[] for _ in units]}, schema=ledger.PART_SCHEMA)
    index = pa.Table.from_pylist([{"key": f"toy-{u}-0", "shard": s, "source": "image"} for u, s in zip(units, names)],
                                 schema=shards.INDEX_SCHEMA)
    for key, table in ((f"ds/{ledger.LEDGER_DIR}/toy/{stem}.parquet", rows),
                       (f"ds/{shards.INDEX_FILE}/{stem}.parquet", index)):
        buf = io.BytesIO()
        pq.write_table(table, buf)
        store.put_object(name, key, buf.getvalue())

    served = {"requests": 0, "seconds": 0.0}  # list requests as the server saw them, and its time in them
    real_list = S3Backend.list_objects_v2

    def timed_list(self, *args, **kwargs):
        t = time.perf_counter()
        try:
            return real_list(self, *args, **kwargs)
        finally:
            served["requests"] += 1
            served["seconds"] += time.perf_counter() - t

    monkeypatch.setattr(S3Backend, "list_objects_v2", timed_list)
    cfg = PipelineConfig(out=out, writer=WriterConfig(units_per_shard=256))
    t0 = time.perf_counter()
    result = run_source(ToySource(), cfg, source_cfg=ToyConfig(units=units))
    seconds = time.perf_counter() - t0
    assert result.skipped == n and result.counts["units_kept"] == n and not sum(result.processed.values())
    assert len(shards.list_shards(out)) == n  # reconcile removed nothing
    with capsys.disabled():
        print(f"\nresume start-up over {n + 2:,} objects in the bucket: {seconds:.1f} s, {served['requests']} list "
              f"requests, {served['seconds']:.1f} s of it inside the server's listing, "
              f"{seconds - served['seconds']:.1f} s the engine's (and HTTP)")
