"""``make dataset`` as a newcomer runs it: the shipped ``configs/sample.yaml`` on the inputs ``datagen.samples``
makes, every source on tiny random models. Each of the five sources must write at least one sample, marked
synthetic, and the dataset must validate."""

import os

import pytest
import yaml

from datagen import shards
from datagen.samples import make_all
from datagen.shards.validate import validate
from pipelines.cli import main as cli_main
from pipelines.sources import SOURCES

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "sample.yaml")


def relocated(doc: dict, inputs: str) -> dict:
    """The config with its ``data/inputs`` paths moved under ``inputs``."""
    def move(v):
        if isinstance(v, list):
            return [move(x) for x in v]
        return v.replace("data/inputs", inputs, 1) if isinstance(v, str) and v.startswith("data/inputs") else v

    for section in doc["sources"].values():
        for key, value in section.items():
            section[key] = move(value)
    return doc


@pytest.mark.slow
def test_the_sample_config_yields_every_source(tmp_path):
    import ray

    inputs = str(tmp_path / "inputs")
    make_all(inputs)
    with open(CONFIG) as f:
        doc = relocated(yaml.safe_load(f), inputs)
    assert set(doc["sources"]) == set(SOURCES) == {"video", "objaverse", "deepfashion2", "coco", "urls"}
    doc["out"] = str(tmp_path / "ds")
    path = tmp_path / "sample.yaml"
    path.write_text(yaml.safe_dump(doc))
    try:
        assert cli_main(["all", "--config", str(path), "--models", "tiny"]) == 0
    finally:
        ray.shutdown()
    report = validate(doc["out"])
    assert report.ok, report.violations
    manifest = shards.read_manifest(doc["out"])
    assert manifest["synthetic_models"] is True
    samples = {name: manifest["sources"][name]["counts"]["samples"] for name in SOURCES}
    assert all(n >= 1 for n in samples.values()), samples
