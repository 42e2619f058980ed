"""Source ``urls`` on local Ray against a local HTTP server serving good images, 404s, 500s, silent and dripping
responses, truncated, HTML and noise bodies: the good ones land, each bad one is quarantined with its reason, the
run does not wait for the silent server, a rerun does nothing and ``retry_failed`` recovers a server that came
back. Then the real source (tiny models) on the project's sample inputs."""

import json
import time

import pytest

from datagen import shards
from datagen.readers.download import DownloadParams
from datagen.readers.urls import list_id
from datagen.samples import urls as url_inputs
from datagen.shards.validate import validate
from pipelines import ledger
from pipelines.config import PipelineConfig, WriterConfig
from pipelines.runner import run_source
from pipelines.sources.urls import SOURCE, Config
from tests import img2dataset_layout
from tests.datagen.test_download import encoded
from tests.image_server import ImageServer
from tests.pipelines.fake_persons import FakePersonsUrls

TWO, THREE = [[60, 100, 300, 580], [420, 90, 700, 570]], [[20, 100, 250, 560], [280, 80, 520, 580],
                                                          [550, 100, 780, 560]]
BOXES = {"two.jpg": TWO, "three.png": THREE, "one.jpg": TWO[:1]}
ROWS = [("good", "two.jpg", "kept"), ("good", "three.png", "kept"), ("flaky", "two.jpg", "kept"),
        ("good", "one.jpg", ("filtered", "select_boxes", "too_few_subjects")),
        ("missing", "two.jpg", ("failed", "download", "http_404")),
        ("slow", "two.jpg", ("failed", "download", "timeout")),
        ("drip", "two.jpg", ("failed", "download", "timeout")),
        ("truncated", "two.jpg", ("failed", "download", "truncated")),
        ("html", "two.jpg", ("failed", "download", "not_an_image")),
        ("noise", "two.jpg", ("failed", "download", "not_an_image")),
        ("big", "two.jpg", ("filtered", "download", "too_large")),
        ("robots", "two.jpg", ("filtered", "download", "robots_disallowed")),
        ("down", "three.png", ("failed", "download", "http_503"))]
# The slow route answers (200, the image) after this: a client without its own deadline would wait it out and keep
# the image, so the `timeout` outcome pins the deadline; the bound on the run's wall time is a backstop far above
# any run's (60-110 s with two test processes on 2 cores).
SLOW_S = 300


@pytest.fixture(scope="module")
def server():
    images = {"two.jpg": encoded("JPEG"), "three.png": encoded("PNG", seed=1), "one.jpg": encoded("JPEG", seed=2)}
    with ImageServer(images, slow_s=SLOW_S, drip_s=0.5) as s:
        s.down = True
        yield s


def quarantine(out):
    return {r["unit_id"]: (r["kind"], r["stage"], r["reason"])
            for r in shards.read_table(out, shards.QUARANTINE_FILE).to_pylist()}


def quarantine_details(out):
    return [(r["unit_id"], r["reason"], r["detail"]) for r in shards.read_table(out, shards.QUARANTINE_FILE).to_pylist()]


def test_download_faults_resume_and_retry(ray_local, server, tmp_path):
    listing = tmp_path / "list.jsonl"
    listing.write_text("".join(json.dumps({"url": server.url(route, name), "caption": f"{route} {name}"}) + "\n"
                               for route, name, _ in ROWS))
    scfg = Config(url_list=str(listing), download=DownloadParams(timeout_s=3.0, retries=1, backoff_s=0.05,
                                                                   allow_private_addresses=True))
    cfg = PipelineConfig(out=str(tmp_path / "ds"), writer=WriterConfig(units_per_shard=4))
    out, source = cfg.out, FakePersonsUrls(BOXES)
    unit = lambda i: f"urls:{list_id(str(listing))}:{i}"  # noqa: E731

    t0 = time.monotonic()
    first = run_source(source, cfg, source_cfg=scfg)
    assert time.monotonic() - t0 < SLOW_S  # each attempt ends at its 3 s deadline, not the server's 300 s
    assert first.processed == {"kept": 3, "failed": 7, "filtered": 3}, quarantine_details(out)
    assert quarantine(out) == {unit(i): want for i, (_, _, want) in enumerate(ROWS) if want != "kept"}
    assert server.hits["/missing/two.jpg"] == 1 and server.hits["/slow/two.jpg"] == 2  # 404 not retried
    assert validate(out).ok
    samples = {s.provenance["url"]: s for s in shards.iter_samples(out)}
    assert sorted(samples) == sorted(server.url(r, n) for r, n, want in ROWS if want == "kept")
    three = samples[server.url("good", "three.png")]
    assert [sub.boxes[0] for sub in three.subjects] == THREE and three.frames[0].caption == "good three.png"
    assert three.source == "router" and all(sub.masks[0].shape == (600, 800) for sub in three.subjects)

    shard_names = shards.list_shards(out)
    again = run_source(source, cfg, source_cfg=scfg)
    assert sum(again.processed.values()) == 0 and shards.list_shards(out) == shard_names

    server.down = False  # the 503 server is back: a retry of the failed units recovers it, the rest fail again
    retried = run_source(source, cfg, source_cfg=scfg, retry_failed=True)
    assert retried.processed == {"kept": 1, "failed": 6}
    q = quarantine(out)
    assert unit(12) not in q and len(q) == 9
    counts = ledger.Ledger.read(out, "urls").summarize()
    assert counts["units_kept"] == 4 and counts["samples"] == 4
    keys = [r["key"] for r in shards.read_table(out, shards.INDEX_FILE).to_pylist()]
    assert len(keys) == len(set(keys)) == 4


