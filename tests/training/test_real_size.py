"""Real SDXL sizes on the CPU (``make test-slow``): one stage-2 training step and one two-subject generation with
random weights from the shipped configs, bf16, at 256² (targets and references) so that all parts — UNet 2.57 B,
ReferenceNet 2.02 B, CLIP ViT-H 0.63 B, text encoders 0.82 B — fit a 24 GB box (≈ 12 GB of bf16 weights)."""

from __future__ import annotations

import resource
import time

import numpy as np
import pytest
import torch

from anystory import AnyStoryModel, AnyStoryPipeline, builders
from training.augment import normalize
from training.config import OptimConfig
from training.optim import make_optimizer
from training.trainer import Frozen, prepare_for_stage, step_losses

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]  # random init of 6 B parameters on 2 cores: minutes
SIDE = 256  # target and reference side: 32×32 latents
BF16 = torch.bfloat16


def loader_batch(model: AnyStoryModel, subjects: int, seed: int = 0) -> dict:
    """One collated loader batch (uint8 images, masks at every routing resolution), normalised as the trainer does."""
    g = torch.Generator().manual_seed(seed)
    latent, clip = SIDE // 8, model.clip.config.image_size
    masks = torch.zeros(1, subjects, latent, latent)
    for i in range(subjects):  # side-by-side subjects
        masks[0, i, 4:28, 2 + 15 * i: 15 + 15 * i] = 1
    batch = {"keys": ["k0"], "captions": ["two people in a park"],
             "pixel_values": torch.randint(0, 256, (1, 3, SIDE, SIDE), dtype=torch.uint8, generator=g),
             "time_ids": torch.tensor([[SIDE, SIDE, 0, 0, SIDE, SIDE]], dtype=torch.float32),
             "clip_pixel_values": torch.randint(0, 256, (1, subjects, 3, clip, clip), dtype=torch.uint8, generator=g),
             "ref_pixel_values": torch.randint(0, 256, (1, subjects, 3, SIDE, SIDE), dtype=torch.uint8, generator=g),
             "ref_masks": torch.ones(1, subjects, 1, latent, latent),
             "subject_valid": torch.ones(1, subjects, dtype=torch.bool),
             "routing_masks": {f: torch.nn.functional.max_pool2d(masks, f) for f in model.routing_factors},
             "drop_subjects": torch.zeros(1, dtype=torch.bool)}
    return normalize(batch)


def test_stage2_step_and_two_subject_generation_at_sdxl_size():
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = AnyStoryModel.build("sdxl", dtype=BF16)
    te, te2, tok, tok2 = builders.build_text_encoders_and_tokenizers("sdxl", dtype=BF16)
    vae = builders.build_vae("sdxl", dtype=BF16)
    frozen = Frozen(vae, (te, te2), (tok, tok2), builders.build_scheduler(sampler="euler"))
    assert builders.count_parameters(model.unet) > 2.567e9 and builders.count_parameters(model.reference_net) > 2.02e9
    t_build = time.perf_counter() - t0

    # -- stage 2: one optimizer step on the router, everything else frozen in bf16
    params = prepare_for_stage(model, 2, BF16)
    model.enable_gradient_checkpointing()
    model.train()
    before = [p.detach().clone() for p in params]
    unet_weight = model.unet.conv_in.weight.detach().clone()
    optimizer = make_optimizer(params, OptimConfig(lr=1e-3, warmup_steps=0))
    t1 = time.perf_counter()
    with torch.autocast("cpu", dtype=BF16):
        terms, out = step_losses(model, frozen, loader_batch(model, 2), stage=2, routing_weight=0.1)
    terms["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    t_step = time.perf_counter() - t1
    assert all(torch.isfinite(v) for v in terms.values()) and terms["routing"] > 0
    assert len(out.routing_maps) == 70
    assert all(not torch.equal(a, p) for a, p in zip(before, params))  # the router moved
    assert torch.equal(model.unet.conv_in.weight, unet_weight)  # the base did not
    assert not any(p.requires_grad for p in model.unet.parameters() if not any(p is q for q in params))
    del optimizer, out, terms, before

    # -- inference: two subjects, CFG, two EDM/Euler steps, routing maps returned
    model.requires_grad_(False).to(BF16).eval()
    pipe = AnyStoryPipeline.from_model(model, vae, builders.build_scheduler(), (te, te2), (tok, tok2))
    pipe.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(0)
    subjects = [rng.integers(0, 256, (300, 200, 3), dtype=np.uint8) for _ in range(2)]
    masks = [np.pad(np.full((200, 100), 255, np.uint8), ((50, 50), (50, 50))) for _ in range(2)]
    t2 = time.perf_counter()
    result = pipe("two friends hiking", subjects=subjects, subject_masks=masks, height=SIDE, width=SIDE,
                  num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0))
    t_infer = time.perf_counter() - t2
    assert result.images.shape == (1, SIDE, SIDE, 3) and np.isfinite(result.images).all()
    assert len(result.routing_maps) == 2 and len(result.routing_maps[0]) == 70
    for m in result.routing_maps[-1]:
        assert m.shape[:2] == (1, 3)
        torch.testing.assert_close(m.float().sum(1), torch.ones_like(m[:, 0]).float(), atol=1e-2, rtol=0)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
    print(f"\nreal size on CPU: build {t_build:.0f} s, stage-2 step {t_step:.0f} s, two-subject generation "
          f"(2 steps, CFG) {t_infer:.0f} s, peak RSS {peak_gb:.1f} GiB")
