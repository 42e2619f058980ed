"""The downloader against a local HTTP server that misbehaves on purpose: one precise reason per failure, retries
for transient errors only, an attempt never past its deadline (also when the server drips bytes), size caps,
local files, and the downscale."""

import io
import ipaddress
import socket
import time
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image

from datagen.images import resize
from datagen.readers import download
from datagen.readers.download import DownloadParams, Fetcher, fetch_image
from datagen.units import BadInput, Rejected
from tests.image_server import ImageServer


def encoded(fmt, w=800, h=600, seed=0):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def server():
    with ImageServer({"a.jpg": encoded("JPEG"), "b.png": encoded("PNG", 640, 960)}, slow_s=30, drip_s=1.0) as s:
        yield s


class Sleeps(list):
    def __call__(self, seconds):
        self.append(seconds)


TRUSTED = {"schemes": ["http", "https", "file"], "allow_private_addresses": True}  # the test server, local files


def fetcher(**kw):
    sleeps = Sleeps()
    p = DownloadParams(**{"timeout_s": 0.5, "retries": 2, "backoff_s": 0.01, **TRUSTED, **kw})
    return Fetcher(p, sleep=sleeps), sleeps


@pytest.mark.parametrize("route,error,reason,attempts", [
    ("missing", BadInput, "http_404", 1),
    ("truncated", BadInput, "truncated", 3),
    ("html", BadInput, "not_an_image", 1),
    ("noise", BadInput, "not_an_image", 1),
    ("down", BadInput, "http_503", 3),
    ("big", Rejected, "too_large", 1),  # policies refusing a good input: a retry would not change them
    ("robots", Rejected, "robots_disallowed", 1),
])
def test_each_failure_has_its_reason_and_only_transient_ones_are_retried(server, route, error, reason, attempts):
    server.down = True
    f, sleeps = fetcher()
    url = server.url(route, "a.jpg")
    before = server.hits[f"/{route}/a.jpg"]
    with pytest.raises(error) as e:
        fetch_image(f, url)
    assert e.value.reason == reason and url in e.value.detail
    assert server.hits[f"/{route}/a.jpg"] - before == attempts
    assert sleeps == [0.01, 0.02][: attempts - 1]  # exponential backoff between attempts


def test_good_images_and_a_retried_500(server):
    f, sleeps = fetcher()
    image, size = fetch_image(f, server.url("good", "a.jpg"))
    assert image.shape == (600, 800, 3) and size == (800, 600)
    png, _ = fetch_image(f, server.url("good", "b.png"))
    assert np.array_equal(png, np.asarray(Image.open(io.BytesIO(server.images["b.png"])).convert("RGB")))
    flaky, _ = fetch_image(f, server.url("flaky", "a.jpg"))  # 500 once, then the image
    assert flaky.shape == (600, 800, 3) and server.hits["/flaky/a.jpg"] == 2 and sleeps == [0.01]


def test_a_silent_server_times_out_per_attempt(server):
    f, sleeps = fetcher(timeout_s=0.5, retries=1)
    t0 = time.monotonic()
    with pytest.raises(BadInput) as e:
        f.fetch(server.url("slow", "a.jpg"))
    elapsed = time.monotonic() - t0
    assert e.value.reason == "timeout" and "2 attempts" in e.value.detail
    assert elapsed < 5  # two 0.5 s attempts, not the server's 30 s
    assert server.hits["/slow/a.jpg"] == 2


def test_a_dripping_body_cannot_outlive_the_deadline(server):
    # a byte chunk every 1.0 s: a per-read socket timeout of 1.2 s would never fire; the deadline does, at 1.2 s
    # (a per-read check alone would only notice after the second chunk, at 2.0 s)
    f, _ = fetcher(timeout_s=1.2, retries=0)
    t0 = time.monotonic()
    with pytest.raises(BadInput) as e:
        f.fetch(server.url("drip", "a.jpg"))
    assert e.value.reason == "timeout"
    assert time.monotonic() - t0 < 1.9


def test_size_cap_without_content_length_and_connection_errors(server, tmp_path):
    f, _ = fetcher(max_bytes=1000)
    with pytest.raises(Rejected, match="too_large"):  # Content-Length says it
        f.fetch(server.url("good", "a.jpg"))
    with pytest.raises(Rejected, match="too_large"):  # no Content-Length: counted while reading
        f.fetch(server.url("nolength", "a.jpg"))
    assert fetcher()[0].fetch(server.url("nolength", "a.jpg")) == server.images["a.jpg"]
    path = tmp_path / "a.jpg"
    path.write_bytes(server.images["a.jpg"])
    with pytest.raises(Rejected, match="too_large"):  # a file: counted while reading too
        f.fetch(str(path))
    f, sleeps = fetcher(retries=1)
    with pytest.raises(BadInput) as e:
        f.fetch("http://127.0.0.1:1/x.jpg")  # nothing listens on port 1
    assert e.value.reason == "connection_error" and sleeps == [0.01]
    with pytest.raises(BadInput) as e:
        f.fetch(server.url("good", "a.jpg").replace("http://", "https://"))  # TLS to a plain HTTP server
    assert e.value.reason == "ssl_error"


