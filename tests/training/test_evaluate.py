"""``python -m training.evaluate``: sets from specs, DreamBench folders and held-out shards; clear errors before any
generation; an end-to-end tiny run writes metrics.json, the parquet and a report that renders and sorts."""

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.browser import dom, needs_chromium, screenshot
from tests.training.conftest import COLOURS
from training.evaluate.__main__ import main
from training.evaluate.report import html_report, summary
from training.evaluate.run import Generated
from training.evaluate.sets import EvalSample, EvalSubject, SpecError, held_out, load


def _save(path, array):
    Image.fromarray(array).save(path)
    return path.name


@pytest.fixture
def spec_dir(tmp_path):
    rng = np.random.default_rng(0)
    mask = np.zeros((40, 30), np.uint8)
    mask[5:35, 5:25] = 255
    _save(tmp_path / "a.png", rng.integers(0, 255, (40, 30, 3), dtype=np.uint8))
    _save(tmp_path / "a_mask.png", mask)
    _save(tmp_path / "b.jpg", rng.integers(0, 255, (20, 50, 3), dtype=np.uint8))
    return tmp_path


def _write_spec(root, cases, name="spec.yaml"):
    import yaml
    (root / name).write_text(yaml.safe_dump({"subjects": {
        "a": {"image": "a.png", "mask": "a_mask.png", "phrase": "a cat"},
        "b": {"image": "b.jpg", "phrase": "a <red> hat"}}, "cases": cases}))
    return root / name


def test_spec_expands_prompts_templates_over_scenes_and_seeds(spec_dir):
    _write_spec(spec_dir, [{"subjects": ["a"], "prompts": ["{} asleep", "{0} awake"], "seeds": [1, 2]},
                           {"subjects": ["b", "a"], "templates": ["{1} wears {0} {scene}"],
                            "scenes": ["indoors", "outdoors", "at sea"]}])
    samples = load(str(spec_dir), None, None, [0], 64)
    assert len(samples) == 2 * 2 + 3
    assert [s.prompt for s in samples[:2]] == ["a cat asleep", "a cat asleep"]
    assert [s.seed for s in samples[:2]] == [1, 2]
    assert samples[-1].prompt == "a cat wears a <red> hat at sea" and samples[-1].set == spec_dir.name
    assert samples[0].subjects[0].mask.sum() == 30 * 20 and samples[-1].subjects[0].mask is None
    assert len(load(str(spec_dir), None, 3, [0], 64)) == 3


def test_jsonl_spec_with_inline_subjects(spec_dir):
    line = {"subjects": [{"image": "b.jpg", "phrase": "a hat"}], "prompts": ["{} on a chair"], "seeds": [7]}
    (spec_dir / "ms.jsonl").write_text(json.dumps(line) + "\n")
    [sample] = load(str(spec_dir / "ms.jsonl"), None, None, [0], 64)
    assert (sample.prompt, sample.seed, sample.set) == ("a hat on a chair", 7, "ms")


@pytest.mark.parametrize("cases, message", [
    ([{"subjects": ["a", "b"], "prompts": ["{0} alone"]}], "must name each"),
    ([{"subjects": ["a"], "prompts": ["{0} and {1}"]}], "does not fit"),
    ([{"subjects": ["zebra"], "prompts": ["{}"]}], "unknown subject 'zebra'"),
    ([{"subjects": ["a"]}], "needs `prompts`"),
    ([{"subjects": ["a"], "prompts": ["{}"], "colour": "red"}], "colour"),
    ([], "cases"),
])
def test_bad_specs_fail_with_the_reason(spec_dir, cases, message):
    _write_spec(spec_dir, cases)
    with pytest.raises(SpecError, match=re.escape(message)):
        load(str(spec_dir), None, None, [0], 64)


