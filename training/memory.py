"""``python -m training.memory --config FILE [key.path=value ...] [--gpu-gb 80] [--num-processes N] [--zero 2]``

GPU memory per rank of a training config, without a GPU and without weights: the model is built on the meta device
from the shipped configs (the shapes of SDXL base, CLIP ViT-H/14 and the AnyStory parts).

Exact (counted from the meta model, the trainer's dtype rules and ``training.optim.state_bytes``):
- weights: frozen parts (UNet, CLIP, VAE, both text encoders, the other stage's parts) in
  ``train.mixed_precision``'s dtype, trained parts in fp32;
- gradients: fp32, one copy (the trainer gives DDP ``gradient_as_bucket_view``);
- optimizer: AdamW two fp32 moments; 8-bit AdamW uint8 moments + block absmax + codes (bitsandbytes' rule);
- ``--zero 2`` (DeepSpeed ZeRO-2 through ``accelerate launch --config_file configs/accelerate/zero2.yaml``): trained
  weights in bf16 on every rank; bf16 gradients and the fp32 master weights + AdamW moments sharded over the ranks
  (ZeRO paper: 2Ψ + (2 + 12)Ψ / N), plus DeepSpeed's reduce and all-gather buckets (5e8 elements each, bf16).

Estimated — activations, bf16, under gradient checkpointing (every ResnetBlock2D and BasicTransformerBlock is a
checkpoint in diffusers; ``train.gradient_checkpointing: false`` is refused here):
    A = Σ_units in(u) + Σ_transformers 3·T·C + max_u 2·work(u)                       (one checkpointed UNet pass)
      + G (reference features G^l, held from the ReferenceNet pass to the backward; ×2 in stage 1 for their grads)
      + stage 1 only: the ReferenceNet's own checkpointed pass on B·N references.
  in(u): the input every checkpoint keeps, measured by hooks in a meta-device forward at the real shapes;
  3·T·C: what each Transformer2DModel keeps outside its checkpoints (norm input, proj_in input/output);
  work(u): the activations a unit recomputes in the backward (×2: their gradients), with T tokens of width C and
  N subject slots whose reference tokens per layer are T_ref:
    transformer block: 21·T·C (3 LayerNorms, q/k/v/out of both attentions, GEGLU 8C, GELU 4C, FF out)
                       + 2·(T + N·T_ref)·C (reference attention keys/values, Eq. 6) + (N + 1)·T·C (Eq. 5 terms);
    resnet: 7·T·C_out (2 GroupNorm, 2 SiLU, 2 convs, shortcut).
  Not counted: frozen no-grad passes (VAE encode, text encoders, CLIP) free their activations before the UNet
  runs; flash / memory-efficient attention keeps no T×T matrix. ``--overhead-gb`` (default 2) covers the CUDA
  context, cuBLAS workspaces and allocator fragmentation.

The verdict compares the total with ``--gpu-gb`` (decimal GB, 1e9 bytes; an "80 GB" H100 has 85.5e9).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

import torch
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel

from anystory import AnyStoryModel, builders
from training.config import Config, load_config
from training.optim import state_bytes

GB = 1e9
BF16 = 2
ZERO_BUCKETS = 2 * 5e8 * BF16  # DeepSpeed's default reduce_bucket_size and allgather_bucket_size, bf16
DTYPE_BYTES = {"no": 4, "bf16": 2, "fp16": 2}


@dataclass
class Budget:
    """Bytes per rank, by line, and what they were counted from."""

    trainable: int  # parameters trained in this stage
    frozen: int  # parameters held frozen (base models and the other stage's parts)
    lines: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.lines.values())


def meta_parts(size: str) -> tuple[AnyStoryModel, list[torch.nn.Module]]:
    """The AnyStory model and the trainer's other frozen modules (VAE, text encoders), on the meta device."""
    with torch.device("meta"):
        model = AnyStoryModel.build(size)
        te, te2, _, _ = builders.build_text_encoders_and_tokenizers(size)
        vae = builders.build_vae(size)
    return model, [vae, te, te2]


