"""Image download for URL lists, after img2dataset's downloader and resizer: many URLs at once on a thread pool,
each with a deadline, retries with backoff for transient errors only, a size cap, a check that the body is an
image, and a downscale. A broken input or transport is a ``BadInput`` with a precise reason (``http_404``,
``timeout``, ``truncated``, ``not_an_image``, ``corrupt_image``, ...); a policy that refuses a good input is a
``Rejected`` (``too_large``, ``robots_disallowed``, ``image_too_small``), which a retry would not change.

http(s) goes through ``urllib`` (as img2dataset does); ``file://`` URLs, local paths and other fsspec URLs are
read with fsspec, so a URL list may point at local files.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
import urllib.error
import urllib.request
from typing import Callable
from urllib.parse import urlsplit

import cv2
import fsspec
import numpy as np

from datagen import images
from datagen.params import Params
from datagen.units import BadInput, Rejected

NOT_IMAGE_TYPES = ("text/", "application/json", "application/xml", "application/xhtml")
CHUNK = 1 << 16


class DownloadParams(Params):
    timeout_s: float = 10.0  # one attempt: connecting, the headers and the whole body (img2dataset: 10 s)
    retries: int = 2  # further attempts after a transient failure: timeout, 5xx/408/429, connection, truncation
    backoff_s: float = 1.0  # wait before retry k (k = 0, 1, ...): backoff_s * 2**k
    threads: int = 64  # concurrent downloads per stage actor (img2dataset: thread_count)
    max_bytes: int = 32 << 20  # larger bodies are refused (too_large) without reading them all
    user_agent: str = "Mozilla/5.0 (compatible; anystory-data/0.1)"
    # X-Robots-Tag directives that forbid the use (img2dataset's defaults): refused as robots_disallowed
    disallowed_header_directives: list[str] = ["noai", "noimageai", "noindex", "noimageindex"]
    min_side: int = 512  # short side of the original image below this: rejected (image_too_small)
    short_side: int | None = None  # downscale so that the short side is at most this (None: keep)
    max_side: int | None = None  # downscale so that the long side is at most this (None: keep)


class Transient(BadInput):
    """A failure worth another attempt (the same request may succeed later)."""


# ---------------------------------------------------------------------------------------------- fetching


class _Connection(http.client.HTTPConnection):
    def getresponse(self):
        sock = self.sock  # taken first: the connection lets go of it when the response says it will close
        response = super().getresponse()
        response.deadline_sock = sock  # urllib hides the connection: keep its socket for the body deadline
        return response


class _TLSConnection(http.client.HTTPSConnection):
    getresponse = _Connection.getresponse


class _Handler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(_Connection, req)


class _TLSHandler(urllib.request.HTTPSHandler):
    def __init__(self):
        self.tls = ssl.create_default_context()
        super().__init__(context=self.tls)

    def https_open(self, req):
        return self.do_open(_TLSConnection, req, context=self.tls)


class Fetcher:
    """URL → bytes, with the deadline, retries and checks of ``DownloadParams``; thread-safe."""

    def __init__(self, p: DownloadParams, sleep: Callable[[float], None] = time.sleep):
        self.p, self.sleep = p, sleep
        self.opener = urllib.request.build_opener(_Handler, _TLSHandler())
        self.opener.addheaders = [("User-Agent", p.user_agent)]
        self.disallowed = {d.strip().lower() for d in p.disallowed_header_directives}

    def fetch(self, url: str) -> bytes:
        attempt = 0
        while True:
            try:
                return self._once(url)
            except Transient as e:
                if attempt == self.p.retries:
                    raise Transient(e.reason, f"{e.detail} ({attempt + 1} attempts)") from None
            self.sleep(self.p.backoff_s * 2 ** attempt)
            attempt += 1

    def _once(self, url: str) -> bytes:
        if urlsplit(url).scheme in ("http", "https"):
            return self._http(url)
        return self._file(url)

    def _file(self, url: str) -> bytes:
        try:
            with fsspec.open(url, "rb") as f:
                data = f.read(self.p.max_bytes + 1)
        except FileNotFoundError:
            raise BadInput("missing_file", url) from None
        except ValueError as e:  # fsspec: unknown protocol
            raise BadInput("bad_url", f"{url}: {e}") from None
        if len(data) > self.p.max_bytes:
            raise Rejected("too_large", f"{url}: more than {self.p.max_bytes} bytes")
        return data

    def _http(self, url: str) -> bytes:
        deadline = time.monotonic() + self.p.timeout_s
        try:
            with self.opener.open(url, timeout=self.p.timeout_s) as r:
                self._check_headers(url, r.headers)
                body = self._read(url, r, deadline)
                length = r.headers.get("Content-Length")
                if length is not None and length.isdigit() and len(body) < int(length):
                    raise Transient("truncated", f"{url}: {len(body)} of {length} bytes")
                return body
        except urllib.error.HTTPError as e:
            e.close()
            error = Transient if e.code >= 500 or e.code in (408, 429) else BadInput
            raise error(f"http_{e.code}", f"{url}: HTTP {e.code} {e.reason}") from None
        except urllib.error.URLError as e:
            raise _connection_error(url, e.reason) from None
        except http.client.IncompleteRead as e:
            raise Transient("truncated", f"{url}: {e}") from None
        except (OSError, http.client.HTTPException) as e:  # socket timeouts, resets, bad status lines
            raise _connection_error(url, e) from None
        except ValueError as e:  # malformed URL
            raise BadInput("bad_url", f"{url}: {e}") from None

    def _check_headers(self, url: str, headers) -> None:
        for value in headers.get_all("X-Robots-Tag", []):
            agent, _, directives = value.rpartition(":")
            if agent.strip() and agent.strip().lower() not in ("*", self.p.user_agent.lower()):
                continue  # addressed to another crawler
            if self.disallowed & {d.strip().lower() for d in directives.split(",")}:
                raise Rejected("robots_disallowed", f"{url}: X-Robots-Tag {value}")
        ctype = (headers.get("Content-Type") or "").lower()
        if ctype.startswith(NOT_IMAGE_TYPES):  # an HTML error page served with 200: not worth reading
            raise BadInput("not_an_image", f"{url}: Content-Type {ctype}")
        length = headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > self.p.max_bytes:
            raise Rejected("too_large", f"{url}: Content-Length {length} > {self.p.max_bytes}")

    def _read(self, url: str, r, deadline: float) -> bytes:
        """The body, in chunks; each socket wait is cut to the time left, so a server that drips bytes slowly
        cannot keep the attempt past its deadline (a plain socket timeout applies per read, not in total)."""
        chunks, size = [], 0
        sock = getattr(r, "deadline_sock", None)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Transient("timeout", f"{url}: body not complete after {self.p.timeout_s:g}s ({size} bytes)")
            if sock is not None:
                sock.settimeout(left)
            chunk = r.read1(CHUNK)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > self.p.max_bytes:
                raise Rejected("too_large", f"{url}: more than {self.p.max_bytes} bytes")
            chunks.append(chunk)


def _connection_error(url: str, reason: object) -> BadInput:
    if isinstance(reason, TimeoutError):
        return Transient("timeout", f"{url}: {reason or 'timed out'}")
    if isinstance(reason, ssl.SSLError):
        return BadInput("ssl_error", f"{url}: {reason}")
    if isinstance(reason, socket.gaierror):
        return BadInput("dns_error", f"{url}: {reason}")
    return Transient("connection_error", f"{url}: {type(reason).__name__}: {reason}")


# ---------------------------------------------------------------------------------------- decode + resize


def resize(image: np.ndarray, short_side: int | None, max_side: int | None) -> np.ndarray:
    """Downscale (never up) so the short side is ≤ ``short_side`` and the long side ≤ ``max_side``
    (img2dataset's keep_ratio / keep_ratio_largest), with area interpolation as it does for downscaling."""
    h, w = image.shape[:2]
    scale = min(1.0, short_side / min(h, w) if short_side else 1.0, max_side / max(h, w) if max_side else 1.0)
    if scale >= 1.0:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def fetch_image(fetcher: Fetcher, url: str) -> tuple[np.ndarray, tuple[int, int]]:
    """URL → (RGB image after the downscale, original (width, height)); BadInput/Rejected with the reason."""
    return decode_image(fetcher.fetch(url), url, fetcher.p)


def decode_image(data: bytes, name: str, p: DownloadParams) -> tuple[np.ndarray, tuple[int, int]]:
    """Image bytes (fetched, or stored by img2dataset) → (RGB image after the downscale, its (width, height)
    before it), with the size rule of ``p``."""
    image = images.decode_rgb(data, name)
    h, w = image.shape[:2]
    if min(w, h) < p.min_side:
        raise Rejected("image_too_small", f"{name}: {w}x{h}, short side < {p.min_side}")
    return resize(image, p.short_side, p.max_side), (w, h)

