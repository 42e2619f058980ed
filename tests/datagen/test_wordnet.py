"""Phrase agreement by WordNet (``phrases_agree: wordnet``, the default): per-frame captions name one subject
differently ("man"/"person"), and the subject must still be matched across the frames; siblings ("man"/"woman")
must not. Checked on lists of phrase pairs, at the function and through the matcher with spaCy's phrases."""

import functools

import numpy as np
import pytest

from datagen.labeling import chain as labeling
from datagen.labeling import wordnet
from datagen.labeling.filters import FilterParams, Instance
from datagen.labeling.matching import MatchParams, phrase_key, phrases_agree
from datagen.retrieval import RetrieveParams, verified_pairs
from datagen.shards import Frame, Sample
from datagen.units import Item, Rejected, Unit

AGREE = [
    ("man", "person"), ("dog", "puppy"), ("little girl", "child"), ("woman", "lady"), ("car", "automobile"),
    ("kitten", "cat"), ("sneaker", "shoe"), ("boy", "child"), ("girl", "woman"), ("kid", "child"),
    ("toddler", "child"), ("baby", "infant"), ("guy", "man"), ("puppies", "dog"), ("men", "person"),
    ("sneakers", "shoes"), ("women", "person"), ("lady", "person"), ("taxi", "car"), ("jeans", "trousers"),
    ("t-shirt", "shirt"), ("foal", "horse"),
    ("lamb", "sheep"), ("sofa", "couch"), ("cellphone", "phone"), ("tv", "television"), ("puppy", "animal"),
    ("teenager", "person"), ("young woman", "woman"), ("old man", "man"), ("spaniel", "dog"), ("tabby", "cat"),
    ("sedan", "car"), ("jacket", "coat"), ("car", "vehicle"),
]
DISAGREE = [
    ("man", "woman"), ("dog", "cat"), ("car", "truck"), ("shirt", "trousers"), ("cup", "bowl"), ("boy", "girl"),
    ("person", "dog"), ("person", "cat"), ("man", "cat"), ("dog", "horse"), ("car", "bus"),
    ("bicycle", "motorcycle"), ("shirt", "dress"), ("shoe", "sock"), ("table", "chair"), ("cup", "bottle"),
    ("person", "car"), ("ball", "balloon"), ("skirt", "trousers"), ("puppy", "kitten"), ("lady", "gentleman"),
    ("chair", "sofa"), ("dog", "wolf"), ("cat", "lion"), ("jacket", "shirt"), ("boot", "sneaker"),
    ("phone", "laptop"), ("person", "tree"), ("dog", "toy"), ("child", "adult"), ("boy", "man"), ("hat", "shoe"),
    ("bag", "box"), ("mug", "bowl"), ("apple", "orange"), ("cup", "artifact"),
]


def test_the_lists_are_long_enough_and_distinct():
    assert len(AGREE) >= 15 and len(DISAGREE) >= 15 and not set(AGREE) & set(DISAGREE)


@pytest.mark.parametrize("a, b", AGREE)
def test_synonyms_and_hypernyms_agree(a, b):
    assert wordnet.related(a, b) and wordnet.related(b, a)
    assert phrases_agree(phrase_key(a, "wordnet"), phrase_key(b, "wordnet"), "wordnet")


@pytest.mark.parametrize("a, b", DISAGREE)
def test_siblings_and_unrelated_heads_do_not(a, b):
    assert not wordnet.related(a, b) and not wordnet.related(b, a)
    assert not phrases_agree(phrase_key(a, "wordnet"), phrase_key(b, "wordnet"), "wordnet")


def test_the_other_modes_are_kept():
    assert phrases_agree(phrase_key("red ball", "head"), phrase_key("ball", "head"), "head")
    assert not phrases_agree(phrase_key("man", "head"), phrase_key("person", "head"), "head")
    assert not phrases_agree(phrase_key("red ball", "exact"), phrase_key("ball", "exact"), "exact")
    assert phrases_agree(phrase_key("man", "off"), phrase_key("car", "off"), "off")
    # a head WordNet does not know still agrees with itself (the head rule is part of the WordNet rule)
    assert phrases_agree(phrase_key("red zorblat", "wordnet"), phrase_key("zorblat", "wordnet"), "wordnet")


H, W = 100, 200


def instance(phrase: str, x: int) -> Instance:
    mask = np.zeros((H, W), bool)
    mask[20:70, x:x + 40] = True
    return Instance(phrase, [float(x), 20.0, float(x + 40), 70.0], 0.9, mask)


def frame(p: str, j: int = 0) -> Frame:
    return Frame(np.zeros((H, W, 3), np.uint8), f"A {p} stands in the park.", {"time_s": j})


@functools.cache
def spacy_phrase(p: str) -> str:
    """The phrase spaCy finds for ``p`` in a frame's caption (one caption each: the lists repeat words)."""
    it = labeling.find_phrases(Item(Unit("u"), [Sample("vid-test", "video", [frame(p)])]), labeling.EntityParams())
    found = [x for x in it.scratch["phrases"][0] if x != "park"]
    assert len(found) == 1, found
    return found[0]


def matched_across(a: str, b: str, **params) -> bool:
    """Two frames captioned with ``a`` and ``b``: spaCy's phrases are boxed at one place with one embedding (the
    same look), then matched; is the subject seen in both frames?"""
    it = Item(Unit("u"), [Sample("vid-test", "video", [frame(a, 0), frame(b, 1)])])
    it.scratch["instances"] = [[instance(spacy_phrase(p), 50 + 3 * j)] for j, p in enumerate((a, b))]
    it.scratch["embeddings"] = [np.eye(1, 8), np.eye(1, 8)]
    try:
        labeling.match_subjects(it, MatchParams(**params), FilterParams(min_image_side=0, unlabeled="ignore"))
    except Rejected as e:
        assert e.reason == "no_match"
        return False
    return [sorted(s.masks) for s in it.samples[0].subjects] == [[0, 1]]


def test_a_clip_naming_one_subject_two_ways_is_paired_by_default():
    assert all(matched_across(a, b) for a, b in AGREE)
    assert not any(matched_across(a, b) for a, b in DISAGREE)
    # the head-noun rule pairs none of the differently named ones ("t-shirt" is "t shirt" to spaCy)
    renamed = [(a, b) for a, b in AGREE if a.replace("-", " ").split()[-1] != b.split()[-1]]
    assert len(renamed) >= 15 and not any(matched_across(a, b, phrases_agree="head") for a, b in renamed)


def test_retrieval_verifies_with_the_same_rule():
    keys = np.array([phrase_key(p, "wordnet") for p in ("man", "person", "woman")], dtype=object)
    got = verified_pairs(np.array([[1.0, 0.9, 0.9]]), np.array([[0, 1, 2]]), np.array([0, 1, 2]), keys,
                         RetrieveParams(min_identity=0.8))
    assert got == [(0.9, 0, 1)]  # man ~ person; man ≁ woman
