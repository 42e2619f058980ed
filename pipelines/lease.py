"""The output lock of an object-store output: a lease object created with a conditional write.

Object stores have no file locks, and two machines share nothing else, so the lock is ``<out>/.lock`` itself:
- **taking it**: a put with ``If-None-Match: *`` — of any number of drivers, on any machines, exactly one create
  succeeds (the store decides). The object's body is the owner record (source, host, pid, start, a run token).
- **holding it**: a heartbeat thread rewrites the object every ``heartbeat_s`` with ``If-Match: <its ETag>``, so
  its Last-Modified says when the holder last proved it was alive.
- **a second driver** reads the object: renewed within ``expiry_s`` → the output is in use (exit 2, naming the
  owner); older → its holder is dead or cut off, and the lease is taken over by a put with ``If-Match: <the stale
  ETag>`` (one winner again). Age is the store's Date header minus the object's Last-Modified, both the store's
  clock, so the machines' clocks never matter.
- **losing it**: a holder whose renewal is refused (someone took over) or has not succeeded for ``expiry_s`` has
  lost the lease. Writers check the lease object (``LeaseGuard.check``) before each shard put and each ledger
  commit, and the driver stops at its next result, so a run that lost its lease writes nothing more.

Stores speak conditional writes through ``CONDITIONAL_STORES``: S3's ``IfNoneMatch``/``IfMatch`` (AWS S3 and
S3-compatible servers; botocore ≥ 1.35) and GCS's generation preconditions (``ifGenerationMatch``, the generation
standing for the ETag). Any other object store is refused unless the config accepts the
risk (``lock.unsafe_without_conditional_writes``), in which case the lock is a local file that keeps out runs on
this machine only.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import fsspec

log = logging.getLogger(__name__)


class LeaseHeld(RuntimeError):
    """The lease object exists and was renewed within its expiry: another driver holds the output."""


class LeaseLost(RuntimeError):
    """This run's lease was taken over or could not be renewed within its expiry: it must stop writing."""


def _precondition_failed(e: Exception) -> bool:
    response = getattr(e.__cause__, "response", None) or getattr(e, "response", None) or {}
    return isinstance(e, FileExistsError) or response.get("Error", {}).get("Code") == "PreconditionFailed"


class S3Store:
    """Conditional puts on S3 through s3fs's botocore client (``IfNoneMatch`` / ``IfMatch``)."""

    def __init__(self, fs: Any, path: str):
        self.fs = fs
        self.bucket, self.key, _ = fs.split_path(path)

    def _put(self, body: bytes, **condition: str) -> str | None:
        """The new ETag, or None when the condition did not hold."""
        try:
            return self.fs.call_s3("put_object", Bucket=self.bucket, Key=self.key, Body=body, **condition)["ETag"]
        except OSError as e:
            if _precondition_failed(e):
                return None
            raise

    def create(self, body: bytes) -> str | None:
        return self._put(body, IfNoneMatch="*")

    def replace(self, body: bytes, etag: str) -> str | None:
        return self._put(body, IfMatch=etag)

    def read(self) -> tuple[dict[str, Any], str, float] | None:
        """(owner record, ETag, seconds since its last write by the store's clock), None when absent."""
        try:
            r, body = fsspec.asyn.sync(self.fs.loop, self._get)
        except FileNotFoundError:
            return None
        now = email.utils.parsedate_to_datetime(r["ResponseMetadata"]["HTTPHeaders"]["date"])
        try:
            record = json.loads(body)
        except ValueError:
            record = {}
        return record, r["ETag"], (now - r["LastModified"]).total_seconds()

    async def _get(self) -> tuple[dict[str, Any], bytes]:
        r = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self.key)
        async with r["Body"] as stream:
            return r, await stream.read()

    def delete(self, etag: str) -> None:
        try:
            self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key, IfMatch=etag)
        except OSError as e:  # taken over meanwhile, or gone (FileNotFoundError): not ours to delete
            log.warning("lease %s/%s not removed: %s", self.bucket, self.key, e)


class GCSStore:
    """Generation preconditions on GCS through gcsfs's JSON-API calls: ``ifGenerationMatch=0`` creates only when no
    object exists, ``ifGenerationMatch=<generation>`` replaces (or deletes) only the version that was read. The
    generation plays the part of S3's ETag."""

    def __init__(self, fs: Any, path: str):
        self.fs = fs
        self.bucket, self.key, _ = fs.split_path(path)
        self.object = f"b/{quote(self.bucket, safe='')}/o/{quote(self.key, safe='')}"

    def _put(self, body: bytes, generation: str) -> str | None:
        # gcsfs's own simple upload offers only ifGenerationMatch=0: the same multipart request, with any generation
        boundary = uuid.uuid4().hex
        data = (f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n"
                f"{json.dumps({'name': self.key})}\r\n--{boundary}\r\nContent-Type: application/json\r\n\r\n"
                ).encode() + body + f"\r\n--{boundary}--\r\n".encode()
        try:
            done = self.fs.call("POST", f"{self.fs._location}/upload/storage/v1/b/{quote(self.bucket, safe='')}/o",
                                uploadType="multipart", ifGenerationMatch=generation, json_out=True, data=data,
                                headers={"Content-Type": f'multipart/related; boundary="{boundary}"'})
        except OSError as e:
            if _precondition_failed(e):  # gcsfs raises FileExistsError for 412 Precondition Failed
                return None
            raise
        return done["generation"]

    def create(self, body: bytes) -> str | None:
        return self._put(body, "0")

    def replace(self, body: bytes, generation: str) -> str | None:
        return self._put(body, generation)

    def read(self) -> tuple[dict[str, Any], str, float] | None:
        """(owner record, generation, seconds since its last write by the store's clock), None when absent."""
        try:
            headers, meta = self.fs.call("GET", self.object)
            meta = json.loads(meta)
            _, body = self.fs.call("GET", self.object, alt="media", generation=meta["generation"])
        except FileNotFoundError:  # absent, or replaced between the two reads: as good as absent to a taker
            return None
        now = email.utils.parsedate_to_datetime(headers["Date"])
        updated = dt.datetime.fromisoformat(meta["updated"].replace("Z", "+00:00"))
        try:
            record = json.loads(body)
        except ValueError:
            record = {}
        return record, meta["generation"], (now - updated).total_seconds()

    def delete(self, generation: str) -> None:
        try:
            self.fs.call("DELETE", self.object, ifGenerationMatch=generation)
        except OSError as e:  # taken over meanwhile, or gone (FileNotFoundError): not ours to delete
            log.warning("lease %s/%s not removed: %s", self.bucket, self.key, e)


