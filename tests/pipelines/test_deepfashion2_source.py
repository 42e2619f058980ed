"""Source ``deepfashion2`` through the CLI on local Ray, on the project's sample inputs: a valid dataset of
shop/consumer pairs, the lonely shop image and the corrupt photo quarantined, drops counted in the manifest."""

import pytest

from datagen import shards
from datagen.samples import deepfashion2 as inputs
from datagen.shards.validate import validate
from pipelines.cli import main as cli_main


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    root = tmp_path_factory.mktemp("df2")
    made = inputs.make(str(root / "inputs"))
    cfg = root / "cfg.yaml"
    cfg.write_text(f"out: {root / 'ds'}\nmodels: tiny\nray: {{num_cpus: 2}}\nwriter: {{units_per_shard: 2}}\n"
                   f"sources:\n  deepfashion2:\n    root: {made['root']}\n")
    assert cli_main(["deepfashion2", "--config", str(cfg)]) == 0
    return str(root / "ds")


def test_a_valid_dataset_of_shop_user_pairs(out):
    report = validate(out)
    assert report.ok, report.violations
    index = shards.read_table(out, shards.INDEX_FILE).to_pylist()
    assert sorted(r["n_subjects"] for r in index) == [1, 1, 2] and {r["n_frames"] for r in index} == {2}
    samples = {(s.provenance["shop"], s.provenance["user"]): s for s in shards.iter_samples(out)}
    assert sorted(samples) == [("000001", "000002"), ("000001", "000003"), ("000004", "000005")]
    for s in samples.values():
        assert s.source == "image" and [f.fields["domain"] for f in s.frames] == ["shop", "user"]
        assert all(sorted(sub.masks) == [0, 1] for sub in s.subjects)
        # one pair per garment, its identity from the matcher's embedder (photos differ: not 1 by construction)
        assert [(p["subject"], p["frames"]) for p in s.pairs] == [(sub.id, [0, 1]) for sub in s.subjects]
        assert all(-1 <= p["identity"] < 1 and 0 < p["change_score"] <= 1 for p in s.pairs)
    assert sorted(r["n_pairs"] for r in index) == [1, 1, 2]


def test_quarantine_and_drop_counts(out):
    q = {r["unit_id"]: (r["kind"], r["reason"]) for r in shards.read_table(out, shards.QUARANTINE_FILE).to_pylist()}
    assert q == {"deepfashion2:deepfashion2:3": ("filtered", "no_pairs"),
                 "deepfashion2:deepfashion2:4": ("failed", "corrupt_image")}
    counts = shards.read_manifest(out)["sources"]["deepfashion2"]["counts"]
    assert counts["dropped"] == {"deepfashion2/no_partner": 3, "deepfashion2/style_0": 1}
    assert counts["samples"] == 3


def test_captioner_recaptions_every_frame_and_is_recorded(out, tmp_path):
    """``captions: captioner``: Qwen2-VL (tiny here) writes every frame's caption; phrases stay the categories."""
    made = inputs.make(str(tmp_path / "inputs"))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"out: {tmp_path / 'ds'}\nmodels: tiny\nray: {{num_cpus: 2}}\n"
                   f"sources:\n  deepfashion2:\n    root: {made['root']}\n    captions: captioner\n"
                   "    caption: {max_new_tokens: 6}\n")
    assert cli_main(["deepfashion2", "--config", str(cfg)]) == 0
    assert validate(str(tmp_path / "ds")).ok
    by_names = {s.key: s for s in shards.iter_samples(out)}
    recaptioned = list(shards.iter_samples(str(tmp_path / "ds")))
    assert sorted(s.key for s in recaptioned) == sorted(by_names)
    for s in recaptioned:
        assert s.models["captioner"]["revision"] == "tiny"
        assert [f.caption for f in s.frames] != [f.caption for f in by_names[s.key].frames]
        assert [x.phrase for x in s.subjects] == [x.phrase for x in by_names[s.key].subjects]
