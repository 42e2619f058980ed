"""The metrics of MS-Diffusion §4 plus a blending rate, per generated image, and bootstrap summaries.

- CLIP-I / DINO: cosine of the generated image's CLIP ViT-B/32 embedding / DINO ViT-S/16 CLS token and each
  subject's segmented reference, averaged over the subject's references and then over subjects.
- CLIP-T: torchmetrics' CLIPScore, max(100 · cos(image, prompt), 0).
- M-DINO: each subject's region of the generated image (from the routing maps, or Grounding DINO + SAM on its
  phrase: ``locate``) segmented and cropped, DINO cosine against its own references (clamped at 0), multiplied
  over subjects: one neglected subject (an empty region) zeroes it.
- Blending: for two or more subjects, the share of subjects whose region resembles another subject's references
  more than its own (a confusion rate over the subject × reference DINO matrix). A subject not found counts as
  not blended: it is lost, which M-DINO already shows, not mixed into another.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import bootstrap

from anystory.pipeline import segment_subject
from training.evaluate.encoders import Encoders

METRICS = ("clip_i", "clip_t", "dino", "m_dino", "blending")


def crop(image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """A subject as the model sees it (§3.2): segmented on white, cropped to its box, padded square."""
    return np.array(segment_subject(image, mask)[0])


def m_dino(similarity: np.ndarray) -> float:
    """Product over subjects of the diagonal of the region × reference DINO matrix (negatives count as 0)."""
    return float(np.prod(np.clip(np.diag(similarity), 0, None)))


def blending(similarity: np.ndarray) -> float | None:
    """Share of subjects i with max_{j≠i} S[i, j] > S[i, i]; None for fewer than two subjects."""
    n = similarity.shape[0]
    if n < 2:
        return None
    others = np.where(np.eye(n, dtype=bool), -np.inf, similarity).max(1)
    return float((others > np.diag(similarity)).mean())


def region_similarity(enc: Encoders, image: np.ndarray, regions: np.ndarray, refs: list[torch.Tensor]) -> np.ndarray:
    """S[i, j]: DINO cosine of subject i's region (crop of ``regions[i]``) and subject j's references (mean over
    them). An empty region (a subject the router put nowhere, or the detector did not find) gives a row of zeros."""
    n = len(refs)
    sim = np.zeros((n, n))
    present = [i for i in range(n) if regions[i].any()]
    if present:
        emb = enc.dino_images([crop(image, regions[i]) for i in present])
        for row, i in zip(emb, present):
            sim[i] = [float((ref @ row).mean()) for ref in refs]
    return sim


def score(enc: Encoders, image: np.ndarray, prompt: str, references: list[list[np.ndarray]],
          regions: np.ndarray | None = None) -> dict:
    """Every metric of one generated ``image`` (HxWx3 uint8). ``references``: per subject its scoring references
    (already cropped, ``crop``); ``regions``: (N, H, W) bool subject regions, or None (M-DINO, blending not
    measured)."""
    clip_refs = [enc.clip_images(r) for r in references]
    dino_refs = [enc.dino_images(r) for r in references]
    img_clip, img_dino = enc.clip_images([image])[0], enc.dino_images([image])[0]
    out = {
        "clip_t": max(100 * float(enc.clip_texts([prompt])[0] @ img_clip), 0.0),
        "clip_i": float(np.mean([float((r @ img_clip).mean()) for r in clip_refs])),
        "dino": float(np.mean([float((r @ img_dino).mean()) for r in dino_refs])),
        "m_dino": None, "blending": None, "subject_dino": None,
    }
    if regions is not None:
        sim = region_similarity(enc, image, regions, dino_refs)
        out |= {"m_dino": m_dino(sim), "blending": blending(sim), "subject_dino": np.diag(sim).tolist()}
    return out


def summarize(values, seed: int = 0, level: float = 0.95, resamples: int = 1000) -> dict:
    """Mean and percentile bootstrap interval (scipy) of the non-missing values; n < 2 gives a zero-width one."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], float)
    if len(x) == 0:
        return {"mean": None, "ci": None, "n": 0}
    if len(x) < 2 or np.ptp(x) == 0:
        return {"mean": float(x.mean()), "ci": [float(x.mean())] * 2, "n": len(x)}
    ci = bootstrap((x,), np.mean, confidence_level=level, n_resamples=resamples, method="percentile",
                   rng=np.random.default_rng(seed)).confidence_interval
    return {"mean": float(x.mean()), "ci": [float(ci.low), float(ci.high)], "n": len(x)}
