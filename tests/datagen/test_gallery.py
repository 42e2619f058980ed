"""`python -m datagen.shards view` writes a self-contained gallery; `stats` counts what the dataset holds."""

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from datagen.shards.__main__ import main as shards_main
from datagen.shards.gallery import PALETTE, gallery
from datagen.shards.stats import stats
from tests.browser import needs_chromium, screenshot


@pytest.fixture
def dataset(dataset_factory, sample_factory):
    return dataset_factory([[sample_factory(key="k0", n_frames=2, n_subjects=2),
                             sample_factory(key="k1", n_frames=3, n_subjects=1, seed=1)]])


def decode_uris(page):
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB"))
            for b in re.findall(r'src="data:image/jpeg;base64,([^"]+)"', page)]


def test_gallery_inlines_every_frame_with_masks_in_subject_colours(dataset):
    page = gallery(dataset)
    frames = decode_uris(page)
    assert len(frames) == 5  # 2 + 3 frames, every image inline (no external references)
    assert "http" not in page.replace("http-equiv", "")
    assert "thing 0" in page and "thing 1" in page and "caption 2" in page and '&quot;license&quot;: &quot;cc0&quot;' in page
    # inside subject 0's mask (rows 6..30, cols 4..14 in frame 0) the overlay pulls pixels towards its colour
    patch = frames[0][10:28, 6:12].reshape(-1, 3).mean(0)
    red = np.array(PALETTE[0])
    assert np.linalg.norm(patch - red) < np.linalg.norm(frames[0][40:46, 40:60].reshape(-1, 3).mean(0) - red)


def test_view_cli_and_limit(dataset, tmp_path):
    out = tmp_path / "g.html"
    assert shards_main(["view", dataset, "--out", str(out), "--limit", "1"]) == 0
    assert len(decode_uris(out.read_text())) == 2


def test_stats_counts(dataset, capsys):
    s = stats(dataset)
    assert s["samples"] == 2
    assert s["by_source"]["video"]["frames_per_sample"] == {2: 1, 3: 1}
    assert s["by_source"]["video"]["subjects_per_sample"] == {1: 1, 2: 1}
    assert s["quarantined"] == {"?:load/corrupt_image": 1}
    assert shards_main(["stats", dataset]) == 0
    assert "2 samples" in capsys.readouterr().out


@pytest.mark.browser
@needs_chromium
def test_gallery_renders_in_headless_chromium(dataset, tmp_path):
    html = tmp_path / "g.html"
    assert shards_main(["view", dataset, "--out", str(html)]) == 0
    shot = screenshot(html, tmp_path)
    # the page drew the frames: a good share of pixels differ from the page background
    background = np.array([250, 250, 250])
    assert (np.abs(shot - background).sum(-1) > 30).mean() > 0.05
    # subject colours of the overlays are on screen
    assert (np.abs(shot - np.array(PALETTE[0])).sum(-1) < 60).sum() > 50
