"""`python -m datagen.shards report`: plots from the index in batches, thumbnails of the chosen pairs from their
shards, Objaverse cameras, the funnel; an index written before the pair columns still reports."""

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datagen import shards
from datagen.shards import report as rep
from datagen.shards.__main__ import main as shards_main
from datagen.shards.gallery import PALETTE
from tests.browser import needs_chromium, screenshot
from tests.shard_factory import make_sample, write_dataset

# key → (identity, change_score) of its one stored pair: k-copy is the least changed (not the most identical:
# k-same is), k-far the least identical
PAIRS = {"k-copy": (0.9, 0.02), "k-far": (0.31, 0.6), "k-mid": (0.8, 0.3), "k-same": (0.99, 0.5)}


def look_at(azimuth: float, elevation: float, distance: float = 2.0) -> list[list[float]]:
    """OpenCV camera-to-world pose of a camera on a sphere looking at the origin (z forward, y down)."""
    a, e = np.radians(azimuth), np.radians(elevation)
    centre = distance * np.array([np.cos(e) * np.sin(a), np.sin(e), np.cos(e) * np.cos(a)])
    z = -centre / np.linalg.norm(centre)
    x = np.cross([0, 1, 0], z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    pose = np.eye(4)
    pose[:3, :3] = np.column_stack([x, y, z])
    pose[:3, 3] = centre
    return pose.tolist()


def pairs_dataset(root: str) -> str:
    """Video samples with stored pairs (meta ``pairs`` + index ``pair_*`` columns), an Objaverse object with
    cameras, and a sample without pairs; a manifest with counts and quarantine rows by source."""
    samples = [make_sample(key=k, n_frames=2, n_subjects=2, seed=n) for n, k in enumerate(PAIRS)]
    samples.append(make_sample(key="k-none", n_frames=2, n_subjects=1, seed=9))
    obj = make_sample(key="obj-1", n_frames=4, n_subjects=1, source="objaverse", size=(48, 48), seed=5)
    for j, fr in enumerate(obj.frames):
        fr.fields = {"view": {"pose": look_at(90 * j, 20 * (-1) ** j), "K": np.eye(3).tolist()}}
    write_dataset(root, [samples[:3], samples[3:] + [obj]])
    meta_pairs = {k: [{"subject": 1, "frames": [0, 1], "identity": i, "change": {"pose": c}, "change_score": c}]
                  for k, (i, c) in PAIRS.items()}
    for name in shards.list_shards(root):  # add the stored pairs to meta.json, as the labelling stages write them
        url = shards.shard_urls(root, [name])[0]
        raws = list(shards.iter_raw([url]))
        numbers = iter([int(name[-10:-4])])
        with shards.ShardWriter(shards.join(root, shards.SHARDS_DIR), lambda: shards.shard_name("test", next(numbers))) as w:
            for raw in raws:
                meta = json.loads(raw["meta.json"])
                meta["pairs"] = meta_pairs.get(raw["__key__"], [])
                w.write({**{k: v for k, v in raw.items() if not k.startswith("__") or k == "__key__"},
                         "meta.json": json.dumps(meta).encode()})
    index = shards.read_table(root, shards.INDEX_FILE)
    keys = index["key"].to_pylist()
    extra = pa.table({
        "n_pairs": pa.array([1 if k in PAIRS else 0 for k in keys], pa.int32()),
        "pair_identity_min": pa.array([PAIRS[k][0] if k in PAIRS else None for k in keys], pa.float64()),
        "pair_change_min": pa.array([PAIRS[k][1] if k in PAIRS else None for k in keys], pa.float64()),
    })
    for name in extra.column_names:  # the writer's index (format 2.1) has the columns, null: set them
        i = index.schema.get_field_index(name)
        index = index.set_column(i, name, extra[name]) if i >= 0 else index.append_column(name, extra[name])
    pq.write_table(index, f"{root}/{shards.INDEX_FILE}/all.parquet")
    shards.write_quarantine(root, [{"unit_id": f"u{i}", "stage": "filter", "reason": "no_match", "detail": "",
                                    "source": "video"} for i in range(3)], "video")
    manifest = shards.read_manifest(root)
    manifest["sources"] = {"video": {"counts": {"units_kept": 5, "units_filtered": 3, "units_failed": 0}},
                           "objaverse": {"counts": {"units_kept": 1, "units_filtered": 0, "units_failed": 1}}}
    shards.write_manifest(root, manifest)
    return root


@pytest.fixture
def dataset(tmp_path):
    return pairs_dataset(str(tmp_path / "ds"))


def section(page: str, title: str) -> str:
    return page.split(f"<h2>{title}", 1)[1].split("<h2>", 1)[0]


def card_keys(html_part: str) -> list[str]:
    return re.findall(r'<div class="key">([\w-]+) ·', html_part)


def test_report_thumbnails_scatter_cameras_and_funnel(dataset):
    page = rep.report(dataset)
    assert re.findall(r'(?:src|href)="(?!data:|#)', page) == []  # self-contained: images inline, no link out
    copy = section(page, "Most copy-paste-like")
    far = section(page, "Least identical")
    assert card_keys(copy) == ["k-copy", "k-mid", "k-same", "k-far"]
    assert card_keys(far) == ["k-far", "k-mid", "k-copy", "k-same"]
    assert len(re.findall(r'<img alt="frame', copy)) == 2 * len(PAIRS)  # both frames of each pair
    assert "change_score 0.020" in copy and "identity 0.310" in far
    assert "<svg" in section(page, "Pairs: identity against change")
    assert "<svg" in section(page, "Objaverse cameras")
    assert "<svg" in section(page, "Funnel")
    summary = rep.summarize_index(dataset)
    video = summary.sources["video"]
    assert video.samples == 5 and video.with_pairs == 4
    assert sorted(map(tuple, video.scatter[:, 1:].round(3))) == sorted(PAIRS.values())
    assert video.subjects[1] == 1 and video.subjects[2] == 4 and video.frames[2] == 5
    assert video.sizes[48 // rep.SIZE_BIN, 64 // rep.SIZE_BIN] == 5
    assert summary.objects == [("obj-1", "test-000001.tar")]
    assert rep.quarantine_reasons(dataset)["video"] == {"filter/no_match": 3}


def test_cameras_are_drawn_where_the_poses_put_them(dataset):
    poses = [np.array(look_at(90 * j, 20 * (-1) ** j)) for j in range(4)]
    svg = rep.cameras_figure([("obj-1", {"frames": [{"view": {"pose": p.tolist()}} for p in poses]})])
    assert svg.count("<svg") == 1
    # the camera centres lie on the distance-2 sphere: the axes are scaled to hold them, not the unit cube only
    assert max(np.linalg.norm(p[:3, 3]) for p in poses) == pytest.approx(2.0)
    assert rep.cameras_figure([("obj-1", {"frames": [{"caption": "no camera"}]})]) is None


def test_index_is_read_in_bounded_batches(dataset, monkeypatch):
    whole = rep.summarize_index(dataset)
    monkeypatch.setattr(rep, "BATCH_ROWS", 1)
    batches = []
    add = rep.IndexSummary.add
    monkeypatch.setattr(rep.IndexSummary, "add", lambda self, b: (batches.append(b.num_rows), add(self, b))[1])
    small = rep.summarize_index(dataset)
    assert max(batches) == 1 and sum(batches) == 6
    for name, s in whole.sources.items():
        t = small.sources[name]
        for attr in ("subjects", "frames", "pairs", "words", "area_min", "area_max", "sizes"):
            np.testing.assert_array_equal(getattr(s, attr), getattr(t, attr), err_msg=attr)
        assert sorted(map(tuple, s.scatter[:, 1:])) == sorted(map(tuple, t.scatter[:, 1:]))
    assert small.copy_paste.rows == whole.copy_paste.rows and small.least_identical.rows == whole.least_identical.rows


def test_index_without_pair_columns_still_reports(tmp_path, capsys):
    old = write_dataset(str(tmp_path / "old"), [[make_sample(key="a"), make_sample(key="b", seed=1)]])
    out = tmp_path / "r.html"
    assert shards_main(["report", old, "--out", str(out)]) == 0
    page = out.read_text()
    assert "No pair measures in this index" in page and "2 samples" in page
    assert "No sample has pair measures" in section(page, "Most copy-paste-like")
    assert shards_main(["report", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("error: ")


def test_gallery_links_the_report(dataset, tmp_path):
    assert shards_main(["report", dataset, "--out", f"{dataset}/report.html"]) == 0
    gallery = tmp_path / "g.html"
    assert shards_main(["view", dataset, "--out", str(gallery), "--limit", "1"]) == 0
    assert 'href="ds/report.html"' in gallery.read_text()


@pytest.mark.browser
@needs_chromium
def test_report_renders_in_headless_chromium(dataset, tmp_path):
    page = tmp_path / "report.html"
    assert shards_main(["report", dataset, "--out", str(page)]) == 0
    shot = screenshot(page, tmp_path, size=(1200, 2400))
    # matplotlib's first colour (the funnel's and histograms' bars, the scatter) and the kept-units green are drawn
    blue, green = np.array([31, 119, 180]), np.array([58, 146, 58])
    assert (np.abs(shot - blue).sum(-1) < 40).sum() > 500
    assert (np.abs(shot - green).sum(-1) < 40).sum() > 200
    # the thumbnails' subject overlay colour is on screen too
    assert (np.abs(shot - np.array(PALETTE[0])).sum(-1) < 80).sum() > 50
