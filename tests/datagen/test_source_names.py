"""validate, stats and view name both a sample's pipeline source (shard prefix) and its kind, and filter by either."""

from __future__ import annotations

import json

import pytest

from datagen import shards
from datagen.shards.__main__ import main as shards_main
from tests.shard_factory import make_sample, write_dataset


@pytest.fixture
def two_pipelines(tmp_path):
    """coco wrote two router samples, deepfashion2 one image-pair sample: two pipelines, two kinds."""
    root = str(tmp_path / "ds")
    write_dataset(root, [[make_sample("coco-a", 1, source="router"), make_sample("coco-b", 1, source="router")]],
                  source="coco")
    index = shards.read_table(root, shards.INDEX_FILE).to_pylist()
    pair = make_sample("df2-a", 2, source="image")
    with shards.ShardWriter(shards.join(root, shards.SHARDS_DIR), lambda: shards.shard_name("deepfashion2", 0)) as w:
        index.append(shards.index_row(pair, w.write(shards.encode_sample(pair))))
    shards.write_index(root, index)
    manifest = shards.read_manifest(root)
    manifest["counts"]["samples"] = 3
    shards.write_manifest(root, manifest)
    return root


def test_validate_counts_per_pipeline_source_and_kind(two_pipelines, capsys):
    assert shards_main(["validate", two_pipelines]) == 0
    assert "coco (router) 2, deepfashion2 (image) 1" in capsys.readouterr().out


@pytest.mark.parametrize("source, keys", [(None, {"coco", "deepfashion2"}), ("coco", {"coco"}),
                                          ("image", {"deepfashion2"}), ("router", {"coco"})])
def test_stats_by_pipeline_source_filtered_by_either_name(two_pipelines, capsys, source, keys):
    assert shards_main(["stats", two_pipelines, "--json", *(["--source", source] if source else [])]) == 0
    s = json.loads(capsys.readouterr().out)
    assert set(s["by_pipeline"]) == keys
    assert {k: v["kinds"] for k, v in s["by_pipeline"].items()} == {
        k: v for k, v in {"coco": ["router"], "deepfashion2": ["image"]}.items() if k in keys}
    assert s["samples"] == sum({"coco": 2, "deepfashion2": 1}[k] for k in keys)
    shards_main(["stats", two_pipelines, *(["--source", source] if source else [])])
    text = capsys.readouterr().out
    assert all(f"{k}" in text for k in keys) and ("(router)" in text) == ("coco" in keys)


@pytest.mark.parametrize("source, shown", [("deepfashion2", ["df2-a"]), ("router", ["coco-a", "coco-b"]),
                                           ("urls", [])])
def test_view_filters_by_pipeline_source_or_kind_and_names_both(two_pipelines, tmp_path, source, shown):
    out = tmp_path / "g.html"
    assert shards_main(["view", two_pipelines, "--out", str(out), "--source", source]) == 0
    page = out.read_text()
    assert [k for k in ("coco-a", "coco-b", "df2-a") if k in page] == shown
    if shown == ["df2-a"]:
        assert "source deepfashion2 · kind image" in page
