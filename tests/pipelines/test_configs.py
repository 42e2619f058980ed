"""The shipped pipeline configs stay valid as the code changes: every key known, every value of the right type."""

import os

import pytest
import yaml

from pipelines.config import ConfigError, load_config

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
INPUT_KEYS = {"inputs", "root", "annotations", "images", "url_list", "folder"}  # paths checked on load


def with_existing_inputs(doc, where):
    """The config with every input path replaced by one that exists (templates point at data this machine lacks)."""
    for section in doc.get("sources", {}).values():
        for key in INPUT_KEYS & set(section):
            section[key] = [str(where)] if isinstance(section[key], list) else str(where)
    return doc


@pytest.mark.parametrize("name", ["cluster.yaml", "sample.yaml"])
def test_shipped_pipeline_configs_validate(name, tmp_path):
    with open(os.path.join(CONFIGS, name)) as f:
        doc = with_existing_inputs(yaml.safe_load(f), tmp_path)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    cfg = load_config(str(path))
    assert set(doc["sources"]) == {n for n in type(cfg.sources).model_fields if getattr(cfg.sources, n) is not None}


def test_the_cluster_template_fails_on_its_placeholder_inputs():
    with pytest.raises(ConfigError) as e:
        load_config(os.path.join(CONFIGS, "cluster.yaml"))
    assert "sources.video.inputs.0: Value error, path does not exist: /shared/clips/list.parquet" in str(e.value)
    assert "sources.urls.url_list: Value error" in str(e.value)  # s3:// without s3fs, or no such object


def test_a_partial_section_keeps_the_sources_own_defaults(tmp_path):
    """Per-source defaults (README "Minimum image side") survive a YAML section that names other keys."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"sources": {
        "video": {"inputs": [str(tmp_path)], "labeling": {"filters": {"area_min": 0.0}}},
        "urls": {"url_list": str(tmp_path), "download": {"threads": 8}},
        "deepfashion2": {"root": str(tmp_path), "params": {"filters": {"min_image_side": 300}}},
        "coco": {"annotations": str(tmp_path), "images": str(tmp_path)},
    }}))
    s = load_config(str(path)).sources
    assert (s.video.labeling.filters.min_image_side, s.video.labeling.filters.area_min) == (360, 0.0)
    assert (s.urls.download.min_side, s.urls.download.threads) == (1024, 8)
    f = s.deepfashion2.params.filters
    assert (f.min_image_side, f.area_max, f.min_mask_box_ratio) == (300, 1.0, 0.0)
    assert s.coco.params.filters.min_image_side == 256
