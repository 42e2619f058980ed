"""Shared fixtures. Tests never touch a model hub: keep every model tiny and every input made here."""

import os

import pytest

pytest_plugins = ["tests.s3_server", "tests.gcs_server"]  # s3_server, s3_bucket (moto's server), gcs_server, gcs_bucket
# (fake-gcs-server): local object-store endpoints

# Tests run on CPU with tiny models; one thread per process keeps concurrent test processes from thrashing.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture
def sample_factory():
    from tests.shard_factory import make_sample

    return make_sample


@pytest.fixture
def dataset_factory(tmp_path):
    from tests.shard_factory import write_dataset

    def make(samples_per_shard, name="ds"):
        return write_dataset(str(tmp_path / name), samples_per_shard)

    return make