def parameter_bytes(cfg: Config, model: AnyStoryModel, others: list[torch.nn.Module], processes: int, zero: int
                    ) -> Budget:
    """Weights, gradients and optimizer state per rank (see the module doc)."""
    trained = model.freeze_for_stage(cfg.stage)
    ids = {id(p) for p in trained}
    frozen = [p for p in model.parameters() if id(p) not in ids] + [p for m in others for p in m.parameters()]
    n_trained, n_frozen = sum(p.numel() for p in trained), sum(p.numel() for p in frozen)
    low = DTYPE_BYTES[cfg.train.mixed_precision]
    budget = Budget(n_trained, n_frozen)
    budget.lines["weights, frozen"] = n_frozen * low
    if zero == 0:
        budget.lines["weights, trained (fp32)"] = n_trained * 4
        budget.lines["gradients (fp32)"] = n_trained * 4
        budget.lines[f"optimizer ({cfg.optim.optimizer})"] = sum(state_bytes(p.numel(), cfg.optim.optimizer)
                                                                 for p in trained)
        return budget
    if cfg.optim.optimizer != "adamw":
        raise ValueError("--zero 2 counts DeepSpeed's own AdamW partitioning: use optim.optimizer=adamw with it")
    budget.lines["weights, trained (bf16)"] = n_trained * BF16
    budget.lines[f"gradients (bf16, 1/{processes})"] = n_trained * BF16 / processes
    budget.lines[f"fp32 master + AdamW moments (1/{processes})"] = n_trained * 12 / processes
    budget.lines["ZeRO buckets"] = ZERO_BUCKETS
    return budget


def unit_inputs(module: torch.nn.Module, call) -> tuple[list[tuple[str, torch.Size]], list[torch.Size]]:
    """Run ``call()`` (a meta forward) with hooks: the input shape of every checkpointed unit (resnet blocks and
    transformer blocks) in order, and the input shapes of every Transformer2DModel."""
    units, transformers, handles = [], [], []

    def hook(kind):
        def record(_, args, kwargs):
            x = args[0] if args else kwargs.get("hidden_states", kwargs.get("input_tensor"))
            (transformers if kind == "t2d" else units).append(x.shape if kind == "t2d" else (kind, x.shape))
        return record

    for m in module.modules():
        kind = {ResnetBlock2D: "resnet", BasicTransformerBlock: "transformer", Transformer2DModel: "t2d"}.get(type(m))
        if kind:
            handles.append(m.register_forward_pre_hook(hook(kind), with_kwargs=True))
    try:
        with torch.no_grad():
            call()
    finally:
        for h in handles:
            h.remove()
    return units, transformers


def numel(shape) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def checkpointed_pass(units, transformers, subjects: int, ref_ratio: float) -> tuple[float, float]:
    """Bytes (bf16) a checkpointed pass keeps (inputs + Transformer2DModel extras) and its largest recompute
    (× 2 for the gradients). ``ref_ratio``: reference tokens per layer token (T_ref / T)."""
    kept = sum(numel(s) for _, s in units) + sum(3 * numel(s) for s in transformers)
    work = 0
    for kind, s in units:
        if kind == "transformer":
            b, t, c = s
            w = b * c * (21 * t + 2 * (t + subjects * ref_ratio * t) + (subjects + 1) * t)
        else:
            b, c, h, w_ = s
            w = 7 * b * c * h * w_
        work = max(work, w)
    return kept * BF16, 2 * work * BF16


