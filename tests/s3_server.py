"""A local S3 endpoint for tests: moto's server mode (as s3fs's own tests use) on 127.0.0.1, spoken to over HTTP by
s3fs and botocore exactly as a real bucket is. Loopback only; nothing leaves the machine."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass
from typing import Iterator

import pytest

# What botocore reads from the environment (the standard place); subprocesses and Ray workers inherit it.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class S3Server:
    endpoint: str

    def env(self) -> dict[str, str]:
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def bucket(self) -> str:
        """A new empty bucket; returns ``s3://<name>``."""
        import fsspec

        name = f"test-{uuid.uuid4().hex[:12]}"
        fsspec.filesystem("s3").mkdir(name)
        return f"s3://{name}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start() -> tuple[S3Server, object]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return S3Server(f"http://127.0.0.1:{port}"), server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """The server for the whole session, its endpoint and credentials in the environment (set before any Ray
    starts, so its workers inherit them). s3fs instances made before are dropped: they knew no endpoint."""
    import s3fs

    info, server = start()
    saved = {k: os.environ.get(k) for k in info.env()}
    os.environ.update(info.env())
    s3fs.S3FileSystem.clear_instance_cache()
    yield info
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def s3_bucket(s3_server) -> str:
    return s3_server.bucket()
