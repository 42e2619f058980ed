"""The subject matcher: Hungarian assignment on embedding similarity, thresholds, tracks over frames."""

import numpy as np
import pytest

from datagen.labeling.matching import NEUTRAL, masked_crop, match


def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def identities(n=4, dim=16, seed=0):
    return unit(np.random.default_rng(seed).normal(size=(n, dim)))


def test_permuted_instances_are_reidentified_across_frames():
    ids = identities()
    rng = np.random.default_rng(1)
    perms = [np.arange(4), rng.permutation(4), rng.permutation(4)]
    frames = [unit(ids[p] + 0.1 * rng.normal(size=ids.shape)) for p in perms]
    tracks = match(frames, min_similarity=0.6)
    assert len(tracks) == 4 and all(t.matched for t in tracks)
    for t in tracks:
        subject = {perms[j][i] for j, i in t.members.items()}
        assert len(subject) == 1 and len(t.members) == 3
        assert all(s > 0.6 for s in t.scores) and len(t.scores) == 2


def test_hungarian_beats_greedy_assignment():
    # tracks A, B; in frame 1 instance 0 is a bit closer to A than instance 1 is, but only instance 0 fits B
    a, b, c = np.eye(3)
    frame0 = np.stack([a, b])
    x = unit(0.9 * a + 0.436 * b)  # sim(A, x) = 0.90, sim(B, x) = 0.436
    y = unit(0.85 * a + 0.527 * c)  # sim(A, y) = 0.85, sim(B, y) = 0
    tracks = match([frame0, np.stack([x, y])], min_similarity=0.4)
    assert [t.members for t in tracks] == [{0: 0, 1: 1}, {0: 1, 1: 0}]


def test_pairs_below_the_threshold_are_not_matched():
    a, b = np.eye(2)
    at = unit([0.6, 0.8])  # similarity to a exactly 0.6
    below = unit([0.59, np.sqrt(1 - 0.59**2)])
    kept = match([a[None], at[None]], min_similarity=0.6)
    assert [t.members for t in kept] == [{0: 0, 1: 0}] and kept[0].scores == [pytest.approx(0.6)]
    split = match([a[None], below[None]], min_similarity=0.6)
    assert [t.members for t in split] == [{0: 0}, {1: 0}] and not any(t.matched for t in split)
    new = match([a[None], np.stack([b, a])], min_similarity=0.6)  # a newcomer opens its own track
    assert [t.members for t in new] == [{0: 0, 1: 1}, {1: 0}]


def test_a_subject_missing_from_a_frame_is_matched_when_it_returns():
    ids = identities(2)
    tracks = match([ids, ids[:1], ids[::-1]], min_similarity=0.9)
    assert [t.members for t in tracks] == [{0: 0, 1: 0, 2: 1}, {0: 1, 2: 0}]


def test_empty_frames():
    ids = identities(2)
    assert [t.members for t in match([np.zeros((0, 16)), ids], 0.5)] == [{1: 0}, {1: 1}]
    assert match([], 0.5) == []


def test_masked_crop_greys_out_the_background():
    image = np.full((10, 12, 3), 200, np.uint8)
    mask = np.zeros((10, 12), bool)
    mask[3:6, 4:7] = True
    crop = masked_crop(image, mask, [2.5, 2, 8, 7.2])
    assert crop.shape == (6, 6, 3)
    inside = mask[2:8, 2:8]
    assert (crop[inside] == 200).all() and (crop[~inside] == NEUTRAL).all()
    with pytest.raises(ValueError):
        masked_crop(image, mask, [5, 5, 5, 9])
