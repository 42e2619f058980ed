"""The labeling chain: item-level steps on fixed detector/segmenter/embedder outputs (filters counted by reason,
matching, fallback references, the 4-subject cap), then the whole chain on tiny real-architecture models."""

from functools import partial

import numpy as np
import pytest

from datagen.labeling import chain as labeling
from datagen.readers import video
from datagen.labeling.detection import DetectionParams
from datagen.labeling.filters import FilterParams, Instance
from datagen.labeling.chain import LabelingParams
from datagen.labeling.matching import MatchParams
from datagen.models import ModelSpec
from datagen.samples.video import PAN_CUT, write_clip
from datagen.shards import Frame, Sample, decode_sample, encode_sample, sample_meta
from datagen.units import Item, Rejected, Unit

H, W = 100, 200
FP = FilterParams(min_image_side=0, unlabeled="ignore")  # frames stay: the frame policy has its own tests


def item(n_frames=3, captions=None):
    frames = [Frame(np.zeros((H, W, 3), np.uint8), (captions or [""] * n_frames)[j], {"time_s": j / 2})
              for j in range(n_frames)]
    return Item(Unit("u"), [Sample("vid-test", "video", frames)])


def inst(phrase, x, w=40, score=0.9, fill=1.0):
    """A box of w×50 at column x with a mask covering ``fill`` of it."""
    box = [float(x), 20.0, float(x + w), 70.0]
    mask = np.zeros((H, W), bool)
    mask[20:70, x:x + w].flat[: int(fill * w * 50)] = True
    return Instance(phrase, box, score, mask)


def onehot(*ks, dim=8):
    out = np.zeros((len(ks), dim))
    out[np.arange(len(ks)), ks] = 1
    return out


def test_find_phrases_per_clip_and_per_frame():
    captions = ["A woman holds a red ball.", "A dog runs past a woman."]
    it = labeling.find_phrases(item(2, captions), labeling.EntityParams(), per="clip")
    assert it.scratch["phrases"] == [["woman", "red ball", "dog"]] * 2
    it = labeling.find_phrases(item(2, captions), labeling.EntityParams(), per="frame")
    assert it.scratch["phrases"] == [["woman", "red ball"], ["dog", "woman"]]
    it = labeling.find_phrases(item(2, ["A man raises his hand.", "A crowd watches a man."]), labeling.EntityParams())
    assert it.scratch["phrases"] == [["man"]] * 2 and it.drops == {"entities/body_part": 1, "entities/group": 1}
    with pytest.raises(Rejected) as e:
        labeling.find_phrases(item(2, ["It is here.", "Nothing at all."]), labeling.EntityParams())
    assert e.value.reason == "no_phrases" and "It is here." in e.value.detail


def test_box_and_mask_filters_count_drops_and_reject_empty_samples():
    it = item(2)
    it.scratch["instances"] = [
        [inst("dog", 10), inst("dog", 12, score=0.5), Instance("tiny", [150, 20, 170, 40], 0.9), inst("faint", 100, score=0.1)],
        [inst("hollow", 60, fill=0.3), inst("dog", 120)],
    ]
    labeling.filter_boxes(it, FP)
    assert [[x.phrase for x in f] for f in it.scratch["instances"]] == [["dog"], ["hollow", "dog"]]
    labeling.filter_masks(it, FP)
    assert [[x.phrase for x in f] for f in it.scratch["instances"]] == [["dog"], ["dog"]]
    assert it.drops == {"filter_boxes/duplicate_iou": 1, "filter_boxes/box_area_small": 1,
                        "filter_boxes/low_score": 1, "filter_masks/mask_box_ratio": 1}
    empty = item(2)
    empty.scratch["instances"] = [[inst("faint", 10, score=0.1)], []]
    with pytest.raises(Rejected) as e:
        labeling.filter_boxes(empty, FP)
    assert e.value.reason == "no_subjects" and "low_score" in e.value.detail


