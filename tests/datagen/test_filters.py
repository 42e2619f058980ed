"""Subject-Diffusion B.1 filters and MS-Diffusion's cap, at their boundary values: a value exactly at a threshold
is kept, the next one past it is dropped and counted under its reason."""

import numpy as np
import pytest

from datagen.labeling import filters
from datagen.labeling.filters import FilterParams, Instance
from datagen.units import Rejected

P = FilterParams()
W, H = 1000, 1000  # image area 1e6: a box of area a·1e6 covers the fraction a


def box(w, h, x=0.0, y=0.0):
    return [x, y, x + w, y + h]


def phrases(kept):
    return [x.phrase for x in kept]


def test_score_boundary():
    xs = [Instance("at", box(100, 100), 0.2), Instance("below", box(100, 100), 0.1999)]
    kept, drops = filters.by_score(xs, P)
    assert phrases(kept) == ["at"] and drops == {"low_score": 1}


@pytest.mark.parametrize("w,h,kept", [(30, 100, True), (29.9, 100, False), (300, 100, True), (300.1, 100, False),
                                      (100, 0, False)])
def test_aspect_boundaries(w, h, kept):
    out, drops = filters.by_aspect([Instance("x", box(w, h))], P)
    assert (len(out) == 1) is kept
    assert drops == ({} if kept else {"box_aspect": 1})


@pytest.mark.parametrize("area,reason", [(0.05, None), (0.0499, "box_area_small"), (0.70, None),
                                         (0.7001, "box_area_large")])
def test_area_boundaries(area, reason):
    side = np.sqrt(area) * W
    out, drops = filters.by_area([Instance("x", box(side, side))], W, H, P)
    assert (len(out) == 1) is (reason is None)
    assert drops == ({} if reason is None else {reason: 1})


def test_phrase_repeats_boundary():
    five = [Instance("dog", box(10, 10, x=20 * i)) for i in range(5)]
    six = [Instance("cat", box(10, 10, x=20 * i)) for i in range(6)]
    kept, drops = filters.by_phrase_repeats(five + six, P)
    assert phrases(kept) == ["dog"] * 5 and drops == {"phrase_repeated": 6}


def test_duplicate_iou_boundary_keeps_the_higher_score():
    a = Instance("a", [0, 0, 100, 100], 0.9)
    at = Instance("at", [0, 0, 100, 80], 0.5)  # IoU = 8000 / 10000 = 0.8 exactly: kept
    over = Instance("over", [0, 0, 100, 81], 0.95)  # IoU with a = 0.81: the lower-scored a is dropped
    kept, drops = filters.by_duplicates([a, at], P)
    assert phrases(kept) == ["a", "at"] and drops == {}
    kept, drops = filters.by_duplicates([a, over], P)
    assert phrases(kept) == ["over"] and drops == {"duplicate_iou": 1}
    assert filters.box_iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0


def mask_covering(fraction, b):
    """An image-sized mask setting the first ``fraction`` of box ``b``'s pixels (row by row)."""
    m = np.zeros((H, W), bool)
    x0, y0, x1, y1 = (int(v) for v in b)
    m[y0:y1, x0:x1].flat[: int(round(fraction * (x1 - x0) * (y1 - y0)))] = True
    return m


def test_mask_to_box_ratio_boundary():
    b = box(100, 100)
    xs = [Instance("at", b, mask=mask_covering(0.6, b)), Instance("below", b, mask=mask_covering(0.5999, b)),
          Instance("no mask", b)]
    kept, drops = filters.by_mask_box_ratio(xs, P)
    assert phrases(kept) == ["at", "no mask"] and drops == {"mask_box_ratio": 1}


def test_mask_pixels_outside_the_box_do_not_count():
    b = box(100, 100)
    m = mask_covering(0.5, b) | mask_covering(1.0, box(300, 300, x=500, y=500))
    kept, drops = filters.by_mask_box_ratio([Instance("x", b, mask=m)], P)
    assert kept == [] and drops == {"mask_box_ratio": 1}


def test_min_image_side_boundary():
    filters.check_image_size(256, 900, P)
    with pytest.raises(Rejected) as e:
        filters.check_image_size(900, 255, P)
    assert e.value.reason == "image_too_small"


