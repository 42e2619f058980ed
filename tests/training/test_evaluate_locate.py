"""Locating subjects by phrase (Grounding DINO + SAM), for every system by default: tiny models run end to end;
with the detector and segmenter stubbed, same-phrase subjects take distinct boxes and a subject not found is lost
and scores 0; rows say which locator found their regions, and differences between systems located differently are
refused; a missing weight fails before any generation."""

import numpy as np
import pytest

from datagen.labeling.filters import Instance
from training.evaluate import encoders, report, run
from training.evaluate.__main__ import main
from training.evaluate.encoders import build_encoders
from training.evaluate.locate import PhraseLocator, assign, resolve
from training.evaluate.metrics import crop, score
from training.evaluate.sets import EvalSample, EvalSubject


def test_tiny_locator_gives_a_region_of_the_image_shape_per_subject():
    locator = PhraseLocator.build(resolve("tiny"))
    assert locator.synthetic
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)  # landscape, not square
    regions = locator(image, ["a dog", "a dog", "a red cat"])
    assert regions.shape == (3, 48, 64) and regions.dtype == bool


def test_ten_subjects_with_long_phrases_are_located_not_failed_after_generation():
    """Issue 24 item 11: a 10-subject case's phrases overflow the detector's text length (the tiny model reads 64
    tokens, Grounding DINO 256); they were scored after generating and failed there. Now they are split into
    prompts that fit, every subject gets its region row."""
    locator = PhraseLocator.build(resolve("tiny"))
    image = np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    phrases = [f"a small red ceramic teapot number {k} with a long bamboo handle" for k in range(10)]
    assert len(locator.detector.tokenizer(" . ".join(phrases))["input_ids"]) > locator.detector.max_text_len
    regions = locator(image, phrases)
    assert regions.shape == (10, 48, 64) and regions.any(axis=(1, 2)).sum() >= 2


class FakeDetector:
    """Three "a person" boxes (left best, then right, then middle) and none for "a dog"."""

    boxes = {"left": [0, 0, 20, 48], "middle": [22, 0, 42, 48], "right": [44, 0, 64, 48]}

    def __init__(self):
        self.prompts = []

    def __call__(self, images, phrases):
        self.prompts.append(phrases[0])
        found = [Instance("A person", self.boxes["middle"], 0.3), Instance("a person", self.boxes["left"], 0.9),
                 Instance("a person", self.boxes["right"], 0.5)]
        return [found]


def fake_segmenter(images, boxes):
    """SAM stand-in: the whole box."""
    out = []
    for image, bx in zip(images, boxes):
        masks = []
        for x0, y0, x1, y1 in bx:
            m = np.zeros(image.shape[:2], bool)
            m[int(y0):int(y1), int(x0):int(x1)] = True
            masks.append(m)
        out.append(masks)
    return out


def test_same_phrase_subjects_take_distinct_boxes_best_first_and_a_lost_subject_scores_zero():
    detector = FakeDetector()
    locator = PhraseLocator(detector, fake_segmenter)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    regions = locator(image, ["a person", "a dog", "a Person"])
    assert detector.prompts == [["a person", "a dog"]]  # one prompt segment per phrase
    assert regions[0, :, :20].all() and regions[0].sum() == 20 * 48  # the best box
    assert regions[2, :, 44:].all() and regions[2].sum() == 20 * 48  # the next one, not the same
    assert not regions[1].any()  # no box for "a dog": empty region
    enc = build_encoders("tiny")
    middle = fake_segmenter([image], [[FakeDetector.boxes["middle"]]])[0][0]
    refs = [[crop(image, r)] for r in (regions[0], middle, regions[2])]  # a person's reference: its own region
    lost = score(enc, image, "a person, a dog and a person", refs, regions)
    assert lost["subject_dino"][1] == 0 and lost["m_dino"] == 0
    assert lost["subject_dino"][0] == pytest.approx(1.0, abs=1e-4)
    assert lost["lost"] == pytest.approx(1 / 3) and lost["confusion"] >= 1 / 3  # lost counts as a failure


def test_assign_gives_none_past_the_boxes_of_a_phrase():
    one = [Instance("a cat", [0, 0, 5, 5], 0.4)]
    assert assign(["a cat", "a cat"], one) == [one[0], None]
    assert assign(["a dog"], []) == [None]


def test_missing_detector_weights_fail_before_generation(tmp_path, monkeypatch, capsys):
    from anystory.model import ADAPTER_CONFIG, ADAPTER_FILES

    for name in (ADAPTER_CONFIG, *ADAPTER_FILES.values()):  # an adapters folder that passes the up-front check
        (tmp_path / name).write_bytes(b"{}")
    monkeypatch.setattr(encoders, "build_encoders", lambda *a, **k: build_encoders("tiny"))
    assert main(["--adapters", str(tmp_path), "--set", "mini", "--out", str(tmp_path / "out"),
                 "--detector", str(tmp_path / "no-grounding-dino"), "--segmenter", str(tmp_path / "no-sam")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "detector" in err[0]  # MissingModelError, one line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("locate, located", [("grounding", {"anystory", "base-sdxl"}), ("routing", {"base-sdxl"})])
def test_each_system_is_located_by_its_locator_and_the_row_says_which(monkeypatch, locate, located):
    """By default (grounding) every system is located by phrase and AnyStory's routing maps give extra, labelled
    columns; with ``routing`` AnyStory is scored by its maps and its region-metric differences are refused."""
    image = np.random.default_rng(2).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    routed = np.zeros((2, 48, 64), bool)
    routed[0, :, :32], routed[1, :, 32:] = True, True

    def generate(pipe, system, sample, settings):
        return run.Generated(image, routed, image) if system == run.ANYSTORY else run.Generated(image)

    calls = []

    def locator(img, phrases):
        calls.append(phrases)
        return np.ones((len(phrases), *img.shape[:2]), bool)

    monkeypatch.setattr(run, "generate", generate)
    subjects = [EvalSubject(ph, image, None, [(image, None)]) for ph in ("a cat", "a hat")]
    samples = [EvalSample(f"s{k}", "set", "a cat in a hat", k, subjects, cluster="cat+hat") for k in range(2)]
    rows, images = run.run(samples, None, build_encoders("tiny"), run.Settings(), progress=False, locator=locator,
                           locate=locate)
    by = {r["system"]: r for r in rows if r["sample"] == "s0"}
    assert {s for s, r in by.items() if r["locator"] == "grounding"} == located and len(calls) == 2 * len(located)
    assert calls[0] == ["a cat", "a hat"]
    assert all(r["m_dino"] is not None and r["confusion"] is not None for r in rows)
    assert (images["s0", "anystory"].regions == routed).all() == (locate == "routing")
    # the same image, both views: the routing maps' columns sit beside the phrase locator's, labelled
    assert ("m_dino_routing" in by["anystory"]) == (locate == "grounding") and "m_dino_routing" not in by["base-sdxl"]
    diff = report.summary(rows, {})["difference"]["multi"]["anystory - base-sdxl"]
    assert diff["clip_i"]["mean"] is not None
    if locate == "routing":
        assert diff["m_dino"]["mean"] is None and "located differently" in diff["m_dino"]["refused"]
    else:
        assert diff["m_dino"]["n"] == 2 and "refused" not in diff["m_dino"]