def test_matching_reidentifies_permuted_subjects_and_falls_back_for_unmatched():
    it = item(3)
    # frame 0: dog, ball, man; frame 1: man, dog (ball gone); frame 2: ball, dog, man, and a cat seen once
    it.scratch["instances"] = [
        [inst("dog", 0), inst("ball", 50), inst("man", 100, w=60)],
        [inst("man", 10, w=60), inst("dog", 100)],
        [inst("ball", 0), inst("dog", 50), inst("man", 100, w=60), inst("cat", 170, w=30)],
    ]
    it.scratch["embeddings"] = [onehot(0, 1, 2), onehot(2, 0), onehot(1, 0, 2, 5)]
    labeling.match_subjects(it, MatchParams(min_similarity=0.6), FP, models={"detector": {"id": "x"}})
    sample = it.samples[0]
    got = {s.phrase: s for s in sample.subjects}
    assert [s.id for s in sample.subjects] == [0, 1, 2, 3]
    assert sorted(got["dog"].masks) == [0, 1, 2] and sorted(got["ball"].masks) == [0, 2]
    assert got["dog"].boxes == {0: [0, 20, 40, 70], 1: [100, 20, 140, 70], 2: [50, 20, 90, 70]}
    assert got["man"].boxes[1] == [10, 20, 70, 70] and got["man"].match_score == pytest.approx(1.0)
    cat = got["cat"]
    assert sorted(cat.masks) == [2] and cat.match_score is None and cat.fields == {"reference": "target_crop"}
    assert all(s.fields == {} for s in sample.subjects if s.phrase != "cat")
    assert sample.scores == {"det": 0.9, "match": pytest.approx(1.0)}
    assert sum(s.match_score is not None for s in sample.subjects) == 3
    assert sample.models == {"detector": {"id": "x"}} and it.scratch == {}
    meta = sample_meta(sample)
    assert next(s for s in meta["subjects"] if s["phrase"] == "cat")["reference"] == "target_crop"
    back = decode_sample(encode_sample(sample))
    assert {s.phrase: sorted(s.masks) for s in back.subjects} == {s.phrase: sorted(s.masks) for s in sample.subjects}


def test_below_threshold_pairs_stay_apart_and_a_clip_without_a_match_is_filtered():
    def unmatched():
        it = item(2)
        it.scratch["instances"] = [[inst("dog", 0)], [inst("dog", 100)]]
        similar = np.array([[0.59, np.sqrt(1 - 0.59**2)]])
        it.scratch["embeddings"] = [np.array([[1.0, 0.0]]), similar]
        return it

    with pytest.raises(Rejected) as e:
        labeling.match_subjects(unmatched(), MatchParams(min_similarity=0.6), FP)
    assert e.value.reason == "no_match"
    it = unmatched()
    labeling.match_subjects(it, MatchParams(min_similarity=0.6, self_references=True), FP)
    subjects = it.samples[0].subjects
    assert [sorted(s.masks) for s in subjects] == [[0], [1]]
    assert all(s.fields == {"reference": "target_crop"} for s in subjects)
    assert it.samples[0].scores["match"] == 0.0 and all(s.match_score is None for s in subjects)


def test_at_most_four_subjects_matched_ones_first():
    it = item(2)
    # six subjects: two matched across both frames (small), four seen once (large)
    it.scratch["instances"] = [[inst("a", 0, w=10), inst("b", 20, w=10), inst("big1", 40, w=60), inst("big2", 120, w=60)],
                               [inst("a", 0, w=10), inst("b", 20, w=10), inst("big3", 40, w=60), inst("big4", 120, w=50)]]
    it.scratch["embeddings"] = [onehot(0, 1, 2, 3), onehot(0, 1, 4, 5)]
    labeling.match_subjects(it, MatchParams(), FP)
    phrases = [s.phrase for s in it.samples[0].subjects]
    assert phrases == ["a", "b", "big1", "big2"]
    assert it.drops == {"match/too_many_subjects": 2}
    assert all(s.id == k for k, s in enumerate(it.samples[0].subjects))


def five_subjects_one_over_the_cap():
    """Subjects a–d in three frames; a fifth, e (the smallest, seen once), in frame 1 only: over the cap of 4."""
    it = item(3)
    four = [inst(ph, 40 * k, w=36) for k, ph in enumerate("abcd")]
    it.scratch["instances"] = [list(four), [*four, inst("e", 160, w=30)], list(four)]
    it.scratch["embeddings"] = [onehot(0, 1, 2, 3), onehot(0, 1, 2, 3, 4), onehot(0, 1, 2, 3)]
    return it


