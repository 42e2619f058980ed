"""``training.memory``: exact parameter / gradient / optimizer bytes, checked against the real tiny model after a
real optimizer step, and the activation terms against hand counts."""

from __future__ import annotations

import pytest
import torch

from anystory import AnyStoryModel, builders
from anystory.attention import transformer_blocks
from anystory.model import _depth
from training import memory
from training.config import load_config
from training.optim import make_optimizer
from training.trainer import prepare_for_stage

CONFIGS = {1: "configs/train/stage1_tiny.yaml", 2: "configs/train/stage2_tiny.yaml"}


def tiny_config(stage: int, *overrides: str):
    return load_config(CONFIGS[stage], ["train.mixed_precision=bf16", "train.gradient_checkpointing=true",
                                        *overrides])


@pytest.mark.parametrize("kind", ["adamw", "adamw8bit"])
@pytest.mark.parametrize("stage", [1, 2])
def test_parameter_bytes_equal_the_real_models_after_one_step(stage, kind):
    cfg = tiny_config(stage, f"optim.optimizer={kind}")
    budget = memory.parameter_bytes(cfg, *memory.meta_parts("tiny"), processes=1, zero=0)
    # Independently: the real tiny model prepared as the trainer does, one optimizer step, bytes of what exists.
    model = AnyStoryModel.build("tiny")
    te, te2, _, _ = builders.build_text_encoders_and_tokenizers("tiny", dtype=torch.bfloat16)
    vae = builders.build_vae("tiny", dtype=torch.bfloat16)
    params = prepare_for_stage(model, stage, torch.bfloat16)
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer = make_optimizer(params, cfg.optim)
    optimizer.step()
    weights = sum(p.numel() * p.element_size() for m in (model, te, te2, vae) for p in m.parameters())
    grads = sum(p.grad.numel() * p.grad.element_size() for p in params)
    state = sum(v.numel() * v.element_size() for s in optimizer.state.values() for k, v in s.items()
                if torch.is_tensor(v) and k != "step")  # torch keeps AdamW's step counter on the CPU
    lines = budget.lines
    assert lines["weights, frozen"] + lines["weights, trained (fp32)"] == weights
    assert lines["gradients (fp32)"] == grads
    assert lines[f"optimizer ({kind})"] == state
    assert budget.trainable == sum(p.numel() for p in params)


def test_zero2_shards_gradients_and_optimizer_over_ranks():
    cfg = tiny_config(1)
    budget = memory.parameter_bytes(cfg, *memory.meta_parts("tiny"), processes=4, zero=2)
    n = sum(p.numel() for p in AnyStoryModel.build("tiny").stage1_parameters())
    assert budget.lines["weights, trained (bf16)"] == 2 * n
    assert budget.lines["gradients (bf16, 1/4)"] == 2 * n / 4
    assert budget.lines["fp32 master + AdamW moments (1/4)"] == 12 * n / 4
    with pytest.raises(ValueError, match="adamw"):
        memory.parameter_bytes(tiny_config(1, "optim.optimizer=adamw8bit"), *memory.meta_parts("tiny"), 4, 2)


def test_reference_features_are_counted_per_layer_slot_and_batch():
    cfg = tiny_config(2, "data.batch_size=3", "data.augment.max_subjects=2")
    model, _ = memory.meta_parts("tiny")
    lines = memory.activation_bytes(cfg, model)
    aug = cfg.data.augment
    ref_side = aug.reference_size // aug.latent_scale
    # G^l for l ≥ 2 (Eq. 3 drops G^1): batch × slots × tokens at the layer's resolution × width, bf16
    expected = sum(3 * 2 * (ref_side // 2 ** _depth(model.unet, name)) ** 2 * block.attn1.to_q.in_features * 2
                   for name, block in transformer_blocks(model.unet)[1:])
    assert lines["activations: reference features G"] == expected
    assert "activations: ReferenceNet pass (kept)" not in lines  # stage 2: the ReferenceNet runs without grad


def test_activations_grow_with_batch_and_stage1_adds_the_referencenet():
    model, _ = memory.meta_parts("tiny")
    one = memory.activation_bytes(tiny_config(1, "data.batch_size=1"), model)
    two = memory.activation_bytes(tiny_config(1, "data.batch_size=2"), model)
    assert {k: 2 * v for k, v in one.items()} == two
    assert one["activations: ReferenceNet pass (kept)"] > 0
    with pytest.raises(ValueError, match="checkpointing"):
        memory.activation_bytes(tiny_config(1, "train.gradient_checkpointing=false"), model)


def test_cli_verdict_against_the_gpu_memory(capsys):
    assert memory.main(["--config", CONFIGS[2], "train.gradient_checkpointing=true", "--gpu-gb", "80"]) == 0
    out = capsys.readouterr().out
    assert "fits in 80 GB" in out and "optimizer (adamw)" in out
    assert memory.main(["--config", CONFIGS[2], "train.gradient_checkpointing=true", "--gpu-gb", "0.5"]) == 1
    assert "does NOT fit in 0.5 GB" in capsys.readouterr().out
