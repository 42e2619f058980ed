"""Subject confusion and lost subjects (detect-and-compare): through ``score`` on tiny encoders with known regions
— a swapped pair is confused, a missing subject is lost and never scores better than a correct image, two subjects
in one region are confused, subject order does not matter — and the per-reference normalisation on similarity
matrices and through ``score``: a reference whose background squeezes every similarity toward 1 (white) changes
nothing."""

import numpy as np
import pytest
import torch

from tests.shard_factory import smooth_image
from training.evaluate import confusion
from training.evaluate.encoders import build_encoders
from training.evaluate.metrics import score

H, W = 64, 96
LEFT, RIGHT = (slice(18, 46), slice(8, 36)), (slice(18, 46), slice(60, 88))
TINTS = {"toy": (1.0, 0.25, 0.25), "cup": (0.25, 0.25, 1.0)}  # a reddish and a bluish subject
PHRASES = ["a toy", "a cup"]


@pytest.fixture(scope="module")
def enc():
    return build_encoders("tiny")


def _subject(name: str, side: int = 28) -> np.ndarray:
    seed = list(TINTS).index(name) + 3
    return (smooth_image(np.random.default_rng(seed), side, side) * np.array(TINTS[name])).astype(np.uint8)


def _reference(name: str, background_seed: int) -> np.ndarray:
    """The subject photographed on a background (unsegmented, as DreamBench's references are)."""
    ref = smooth_image(np.random.default_rng(background_seed), 40, 40)
    ref[6:34, 6:34] = _subject(name)
    return ref


def _image(left: str | None, right: str | None) -> np.ndarray:
    image = smooth_image(np.random.default_rng(10), H, W)
    for where, name in ((LEFT, left), (RIGHT, right)):
        if name:
            image[where] = _subject(name)
    return image


def _regions(*where) -> np.ndarray:
    regions = np.zeros((len(where), H, W), bool)
    for i, w in enumerate(where):
        if w is not None:
            regions[i][w] = True
    return regions


def _score(enc, image, regions, order=(0, 1)):
    refs = [[_reference("toy", 20)], [_reference("cup", 24)]]
    return score(enc, image, "a toy and a cup", [refs[i] for i in order], regions[list(order)],
                 [PHRASES[i] for i in order])


def test_correct_image_is_neither_confused_nor_lost(enc):
    right = _score(enc, _image("toy", "cup"), _regions(LEFT, RIGHT))
    assert right["confusion"] == 0.0 and right["lost"] == 0.0 and right["m_dino"] > 0.5


def test_swapped_pair_is_confused(enc):
    """The toy drawn where the detector found "a cup" and the other way round: identities on the wrong phrases."""
    swapped = _score(enc, _image("cup", "toy"), _regions(LEFT, RIGHT))
    assert swapped["confusion"] == 1.0 and swapped["lost"] == 0.0


def test_missing_subject_is_lost_and_never_better_than_a_correct_image(enc):
    right = _score(enc, _image("toy", "cup"), _regions(LEFT, RIGHT))
    missing = _score(enc, _image("toy", None), _regions(LEFT, None))  # the detector finds no cup
    assert missing["lost"] == 0.5 and missing["confusion"] == 0.5 >= right["confusion"]
    assert missing["m_dino"] == 0.0 and missing["subject_dino"][1] == 0.0


def test_two_subjects_in_one_region_are_confused(enc):
    one = _score(enc, _image("toy", None), _regions(LEFT, LEFT))  # both phrases boxed on the same thing
    assert one["confusion"] == 1.0 and one["lost"] == 0.0


def test_outcomes_do_not_depend_on_subject_order(enc):
    for image, regions in [(_image("toy", "cup"), _regions(LEFT, RIGHT)), (_image("cup", "toy"), _regions(LEFT, RIGHT)),
                           (_image("toy", None), _regions(LEFT, None))]:
        ab, ba = _score(enc, image, regions), _score(enc, image, regions, order=(1, 0))
        for m in ("confusion", "lost", "m_dino"):
            assert ab[m] == pytest.approx(ba[m], abs=1e-6)
        assert ab["subject_dino"] == pytest.approx(ba["subject_dino"][::-1], abs=1e-6)


def test_same_phrase_subjects_are_matched_by_appearance_not_detector_order():
    """Two "a person" boxes handed out in detector-score order (region 0 shows subject 1): Hungarian matching
    gives each subject the region that looks like it, and nothing is confused."""
    sim = np.array([[0.3, 0.8], [0.85, 0.35]])
    out = confusion.match(confusion.normalise(sim, np.array([0.2, 0.2])), _regions(LEFT, RIGHT), [0, 1],
                          ["a person", "a person"])
    assert out.matched == [1, 0] and not out.confused.any() and out.confusion == 0.0


