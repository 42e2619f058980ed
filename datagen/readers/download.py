"""Image download for URL lists, after img2dataset's downloader and resizer: many URLs at once on a thread pool,
each with a deadline, retries with backoff for transient errors only, a size cap, a check that the body is an
image, and a downscale. A broken input or transport is a ``BadInput`` with a precise reason (``http_404``,
``timeout``, ``truncated``, ``not_an_image``, ``corrupt_image``, ...); a policy that refuses a good input is a
``Rejected`` (``too_large``, ``robots_disallowed``, ``image_too_small``), which a retry would not change.

http(s) goes through ``urllib`` (as img2dataset does); ``file://`` URLs, local paths and other fsspec URLs are
read with fsspec. A URL list is untrusted input: by default only http(s) to public addresses is fetched. Local
files (``schemes`` with ``file``), other fsspec protocols (their name in ``schemes``) and loopback, private,
link-local or reserved addresses (``allow_private_addresses``) only when the config says so. Addresses are
checked as resolved, for every redirect, and again on connecting (a name that resolves differently the second
time cannot slip through); redirects only go to http(s).
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
import urllib.error
import urllib.request
from typing import Callable
from urllib.parse import urljoin, urlsplit

import numpy as np

from datagen import files, images
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
    max_side: int | None = images.MAX_SIDE  # downscale so that the long side is at most this (None: keep)
    max_pixels: int = images.MAX_PIXELS  # declared width × height above this: refused before decoding
    # URL lists are untrusted: schemes fetched ("file": file:// URLs and local paths; s3, gs, ...: fsspec)
    schemes: list[str] = ["http", "https"]
    allow_private_addresses: bool = False  # loopback, private, link-local, reserved addresses (else refused)


class Transient(BadInput):
    """A failure worth another attempt (the same request may succeed later)."""


# ---------------------------------------------------------------------------------------------- fetching


def is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """An internet address: not loopback, private, link-local, shared, reserved or multicast."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:  # ::ffff:127.0.0.1 is loopback
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def public_addresses(host: str, port: int) -> list[tuple]:
    """``getaddrinfo`` of ``host``; refused (``address_not_allowed``) when any address is not public. Any, not
    all: a name that also resolves to a private address is not trusted."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise BadInput("dns_error", f"{host}: {e}") from None
    for *_, sockaddr in infos:
        ip = ipaddress.ip_address(sockaddr[0].split("%")[0])
        if not is_public(ip):
            raise BadInput("address_not_allowed", f"{host} resolves to {ip}, not a public address "
                                                  "(download.allow_private_addresses: true fetches it)")
    return infos


class _Checked:
    """Connection mixin: addresses checked at connect time, the socket kept for the body deadline."""

    def __init__(self, *args, allow_private: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.allow_private = allow_private
        self._create_connection = self._connect_checked  # what connect() calls in place of create_connection

    def _connect_checked(self, address, timeout, source_address=None):
        """``socket.create_connection`` to addresses checked now, not when the request was checked (a name
        resolving to a public address for the check and a private one for the connection: DNS rebinding)."""
        if self.allow_private or PROXIED:  # through a proxy, _Guard checked the target's name
            return socket.create_connection(address, timeout, source_address)
        error = None
        for family, kind, proto, _, sockaddr in public_addresses(*address):
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                return sock
            except OSError as e:
                sock.close()
                error = e
        raise error or OSError(f"cannot connect to {address}")

    def getresponse(self):
        sock = self.sock  # taken first: the connection lets go of it when the response says it will close
        response = super().getresponse()
        response.deadline_sock = sock  # urllib hides the connection: keep its socket for the body deadline
        return response


class _Connection(_Checked, http.client.HTTPConnection):
    pass


class _TLSConnection(_Checked, http.client.HTTPSConnection):
    pass


PROXIED = bool(urllib.request.getproxies())  # urllib sends requests to the environment's proxies


class _Handler(urllib.request.HTTPHandler):
    def __init__(self, allow_private: bool):
        super().__init__()
        self.allow_private = allow_private

    def http_open(self, req):
        return self.do_open(_Connection, req, allow_private=self.allow_private)


class _TLSHandler(urllib.request.HTTPSHandler):
    def __init__(self, allow_private: bool):
        self.tls = ssl.create_default_context()
        super().__init__(context=self.tls)
        self.allow_private = allow_private

    def https_open(self, req):
        return self.do_open(_TLSConnection, req, context=self.tls, allow_private=self.allow_private)


class _Guard(urllib.request.HTTPRedirectHandler):
    """Checks the host of every request, the first and each redirect's, before urllib opens it; redirects go
    to http(s) only (urllib would follow ftp:// too)."""

    def __init__(self, allow_private: bool):
        self.allow_private = allow_private

    def http_request(self, req):
        if not self.allow_private:
            public_addresses(urlsplit(req.full_url).hostname or "", 0)
        return req

    https_request = http_request

    def http_error_302(self, req, fp, code, msg, headers):
        target = urljoin(req.full_url, headers.get("location") or headers.get("uri") or "")
        if urlsplit(target).scheme not in ("http", "https"):
            fp.close()
            raise BadInput("scheme_not_allowed", f"{req.full_url} redirects to {target}")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


class Fetcher:
    """URL → bytes, with the deadline, retries and checks of ``DownloadParams``; thread-safe."""

    def __init__(self, p: DownloadParams, sleep: Callable[[float], None] = time.sleep):
        self.p, self.sleep = p, sleep
        allow = p.allow_private_addresses
        self.opener = urllib.request.build_opener(_Handler(allow), _TLSHandler(allow), _Guard(allow))
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
        scheme = "file" if files.is_local(url) else urlsplit(url).scheme.lower()
        if scheme not in self.p.schemes:
            raise BadInput("scheme_not_allowed", f"{url}: {scheme} is not in download.schemes {self.p.schemes}")
        if scheme in ("http", "https"):
            return self._http(url)
        return self._file(url)

    def _file(self, url: str) -> bytes:
        try:
            with files.open_url(url, "rb") as f:
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


def fetch_image(fetcher: Fetcher, url: str) -> tuple[np.ndarray, tuple[int, int]]:
    """URL → (RGB image after the downscale, original (width, height)); BadInput/Rejected with the reason."""
    return decode_image(fetcher.fetch(url), url, fetcher.p)


def decode_image(data: bytes, name: str, p: DownloadParams) -> tuple[np.ndarray, tuple[int, int]]:
    """Image bytes (fetched, or stored by img2dataset) → (RGB image after the downscale, its (width, height)
    before it), with the size rules of ``p``. A declared size above ``max_pixels`` is refused before decoding; a
    JPEG that is downscaled anyway decodes at a reduced size (``draft``)."""

    def scale_for(w: int, h: int) -> float:
        return images.scale_factor(w, h, p.short_side, p.max_side) if min(w, h) >= p.min_side else 1.0

    image, (w, h) = images.decode_rgb(data, name, p.max_pixels, scale_for)
    if min(w, h) < p.min_side:
        raise Rejected("image_too_small", f"{name}: {w}x{h}, short side < {p.min_side}")
    return images.resize(image, p.short_side, p.max_side, (w, h)), (w, h)
