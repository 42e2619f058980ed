"""Training from a bucket: the loader reads shards from a local S3 server (tests/s3_server.py) through fsspec with its
resume position, broken-shard handling and per-source mixing as on local disk."""

from __future__ import annotations

import io

import fsspec
import pytest

from datagen import shards
from tests.training.test_loader import data_cfg, mid_sample_cut
from tests.training.test_trainer import CONFIGS, overrides
from training import streams
from training.config import load_config
from training.loader import open_sources
from training.trainer import train


def upload(root: str, bucket: str, name: str) -> str:
    """The local dataset ``root`` copied to ``<bucket>/<name>``, as `aws s3 sync` would."""
    fs = fsspec.filesystem("s3")
    url = f"{bucket}/{name}"
    fs.put(f"{root}/", url, recursive=True)
    return url


@pytest.mark.slow  # three tiny trainings: ~1 min
def test_training_from_a_bucket_resumes_into_the_straight_local_run(colour_dataset, s3_bucket, tmp_path):
    local = colour_dataset(2, 4, name="tr")
    remote = upload(local, s3_bucket, "tr")
    assert shards.list_shards(remote) == shards.list_shards(local)
    common = {"train.max_steps": 4, "train.checkpoint_every": 2, "data.round_samples": 3}
    config = lambda data, out, **kw: load_config(CONFIGS / "stage1_tiny.yaml",  # noqa: E731
                                                 overrides(data, tmp_path / out, **{**common, **kw}))
    straight = train(config(local, "a"))
    first = train(config(remote, "b", **{"train.max_steps": 2}))
    resumed = train(config(remote, "b"), resume="latest")
    losses = first.losses + resumed.losses
    assert len(losses) == 4
    for a, b in zip(straight.losses, losses):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-7)


def test_a_truncated_shard_in_a_bucket_is_skipped_and_sources_mix_by_weight(colour_dataset, s3_bucket):
    a = upload(colour_dataset(4, 3, name="a"), s3_bucket, "a")
    b = upload(colour_dataset(4, 3, name="b"), s3_bucket, "b")
    fs, path = fsspec.core.url_to_fs(shards.shard_urls(a)[2])
    data = fs.cat_file(path)
    fs.pipe_file(path, data[: mid_sample_cut(io.BytesIO(data))])  # an upload cut mid-sample
    cfg = data_cfg([{"path": a, "weight": 1.0}, {"path": b, "weight": 3.0}], max_broken_fraction=0.25)
    sources = open_sources(cfg)
    names = [raw["__source__"] for r in range(8) for raw in streams.round_samples(sources, 0, False, 12, 0, 1, r)]
    assert len(names) == 96  # the stream went on past the broken shard: every round is full
    assert sources[0].broken.keys() == {2} and "ReadError" in sources[0].broken[2]
    assert abs(names.count(sources[1].name) / 96 - 0.75) < 0.1