def _white(sim: np.ndarray, column: int, squeeze: float) -> np.ndarray:
    """A reference on white resembles every cut-out crop (cut out on white too) more: its similarities move
    toward 1, 1 - squeeze * (1 - S)."""
    out = sim.copy()
    out[..., column] = 1 - squeeze * (1 - out[..., column])
    return out


@pytest.mark.parametrize("squeeze", [1.0, 0.5, 0.2])
def test_a_white_background_reference_changes_no_outcome(squeeze):
    regions = _regions(LEFT, RIGHT)
    right = np.array([[0.80, 0.30], [0.35, 0.75]])  # rows: regions, columns: references
    unrelated = np.array([[0.30, 0.25], [0.28, 0.30]])  # the references against unrelated crops
    for sim, want in ((right, [False, False]), (right[::-1], [True, True])):  # the correct image, the swapped one
        white_sim, white_null = _white(sim, 0, squeeze), _white(unrelated, 0, squeeze)
        out = confusion.match(confusion.normalise(white_sim, white_null.mean(0)), regions, [0, 1], PHRASES)
        assert out.confused.tolist() == want and not out.lost.any()
    if squeeze <= 0.2:  # uncalibrated, the cup's region "looks more like" the white-background toy
        raw = confusion.match(_white(right, 0, squeeze), regions, [0, 1], PHRASES)
        assert raw.confused[1]


def test_unrelated_crops_have_the_regions_shape_on_the_background():
    regions = _regions(LEFT, RIGHT)
    nulls = confusion.unrelated_masks(regions)
    assert len(nulls) == 2 and all(m.sum() == 28 * 28 for m in nulls)
    assert not any((m & regions.any(0)).any() for m in nulls)


class ColourEncoders:
    """Embeds an image as its coarse colour histogram (4 levels a channel), an encoder whose behaviour is known: a
    cut-out crop's white margin and a reference's white background share a bin, as a real encoder's "white"
    features do, so a reference on white resembles every cut-out region."""

    synthetic = True

    def _histograms(self, images):
        out = []
        for im in images:
            q = (np.asarray(im)[..., :3] // 64).reshape(-1, 3)
            h = np.bincount(q[:, 0] * 16 + q[:, 1] * 4 + q[:, 2], minlength=64).astype(np.float32)
            out.append(h / np.linalg.norm(h))
        return torch.tensor(np.stack(out))

    clip_images = dino_images = _histograms

    def clip_texts(self, texts):
        return torch.nn.functional.normalize(torch.ones(len(texts), 64), dim=-1)


def _discs(radius: int = 10) -> np.ndarray:
    """Round regions inside the two subjects' squares, as SAM gives: their cut-out crops have white corners."""
    yy, xx = np.mgrid[:H, :W]
    regions = np.zeros((2, H, W), bool)
    for i, (ys, xs) in enumerate((LEFT, RIGHT)):
        regions[i] = (yy - (ys.start + ys.stop) / 2) ** 2 + (xx - (xs.start + xs.stop) / 2) ** 2 <= radius ** 2
    return regions


def _shot(name: str, white: bool) -> np.ndarray:
    """A reference: the subject on a white product-shot background, or photographed on a scene."""
    ref = np.full((40, 40, 3), 255, np.uint8) if white else smooth_image(np.random.default_rng(24), 40, 40)
    ref[6:34, 6:34] = _subject(name)
    return ref


@pytest.mark.parametrize("toy_on_white", [False, True])
def test_a_white_background_reference_changes_no_outcome_through_score(toy_on_white, monkeypatch):
    """Issue 20: the toy's reference on white (DreamBench-style product shot) or on a scene gives the same outcomes
    through ``score``: the correct image is not confused, the swapped one is. Without the per-reference
    normalisation the white reference "wins" the cup's region and the correct image is half confused."""
    enc, regions = ColourEncoders(), _discs()
    refs = [[_shot("toy", toy_on_white)], [_shot("cup", False)]]
    right = score(enc, _image("toy", "cup"), "a toy and a cup", refs, regions, PHRASES)
    swapped = score(enc, _image("cup", "toy"), "a toy and a cup", refs, regions, PHRASES)
    assert (right["confusion"], right["lost"]) == (0.0, 0.0)
    assert swapped["confusion"] == 1.0
    if toy_on_white:  # the calibration is what keeps it: raw similarities confuse the correct image
        monkeypatch.setattr(confusion, "normalise", lambda similarity, unrelated: similarity)
        assert score(enc, _image("toy", "cup"), "a toy and a cup", refs, regions, PHRASES)["confusion"] == 0.5