def test_real_source_on_the_sample_inputs(ray_local, tmp_path):
    made = url_inputs.make(str(tmp_path / "inputs"))
    cfg = PipelineConfig(out=str(tmp_path / "ds"), models="tiny")
    result = run_source(SOURCE, cfg, source_cfg=Config(url_list=made["url_list"],
                                                                 download=DownloadParams(schemes=["file"])))
    assert sum(result.processed.values()) == 8
    q = quarantine(cfg.out)
    name = list_id(made["url_list"])
    assert {q[f"urls:{name}:{i}"] for i in (4, 5, 6, 7)} == {
        ("filtered", "download", "image_too_small"), ("failed", "download", "corrupt_image"),
        ("failed", "download", "missing_file"), ("filtered", "download", "duplicate_url")}
    # tiny random models find random boxes: each good image is kept or filtered by the people rules, never failed
    for i in range(4):
        assert q.get(f"urls:{name}:{i}", ("filtered", "persons"))[:2] in {("filtered", "select_boxes"),
                                                                               ("filtered", "persons")}
    manifest = shards.read_manifest(cfg.out)
    assert manifest["synthetic_models"] is True and manifest["models"]["urls"]["detector"]["revision"] == "tiny"


@pytest.mark.slow  # ~3 min on the shared 2-core machine (full-size photos through local Ray)
def test_img2dataset_output_end_to_end_without_a_download(ray_local, server, tmp_path):
    """An img2dataset webdataset output (LAION-like sizes) through the real source: the stored photos with 2+
    people land with their URL's key, nothing is fetched, and a URL list and an img2dataset folder are one input
    or the other."""
    photos = {"two.jpg": (1280, 853), "couple.jpg": (1024, 1536), "one.jpg": (1920, 1080)}
    boxes = {"two.jpg": [[100, 150, 500, 840], [700, 120, 1150, 850]],
             "couple.jpg": [[50, 300, 480, 1500], [540, 280, 990, 1520]], "one.jpg": [[800, 100, 1200, 1000]]}
    rows = [{"url": server.url("good", n), "caption": f"stored {n}", "jpg": encoded("JPEG", w, h, seed=i),
             "size": (w, h)} for i, (n, (w, h)) in enumerate(photos.items())]
    rows.append({"url": server.url("good", "gone.jpg"), "caption": "lost", "status": "failed_to_download",
                 "error": "HTTP Error 404"})
    folder = tmp_path / "laion-out"
    img2dataset_layout.write(str(folder), rows, "webdataset")
    with pytest.raises(ValueError, match="exactly one of url_list and img2dataset"):
        Config(url_list=str(tmp_path / "laion-out" / "00000.parquet"), img2dataset=str(folder))
    with pytest.raises(ValueError, match="exactly one of url_list and img2dataset"):
        Config()
    with pytest.raises(ValueError, match="url_col and caption_col apply to url_list"):
        Config(img2dataset=str(folder), caption_col="TEXT")

    hits = sum(server.hits.values())
    cfg = PipelineConfig(out=str(tmp_path / "ds"))
    result = run_source(FakePersonsUrls(boxes), cfg, source_cfg=Config(img2dataset=str(folder)))
    assert result.processed == {"kept": 2, "filtered": 1}, quarantine_details(cfg.out)
    assert sum(server.hits.values()) == hits  # read from the tar, not downloaded
    assert validate(cfg.out).ok
    samples = {s.provenance["url"].rsplit("/", 1)[1]: s for s in shards.iter_samples(cfg.out)}
    assert sorted(samples) == ["couple.jpg", "two.jpg"]
    for name, s in samples.items():
        assert s.key == shards.stable_key("url", server.url("good", name)) and len(s.subjects) == 2
        assert (s.frames[0].width, s.frames[0].height) == photos[name] and s.frames[0].caption == f"stored {name}"
