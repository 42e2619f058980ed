"""Datasets on object storage, end to end against a local S3 server (tests/s3_server.py): inputs read from the bucket,
the dataset written to ``s3://bucket/ds``, inspected there, rerun; credentials never in the logs or the dataset."""

from __future__ import annotations

import json
import os
import uuid

import fsspec
import pytest
import yaml

from datagen import shards
from datagen.samples import coco
from datagen.shards.__main__ import main as shards_main
from pipelines.cli import main as cli_main


def upload(local_dir: str, url: str) -> str:
    fsspec.filesystem("s3").put(f"{local_dir}/", url, recursive=True)
    return url


def objects(url: str) -> dict[str, bytes]:
    fs, root = fsspec.core.url_to_fs(url)
    return {p: fs.cat_file(p) for p in fs.find(root)}


def test_coco_from_a_bucket_into_a_bucket_with_credentials_only_in_the_config(s3_server, tmp_path, monkeypatch,
                                                                             capfd):
    import ray
    import s3fs

    bucket = s3_server.bucket()
    inputs = upload(os.path.dirname(coco.make(str(tmp_path / "inputs"))["annotations"]), f"{bucket}/inputs/coco")
    key, secret = f"KEY{uuid.uuid4().hex[:12].upper()}", f"secret-{uuid.uuid4().hex}"
    doc = {"out": f"{bucket}/ds", "models": "tiny", "ray": {"num_cpus": 2}, "writer": {"units_per_shard": 2},
           "storage_options": {"s3": {"endpoint_url": s3_server.endpoint, "key": key, "secret": secret}},
           "sources": {"coco": {"annotations": f"{inputs}/instances.json", "images": f"{inputs}/images"}}}
    config = tmp_path / "s3.yaml"
    config.write_text(yaml.safe_dump(doc))
    # the endpoint and credentials come from the config alone: none in the environment, none cached
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("FSSPEC_S3", "{}")  # restored (removed) after the test, as is fsspec's config
    monkeypatch.setitem(fsspec.config.conf, "s3", dict(fsspec.config.conf.get("s3", {})))
    s3fs.S3FileSystem.clear_instance_cache()
    ray.shutdown()  # a Ray of the run's own: its workers inherit the storage variables the CLI sets before it starts
    try:
        assert cli_main(["coco", "--config", str(config)]) == 0
        ray_logs = os.path.join(ray._private.worker._global_node.get_session_dir_path(), "logs")
        first = shards.read_table(doc["out"], shards.INDEX_FILE).column("key").to_pylist()
        assert len(first) >= 2
        assert cli_main(["coco", "--config", str(config)]) == 0  # the rerun lists and writes nothing
    finally:
        ray.shutdown()
    runs = capfd.readouterr()
    rerun = runs.out.split("== coco:")[-1]
    assert "0 processed" in rerun and f"{len(first)} samples" in rerun
    assert sorted(shards.read_table(doc["out"], shards.INDEX_FILE).column("key").to_pylist()) == sorted(first)
    assert shards_main(["validate", doc["out"]]) == 0
    printed = capfd.readouterr()
    assert shards_main(["stats", doc["out"], "--json"]) == 0
    stats = json.loads(capfd.readouterr().out)
    assert stats["samples"] == len(first)
    assert shards_main(["view", doc["out"], "--out", str(tmp_path / "g.html")]) == 0
    assert (tmp_path / "g.html").read_text().count("<img") >= len(first)
    # neither the secret nor the key id in what the runs printed, in Ray's logs, or anywhere in the dataset
    shown = runs.out + runs.err + printed.out + printed.err + "".join(capfd.readouterr())
    for name, text in [("output", shown), *(
            (p, open(p, "rb").read().decode("utf-8", "replace")) for p in _files(ray_logs))]:
        assert secret not in text and key not in text, name
    stored = objects(doc["out"])
    assert f"{doc['out'][5:]}/manifest.json" in stored
    assert not [p for p, data in stored.items() if secret.encode() in data or key.encode() in data]


def _files(root: str) -> list[str]:
    return [os.path.join(d, f) for d, _, names in os.walk(root) for f in names]
