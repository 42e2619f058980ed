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
