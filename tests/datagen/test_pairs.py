"""Per-pair measures on frames built to have a known answer (the same frame twice, a flipped, shifted, scaled
subject, a new background, two cameras), the pair rules, and the measures through the matching stage."""

import numpy as np
import pytest

from datagen.labeling import chain as labeling
from datagen.labeling import matching, pairs
from datagen.labeling.filters import FilterParams, Instance
from datagen.labeling.matching import Embedder, MatchParams
from datagen.labeling.pairs import PairRules
from datagen.models import ModelSpec
from datagen.render.rig import CameraParams, View, direction, intrinsics, look_at
from datagen.shards import Frame, Sample, Subject
from datagen.units import Item, Rejected, Unit

H, W = 120, 160
GREY, BLUE = (90, 90, 90), (20, 40, 200)


def l_shape(x0: int, y0: int, flip: bool = False, side: int = 32) -> np.ndarray:
    """An L in a side×side box: a bar 1/4 wide down its left (right when flipped) side and a foot 1/4 high."""
    m = np.zeros((H, W), bool)
    bar = side // 4
    cols = slice(x0 + side - bar, x0 + side) if flip else slice(x0, x0 + bar)
    m[y0:y0 + side, cols] = True
    m[y0 + side - bar:y0 + side, x0:x0 + side] = True
    return m


def frame(background=GREY, masks=(), colour=(200, 30, 30), fields=None) -> Frame:
    image = np.empty((H, W, 3), np.uint8)
    image[:] = background
    for m in masks:
        image[m] = colour
    return Frame(image, "", fields or {})


def two_frame_sample(mask_a, mask_b, background_b=GREY) -> Sample:
    frames = [frame(masks=[mask_a], fields={"time_s": 1.0}), frame(background_b, [mask_b], fields={"time_s": 3.5})]
    return Sample("vid-test", "video", frames, [Subject(0, "thing", {0: mask_a, 1: mask_b})])


@pytest.fixture(scope="module")
def embedder():
    return Embedder(ModelSpec("embedder", "facebook/dinov2-small", "tiny", "tiny"))


def crop_identity(sample: Sample, embedder: Embedder):
    """identity as the pipeline computes it: the matcher's embedder on masked, square-padded crops."""
    def identity(k, a, b):
        s = sample.subjects[k]
        crops = [matching.masked_crop(sample.frames[j].image, s.masks[j], s.box(j)) for j in (a, b)]
        ea, eb = embedder(crops)
        return float(ea @ eb)
    return identity


def test_the_same_frame_twice_is_identity_one_and_change_zero(embedder):
    m = l_shape(40, 30)
    sample = two_frame_sample(m, m.copy())
    [p] = pairs.measure(sample, crop_identity(sample, embedder))
    assert p["subject"] == 0 and p["frames"] == [0, 1]
    assert p["identity"] == pytest.approx(1.0, abs=1e-4)
    assert p["change"] == {"silhouette_iou": 1.0, "scale_ratio": 1.0, "shift": 0.0, "background_similarity": 1.0,
                           "time_gap_s": 2.5}
    assert p["change_score"] == 0.0


def test_a_flipped_subject_changes_the_silhouette_only():
    # L vs mirrored L in the same 32×32 box: they share the foot (32×8) and the bars' bottoms, IoU 256 / 640
    sample = two_frame_sample(l_shape(40, 30), l_shape(40, 30, flip=True))
    [p] = pairs.measure(sample)
    assert p["change"]["silhouette_iou"] == pytest.approx(0.4)
    assert p["change"]["scale_ratio"] == 1.0 and p["change"]["shift"] == 0.0
    assert p["change"]["background_similarity"] == 1.0
    assert p["change_score"] == pytest.approx(0.6)


def test_a_shifted_and_scaled_subject_is_measured_in_frame_units():
    sample = two_frame_sample(l_shape(10, 10), l_shape(74, 58))  # moved 64 px right, 48 down
    [p] = pairs.measure(sample)
    assert p["change"]["silhouette_iou"] == 1.0 and p["change"]["scale_ratio"] == 1.0
    assert p["change"]["shift"] == pytest.approx(np.hypot(64 / W, 48 / H) / np.sqrt(2), abs=1e-4)
    big = two_frame_sample(l_shape(10, 10, side=32), l_shape(60, 20, side=64))
    [p] = pairs.measure(big)
    assert p["change"]["scale_ratio"] == 0.5
    assert p["change"]["silhouette_iou"] > 0.9  # the same outline at twice the size