def test_a_frame_holding_a_subject_over_the_cap_is_dropped_by_default():
    it = five_subjects_one_over_the_cap()
    labeling.match_subjects(it, MatchParams(), FilterParams(min_image_side=0))
    sample = it.samples[0]
    assert [fr.fields["time_s"] for fr in sample.frames] == [0.0, 1.0]  # frame 1 (t = 0.5 s) went
    assert [(s.phrase, sorted(s.masks)) for s in sample.subjects] == [(ph, [0, 1]) for ph in "abcd"]
    assert it.drops == {"match/too_many_subjects": 1, "match/frame_unlabeled": 1}
    assert all("ignore" not in fr.fields for fr in sample.frames)


def test_on_request_a_subject_over_the_cap_is_an_ignore_region():
    it = five_subjects_one_over_the_cap()
    labeling.match_subjects(it, MatchParams(), FilterParams(min_image_side=0, unlabeled="ignore"))
    meta = sample_meta(it.samples[0])
    assert [s["phrase"] for s in meta["subjects"]] == list("abcd") and len(meta["frames"]) == 3
    assert [fr.get("ignore") for fr in meta["frames"]] == [None, [[160.0, 20.0, 190.0, 70.0]], None]
    assert it.drops == {"match/too_many_subjects": 1}


# ---------------------------------------------------------------------- whole chain, tiny random models


@pytest.fixture(scope="module")
def chain():
    def spec(role, model_id):
        return ModelSpec(role=role, id=model_id, revision="main", mode="tiny")

    lp = LabelingParams(detection=DetectionParams(box_threshold=0.0, max_detections=6),
                        caption=labeling.CaptionParams(max_new_tokens=12))
    return {
        "caption": labeling.CaptionFrames(spec("captioner", "Qwen/Qwen2-VL-2B-Instruct"), lp.caption),
        "detect": labeling.DetectSubjects(spec("detector", "IDEA-Research/grounding-dino-base"), lp.detection),
        "segment": labeling.SegmentSubjects(spec("segmenter", "facebook/sam-vit-huge"), lp.segmentation),
        "embed": labeling.EmbedSubjects(spec("embedder", "facebook/dinov2-base"), lp.matching),
        "params": lp,
    }


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("chain") / "pan_cut.mp4")
    write_clip(path, PAN_CUT, size=(320, 240))
    return path


def run_chain(chain, clip, fp):
    lp = chain["params"]
    it = video.load_sample(Item(Unit(f"video:{clip}", {"url": clip})), video.SamplingParams(max_frames=3), fp)
    it = chain["caption"]([it])[0]
    it = labeling.find_phrases(it, lp.entities, lp.phrases_per)
    it = chain["detect"]([it])[0]
    it = labeling.filter_boxes(it, fp)
    it = chain["segment"]([it])[0]
    it = labeling.filter_masks(it, fp)
    it = chain["embed"]([it])[0]
    return labeling.match_subjects(it, lp.matching, fp, models={"captioner": {"revision": "tiny"}})


def test_whole_chain_on_tiny_models_yields_a_valid_sample(chain, clip):
    # tiny random boxes are ~1 % of the frame and their masks noise: open the area and mask rules; and they are
    # no real instances: 5 tracks over the cap of 4 here, one in every frame, which the default drops frame by frame
    fp = FilterParams(min_image_side=200, area_min=0.0, min_mask_box_ratio=0.0, unlabeled="ignore")
    it = run_chain(chain, clip, fp)
    sample = it.samples[0]
    assert 2 <= len(sample.frames) <= 3 and all(fr.caption for fr in sample.frames)
    assert 1 <= len(sample.subjects) <= 4
    for s in sample.subjects:
        assert s.masks and set(s.masks) == set(s.boxes)
        assert all(m.shape == (240, 320) and m.any() for m in s.masks.values())
        assert (s.match_score is None) == (s.fields == {"reference": "target_crop"})
    raw = encode_sample(sample)
    assert decode_sample(raw).key == sample.key and len([k for k in raw if k.startswith("mask.")]) == sum(
        len(s.masks) for s in sample.subjects)


def test_whole_chain_with_paper_filters_rejects_with_reasons(chain, clip):
    with pytest.raises(Rejected) as e:
        run_chain(chain, clip, FilterParams(min_image_side=200))
    # tiny boxes fail the area rule in every frame: each frame holds an instance without a subject
    assert e.value.reason == "too_few_frames" and "box_area_small" in e.value.detail
    with pytest.raises(Rejected) as e:
        run_chain(chain, clip, FilterParams(min_image_side=200, unlabeled="ignore"))
    assert e.value.reason == "no_subjects" and "box_area_small" in e.value.detail


