"""A local HTTP server on 127.0.0.1 that misbehaves on purpose, for the downloader's tests and benchmark.

``/<route>/<name>`` serves the image ``name`` (bytes given at start) the way ``route`` says:

- ``good``: the image (``latency_s`` before answering, to mimic a remote host); ``missing``: 404;
- ``flaky``: 500 on the first ``flaky_failures`` requests of a path, then the image; ``down``: 503 while
  ``server.down`` is set;
- ``slow``: no answer for ``slow_s``; ``drip``: headers at once, then the body a few bytes every ``drip_s``;
- ``truncated``: a Content-Length of the whole image, half of it sent; ``html``: a 200 HTML page;
- ``noise``: random bytes as application/octet-stream; ``big``: a Content-Length above any cap;
- ``robots``: the image with ``X-Robots-Tag: noai``; ``nolength``: the image without Content-Length;
- ``redirect``: 302 to the URL-quoted rest of the path (``server.url("redirect", quote(target, safe=""))``).

``server.hits`` counts requests per path, ``server.max_in_flight`` the most requests served at once. Use as a context manager: it serves on a thread and shuts down (and
wakes every waiting handler) on exit.
"""

from __future__ import annotations

import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


class _Handler(BaseHTTPRequestHandler):
    server: "ImageServer"

    def log_message(self, *args):  # keep test output clean
        pass

    def _send(self, code: int, body: bytes, ctype: str = "image/jpeg", length: int | None = None,
              headers: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 — http.server's name
        s = self.server
        with s.lock:
            s.hits[self.path] += 1
            hits = s.hits[self.path]
            s.in_flight += 1
            s.max_in_flight = max(s.max_in_flight, s.in_flight)
        try:
            self._serve(hits)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (its deadline): expected here
            pass
        finally:
            with s.lock:
                s.in_flight -= 1

    def _serve(self, hits: int) -> None:
        s = self.server
        _, route, name = urlsplit(self.path).path.split("/", 2)  # a query string only makes URLs distinct
        image = s.images.get(name)
        if route == "redirect":
            self._send(302, b"", "text/plain", headers={"Location": unquote(name)})
        elif image is None or route == "missing":
            self._send(404, b"not found", "text/plain")
        elif route == "good":
            if s.latency_s:
                s.stop.wait(s.latency_s)
            self._send(200, image, _ctype(name))
        elif route == "flaky":
            if hits <= s.flaky_failures:
                self._send(500, b"try again", "text/plain")
            else:
                self._send(200, image, _ctype(name))
        elif route == "down":
            if s.down:
                self._send(503, b"down", "text/plain")
            else:
                self._send(200, image, _ctype(name))
        elif route == "slow":
            s.stop.wait(s.slow_s)
            self._send(200, image, _ctype(name))
        elif route == "drip":
            self.send_response(200)
            self.send_header("Content-Type", _ctype(name))
            self.send_header("Content-Length", str(len(image)))
            self.end_headers()
            for k in range(0, len(image), 64):
                if s.stop.wait(s.drip_s):
                    break
                self.wfile.write(image[k:k + 64])
                self.wfile.flush()
        elif route == "truncated":
            self._send(200, image[: len(image) // 2], _ctype(name), length=len(image))
        elif route == "html":
            self._send(200, b"<html><body>moved</body></html>", "text/html; charset=utf-8")
        elif route == "noise":
            self._send(200, bytes(range(256)) * 40, "application/octet-stream")
        elif route == "big":
            self._send(200, image[:1024], _ctype(name), length=1 << 40)
        elif route == "nolength":  # HTTP/1.0: the body ends when the connection closes
            self.send_response(200)
            self.send_header("Content-Type", _ctype(name))
            self.end_headers()
            self.wfile.write(image)
        elif route == "robots":
            self._send(200, image, _ctype(name), headers={"X-Robots-Tag": "noai, noimageai"})
        else:
            self._send(404, b"no such route", "text/plain")


def _ctype(name: str) -> str:
    return "image/png" if name.endswith(".png") else "image/jpeg"


class ImageServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # socketserver's default backlog of 5 stalls many concurrent connects

    def __init__(self, images: dict[str, bytes], latency_s: float = 0.0, slow_s: float = 30.0, drip_s: float = 0.2,
                 flaky_failures: int = 1, host: str = "127.0.0.1"):
        super().__init__((host, 0), _Handler)
        self.images, self.latency_s, self.slow_s, self.drip_s = images, latency_s, slow_s, drip_s
        self.flaky_failures = flaky_failures
        self.down = False
        self.hits: Counter = Counter()
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, route: str, name: str) -> str:
        return f"http://{self.server_address[0]}:{self.server_address[1]}/{route}/{name}"

    def __enter__(self) -> "ImageServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)
