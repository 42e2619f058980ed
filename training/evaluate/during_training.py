"""``train.eval_every``: every N steps, the model being trained generates a fixed handful of held-out samples
(``train.eval_shards``, the first ``train.eval_samples``) beside base SDXL; the metric means and the image grid
go to the tracker. Everything is built when training starts, so a missing encoder fails before step 1."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from anystory import AnyStoryModel, AnyStoryPipeline, build_scheduler
from training.config import Config
from training.evaluate.encoders import build_encoders
from training.evaluate.metrics import METRICS
from training.evaluate.report import image_grid
from training.evaluate.run import Settings, run
from training.evaluate.sets import SpecError, held_out


class TrainingEvaluation:
    def __init__(self, cfg: Config, device: torch.device):
        t, resolution = cfg.train, cfg.data.augment.resolution
        self.samples = list(held_out(t.eval_shards, t.eval_samples, resolution))
        if not self.samples:
            raise SpecError(f"train.eval_shards {t.eval_shards}: no sample with a subject to evaluate")
        self.encoders = build_encoders(cfg.model.size, device=device)
        self.settings = Settings(steps=t.eval_steps, size=(resolution, resolution))
        self.scheduler = build_scheduler(cfg.model.pretrained)

    def __call__(self, model: AnyStoryModel, frozen: Any, step: int, accelerator) -> np.ndarray:
        """Evaluate, log ``eval/<system>/<metric>`` means, return the image grid. The trainable flags are left as
        they were, and nothing is drawn from the global RNGs (seeded generators only), so an exact resume does not
        see the evaluation."""
        flags = [(p, p.requires_grad) for p in model.parameters()]
        # The pipeline wraps the parts in a new AnyStoryModel, which freezes the UNet and the subject k/v inside it.
        pipe = AnyStoryPipeline.from_model(model, frozen.vae, self.scheduler, frozen.text_encoders, frozen.tokenizers)
        for p, flag in flags:
            p.requires_grad_(flag)
        pipe.set_progress_bar_config(disable=True)
        model.eval()
        with accelerator.autocast():
            rows, images = run(self.samples, pipe, self.encoders, self.settings, progress=False)
        model.train()
        # A training curve (plain means over the handful of samples): intervals belong to ``python -m
        # training.evaluate``. No locator is loaded here: AnyStory is located by its routing maps, base SDXL not.
        frame = pd.DataFrame(rows)
        means = {f"eval/{system}/{m}": float(v) for system, g in frame.groupby("system")
                 for m, v in g[list(METRICS)].astype(float).mean().items() if np.isfinite(v)}
        accelerator.log(means, step=step)
        return image_grid(self.samples, images)