@pytest.mark.parametrize("w,h", [(640, 480), (640, 427), (480, 640), (375, 500), (740, 500)])
def test_default_min_side_keeps_coco_and_deepfashion2_sizes(w, h):
    filters.check_image_size(w, h, P)


def test_cap_keeps_the_largest_four_in_order():
    xs = [Instance(str(i), box(10 + i, 10)) for i in range(4)]
    kept, drops = filters.cap_subjects(xs, P)
    assert kept == xs and drops == {}
    xs = [Instance(str(i), box(s, 10)) for i, s in enumerate([50, 10, 40, 30, 20])]
    kept, drops = filters.cap_subjects(xs, P)
    assert phrases(kept) == ["0", "2", "3", "4"] and drops == {"too_many_subjects": 1}


def test_filter_instances_counts_every_drop_by_reason():
    good = Instance("dog", box(300, 300), 0.9, mask_covering(1.0, box(300, 300)))
    xs = [
        good,
        Instance("low", box(300, 300, x=400), 0.1),
        Instance("thin", box(50, 400, x=400), 0.9),
        Instance("tiny", box(50, 50, x=400), 0.9),
        Instance("dup", box(300, 290), 0.8),
        Instance("hollow", box(300, 300, x=500, y=500), 0.9, mask_covering(0.1, box(300, 300, x=500, y=500))),
    ]
    kept, drops = filters.filter_instances(xs, W, H, P)
    assert kept == [good]
    assert drops == {"low_score": 1, "box_aspect": 1, "box_area_small": 1, "duplicate_iou": 1, "mask_box_ratio": 1}
    kept, drops = filters.filter_boxes(xs, W, H, P)  # before segmentation: the mask rule does not apply
    assert phrases(kept) == ["dog", "hollow"] and sum(drops.values()) == 4


def test_every_threshold_comes_from_params():
    x = Instance("x", box(100, 100), 0.3)
    strict = FilterParams(min_score=0.5)
    assert filters.by_score([x], strict)[0] == []
    assert filters.by_area([x], W, H, FilterParams(area_min=0.0))[0] == [x]
    assert filters.by_aspect([Instance("x", box(100, 20))], FilterParams(aspect_max=5.0))[0] != []


def test_three_people_each_detected_twice_are_three_entities_not_six():
    """B.1 (3) before (4): the six boxes are three people found twice each; after de-duplication the phrase
    appears 3 times (≤ 5), so the three people stay. Counting first would drop all six as repeated."""
    xs = []
    for k in range(3):
        b = box(200, 300, x=300 * k)
        xs += [Instance("person", b, 0.9), Instance("person", [b[0], b[1], b[2], b[3] - 10], 0.6)]  # IoU 0.967
    kept, drops = filters.filter_boxes(xs, W, H, P)
    assert [x.score for x in kept] == [0.9, 0.9, 0.9]
    assert drops == {"duplicate_iou": 3}


def test_six_distinct_people_are_still_a_repeated_phrase():
    xs = [Instance("person", box(160, 400, x=165 * k), 0.9) for k in range(6)]
    kept, drops = filters.filter_boxes(xs, W, H, P)
    assert kept == [] and drops == {"phrase_repeated": 6}


def test_default_detector_cut_lets_rule_5_act():
    """The detector keeps boxes scoring between its threshold and 0.2, so rule (5) drops them (counted)."""
    from datagen.labeling.detection import DetectionParams, to_instances

    probs = np.zeros((3, 4))
    probs[0, 1], probs[1, 1], probs[2, 1] = 0.9, 0.19, 0.2
    boxes = np.array([[0.2, 0.5, 0.2, 0.4], [0.5, 0.5, 0.2, 0.4], [0.8, 0.5, 0.2, 0.4]])
    found = to_instances(probs, boxes, [[1]], ["dog"], W, H, DetectionParams())
    assert sorted(round(x.score, 2) for x in found) == [0.19, 0.2, 0.9]
    kept, drops = filters.filter_boxes(found, W, H, P)
    assert sorted(round(x.score, 2) for x in kept) == [0.2, 0.9] and drops == {"low_score": 1}
