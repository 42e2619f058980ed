"""One run per dataset directory at a time: the output lock, taken before any work and held to the end.

Two runs into one output would number shards from the same start and each delete the other's files as
orphans, so the second is refused, naming the run that holds the lock (source, host, pid, start time).
The lock is an OS file lock (``flock`` through ``filelock``) on ``<out>/.lock``: the kernel drops it when its
process dies however it dies, so the lock of a killed run is taken over by the next one without any
staleness guess. Taking it is also the check that the output is usable: a path that is a file, under a
file, or not writable is refused here, before anything has started.

An output on an object store (``s3://``...) has no file locks: its lock is a lease object taken with a
conditional write, renewed by a heartbeat and taken over after its expiry (pipelines/lease.py), which keeps out
runs on every machine. A store without conditional writes is refused unless the config accepts the risk
(``lock.unsafe_without_conditional_writes``); then the lock is a local file named after the URL, which keeps out
runs on this machine only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import socket
from contextlib import contextmanager
from typing import Iterator

import filelock
import fsspec

from datagen import shards
from datagen.params import Params
from pipelines import lease

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
OWNER_FILE = ".lock.owner.json"  # beside the lock: who holds it, read by a refused run


class OutputError(RuntimeError):
    """The output cannot be used: not a writable directory, or held by another run."""


class OutputLocked(OutputError):
    """Another live run writes into the same output."""


class OutputLost(OutputLocked):
    """This run lost the lease of its object-store output (taken over, or not renewed in time): it stopped."""


class LockConfig(Params):
    """The lease of an object-store output (pipelines/lease.py); a local output's lock needs no settings."""

    expiry_s: float = 60.0  # a lease not renewed for this long is taken over by the next run
    heartbeat_s: float = 10.0  # renewal period: several renewals fit in one expiry, so a slow request is no loss
    # A store without conditional writes cannot keep two machines apart: refused unless this accepts the risk
    unsafe_without_conditional_writes: bool = False


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
def output_lock(out: str, source: str, cfg: LockConfig = LockConfig()) -> Iterator[lease.Lease | None]:
    """Hold the lock of ``out`` for the body; raise OutputLocked naming the holder, OutputError if unusable.
    An output directory this call made and the body left with nothing but the lock (a run that stopped before
    any work: inputs that cannot be listed) is removed again.

    Yields the held object-store lease (its ``check`` for the driver, its ``guard`` for writers), None for a
    file lock."""
    directory, new = _lock_dir(out)
    if not shards._is_local(fsspec.core.url_to_fs(out)[0]):
        store = lease.conditional_store(shards.join(out, LOCK_FILE))
        if store is not None:
            with _object_lease(store, out, source, cfg) as held:
                yield held
            return
        if not cfg.unsafe_without_conditional_writes:
            raise OutputError(f"output {out}: this store has no conditional writes, so a lock cannot keep runs on "
                              "two machines apart; set lock.unsafe_without_conditional_writes: true to accept "
                              "that (runs on this machine are still kept apart)")
        log.warning("output %s: no conditional writes; the lock keeps out runs on this machine only", out)
    with _file_lock(out, source, directory, new):
        yield None


@contextmanager
def _object_lease(store: lease.Store, out: str, source: str, cfg: LockConfig) -> Iterator[lease.Lease]:
    url = shards.join(out, LOCK_FILE)
    try:
        held = lease.acquire(store, url, source, cfg.expiry_s, cfg.heartbeat_s)
    except lease.LeaseHeld as e:
        raise OutputLocked(f"output {out} is in use by another run ({e}); wait for it to end or stop it, then "
                           "run again") from None
    try:
        yield held
        held.check()  # a run that lost its lease mid-way did not finish: say so rather than exit 0
    except Exception as e:
        why = held.lost or _lost_reason(held, e)
        if why is None:
            raise
        raise OutputLost(f"output {out}: this run lost its lease and stopped writing ({why}); what it wrote "
                         "is valid, rerun to finish") from None
    finally:
        held.release()


def _lost_reason(held: lease.Lease, error: Exception) -> str | None:
    """Why the run lost its lease, if it did: the driver's own LeaseLost, or a writer's. Ray Data hands a writer's
    error to the driver as a UserCodeException that keeps only its text, so the lease object is asked."""
    if isinstance(error, lease.LeaseLost):
        return str(error)
    try:
        held.guard.check()
    except lease.LeaseLost as e:
        return str(e)
    except OSError:  # the store is unreachable: the run's own error is the news
        pass
    return None


@contextmanager
def _file_lock(out: str, source: str, directory: str, new: bool) -> Iterator[None]:
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
