"""The subject matcher of MS-Diffusion §A: instances of the same subject across frames, by Hungarian assignment
on image-embedding similarity.

- ``masked_crop``: the instance's box with everything outside its mask set to a neutral grey, so the embedding
  sees the subject, not its background, padded with that grey to a square: the embedders' processors resize the
  short side and centre-crop, which would cut a standing person (a 1:3 box) to its middle third;
- ``Embedder(spec, params)(crops)``: L2-normalised DINOv2 CLS (default) or CLIP image embeddings;
- ``match(embeddings, min_similarity)``: tracks over the frames in time order. Frame 0's instances open tracks;
  each later frame is assigned to the open tracks by ``scipy.optimize.linear_sum_assignment`` on cosine
  similarity to each track's mean embedding; an assigned pair below ``min_similarity`` is not a match, and
  every instance left unmatched opens its own track. Beside appearance, the box's phrase is a cue
  (appearance alone confuses look-alike subjects): with ``phrases_agree`` only instances whose phrases agree can
  match (``wordnet``, the default: the same head noun, or head nouns WordNet relates as synonyms or near
  hypernyms, "man" = "person", "puppy" = "dog", never siblings, "man" ≠ "woman": ``wordnet.related``; ``head``: the
  same head noun, "red ball" = "ball"; ``exact``; ``off``). A track seen in one frame only is an unmatched subject:
  the source uses its own crop as the reference (MS-Diffusion: "for the targets where matching fails, we
  directly use the corresponding parts of the ground truth as references").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from datagen import devices, tiny
from datagen.labeling import wordnet
from datagen.models import ModelSpec
from datagen.params import Params

# ImageNet mean colour: normalises to ~0, the least informative input for DINOv2/CLIP.
NEUTRAL = (124, 116, 104)
Agreement = Literal["wordnet", "head", "exact", "off"]


class MatchParams(Params):
    min_similarity: float = 0.6  # cosine similarity of a matched pair (DINOv2 CLS: same object ≳ 0.6)
    batch_size: int = 32  # crops per embedder call
    phrases_agree: Agreement = "wordnet"  # which instances may match, by their phrases
    # A clip where no subject is matched across frames is no frame pair: rejected (no_match) unless this is set,
    # then its subjects are their own references (MS-Diffusion's fallback, for the whole clip)
    self_references: bool = False


def masked_crop(image: np.ndarray, mask: np.ndarray, box: list[float]) -> np.ndarray:
    """The box region of ``image`` with pixels outside ``mask`` set to ``NEUTRAL``, centred on a ``NEUTRAL``
    square (the whole subject survives the processor's centre crop)."""
    h, w = mask.shape
    x0, y0 = max(int(np.floor(box[0])), 0), max(int(np.floor(box[1])), 0)
    x1, y1 = min(int(np.ceil(box[2])), w), min(int(np.ceil(box[3])), h)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"empty box {box} in a {w}x{h} image")
    ch, cw = y1 - y0, x1 - x0
    side = max(ch, cw)
    square = np.empty((side, side, 3), image.dtype)
    square[:] = NEUTRAL
    top, left = (side - ch) // 2, (side - cw) // 2
    crop = square[top:top + ch, left:left + cw]
    crop[:] = image[y0:y1, x0:x1]
    crop[~mask[y0:y1, x0:x1]] = NEUTRAL
    return square


def phrase_key(phrase: str, agree: str) -> str | None:
    """What ``phrases_agree`` compares of a phrase: the head noun (last word), the phrase (``exact``; ``wordnet``,
    lower-cased: its compounds count, "little girl"), or nothing (None)."""
    if agree == "off":
        return None
    if agree == "wordnet":
        return phrase.lower()
    return phrase.split()[-1] if agree == "head" and phrase.split() else phrase


def phrases_agree(a: str | None, b: str | None, agree: str) -> bool:
    """May instances with phrase keys ``a`` and ``b`` be one subject (None agrees with all)."""
    if a is None or b is None or a == b:
        return True
    if agree != "wordnet":
        return False
    return (a.split() or [a])[-1] == (b.split() or [b])[-1] or wordnet.related(a, b)


class Embedder:
    def __init__(self, spec: ModelSpec, params: MatchParams | None = None):
        self.params = params or MatchParams()
        self.device, dtype = devices.placement(spec)
        self.clip = "clip" in spec.id.lower()
        if spec.mode == "tiny":
            model, self.processor = tiny.clip_vision() if self.clip else tiny.dinov2()
        else:
            from transformers import AutoConfig, AutoImageProcessor, AutoModel, CLIPVisionModelWithProjection

            self.processor = AutoImageProcessor.from_pretrained(spec.path)
            self.clip = AutoConfig.from_pretrained(spec.path).model_type.startswith("clip")
            model = (CLIPVisionModelWithProjection if self.clip else AutoModel).from_pretrained(spec.path, dtype=dtype)
        self.model = model.to(self.device, dtype).eval()
        self.dtype = dtype

    @torch.inference_mode()
    def __call__(self, crops: list[np.ndarray]) -> np.ndarray:
        out = []
        for start in range(0, len(crops), self.params.batch_size):
            pixels = self.processor(images=crops[start:start + self.params.batch_size], return_tensors="pt")
            res = self.model(pixel_values=pixels["pixel_values"].to(self.device, self.dtype))
            emb = res.image_embeds if self.clip else res.pooler_output  # DINOv2: layer-normed CLS token
            out.append(torch.nn.functional.normalize(emb.float(), dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


@dataclass
class Track:
    """One subject: ``members[j]`` = its instance index in frame j; ``scores`` = similarities of its matches."""

    members: dict[int, int] = field(default_factory=dict)
    scores: list[float] = field(default_factory=list)
    key: str | None = None  # phrase key of the instance that opened it (None: matches any phrase)
    _sum: np.ndarray | None = None

    @property
    def matched(self) -> bool:
        return len(self.members) > 1

    @property
    def embedding(self) -> np.ndarray:
        return self._sum / np.linalg.norm(self._sum)

    def add(self, j: int, i: int, embedding: np.ndarray, score: float | None = None) -> None:
        self.members[j] = i
        self._sum = embedding.copy() if self._sum is None else self._sum + embedding
        if score is not None:
            self.scores.append(score)


def match(embeddings: list[np.ndarray], min_similarity: float,
          keys: list[list[str | None]] | None = None, agree: str = "head") -> list[Track]:
    """Tracks over frames; ``embeddings[j]`` holds frame j's instances (n_j × D, L2-normalised rows) and
    ``keys[j]`` their ``phrase_key``s: a pair whose keys do not agree (``phrases_agree``) cannot match."""
    tracks: list[Track] = []
    for j, emb in enumerate(embeddings):
        frame_keys = keys[j] if keys is not None else [None] * len(emb)
        assigned: set[int] = set()
        if tracks and len(emb):
            sim = np.stack([t.embedding for t in tracks]) @ emb.T
            apart = np.array([[not phrases_agree(a, b, agree) for b in frame_keys]
                              for a in (t.key for t in tracks)])
            sim[apart] = -2.0  # below any cosine: the assignment avoids it and the threshold refuses it
            for t, i in zip(*linear_sum_assignment(-sim)):
                if sim[t, i] >= min_similarity:
                    tracks[t].add(j, int(i), emb[i], float(sim[t, i]))
                    assigned.add(int(i))
        for i in range(len(emb)):
            if i not in assigned:
                track = Track(key=frame_keys[i])
                track.add(j, i, emb[i])
                tracks.append(track)
    return tracks
