"""``python -m training.evaluate``: sets from specs, DreamBench folders (the official published layout too) and
held-out shards; clear errors before any generation; end-to-end tiny runs write metrics.json, the parquet and a
report that renders and sorts; the known-answer systems calibrate copy-paste and confusion."""

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from datagen import shards
from tests.browser import dom, needs_chromium, screenshot
from tests.shard_factory import smooth_image, write_dataset
from tests.training.conftest import COLOURS
from training.evaluate.__main__ import main
from training.evaluate.report import html_report, summary, text_summary
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
    assert {s.cluster for s in samples} == {"a", "b + a"}  # the subjects a sample repeats: the bootstrap's unit
    assert len(load(str(spec_dir), None, 3, [0], 64)) == 3
    assert len(load(str(spec_dir), None, None, [0, 1, 2, 3], 64)) == 2 * 2 + 3 * 4  # cases without seeds: --seeds


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


OFFICIAL = """Classes

subject_name,class
backpack_dog,backpack
dog2,dog
red_cartoon,cartoon

Prompts

Object Prompts

prompt_list = [
'a {0} {1} in the jungle'.format(unique_token, class_token),
'a {0} {1} on top of pink fabric'.format(unique_token, class_token),
'a cube shaped {0} {1}'.format(unique_token, class_token)
]

Live Subject Prompts

prompt_list = [
'a {0} {1} in the jungle'.format(unique_token, class_token),
'a {0} {1} wearing a red hat'.format(unique_token, class_token),
'a {0} {1} in a purple wizard outfit'.format(unique_token, class_token)
]
"""


@pytest.fixture
def dreambench(tmp_path):
    """A clone of google/dreambooth in miniature: dataset/<subject>/NN.jpg beside prompts_and_classes.txt, in
    the published format (the prompt lists shortened to three lines each)."""
    root = tmp_path / "dreambooth" / "dataset"
    rng = np.random.default_rng(0)
    for name in ("backpack_dog", "dog2", "red_cartoon"):
        (root / name).mkdir(parents=True)
        for k in range(2):
            _save(root / name / f"{k:02d}.jpg", rng.integers(0, 255, (48, 40, 3), dtype=np.uint8))
    (root / "prompts_and_classes.txt").write_text(OFFICIAL)
    return root


def test_official_dreambench_layout_uses_both_prompt_lists_and_the_class_words(dreambench):
    samples = load(str(dreambench.parent), None, None, [0, 1], 64)  # the repository root finds dataset/
    assert len(samples) == 3 * 3 * 2
    by = {s.id: s for s in samples}
    assert by["dog2-01-s1"].prompt == "a dog wearing a red hat"  # live subject: the live list; no unique token
    assert by["backpack_dog-01-s0"].prompt == "a backpack on top of pink fabric"  # object: the object list
    assert by["red_cartoon-02-s0"].prompt == "a cube shaped cartoon"
    assert by["dog2-00-s0"].subjects[0].phrase == "dog" and by["dog2-00-s0"].cluster == "dog2"
    assert len(by["dog2-00-s0"].subjects[0].scoring) == 2  # every real image scores, unsegmented
    token = load(str(dreambench), None, None, [0], 64, unique_token="sks")
    assert token[0].prompt == "a sks backpack in the jungle"


def test_limit_spreads_samples_over_subjects(dreambench):
    two = load(str(dreambench), None, 2, [0, 1], 64)
    assert [s.cluster for s in two] == ["backpack_dog", "red_cartoon"]  # evenly spaced, not the first two
    five = load(str(dreambench), None, 5, [0, 1], 64)
    assert sorted(s.cluster for s in five).count("dog2") >= 1 and len({s.cluster for s in five}) == 3


