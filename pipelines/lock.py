"""One run per dataset directory at a time: the output lock, taken before any work and held to the end.

Two runs into one output would number shards from the same start and each delete the other's files as
orphans, so the second is refused, naming the run that holds the lock (source, host, pid, start time).
The lock is an OS file lock (``flock`` through ``filelock``) on ``<out>/.lock``: the kernel drops it when its
process dies however it dies, so the lock of a killed run is taken over by the next one without any
staleness guess. Taking it is also the check that the output is usable: a path that is a file, under a
file, or not writable is refused here, before anything has started.

An output on an object store (``s3://``...) has no file locks: its lock is taken on a local file named after
the URL, which keeps out runs on this machine only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import socket
from contextlib import contextmanager
from typing import Iterator

import filelock
import fsspec

from datagen import shards

LOCK_FILE = ".lock"
OWNER_FILE = ".lock.owner.json"  # beside the lock: who holds it, read by a refused run


class OutputError(RuntimeError):
    """The output cannot be used: not a writable directory, or held by another run."""


class OutputLocked(OutputError):
    """Another live run writes into the same output."""


def _lock_dir(out: str) -> tuple[str, bool]:
    """The local directory holding the lock files of ``out`` (made, so that an unusable output fails here), and
    whether this call made ``out`` itself."""
    fs, path = fsspec.core.url_to_fs(out)
    try:
        if fs.isfile(path):
            raise OutputError(f"output {out} is a file, not a directory")
        local_out = shards._is_local(fs)
        made = local_out and not fs.exists(path)
        fs.makedirs(path, exist_ok=True)
        if local_out:
            return path, made
        probe = shards.join(path, f".probe-{os.getpid()}")  # an object store tells no permissions: try a write
        fs.pipe_file(probe, b"")
        fs.rm_file(probe)
    except OSError as e:
        raise OutputError(f"output {out} is not a writable directory: {type(e).__name__}: {e}") from e
    local = os.path.join(os.path.expanduser("~/.cache/anystory-data/locks"), hashlib.sha1(out.encode()).hexdigest())
    os.makedirs(local, exist_ok=True)
    return local, False


def _owner(directory: str) -> str:
    try:
        with open(os.path.join(directory, OWNER_FILE)) as f:
            o = json.load(f)
        return f"source {o['source']} on host {o['host']}, pid {o['pid']}, started {o['start_time']}"
    except (OSError, ValueError, KeyError):
        return "a run that has not recorded itself yet"


@contextmanager
def output_lock(out: str, source: str) -> Iterator[None]:
    """Hold the lock of ``out`` for the body; raise OutputLocked naming the holder, OutputError if unusable.
    An output directory this call made and the body left with nothing but the lock (a run that stopped before
    any work: inputs that cannot be listed) is removed again."""
    directory, new = _lock_dir(out)
    # No soft-lock fallback: a soft lock outlives a killed run, which is what flock exists to avoid.
    lock = filelock.FileLock(os.path.join(directory, LOCK_FILE), timeout=0, fallback_to_soft=False)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise OutputLocked(f"output {out} is in use by another run ({_owner(directory)}); wait for it to end "
                           "or stop it, then run again") from None
    except OSError as e:
        raise OutputError(f"output {out} is not writable: {type(e).__name__}: {e}") from e
    try:
        owner = {"source": source, "host": socket.gethostname(), "pid": os.getpid(),
                 "start_time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        with shards.atomic_open(os.path.join(directory, OWNER_FILE), "w") as f:
            json.dump(owner, f)
        yield
    finally:
        if new and sorted(os.listdir(directory)) == sorted([LOCK_FILE, OWNER_FILE]):
            for name in (OWNER_FILE, LOCK_FILE):
                os.remove(os.path.join(directory, name))
            os.rmdir(directory)
        lock.release()
