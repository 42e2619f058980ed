"""What ``make dataset`` built, checked by ``make test`` (which builds it first and names it in
``ANYSTORY_SAMPLE_DATASET``): every one of the five sources wrote at least one sample, marked synthetic, the dataset
validates, and the evaluation runs on it as a user would run it (``python -m training.evaluate --size tiny --shards
data/sample ...``), writing ``metrics.json``, the per-sample parquet and the HTML report.

Run by hand: ``make dataset && ANYSTORY_SAMPLE_DATASET=data/sample python -m pytest tests/test_sample_dataset.py``.
(``tests/pipelines/test_sample_dataset.py``, a slow test, builds the same dataset in a temporary folder.)"""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from datagen import shards
from datagen.shards.validate import validate
from pipelines.sources import SOURCES

DATASET = os.environ.get("ANYSTORY_SAMPLE_DATASET")
pytestmark = pytest.mark.skipif(not DATASET, reason="ANYSTORY_SAMPLE_DATASET is unset: `make test` sets it "
                                                    "after `make dataset`")


def test_make_dataset_wrote_every_source_and_validates():
    report = validate(DATASET)
    assert report.ok, report.violations
    manifest = shards.read_manifest(DATASET)
    assert manifest["synthetic_models"] is True
    samples = {name: manifest["sources"][name]["counts"]["samples"] for name in SOURCES}
    assert set(samples) == {"video", "objaverse", "deepfashion2", "coco", "urls"}
    assert all(n >= 1 for n in samples.values()), samples
    index = shards.read_table(DATASET, shards.INDEX_FILE)
    assert index.num_rows == sum(samples.values()) == report.samples


def test_evaluate_on_the_sample_dataset(tmp_path):
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "training.evaluate", "--size", "tiny", "--shards", DATASET, "--limit", "3",
           "--seeds", "1", "--steps", "2", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["synthetic"] is True and metrics["n_samples"] == 3
    for split in metrics["metrics"].values():  # single- and multi-subject samples apart
        assert set(split) == {"anystory", "base-sdxl"}
        for m in ("clip_i", "clip_t", "dino"):
            cell = split["anystory"][m]
            assert cell["ci"] is None if cell["n_subjects"] < 2 else cell["ci"][0] <= cell["mean"] <= cell["ci"][1]
    rows = pd.read_parquet(out / "samples.parquet")
    assert len(rows) == 6 and set(rows.system) == {"anystory", "base-sdxl"}
    assert all((out / p).is_file() for p in rows.image)
    page = (out / "report.html").read_text()
    assert page.count("<tr class=sample>") == 3


def test_the_sample_dataset_has_a_card_and_exports_for_the_datasets_library(tmp_path):
    import datasets

    from datagen.shards import card

    manifest = shards.read_manifest(DATASET)
    meta = card.read_card(DATASET).data.to_dict()  # written by the pipelines' last run
    assert "other" in meta["license"] and "synthetic-labels" in meta["tags"]  # DeepFashion2's terms; tiny models
    cache = str(tmp_path / "cache")
    index = datasets.load_dataset(DATASET, split="train", cache_dir=cache)  # the card's default config: the index
    assert index.num_rows == manifest["counts"]["samples"]

    out = tmp_path / "hf"
    done = subprocess.run([sys.executable, "-m", "datagen.shards", "export-hf", DATASET, str(out)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for name in SOURCES:
        ds = datasets.load_dataset(str(out), name, split="train", cache_dir=cache)
        assert ds.num_rows == manifest["sources"][name]["counts"]["samples"]
        row = ds[0]
        assert len(row["frames"]) == row["n_frames"] and row["frames"][0].size == (row["width"], row["height"])
        assert all(m["mask"].size == row["frames"][m["frame"]].size for m in row["masks"])
