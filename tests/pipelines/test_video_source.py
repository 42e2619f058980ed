"""``python -m pipelines video`` end to end on local Ray with tiny models: clips made here (H.264 .mp4 from a
real photo, a hard cut) plus a truncated, a zero-length, an audio-only, a near-static and a 225:1 clip the
captioner refuses. One run for the module (Ray and four model actors take most of the time)."""

import json
import os

import pytest
import yaml

from datagen import shards
from datagen.samples.video import PAN_CUT, STILL, ZOOM, Shot, write_broken, write_clip
from datagen.shards.validate import validate
from pipelines.cli import main as cli_main

SIZE = (320, 240)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import ray

    root = tmp_path_factory.mktemp("video")
    clips = root / "clips"
    clips.mkdir()
    for name, shots in (("pan_cut.mp4", PAN_CUT), ("zoom.mp4", ZOOM), ("still.mp4", STILL)):
        write_clip(str(clips / name), shots, size=SIZE)
    write_clip(str(clips / "sliver.mp4"), [Shot(1.5, (0.5, 0.5, 1.0), (0.5, 0.5, 0.5))], size=(1800, 8))
    write_broken(str(clips))
    out = root / "out"
    config = {
        "out": str(out), "models": "auto", "writer": {"units_per_shard": 3}, "ray": {"num_cpus": 2},
        "sources": {"video": {
            "inputs": [str(clips)],
            "sampling": {"max_frames": 3, "candidates": 6, "min_sharpness": 0},
            "labeling": {
                "caption": {"max_new_tokens": 12},
                "detection": {"box_threshold": 0.0, "max_detections": 6},
                # tiny random boxes are ~1 % of the frame and their masks noise: open those two rules; they are no
                # real instances either, and make more than 4 tracks a clip (see configs/sample.yaml)
                "filters": {"min_image_side": 0, "area_min": 0.0, "min_mask_box_ratio": 0.0, "unlabeled": "ignore"},
            },
        }},
    }
    path = root / "video.yaml"
    path.write_text(yaml.safe_dump(config))
    code = cli_main(["video", "--config", str(path), "--models", "tiny"])
    ray.shutdown()
    return {"code": code, "out": str(out), "clips": str(clips)}


def test_run_finishes_with_a_valid_dataset(run):
    assert run["code"] == 0
    report = validate(run["out"])
    assert report.ok, report.violations
    manifest = shards.read_manifest(run["out"])
    counts = manifest["sources"]["video"]["counts"]
    assert counts["units_kept"] == 2 and counts["samples"] == 2
    assert manifest["synthetic_models"] is True
    assert set(manifest["models"]["video"]) == {"captioner", "detector", "segmenter", "embedder"}


def test_every_broken_input_and_the_model_error_end_in_quarantine(run):
    rows = shards.read_table(run["out"], shards.QUARANTINE_FILE).to_pylist()
    got = {os.path.basename(r["unit_id"]): (r["kind"], r["stage"], r["reason"]) for r in rows}
    assert got == {
        "truncated.mp4": ("failed", "decode", "corrupt_video"),
        "empty.mp4": ("failed", "decode", "empty_file"),
        "audio_only.mp4": ("failed", "decode", "no_video_stream"),
        "still.mp4": ("filtered", "decode", "too_few_frames"),
        "sliver.mp4": ("failed", "caption", "ValueError"),  # Qwen2-VL refuses a 225:1 frame
    }


def test_samples_hold_distinct_times_of_one_shot_and_matched_subjects(run):
    samples = {s.provenance["url"].rsplit("/", 1)[-1]: s for s in shards.iter_samples(run["out"])}
    assert set(samples) == {"pan_cut.mp4", "zoom.mp4"}
    for name, s in samples.items():
        times = [fr.fields["time_s"] for fr in s.frames]
        assert s.source == "video" and 2 <= len(s.frames) <= 3 and times == sorted(set(times))
        assert all(fr.caption and (fr.width, fr.height) == SIZE for fr in s.frames)
        assert 1 <= len(s.subjects) <= 4
        for subject in s.subjects:
            assert all(m.shape == (240, 320) for m in subject.masks.values())
            assert (subject.match_score is None) == (subject.fields.get("reference") == "target_crop")
        assert s.models["captioner"]["revision"] == "tiny" and "match" in s.scores
    cut = samples["pan_cut.mp4"].provenance["cuts_s"]
    assert cut == [pytest.approx(3.0, abs=0.13)]
    assert all(fr.fields["time_s"] < cut[0] for fr in samples["pan_cut.mp4"].frames)
    index = shards.read_table(run["out"], shards.INDEX_FILE).to_pylist()
    assert sorted(r["n_frames"] for r in index) == sorted(len(s.frames) for s in samples.values())
    assert all(r["source"] == "video" and "score_match" in r for r in index)


def test_meta_json_records_frames_times_and_fallback_references(run):
    raw = next(iter(shards.iter_raw(shards.shard_urls(run["out"]))))
    meta = json.loads(raw["meta.json"])
    assert meta["source"] == "video" and all("time_s" in fr and "frame" in fr for fr in meta["frames"])
    for subject in meta["subjects"]:
        masks = {k.split(".")[1] for k in raw if k.startswith("mask.") and k.endswith(f".{subject['id']}.png")}
        assert masks == set(subject["boxes"])  # a mask exactly where the subject has a box
