"""Tiny AnyStory models (fp32, CPU, shipped tiny configs) and inputs made here."""

import copy

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from anystory.model import AnyStoryModel, SubjectBatch

LATENT = 8  # tiny latents: 8×8 (64² pixels); cross-attention grids 8×8 and 4×4


def make_model(seed: int = 0) -> tuple[AnyStoryModel, torch.nn.Module]:
    """A tiny AnyStory model in eval mode and an untouched copy of its base UNet (plain SDXL processors)."""
    torch.manual_seed(seed)
    model = AnyStoryModel.build("tiny").eval()
    base = copy.deepcopy(model.unet)
    base.set_attn_processor(AttnProcessor2_0())
    return model, base


def make_subjects(valid: list[list[bool]], seed: int = 1, drop: list[bool] | None = None) -> SubjectBatch:
    g = torch.Generator().manual_seed(seed)
    b, n = len(valid), len(valid[0])
    masks = torch.zeros(b, n, 1, LATENT, LATENT)
    masks[..., 2:6, 1:7] = 1
    return SubjectBatch(clip_pixel_values=torch.randn(b, n, 3, 224, 224, generator=g),
                        reference_latents=torch.randn(b, n, 4, LATENT, LATENT, generator=g),
                        reference_masks=masks, valid=torch.tensor(valid),
                        drop=None if drop is None else torch.tensor(drop))


def make_unet_inputs(batch: int, seed: int = 2) -> dict:
    g = torch.Generator().manual_seed(seed)
    size = LATENT * 8
    return {"noisy_latents": torch.randn(batch, 4, LATENT, LATENT, generator=g),
            "timesteps": torch.full((batch,), 500),
            "encoder_hidden_states": torch.randn(batch, 77, 32, generator=g),
            "added_cond_kwargs": {"text_embeds": torch.randn(batch, 32, generator=g),
                                  "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * batch).float()}}


def perturb_adapters(model: AnyStoryModel, seed: int) -> None:
    """Stand-in for training: move every adapter tensor away from its init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in [*model.stage1_parameters(), *model.stage2_parameters()]:
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.fixture
def tiny():
    return make_model()


def base_noise(base, inputs) -> torch.Tensor:
    return base(inputs["noisy_latents"], inputs["timesteps"], inputs["encoder_hidden_states"],
                added_cond_kwargs=inputs["added_cond_kwargs"]).sample