def activation_bytes(cfg: Config, model: AnyStoryModel) -> dict[str, float]:
    """The activation lines of the module doc, at ``data.batch_size`` × ``augment.max_subjects`` slots."""
    if not cfg.train.gradient_checkpointing:
        raise ValueError("the activation estimate assumes train.gradient_checkpointing: true")
    aug = cfg.data.augment
    b, n = cfg.data.batch_size, aug.max_subjects
    side, ref_side = aug.resolution // aug.latent_scale, aug.reference_size // aug.latent_scale
    ratio = (ref_side / side) ** 2
    unet = model.unet
    pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    with torch.device("meta"):
        latents = torch.zeros(b, unet.config.in_channels, side, side)
        text = torch.zeros(b, 77, unet.config.cross_attention_dim)
        added = {"text_embeds": torch.zeros(b, pooled), "time_ids": torch.zeros(b, 6)}
        units, t2d = unit_inputs(unet, lambda: unet(latents, torch.zeros(b), text, added_cond_kwargs=added))
    kept, work = checkpointed_pass(units, t2d, n, ratio)
    # G^l: the input of every self-attention after the first, per subject slot, at reference resolution
    g = sum(numel(s) for kind, s in units if kind == "transformer") * n * ratio * BF16
    g -= numel(units[[k for k, _ in units].index("transformer")][1]) * n * ratio * BF16  # G^1 is dropped (Eq. 3)
    lines = {"activations: UNet pass (kept)": kept, "activations: UNet recompute (largest unit)": work,
             "activations: reference features G": g * (2 if cfg.stage == 1 else 1)}
    if cfg.stage == 1:
        ref = model.reference_net
        with torch.device("meta"):
            lat = torch.zeros(b * n, unet.config.in_channels, ref_side, ref_side)
            mask = torch.zeros(b * n, ref.config.mask_channels, ref_side, ref_side)
            r_units, r_t2d = unit_inputs(ref.unet, lambda: ref(lat, mask))
        r_kept, r_work = checkpointed_pass(r_units, r_t2d, 0, 0.0)
        lines["activations: ReferenceNet pass (kept)"] = r_kept
        lines["activations: ReferenceNet recompute"] = r_work
    return lines


def budget_for(cfg: Config, processes: int = 1, zero: int = 0, overhead_gb: float = 2.0) -> Budget:
    model, others = meta_parts(cfg.model.size)
    budget = parameter_bytes(cfg, model, others, processes, zero)
    budget.lines.update(activation_bytes(cfg, model))
    budget.lines["CUDA context, workspaces, fragmentation"] = overhead_gb * GB
    return budget


def report(cfg: Config, budget: Budget, gpu_gb: float, processes: int, zero: int) -> str:
    aug = cfg.data.augment
    head = (f"stage {cfg.stage}, {cfg.model.size}, batch {cfg.data.batch_size} × {aug.max_subjects} subject slots "
            f"at {aug.resolution}² (references {aug.reference_size}²), {cfg.train.mixed_precision}, "
            f"{'ZeRO-2 over ' + str(processes) + ' ranks' if zero else cfg.optim.optimizer}")
    rows = [head, f"  parameters: {budget.trainable:,} trained, {budget.frozen:,} frozen"]
    rows += [f"  {name:<45s} {value / GB:8.2f} GB" for name, value in budget.lines.items()]
    fits = budget.total <= gpu_gb * GB
    rows.append(f"  {'total per rank':<45s} {budget.total / GB:8.2f} GB -> "
                f"{'fits' if fits else 'does NOT fit'} in {gpu_gb:g} GB")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.memory", description=__doc__.split("\n\n")[1])
    p.add_argument("--config", required=True)
    p.add_argument("overrides", nargs="*", help="key.path=value, e.g. data.batch_size=2 optim.optimizer=adamw8bit")
    p.add_argument("--gpu-gb", type=float, default=80.0)
    p.add_argument("--num-processes", type=int, default=8, help="ranks sharing ZeRO state (with --zero 2)")
    p.add_argument("--zero", type=int, choices=(0, 2), default=0, help="2: DeepSpeed ZeRO-2 (configs/accelerate)")
    p.add_argument("--overhead-gb", type=float, default=2.0)
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    budget = budget_for(cfg, args.num_processes, args.zero, args.overhead_gb)
    print(report(cfg, budget, args.gpu_gb, args.num_processes, args.zero))
    return 0 if budget.total <= args.gpu_gb * GB else 1


if __name__ == "__main__":
    sys.exit(main())