def test_local_files_and_file_urls(tmp_path):
    f, _ = fetcher()
    path = tmp_path / "a.png"
    path.write_bytes(encoded("PNG", 600, 520))
    assert fetch_image(f, str(path))[0].shape == (520, 600, 3)
    assert fetch_image(f, f"file://{path}")[0].shape == (520, 600, 3)
    for url, reason in ((f"file://{tmp_path}/gone.jpg", "missing_file"), ("nope://x/y.jpg", "scheme_not_allowed")):
        with pytest.raises(BadInput) as e:
            f.fetch(url)
        assert e.value.reason == reason
    with pytest.raises(BadInput, match="bad_url"):  # a scheme allowed by config that fsspec does not know
        fetcher(schemes=["nope"])[0].fetch("nope://x/y.jpg")


def test_min_side_and_downscale(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(encoded("PNG", 1200, 800))
    f, _ = fetcher(min_side=900)
    with pytest.raises(Rejected, match="image_too_small"):
        fetch_image(f, str(path))
    f, _ = fetcher(short_side=400)
    image, size = fetch_image(f, str(path))
    assert image.shape == (400, 600, 3) and size == (1200, 800)
    image = np.zeros((800, 1200, 3), np.uint8)
    assert resize(image, None, 900).shape == (600, 900, 3)
    assert resize(image, 400, 500).shape == (333, 500, 3)  # both rules: the stricter wins
    assert resize(image, 2000, 4000) is image  # never upscaled


def test_by_default_only_http_to_public_addresses_is_fetched(server, tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(server.images["a.jpg"])
    f = Fetcher(DownloadParams(retries=0))  # the defaults: a URL list is untrusted
    hits = sum(server.hits.values())
    for url, reason in ((str(path), "scheme_not_allowed"), (f"file://{path}", "scheme_not_allowed"),
                        (server.url("good", "a.jpg"), "address_not_allowed"),
                        ("http://localhost:1/a.jpg", "address_not_allowed"),
                        ("http://169.254.169.254/latest/meta-data/", "address_not_allowed"),  # cloud metadata
                        ("http://[::ffff:10.0.0.1]/a.jpg", "address_not_allowed"),
                        ("s3://bucket/a.jpg", "scheme_not_allowed")):
        with pytest.raises(BadInput) as e:
            f.fetch(url)
        assert e.value.reason == reason, url
    assert sum(server.hits.values()) == hits  # the server never saw a request


@pytest.fixture
def internet(monkeypatch):
    """127.0.0.2 stands in for a public host (nothing here can reach a real one); names resolve as mapped."""
    names: dict[str, list[str]] = {}
    resolve = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kw):
        if host in names:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (names[host].pop(0), port))]
        return resolve(host, port, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(download, "is_public", lambda ip: ip == ipaddress.ip_address("127.0.0.2"))
    with ImageServer({"a.jpg": encoded("JPEG")}, host="127.0.0.2") as public:
        yield names, public


def test_redirects_and_rebinding_names_cannot_reach_private_addresses(server, internet, tmp_path):
    names, public = internet
    f = Fetcher(DownloadParams(retries=0))
    assert f.fetch(public.url("good", "a.jpg")) == public.images["a.jpg"]  # the stand-in public host is fetched
    hits = sum(server.hits.values())
    for target, reason in ((server.url("good", "a.jpg"), "address_not_allowed"),
                           (f"file://{tmp_path}/a.jpg", "scheme_not_allowed"),
                           ("ftp://127.0.0.1/a.jpg", "scheme_not_allowed")):
        with pytest.raises(BadInput) as e:
            f.fetch(public.url("redirect", quote(target, safe="")))
        assert e.value.reason == reason, target
    port = server.server_address[1]
    names["rebind.test"] = ["127.0.0.2", "127.0.0.1"]  # public when checked, private when connecting
    with pytest.raises(BadInput) as e:
        f.fetch(f"http://rebind.test:{port}/good/a.jpg")
    assert e.value.reason == "address_not_allowed"
    assert sum(server.hits.values()) == hits  # the private server never saw a request
