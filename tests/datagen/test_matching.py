"""The subject matcher: Hungarian assignment on embedding similarity, thresholds, tracks over frames."""

import numpy as np
import pytest

from datagen.labeling.matching import NEUTRAL, masked_crop, match, phrase_key


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


def test_a_tall_crop_is_padded_to_a_centred_square():
    image = np.full((40, 40, 3), 200, np.uint8)
    mask = np.ones((40, 40), bool)
    crop = masked_crop(image, mask, [10, 5, 20, 35])  # 10 wide, 30 tall: a standing person's 1:3 box
    assert crop.shape == (30, 30, 3)
    assert (crop[:, 10:20] == 200).all() and (crop[:, :10] == NEUTRAL).all() and (crop[:, 20:] == NEUTRAL).all()


def test_the_embedder_sees_the_whole_of_a_tall_subject():
    """Two people alike in their middle third and different above and below: a centre crop of the unpadded
    1:3 box would make them identical to the embedder."""
    from datagen.labeling.matching import Embedder
    from datagen.models import ModelSpec

    embedder = Embedder(ModelSpec(role="embedder", id="facebook/dinov2-base", revision="main", mode="tiny"))
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (300, 100, 3), dtype=np.uint8)
    b = a.copy()
    b[:100], b[200:] = 255 - a[:100], 255 - a[200:]
    mask = np.ones((300, 100), bool)
    ea, eb = embedder([masked_crop(im, mask, [0, 0, 100, 300]) for im in (a, b)])
    assert float(ea @ eb) < 0.999


def test_phrases_must_agree_when_appearance_alone_would_swap_subjects():
    # frame 1's dog looks more like frame 0's cat and vice versa: appearance alone pairs dog↔cat
    dog0, cat0 = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    dog1 = np.array([0.7, 0.714])  # cos 0.7 to dog0, 0.714 to cat0
    cat1 = np.array([0.95, 0.312])  # cos 0.95 to dog0
    emb = [np.stack([dog0, cat0]), np.stack([cat1 / np.linalg.norm(cat1), dog1 / np.linalg.norm(dog1)])]
    blind = match(emb, 0.6)
    assert {tuple(sorted(t.members.items())) for t in blind} == {((0, 0), (1, 0)), ((0, 1), (1, 1))}  # swapped
    keys = [[phrase_key("small dog", "head"), phrase_key("cat", "head")],
            [phrase_key("cat", "head"), phrase_key("dog", "head")]]
    tracks = match(emb, 0.6, keys)
    assert {tuple(sorted(t.members.items())) for t in tracks} == {((0, 0), (1, 1)), ((0, 1),), ((1, 0),)}
    assert phrase_key("small dog", "exact") != phrase_key("dog", "exact") and phrase_key("dog", "off") is None