def test_a_different_background_is_measured_outside_the_subjects():
    m = l_shape(40, 30)
    [p] = pairs.measure(two_frame_sample(m, m.copy(), background_b=BLUE))
    assert p["change"]["background_similarity"] == 0.0 and p["change"]["silhouette_iou"] == 1.0
    assert p["change_score"] == 1.0
    # half the background repainted: half the common background pixels still agree
    sample = two_frame_sample(m, m.copy())
    sample.frames[1].image[:, W // 2:][~m[:, W // 2:]] = BLUE
    [p] = pairs.measure(sample)
    assert p["change"]["background_similarity"] == pytest.approx(0.5, abs=0.03)
    # the subject's own pixels never count: recolouring it leaves the background term at 1
    recoloured = two_frame_sample(m, m.copy())
    recoloured.frames[1].image[m] = (0, 255, 0)
    [p] = pairs.measure(recoloured)
    assert p["change"]["background_similarity"] == 1.0


def test_render_pairs_have_identity_one_and_the_cameras_angle():
    k = intrinsics(CameraParams())
    views = [View(az, 0.0, 2.0, look_at(2.0 * direction(az, 0.0)), k) for az in (0.0, 90.0, 180.0)]
    m = l_shape(40, 30)
    frames = [frame(masks=[m], fields={"view": v.fields()}) for v in views]
    sample = Sample("obj-test", "objaverse", frames, [Subject(0, "chair", {j: m for j in range(3)})])
    got = {tuple(p["frames"]): p for p in pairs.measure(sample)}
    assert sorted(got) == [(0, 1), (0, 2), (1, 2)]
    assert all(p["identity"] == 1.0 and "time_gap_s" not in p["change"] for p in got.values())
    assert got[0, 1]["change"]["view_angle_deg"] == pytest.approx(90.0, abs=1e-3)
    assert got[0, 2]["change"]["view_angle_deg"] == pytest.approx(180.0, abs=1e-3)
    assert got[0, 1]["change_score"] == pytest.approx(0.5, abs=1e-4)  # all else equal: the view term alone


def pair(identity, change_score, frames=(0, 1)):
    return {"subject": 0, "frames": list(frames), "identity": identity, "change": {}, "change_score": change_score}


def test_pair_rules_drop_near_duplicates_and_mismatches_and_reject_a_sample_left_without_pairs():
    rules = PairRules(near_duplicate_identity=0.9, near_duplicate_change=0.1, min_identity=0.5)
    drops = {}
    sample = Sample("k", "video", [])
    measured = [pair(0.95, 0.05), pair(0.95, 0.3, (0, 2)), pair(0.3, 0.8, (1, 2)), pair(0.9, 0.1, (0, 3))]
    pairs.keep_pairs(sample, measured, rules, lambda reason, n: drops.__setitem__(reason, n))
    assert [p["frames"] for p in sample.pairs] == [[0, 2]]
    assert drops == {"near_duplicate_pair": 2, "identity_mismatch": 1}  # bounds inclusive: (0.9, 0.1) dropped
    with pytest.raises(Rejected) as e:
        pairs.keep_pairs(sample, [pair(0.99, 0.0), pair(0.99, 0.02, (0, 2))], rules, lambda *a: None)
    assert e.value.reason == "near_duplicate_pair"
    pairs.keep_pairs(sample, [], rules, lambda *a: None)  # no pair to begin with: not this rule's to reject
    assert sample.pairs == []


def box_of(m):
    ys, xs = np.nonzero(m)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def matched_item(mask_b, embedding_b):
    m = l_shape(40, 30)
    item = Item(Unit("u"), [Sample("vid-test", "video", [frame(masks=[m], fields={"time_s": 0.0}),
                                                           frame(masks=[mask_b], fields={"time_s": 2.0})])])
    item.scratch["instances"] = [[Instance("dog", box_of(m), 0.9, m)], [Instance("dog", box_of(mask_b), 0.9, mask_b)]]
    item.scratch["embeddings"] = [np.array([[1.0, 0.0]]), np.array([embedding_b])]
    return item


def test_the_matching_stage_records_pairs_with_the_matchers_similarity_and_applies_the_rules():
    fp = FilterParams(min_image_side=0)
    cos = 0.8
    item = matched_item(l_shape(40, 30, flip=True), [cos, np.sqrt(1 - cos**2)])
    labeling.match_subjects(item, MatchParams(min_similarity=0.6), fp, rules=PairRules())
    [p] = item.samples[0].pairs
    assert p["identity"] == pytest.approx(cos) and p["change"]["silhouette_iou"] == pytest.approx(0.4)
    assert p["change"]["time_gap_s"] == 2.0
    # the same view of the same subject: near_duplicate_pair, and with no other pair the clip is filtered
    with pytest.raises(Rejected) as e:
        labeling.match_subjects(matched_item(l_shape(40, 30), [1.0, 0.0]), MatchParams(), fp, rules=PairRules())
    assert e.value.reason == "near_duplicate_pair"
    # matched (0.65 >= min_similarity 0.6) yet the crops differ beyond the rule's identity bound
    item = matched_item(l_shape(40, 30, flip=True), [0.65, np.sqrt(1 - 0.65**2)])
    with pytest.raises(Rejected) as e:
        labeling.match_subjects(item, MatchParams(), fp, rules=PairRules(min_identity=0.7))
    assert e.value.reason == "identity_mismatch" and item.drops["pairs/identity_mismatch"] == 1