def test_dreambench_layout(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in [("backpack_dog", 2), ("cat2", 3)]:
        (tmp_path / name).mkdir()
        for k in range(n):
            _save(tmp_path / name / f"{k:02d}.jpg", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    (tmp_path / "prompts.txt").write_text("a {} in the jungle\n\na {} on the moon\n")
    (tmp_path / "classes.txt").write_text("cat2,cat\n")
    samples = load(str(tmp_path), None, None, [0, 1], 64)
    assert len(samples) == 2 * 2 * 2
    assert samples[0].prompt == "a backpack dog in the jungle" and samples[-1].prompt == "a cat on the moon"
    assert len(samples[-1].subjects[0].scoring) == 3  # every image of the subject scores, the first conditions


def test_empty_set_and_missing_inputs(tmp_path, caplog):
    (tmp_path / "prompts.txt").write_text("a {}\n")
    with pytest.raises(SpecError, match="empty"):
        load(str(tmp_path), None, None, [0], 64)
    assert main(["--size", "tiny", "--set", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "empty" in caplog.text and not (tmp_path / "out").exists()
    with pytest.raises(SpecError, match="no shards"):
        load(None, str(tmp_path), None, [0], 64)


def test_missing_encoder_weights_fail_before_generation(tmp_path, capsys):
    assert main(["--adapters", str(tmp_path), "--set", "mini", "--out", str(tmp_path / "out"),
                 "--clip", str(tmp_path / "no-clip")]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"error: .*CLIP ViT-B/32.*hf download.*\n", err) and "Traceback" not in err  # one line
    assert not (tmp_path / "out").exists()


def test_held_out_shards_score_against_the_real_target_frame(colour_dataset):
    root = colour_dataset(1, 3)
    samples = list(held_out(root, 2, 64))
    assert len(samples) == 2
    for s in samples:
        target = s.meta["target_frame"]
        assert s.prompt.endswith(f"frame {target}") and s.size == (64, 64)
        for sub, ref in zip(s.subjects, s.meta["reference_frames"]):
            image, mask = sub.scoring[0]
            assert image is s.target
            colour = image[mask].mean(0)
            i = int(sub.phrase.split()[-1])
            assert np.abs(colour - COLOURS[i]).max() < 20  # the subject's own pixels in the target frame
            if i == 0:  # subject 0 is in both frames: its reference is the other one
                assert ref != target


def test_shipped_mini_set_loads():
    samples = load("mini", None, None, [0], 64)
    assert {len(s.subjects) for s in samples} == {1, 2, 3}


def _fake_report(prompt):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    subject = EvalSubject("a <b>cat</b>", image, None, [(image, None)])
    samples = [EvalSample(f"s{k}", "set&1", prompt, 0, [subject, subject]) for k in range(3)]
    regions = np.zeros((2, 64, 64), bool)
    regions[0, :, :32], regions[1, :, 32:] = True, True
    rows, images = [], {}
    for k, s in enumerate(samples):
        for system, clip_i in [("anystory", [0.9, 0.2, 0.5][k]), ("base-sdxl", 0.4)]:
            rows.append({"sample": s.id, "set": s.set, "system": system, "subjects": 2, "clip_i": clip_i,
                         "clip_t": 20.0, "dino": 0.5, "m_dino": 0.3 if system == "anystory" else None,
                         "blending": 0.0 if system == "anystory" else None})
            images[s.id, system] = Generated(image, regions, image) if system == "anystory" else Generated(image)
    metrics = summary(rows, {"synthetic": True})
    return samples, html_report(samples, rows, images, metrics), metrics


def test_report_escapes_every_text_and_inlines_images():
    samples, page, metrics = _fake_report('<script>alert("x")</script> & co')
    assert "<script>alert" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co" in page
    assert "a &lt;b&gt;cat&lt;/b&gt;" in page and "set&amp;1" in page
    # per sample: 2 references, AnyStory image + overlay + segmentation, baseline image
    assert len(re.findall(r'src="data:image/jpeg;base64,', page)) == 3 * 6
    assert metrics["difference"]["anystory - base-sdxl"]["clip_i"]["mean"] == pytest.approx(0.5333 - 0.4, abs=1e-3)
    assert metrics["per_subject_count"]["2"]["anystory"]["m_dino"]["mean"] == pytest.approx(0.3)


@pytest.mark.browser
@needs_chromium
def test_report_renders_and_sorts_by_score_in_headless_chromium(tmp_path):
    _, page, _ = _fake_report("a cat twice")
    html = tmp_path / "report.html"
    html.write_text(page)
    shot = screenshot(html, tmp_path)
    assert (np.abs(shot - np.array([250, 250, 250])).sum(-1) > 30).mean() > 0.05  # the images are drawn
    # a click on the first score header (anystory clip_i) sorts the rows ascending
    html.write_text(page.replace("</body>", "<script>document.querySelector('th.s').click()</script></body>"))
    rows = re.findall(r"<tr class=\"?sample\"?><td>(s\d)<br>", dom(html, tmp_path))
    assert rows == ["s1", "s2", "s0"]


def test_end_to_end_tiny_run_on_shards(colour_dataset, tmp_path):
    root, out = colour_dataset(1, 2), tmp_path / "eval"
    assert main(["--size", "tiny", "--shards", root, "--limit", "2", "--steps", "1", "--out", str(out),
                 "--baseline", "ip-adapter"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["synthetic"] is True and metrics["n_samples"] == 2
    assert "tiny" in metrics["skipped"]["ip-adapter"]
    assert set(metrics["metrics"]) == {"anystory", "base-sdxl"}
    mine = metrics["metrics"]["anystory"]
    for m in ("clip_i", "clip_t", "dino", "m_dino"):
        lo, hi = mine[m]["ci"]
        assert lo <= mine[m]["mean"] <= hi
    base = metrics["metrics"]["base-sdxl"]
    assert base["m_dino"]["n"] == 2  # no routing maps: located by phrase
    assert base["blending"]["n"] == mine["blending"]["n"]  # (samples with two subjects)
    assert metrics["locators"] == {"anystory": ["routing"], "base-sdxl": ["grounding"]}
    assert metrics["difference"]["anystory - base-sdxl"]["m_dino"]["n"] == 2
    assert "anystory - base-sdxl" in metrics["difference"] and list(metrics["per_set"]) == ["ds"]
    rows = pd.read_parquet(out / "samples.parquet")
    assert len(rows) == 4 and set(rows.system) == {"anystory", "base-sdxl"} and rows.synthetic.all()
    assert rows[rows.system == "base-sdxl"].m_dino.notna().all()
    assert all((out / p).is_file() for p in rows.image)
    page = (out / "report.html").read_text()
    assert page.count("<tr class=sample>") == 2 and "SYNTHETIC" in page


def test_train_eval_every_logs_metrics_and_grid_and_leaves_training_alone(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tests.shard_factory import write_dataset
    from tests.training.conftest import colour_sample
    from training.config import load_config
    from training.trainer import train

    data = write_dataset(str(tmp_path / "ds"), [[colour_sample(f"e-{k}", {0: [0, 1], 1: [0, 1]}, size=(64, 64))
                                                for k in range(2)]])
    config = Path(__file__).parents[2] / "configs" / "train" / "stage1_tiny.yaml"

    def run(out, *extra):
        return train(load_config(config, [f"data.sources=[{{path: {data}}}]", f"train.output_dir={tmp_path / out}",
                                          "train.max_steps=2", "train.log_every=1", *extra]))

    plain = run("plain", "train.tracker=null")
    evaluated = run("eval", "train.tracker=tensorboard", "train.eval_every=1", f"train.eval_shards={data}",
                    "train.eval_samples=1", "train.eval_steps=1")
    assert evaluated.losses == plain.losses  # same noise and timesteps: the evaluation draws from its own RNGs
    assert all(p.requires_grad for p in evaluated.model.stage1_parameters())
    [events] = list((tmp_path / "eval" / "logs").glob("*/events.out.tfevents*"))  # (hparams write their own)
    acc = EventAccumulator(str(events), size_guidance={"images": 0}).Reload()
    assert {"eval/anystory/clip_i", "eval/anystory/m_dino", "eval/base-sdxl/dino"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("eval/anystory/clip_t")] == [1, 2]
    assert "eval/images" in acc.Tags()["images"]
