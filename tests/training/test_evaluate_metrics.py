"""Evaluation metrics on tiny random encoders: identical images score 1; CLIP-T is the raw cosine and CLIPScore is
torchmetrics' CLIPScore; M-DINO does not depend on subject order and drops for swapped subjects."""

import copy
import dataclasses

import numpy as np
import pytest
import torch
from torchmetrics.functional.multimodal import clip_score

from tests.shard_factory import smooth_image
from training.evaluate.encoders import build_encoders
from training.evaluate.metrics import crop, score


@pytest.fixture(scope="module")
def enc():
    return build_encoders("tiny")


def _image(seed: int, h: int = 48, w: int = 48) -> np.ndarray:
    return smooth_image(np.random.default_rng(seed), h, w)


def test_identical_images_score_one_and_unrelated_lower(enc):
    a, b = _image(0), _image(1)
    full = np.ones((1, 48, 48), bool)
    same = score(enc, a, "a photo", [[crop(a)]], full)
    other = score(enc, b, "a photo", [[crop(a)]], full)
    for m in ("clip_i", "dino", "m_dino"):
        assert same[m] == pytest.approx(1.0, abs=1e-5)
        assert other[m] < same[m] - 1e-3
    assert same["confusion"] is None and same["lost"] == 0.0  # one subject: nothing to confuse it with


class _Features(torch.nn.Module):
    """torchmetrics 1.9 expects ``get_*_features`` to return tensors; transformers 5 returns model outputs."""

    def __init__(self, clip):
        super().__init__()
        self.clip, self.config = clip, clip.config

    def get_image_features(self, *args, **kwargs):
        return self.clip.get_image_features(*args, **kwargs).pooler_output

    def get_text_features(self, *args, **kwargs):
        return self.clip.get_text_features(*args, **kwargs).pooler_output


def test_clip_t_is_torchmetrics_clip_score(enc):
    # This tiny CLIP puts every image on the far side of every prompt (CLIPScore clamps to 0); the same CLIP with
    # its text projection negated puts them on the near side, so both the scale and the clamp are compared.
    flipped = copy.deepcopy(enc.clip)
    with torch.no_grad():
        flipped.text_projection.weight.neg_()
    for clip, positive in ((enc.clip, False), (flipped, True)):
        encoders = dataclasses.replace(enc, clip=clip)
        for seed, prompt in [(0, "a red box on grass"), (1, "two friends on a beach"), (2, "x")]:
            image = _image(seed, 40, 56)
            want = clip_score(torch.from_numpy(image).permute(2, 0, 1), prompt,
                              model_name_or_path=lambda: (_Features(clip), enc.clip_processor))
            got = score(encoders, image, prompt, [[crop(image)]])
            assert got["clip_score"] == pytest.approx(float(want), abs=1e-3)
            assert (got["clip_score"] > 1) == positive
            # the papers' CLIP-T: the same cosine, unscaled and unclamped
            assert -1 <= got["clip_t"] <= 1 and got["clip_score"] == pytest.approx(max(100 * got["clip_t"], 0))


def _pair(enc, order, swap=False):
    """Generated image = subject A left | subject B right; the regions (swapped when asked) in ``order``."""
    a, b = _image(3, 32, 32), _image(4, 32, 32)
    image = np.concatenate([a, b], 1)
    left = np.zeros((32, 64), bool)
    left[:, :32] = True
    regions, refs = [left, ~left] if not swap else [~left, left], [[crop(a)], [crop(b)]]
    return score(enc, image, "a and b", [refs[i] for i in order], np.stack([regions[i] for i in order]),
                 [["a", "b"][i] for i in order])


def test_m_dino_is_order_invariant_and_drops_for_a_swapped_pair(enc):
    right, flipped, swapped = _pair(enc, [0, 1]), _pair(enc, [1, 0]), _pair(enc, [0, 1], swap=True)
    assert flipped["m_dino"] == pytest.approx(right["m_dino"], abs=1e-6)
    assert right["confusion"] == flipped["confusion"] == 0.0
    assert swapped["confusion"] == 1.0  # each phrase's region shows the other subject
    assert right["subject_dino"] == pytest.approx(flipped["subject_dino"][::-1], abs=1e-6)


def test_a_one_pixel_region_is_scored_as_an_rgb_crop(enc):
    """SAM can return a region of a pixel or a line; its 1×1×3 (or 1×W×3) crop was read channels-first by the
    image processors and failed after generation. Every crop is HWC."""
    a = _image(0)
    regions = np.zeros((2, 48, 48), bool)
    regions[0, 10, 10] = True  # a single pixel
    regions[1, 20, 5:40] = True  # a one-pixel-high line
    out = score(enc, a, "a photo", [[crop(a)], [crop(_image(1))]], regions, ["a dog", "a cat"])
    assert out["lost"] == 0.0 and len(out["subject_dino"]) == 2