Store = S3Store | GCSStore
CONDITIONAL_STORES = {"s3": S3Store, "s3a": S3Store, "gs": GCSStore, "gcs": GCSStore}


def conditional_store(url: str) -> Store | None:
    """The conditional-write store for the lease object at ``url``, or None when its filesystem has none."""
    fs, path = fsspec.core.url_to_fs(url)
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    store = next((CONDITIONAL_STORES[p] for p in protocols if p in CONDITIONAL_STORES), None)
    return store(fs, path) if store else None


def describe(record: dict[str, Any]) -> str:
    try:
        return (f"source {record['source']} on host {record['host']}, pid {record['pid']}, started "
                f"{record['start_time']}")
    except KeyError:
        return "a run whose lease record is unreadable"


@dataclass(frozen=True)
class LeaseGuard:
    """What a writer (any process, any node) needs to check that its run still holds the lease: picklable."""

    url: str
    token: str
    expiry_s: float

    def check(self) -> None:
        store = conditional_store(self.url)
        found = store.read()
        if found is None:
            raise LeaseLost(f"lease {self.url} is gone: this run no longer holds its output")
        record, _, age = found
        if record.get("token") != self.token:
            raise LeaseLost(f"lease {self.url} was taken over by {describe(record)}: this run stops writing")
        if age > self.expiry_s:
            raise LeaseLost(f"lease {self.url} was last renewed {age:.0f}s ago, past its expiry of "
                            f"{self.expiry_s:g}s: this run stops writing")


class Lease:
    """A held lease: its heartbeat thread renews it until ``release``; ``check`` raises once it is lost."""

    def __init__(self, store: Store, url: str, body: bytes, etag: str, token: str, expiry_s: float,
                 heartbeat_s: float):
        self.store, self.url, self.body, self.etag = store, url, body, etag
        self.guard = LeaseGuard(url, token, expiry_s)
        self.heartbeat_s, self.expiry_s = heartbeat_s, expiry_s
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="output-lease-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        renewed = time.monotonic()
        while not self._stop.wait(self.heartbeat_s):
            try:
                etag = self.store.replace(self.body, self.etag)
            except FileNotFoundError:
                self.lost = "its lease object was removed"
                return
            except OSError as e:  # the store is unreachable: the lease holds until its expiry
                if time.monotonic() - renewed > self.expiry_s:
                    self.lost = f"not renewed for {self.expiry_s:g}s ({type(e).__name__}: {e})"
                    return
                continue
            if etag is None:
                found = self.store.read()
                self.lost = f"taken over by {describe(found[0]) if found else 'nobody (removed)'}"
                return
            self.etag, renewed = etag, time.monotonic()

    def check(self) -> None:
        if self.lost:
            raise LeaseLost(f"output lease {self.url} lost: {self.lost}; this run stops writing")

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        if not self.lost:
            self.store.delete(self.etag)


def acquire(store: Store, url: str, source: str, expiry_s: float, heartbeat_s: float) -> Lease:
    """Take the lease at ``url`` (create it, or take over one past its expiry); LeaseHeld names a live owner."""
    token = uuid.uuid4().hex
    record = {"source": source, "host": socket.gethostname(), "pid": os.getpid(),
              "start_time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "token": token,
              "expiry_s": expiry_s, "heartbeat_s": heartbeat_s}
    body = json.dumps(record).encode()
    etag = store.create(body)
    if etag is None:
        found = store.read()
        if found is None:  # released between our create and read: one more try, then it is a live race
            etag = store.create(body)
        else:
            owner, stale_etag, age = found
            if age <= expiry_s:
                raise LeaseHeld(f"{describe(owner)}; its lease was renewed {age:.0f}s ago and expires "
                                f"{expiry_s:g}s after its last renewal")
            etag = store.replace(body, stale_etag)
            if etag is not None:
                log.warning("output lease %s: took over from %s, not renewed for %.0fs (expiry %gs)", url,
                            describe(owner), age, expiry_s)
        if etag is None:
            found = store.read()
            raise LeaseHeld(f"{describe(found[0]) if found else 'another run'}, which took it just now")
    return Lease(store, url, body, etag, token, expiry_s, heartbeat_s)
