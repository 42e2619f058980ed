"""Known-answer systems that calibrate the scores on held-out pairs (samples with a real target frame):

- ``target-oracle``: the real target frame itself — the subjects in a new pose/view/context, as a perfect model
  would draw them: copy-paste must be low, confusion and lost near 0;
- ``reference-paste``: the target frame with each subject's reference pasted into its box there — a model that
  copies the reference: copy-paste must be high.

They run through the same locating and scoring as every generated image, so a metric that cannot tell them apart
is not trusted (tests/training/test_evaluate_calibration.py).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from datagen.shards import mask_box
from training.evaluate.sets import EvalSample

TARGET_ORACLE, REFERENCE_PASTE = "target-oracle", "reference-paste"
SYSTEMS = (TARGET_ORACLE, REFERENCE_PASTE)


def applicable(sample: EvalSample) -> bool:
    return sample.target is not None


def target_oracle(sample: EvalSample) -> np.ndarray:
    return sample.target.copy()


def reference_paste(sample: EvalSample) -> np.ndarray:
    """Each subject's reference pixels (its mask's box, resized) pasted over its box in the target frame, where
    the resized reference mask is set."""
    out = sample.target.copy()
    for subject in sample.subjects:
        target_mask = subject.scoring[0][1]
        if target_mask is None or not target_mask.any() or subject.mask is None:
            continue
        x0, y0, x1, y1 = map(int, mask_box(target_mask))
        r0, s0, r1, s1 = map(int, mask_box(subject.mask))
        size = (x1 - x0, y1 - y0)
        pixels = np.asarray(Image.fromarray(subject.image[s0:s1, r0:r1]).resize(size, Image.BILINEAR))
        keep = np.asarray(Image.fromarray(subject.mask[s0:s1, r0:r1]).resize(size, Image.NEAREST))
        out[y0:y1, x0:x1][keep] = pixels[keep]
    return out


def generate(system: str, sample: EvalSample) -> np.ndarray:
    return {TARGET_ORACLE: target_oracle, REFERENCE_PASTE: reference_paste}[system](sample)
