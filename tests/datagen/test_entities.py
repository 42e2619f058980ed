"""Caption → subject phrases (spaCy noun chunks)."""

import pytest

from datagen.labeling.entities import EntityParams, extract, phrases


def test_noun_phrases_without_determiners_numbers_or_scene_words():
    caption = "The image shows a woman in a red dress holding a small white dog while two children play in the park."
    assert phrases(caption) == ["woman", "red dress", "small white dog", "children", "park"]


def test_named_people_become_person_and_pronouns_are_dropped():
    caption = "Grace Hopper, wearing her navy uniform, smiles at it in front of an American flag."
    assert phrases(caption) == ["person", "navy uniform", "american flag"]


def test_duplicates_by_lemma_keep_the_first_wording():
    caption = "A dog runs after the dogs while a man and another man watch the dog."
    assert phrases(caption) == ["dog", "man"]


def test_allow_and_deny_lists_and_caps():
    caption = "A woman in a red dress holds a small white dog next to a car."
    assert phrases(caption, EntityParams(allow=["dog", "woman"])) == ["woman", "small white dog"]
    assert phrases(caption, EntityParams(deny=["dress", "car"])) == ["woman", "small white dog"]
    assert phrases(caption, EntityParams(max_words=1)) == ["woman", "dress", "dog", "car"]
    assert phrases(caption, EntityParams(max_phrases=2)) == ["woman", "red dress"]
    assert phrases("") == []


def test_rule_7_drops_groups_and_body_parts_counted():
    caption = "A crowd watches a man raising his hand, his face and hair lit, while a team of players holds a ball."
    found, dropped = extract(caption)
    assert found == ["man", "players", "ball"]
    assert dropped == {"group": 2, "body_part": 3}
    kept_all, none = extract(caption, EntityParams(body_parts=[], groups=[]))
    assert kept_all == ["crowd", "man", "hand", "face", "hair", "team", "players", "ball"] and not none


# B.1 rule (7) on a list: (caption, the phrase in question, kept?). A part of a person or animal and a group of
# people are dropped; a thing that shares the word is kept.
RULE_7 = [
    ("a tea set on the table", "tea set", True),
    ("a woman with a set of keys", "set", True),
    ("a stack of books next to a lamp", "stack", True),
    ("a watch with a leather band", "leather band", True),
    ("a rubber band on a desk", "rubber band", True),
    ("the car's body is red", "body", True),
    ("the body of the car is red", "body", True),
    ("a clock face on the wall", "clock face", True),
    ("a man raises his hand", "hand", False),
    ("a hand holding a cup", "hand", False),
    ("her face in the mirror", "face", False),
    ("the dog's head on a pillow", "head", False),
    ("a crowd in the street", "crowd", False),
    ("a team playing football", "team", False),
    ("a group of people on a beach", "group", False),
    ("a band of musicians on stage", "band", False),
    ("a line of people at a shop", "line", False),
]


@pytest.mark.parametrize("caption, phrase, kept", RULE_7, ids=[c for c, _, _ in RULE_7])
def test_rule_7_is_precise_on_a_list(caption, phrase, kept):
    found, dropped = extract(caption)
    assert (phrase in found) == kept, (found, dropped)
    assert sum(dropped.values()) == (0 if kept else 1)