def test_a_model_error_on_one_batch_quarantines_only_that_item(chain, clip, tmp_path):
    from pipelines.stages import guarded_batch

    sliver = str(tmp_path / "sliver.mp4")
    write_clip(sliver, PAN_CUT[:1], size=(1800, 8))  # 225:1, Qwen2-VL refuses aspect ratios over 200
    load = partial(video.load_sample, p=video.SamplingParams(max_frames=2, min_sharpness=0),
                   fp=FilterParams(min_image_side=0))
    items = [load(Item(Unit(u, {"url": u}))) for u in (clip, sliver)]
    good, bad = guarded_batch("caption", chain["caption"], items)
    assert good.alive and all(fr.caption for fr in good.samples[0].frames)
    assert bad.outcome.stage == "caption" and bad.outcome.reason == "ValueError"
    assert "aspect ratio" in bad.outcome.detail


def test_matching_needs_agreeing_phrases_by_default():
    it = item(2)
    # same appearance, different head nouns: two subjects, neither matched
    it.scratch["instances"] = [[inst("dog", 0), inst("red ball", 100)], [inst("ball", 10), inst("cat", 100)]]
    it.scratch["embeddings"] = [onehot(0, 1), onehot(1, 0)]
    labeling.match_subjects(it, MatchParams(), FP)
    got = {s.phrase: sorted(s.masks) for s in it.samples[0].subjects}
    assert got == {"red ball": [0, 1], "dog": [0], "cat": [1]}
    it.scratch["instances"] = [[inst("dog", 0), inst("red ball", 100)], [inst("ball", 10), inst("cat", 100)]]
    it.scratch["embeddings"] = [onehot(0, 1), onehot(1, 0)]
    with pytest.raises(Rejected):  # exact phrases: "red ball" ≠ "ball", and dog ≠ cat: nothing matches
        labeling.match_subjects(it, MatchParams(phrases_agree="exact"), FP)


def small(phrase, x):
    """A 10×10 box: 0.5 % of the 200×100 frame, below B.1 rule (2)'s 5 %: a real instance the rule drops."""
    mask = np.zeros((H, W), bool)
    mask[30:40, x:x + 10] = True
    return Instance(phrase, [float(x), 30.0, float(x + 10), 40.0], 0.9, mask)


def three_frames_one_with_a_dropped_person():
    it = item(3)
    it.scratch["phrases"] = [["dog", "person"]] * 3
    it.scratch["instances"] = [[inst("dog", 0)], [inst("dog", 10), small("person", 150)], [inst("dog", 20)]]
    return it


def test_a_frame_holding_a_rule_dropped_instance_is_dropped_by_default():
    it = labeling.filter_boxes(three_frames_one_with_a_dropped_person(), FilterParams(min_image_side=0))
    sample = it.samples[0]
    assert [fr.fields["time_s"] for fr in sample.frames] == [0.0, 1.0]  # frame 1 (t = 0.5 s) dropped
    assert [[x.box[0] for x in f] for f in it.scratch["instances"]] == [[0.0], [20.0]]
    assert len(it.scratch["phrases"]) == 2
    assert it.drops == {"filter_boxes/box_area_small": 1, "filter_boxes/frame_unlabeled": 1}
    # two frames, one of them with the dropped person: one frame is no video pair
    two = item(2)
    two.scratch["instances"] = [[inst("dog", 0)], [inst("dog", 10), small("person", 150)]]
    with pytest.raises(Rejected) as e:
        labeling.filter_boxes(two, FilterParams(min_image_side=0))
    assert e.value.reason == "too_few_frames"


def test_on_request_the_frame_stays_with_the_instance_as_its_ignore_region():
    fp = FilterParams(min_image_side=0, unlabeled="ignore")
    it = labeling.filter_boxes(three_frames_one_with_a_dropped_person(), fp)
    assert len(it.samples[0].frames) == 3 and it.drops == {"filter_boxes/box_area_small": 1}
    it.scratch["embeddings"] = [onehot(0), onehot(0), onehot(0)]
    for f in it.scratch["instances"]:
        f[0].mask = inst("dog", 0).mask  # as the segmenter left them
    labeling.match_subjects(it, MatchParams(), fp)
    meta = sample_meta(it.samples[0])
    assert [fr.get("ignore") for fr in meta["frames"]] == [None, [[150.0, 30.0, 160.0, 40.0]], None]