def test_a_line_outside_the_published_format_names_its_place(dreambench):
    text = OFFICIAL.replace("'a cube shaped {0} {1}'.format(unique_token, class_token)", "a cube shaped {0} {1}")
    (dreambench / "prompts_and_classes.txt").write_text(text)
    with pytest.raises(SpecError, match=r"prompts_and_classes.txt:\d+: not a line of the published format"):
        load(str(dreambench), None, None, [0], 64)


def test_official_dreambench_end_to_end(dreambench, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["--size", "tiny", "--set", str(dreambench), "--limit", "2", "--seeds", "1", "--steps", "1",
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["references"] == "unsegmented" and metrics["seeds"] == 1 and metrics["locate"] == "grounding"
    cells = metrics["metrics"]["single"]["anystory"]
    assert cells["clip_t"]["n"] == 2 and cells["clip_t"]["n_subjects"] == 2 and cells["clip_t"]["ci"] is not None
    assert metrics["locators"] == {"anystory": ["grounding"], "base-sdxl": ["grounding"]}
    assert metrics["metric_info"]["clip_t"]["direction"] == "higher" and "raw cosine" in metrics["metric_info"]["clip_t"]["scale"]
    printed = capsys.readouterr().out
    assert "SYNTHETIC" in printed and "anystory - base-sdxl" in printed and "clip_t ↑" in printed


def test_empty_set_and_missing_inputs(tmp_path, caplog):
    (tmp_path / "prompts.txt").write_text("a {}\n")
    with pytest.raises(SpecError, match="empty"):
        load(str(tmp_path), None, None, [0], 64)
    assert main(["--size", "tiny", "--set", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "empty" in caplog.text and not (tmp_path / "out").exists()
    with pytest.raises(SpecError, match="no shards"):
        load(None, str(tmp_path), None, [0], 64)


def test_missing_encoder_weights_fail_before_generation(tmp_path, capsys):
    from anystory.model import ADAPTER_CONFIG, ADAPTER_FILES

    for name in (ADAPTER_CONFIG, *ADAPTER_FILES.values()):  # an adapters folder that passes the up-front check
        (tmp_path / name).write_bytes(b"{}")
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


def test_held_out_limit_spreads_over_the_shards_and_reads_only_theirs(colour_dataset, monkeypatch):
    from datagen import shards

    root = colour_dataset(3, 4)  # shards 0..2, keys ds-<shard>-<k>
    read = []
    iter_raw = shards.iter_raw
    monkeypatch.setattr(shards, "iter_raw", lambda urls: (read.extend(urls), iter_raw(urls))[1])
    samples = list(held_out(root, 3, 64))
    assert [s.cluster for s in samples] == ["ds-0-0", "ds-1-2", "ds-2-3"]  # first, middle, last; not shard 0's
    assert len(read) == 3
    read.clear()
    two = list(held_out(root, 2, 64, seeds=[0, 1]))
    assert [s.cluster for s in two] == ["ds-0-0", "ds-0-0", "ds-2-3", "ds-2-3"] and len(read) == 2  # shard 1 unread


def test_shipped_mini_set_loads():
    samples = load("mini", None, None, [0], 64)
    assert {len(s.subjects) for s in samples} == {1, 2, 3}


def _fake_report(prompt):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    subject = EvalSubject("a <b>cat</b>", image, None, [(image, None)])
    samples = [EvalSample(f"s{k}", "set&1", prompt, 0, [subject, subject], cluster=f"c{k}") for k in range(3)]
    samples.append(EvalSample("single", "set&1", prompt, 0, [subject]))  # one subject: its own table, n = 1
    regions = np.zeros((2, 64, 64), bool)
    regions[0, :, :32], regions[1, :, 32:] = True, True
    rows, images = [], {}
    for k, s in enumerate(samples):
        for system, clip_i in [("anystory", [0.9, 0.2, 0.5, 0.7][k]), ("base-sdxl", 0.4)]:
            rows.append({"sample": s.id, "set": s.set, "cluster": s.cluster, "system": system,
                         "subjects": len(s.subjects), "locator": "grounding", "clip_i": clip_i, "clip_t": 0.2,
                         "clip_score": 20.0, "dino": 0.5, "m_dino": 0.3 if system == "anystory" else 0.1,
                         "confusion": 0.0 if len(s.subjects) > 1 else None, "lost": 0.0})
            images[s.id, system] = (Generated(image, regions, image, regions, "grounding") if system == "anystory"
                                    else Generated(image))
    metrics = summary(rows, {"synthetic": True})
    return samples, html_report(samples, rows, images, metrics), metrics


def test_report_escapes_every_text_and_inlines_images():
    samples, page, metrics = _fake_report('<script>alert("x")</script> & co')
    assert "<script>alert" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co" in page
    assert "a &lt;b&gt;cat&lt;/b&gt;" in page and "set&amp;1" in page
    # per two-subject sample: 2 references, AnyStory image + overlay + segmentation, baseline image; 1 fewer ref
    assert len(re.findall(r'src="data:image/jpeg;base64,', page)) == 3 * 6 + 5


def test_summary_splits_single_and_multi_with_n_and_paired_differences():
    _, page, metrics = _fake_report("a cat twice")
    multi = metrics["metrics"]["multi"]["anystory"]["clip_i"]
    assert multi["mean"] == pytest.approx(0.5333, abs=1e-3) and (multi["n"], multi["n_subjects"]) == (3, 3)
    single = metrics["metrics"]["single"]["anystory"]["clip_i"]
    assert single["n"] == 1 and single["ci"] is None and "fewer than 2 subjects" in single["why"]
    diff = metrics["difference"]["multi"]["anystory - base-sdxl"]
    assert diff["clip_i"]["mean"] == pytest.approx(0.5333 - 0.4, abs=1e-3) and diff["clip_i"]["ci"] is not None
    assert diff["m_dino"]["mean"] == pytest.approx(0.2)
    assert metrics["metric_info"]["confusion"]["direction"] == "lower"
    text = text_summary(metrics)
    assert "0.533 [" in text and "(n=3/3 subj)" in text and "[no interval]" in text and "confusion ↓" in text


@pytest.mark.browser
@needs_chromium
def test_report_renders_and_sorts_by_score_in_headless_chromium(tmp_path):
    _, page, _ = _fake_report("a cat twice")
    html = tmp_path / "report.html"
    html.write_text(page)
    shot = screenshot(html, tmp_path, size=(1400, 900))
    assert (np.abs(shot - np.array([250, 250, 250])).sum(-1) > 30).mean() > 0.05  # the images are drawn
    red = (shot[..., 0] > 180) & (shot[..., 1] < 40) & (shot[..., 2] < 40)
    assert red[:60].mean() > 0.3  # the synthetic banner across the top
    rendered = dom(html, tmp_path)
    headline = re.search(r"<h2>two or more subjects</h2>(.*?)</table>", rendered, re.S).group(1)
    assert "clip_i ↑" in headline and "confusion ↓" in headline and "cosine, -1..1" in headline
    assert re.search(r"0\.533 \[0\.\d{3}, 0\.\d{3}\] \(n=3/3 subj\)", headline)  # mean, interval, n
    assert "anystory - base-sdxl" in headline and "paired" in headline
    assert "[no interval]" in re.search(r"<h2>one subject</h2>(.*?)</table>", rendered, re.S).group(1)
    # a click on the first score header (anystory clip_i) sorts the rows ascending
    html.write_text(page.replace("</body>", "<script>document.querySelector('th.s').click()</script></body>"))
    rows = re.findall(r"<tr class=\"?sample\"?><td>(s\d|single)<br>", dom(html, tmp_path))
    assert rows == ["s1", "s2", "single", "s0"]


def _textured_pair(key: str) -> shards.Sample:
    """Two frames, subjects 0 (reddish) and 1 (bluish) in the same boxes of both, with a different texture in each
    frame (a new view): the reference frame's crop and the target frame's crop of a subject differ."""
    boxes = [(8, 10, 36, 50), (56, 10, 84, 50)]
    frames, masks = [], {0: {}, 1: {}}
    for j in range(2):
        image = smooth_image(np.random.default_rng(100 + j), 64, 96)
        for i, (x0, y0, x1, y1) in enumerate(boxes):
            tint = np.array([(1.0, 0.3, 0.3), (0.3, 0.3, 1.0)][i])
            image[y0:y1, x0:x1] = smooth_image(np.random.default_rng(10 * i + j), y1 - y0, x1 - x0) * tint
            m = np.zeros((64, 96), bool)
            m[y0:y1, x0:x1] = True
            masks[i][j] = m
        frames.append(shards.Frame(image, f"{key} frame {j}"))
    return shards.Sample(key, "video", frames, [shards.Subject(i, f"thing {i}", masks[i]) for i in (0, 1)])


class BoxLocator:
    """A perfect Grounding DINO + SAM for ``_textured_pair``: "thing i" is subject i's box, scaled to the image."""

    described, synthetic = {"detector": "test boxes"}, True

    def __call__(self, image, phrases):
        regions = np.zeros((len(phrases), *image.shape[:2]), bool)
        h, w = image.shape[:2]
        for k, phrase in enumerate(phrases):
            x0, y0, x1, y1 = [(8, 10, 36, 50), (56, 10, 84, 50)][int(phrase.split()[-1])]
            regions[k, y0 * h // 64:y1 * h // 64, x0 * w // 96:x1 * w // 96] = True
        return regions


def test_known_answer_systems_calibrate_copy_paste_and_confusion(tmp_path, monkeypatch):
    """Through the command: the real target frame (target-oracle) never copies its reference and confuses or
    loses no subject; the reference pasted into the target's boxes (reference-paste) always copies."""
    from training.evaluate import locate

    root = write_dataset(str(tmp_path / "pairs"), [[_textured_pair(f"p-{k}") for k in range(2)]])
    monkeypatch.setattr(locate.PhraseLocator, "build", classmethod(lambda cls, specs: BoxLocator()))
    out = tmp_path / "eval"
    assert main(["--size", "tiny", "--shards", root, "--seeds", "1", "--steps", "1", "--out", str(out),
                 "--baseline", "target-oracle", "--baseline", "reference-paste", "--baseline", "ip-adapter"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["synthetic"] is True and "tiny" in metrics["skipped"]["ip-adapter"]
    multi = metrics["metrics"]["multi"]
    assert set(multi) == {"anystory", "base-sdxl", "target-oracle", "reference-paste"}
    oracle, paste = multi["target-oracle"], multi["reference-paste"]
    assert oracle["copy_paste"]["mean"] == 0.0 and paste["copy_paste"]["mean"] == 1.0
    assert oracle["copy_paste"]["n_subjects"] == 2 and paste["copy_paste"]["ci"] == [1.0, 1.0]
    assert oracle["confusion"]["mean"] == 0.0 and oracle["lost"]["mean"] == 0.0
    assert oracle["m_dino"]["mean"] == pytest.approx(1.0, abs=1e-5)  # its regions are the target crops
    assert oracle["dino"]["mean"] == pytest.approx(1.0, abs=1e-5)  # unsegmented: the target frame itself
    assert "m_dino_routing" in multi["anystory"]  # the routing maps' view, beside the like-with-like one
    assert set(metrics["difference"]["multi"]) == {"anystory - base-sdxl"}  # calibration systems are not compared
    rows = pd.read_parquet(out / "samples.parquet")
    assert len(rows) == 2 * 4 and rows.synthetic.all() and set(rows.locator) == {"grounding"}
    assert all((out / p).is_file() for p in rows.image)
    page = (out / "report.html").read_text()
    assert page.count("<tr class=sample>") == 2 and "SYNTHETIC" in page and "reference-paste" in page


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
