"""Dataset cards (README.md with the Hub's YAML front matter) of a shard dataset and of its export-hf export:
the YAML parses (yaml and huggingface_hub's DatasetCard, offline), carries the numbers and licences, and its
configs point at files ``datasets.load_dataset`` loads."""

import yaml
from huggingface_hub import DatasetCard

from datagen import shards
from datagen.shards import card
from datagen.shards.__main__ import main as cli
from tests.datagen.test_hf_export import two_source_dataset
from tests.shard_factory import make_sample, write_dataset


def front_matter(path):
    text = open(path).read()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def by_config(meta):
    infos = meta["dataset_info"]
    return {i.get("config_name", "default"): i for i in (infos if isinstance(infos, list) else [infos])}


def test_size_categories_are_the_hubs_buckets():
    assert [card.size_category(n) for n in (0, 999, 1000, 9999, 10_000, 999_999, 1_000_000, 12_345_678)] == [
        "n<1K", "n<1K", "1K<n<10K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M"]


def test_export_card_counts_rows_and_licences_per_source_and_its_configs_load(tmp_path):
    import datasets

    root = two_source_dataset(str(tmp_path / "ds"))
    out = tmp_path / "export"
    assert cli(["export-hf", root, str(out)]) == 0
    meta = front_matter(out / "README.md")
    # licences from each sample's provenance: "by" (a Sketchfab slug), "cc0-1.0" (a Hub id), none (unknown)
    assert meta["license"] == ["cc-by-4.0", "cc0-1.0", "unknown"]
    assert meta["size_categories"] == ["n<1K"] and meta["task_categories"] == ["text-to-image"]
    assert {"multi-person", "video-frames", "parquet"} <= set(meta["tags"])
    infos = by_config(meta)
    assert {n: i["splits"][0]["num_examples"] for n, i in infos.items()} == {"default": 12, "coco": 7, "video": 5}
    assert [f["name"] for f in infos["default"]["features"]][-3:] == ["frames", "masks", "meta"]
    parsed = DatasetCard.load(out / "README.md")  # huggingface_hub's own parser, no network
    assert parsed.data.license == meta["license"]
    assert "| coco | router | 7 |" in parsed.text and "by: 2" in parsed.text
    assert shards.read_manifest(str(out))["counts"]["samples"] == 12  # the dataset's provenance travels along
    # the card's configs are what load_dataset(<folder or repo>, <config>) reads
    for name, rows in (("default", 12), ("coco", 7), ("video", 5)):
        ds = datasets.load_dataset(str(out), name, split="train", cache_dir=str(tmp_path / "cache"))
        assert ds.num_rows == rows
    assert ds[0]["frames"][0].size == (640, 480)


def test_dataset_card_takes_numbers_from_the_manifest_and_declared_licences(tmp_path):
    import datasets

    root = write_dataset(str(tmp_path / "ds"), [[make_sample(f"s-{i}") for i in range(3)]])
    manifest = shards.read_manifest(root)
    manifest.update(counts={"samples": 3}, synthetic_models=True, sources={
        "objaverse": {"kind": "objaverse", "config": {"objaverse": {"licenses": ["cc0", "by"]}},
                      "counts": {"samples": 2, "units_kept": 2, "units_filtered": 7}},
        "deepfashion2": {"kind": "image", "config": {}, "counts": {"samples": 1, "units_kept": 1}},
    }, models={"objaverse": {"captioner": {"id": "Qwen/Qwen2-VL-2B-Instruct", "revision": "tiny",
                                           "backend": "transformers"}}, "deepfashion2": {}})
    c = card.dataset_card(root, manifest)
    card.write_card(root, c)
    meta = front_matter(f"{root}/README.md")
    assert meta["license"] == ["cc-by-4.0", "cc0-1.0", "other"]  # DeepFashion2's research-only terms: other
    assert meta["size_categories"] == ["n<1K"]
    assert "synthetic-labels" in meta["tags"] and "multi-view" in meta["tags"]
    assert by_config(meta)["default"]["splits"][0]["num_examples"] == 3
    text = card.read_card(root).text
    assert "| objaverse | objaverse | 2 | 2 | 7 | 0 | cc0, by |" in text
    assert "non-commercial research use only" in text and "Qwen/Qwen2-VL-2B-Instruct@tiny" in text
    # the default config is the index: plain columns the Hub's viewer shows (load_dataset checks the card's count)
    ds = datasets.load_dataset(root, split="train", cache_dir=str(tmp_path / "cache"))
    assert sorted(ds["key"]) == ["s-0", "s-1", "s-2"]
