"""The metrics of one generated image: MS-Diffusion §4's CLIP-I, DINO, CLIP-T and M-DINO, CLIPScore, and the
detect-and-compare subject metrics of ``confusion`` (confusion, lost, copy-paste). Scales and directions: ``INFO``.

- CLIP-I / DINO: cosine of the generated image's CLIP ViT-B/32 embedding / DINO ViT-S/16 CLS token and each
  subject's references (unsegmented real images as DreamBooth scores them, or segmented: the command's
  ``--references``), averaged over the subject's references and then over subjects.
- CLIP-T: the papers' raw cosine of image and prompt in CLIP space (MS-Diffusion reports 0.321-0.341);
  CLIPScore: torchmetrics' max(100 · cos, 0), the same cosine on another scale.
- M-DINO: each subject's matched region (``confusion.match``) segmented and cropped, DINO cosine against its own
  segmented references (clamped at 0), multiplied over subjects: a lost subject zeroes it.
"""

from __future__ import annotations

import numpy as np
import torch

from anystory.pipeline import segment_subject
from training.evaluate import confusion
from training.evaluate.encoders import Encoders

# name: (direction, scale, source)
INFO = {
    "clip_i": ("higher", "cosine, -1..1", "DreamBooth; MS-Diffusion §4"),
    "dino": ("higher", "cosine, -1..1", "DreamBooth; MS-Diffusion §4"),
    "clip_t": ("higher", "raw cosine, -1..1 (the papers' scale)", "MS-Diffusion §4"),
    "clip_score": ("higher", "max(100 · cosine, 0)", "CLIPScore (Hessel et al. 2021), torchmetrics"),
    "m_dino": ("higher", "product of per-subject DINO cosines, 0..1", "MS-Diffusion §4"),
    "confusion": ("lower", "share of subjects confused or lost, 0..1", "MuDI detect-and-compare"),
    "lost": ("lower", "share of subjects not found, 0..1", "MuDI detect-and-compare"),
    "copy_paste": ("lower", "share of subjects closer to the reference than to the real target, 0..1",
                   "this project (held-out pairs)"),
}
METRICS = tuple(INFO)
REGION_METRICS = ("m_dino", "confusion", "lost", "copy_paste")  # depend on the locator


def crop(image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """A subject as the model sees it (§3.2): segmented on white, cropped to its box, padded square."""
    return np.array(segment_subject(image, mask)[0])


def _cos(enc: Encoders, crops: list[np.ndarray], refs: list[torch.Tensor]) -> np.ndarray:
    """S[r, j]: DINO cosine of crop r and subject j's references (mean over them)."""
    if not crops:
        return np.zeros((0, len(refs)))
    emb = enc.dino_images(crops)
    return np.array([[float((ref @ row).mean()) for ref in refs] for row in emb])


def region_scores(enc: Encoders, image: np.ndarray, regions: np.ndarray, phrases: list[str],
                  refs: list[torch.Tensor], given: list[torch.Tensor] | None = None) -> dict:
    """M-DINO, confusion, lost and copy-paste of one image. ``regions`` (N, H, W): region i located for subject
    i (empty: not found); ``refs``: per subject the DINO embeddings of its segmented scoring references; ``given``:
    those of the reference each subject was generated from, where scoring is against a real target (held-out
    pairs: copy-paste), else None."""
    present = [i for i in range(len(phrases)) if regions[i].any()]
    crops = [crop(image, regions[i]) for i in present]
    sim = _cos(enc, crops, refs)
    nulls = confusion.unrelated_masks(regions)
    unrelated = _cos(enc, [crop(image, m) for m in nulls], refs).mean(0) if nulls else np.zeros(len(refs))
    outcome = confusion.match(confusion.normalise(sim, unrelated), regions[present], present, phrases)
    subject_dino = [max(float(sim[r, j]), 0.0) if r is not None else 0.0 for j, r in enumerate(outcome.matched)]
    copy = None
    if given is not None:
        copy = confusion.copy_paste(_cos(enc, crops, given), sim, outcome.matched)
    return {"m_dino": float(np.prod(subject_dino)), "confusion": outcome.confusion,
            "lost": float(outcome.lost.mean()), "copy_paste": copy, "subject_dino": subject_dino}


def score(enc: Encoders, image: np.ndarray, prompt: str, references: list[list[np.ndarray]],
          regions: np.ndarray | None = None, phrases: list[str] | None = None,
          segmented: list[list[np.ndarray]] | None = None, given: list[np.ndarray] | None = None) -> dict:
    """Every metric of one generated ``image`` (HxWx3 uint8). ``references``: per subject the images CLIP-I and
    DINO compare with; ``segmented``: per subject its segmented references (``crop``) for the region metrics
    (default ``references``); ``regions`` (N, H, W) bool, one per subject, or None (region metrics not measured);
    ``given``: per subject the crop it was generated from, on held-out pairs (copy-paste)."""
    clip_refs = [enc.clip_images(r) for r in references]
    dino_refs = [enc.dino_images(r) for r in references]
    img_clip, img_dino = enc.clip_images([image])[0], enc.dino_images([image])[0]
    cos_t = float(enc.clip_texts([prompt])[0] @ img_clip)
    out = {
        "clip_i": float(np.mean([float((r @ img_clip).mean()) for r in clip_refs])),
        "dino": float(np.mean([float((r @ img_dino).mean()) for r in dino_refs])),
        "clip_t": cos_t, "clip_score": max(100 * cos_t, 0.0),
        **dict.fromkeys(REGION_METRICS), "subject_dino": None,
    }
    if regions is not None:
        seg = dino_refs if segmented is None else [enc.dino_images(r) for r in segmented]
        giv = None if given is None else [enc.dino_images([g]) for g in given]
        out |= region_scores(enc, image, regions, phrases or [""] * len(references), seg, giv)
    return out
