"""Stage-1 and stage-2 training step time and peak GPU memory at real SDXL size, against the frozen base UNet's own
forward + backward (the floor any adapter training pays) measured in the same run.

What a step is: exactly the trainer's (``training.trainer.step_losses``): VAE encode of the target and the
references, text encoding, AnyStory forward (CLIP, QFormer, ReferenceNet, routed UNet), backward, the optimizer
step on the stage's parameters; frozen weights in bf16, trained ones fp32 under bf16 autocast, gradient checkpointing. Batch sizes grow
until out of memory. Target: stage 2 at 1024², batch 1, ≤ 24 GB.

Weights: random from ``anystory``'s shipped SDXL configs (time and memory do not depend on their values); the text
encoders at CLIP ViT-L/14 and OpenCLIP bigG/14 text sizes. Give ``--pretrained DIR`` (an SDXL diffusers directory)
to use the real ones.

    python benchmarks/train_step.py [--resolution 1024] [--batches 1 2 4 8 16] [--subjects 2] [--steps 5]
        [--stages 2 1] [--optimizer adamw|adamw8bit] [--no-checkpointing]
    python benchmarks/train_step.py --resolution 1024 --stages 2 --batches 1          # issue target: ≤ 24 GB, ≤ 1 s
    python benchmarks/train_step.py --resolution 1024 --stages 1 --batches 1 --optimizer adamw8bit   # ≤ 40 GB
    python benchmarks/train_step.py            # without CUDA: the tiny CPU smoke run (--size sdxl to force)
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

import torch
from diffusers import DDPMScheduler

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from anystory import AnyStoryModel, builders  # noqa: E402
from training.augment import normalize  # noqa: E402
from training.config import OptimConfig  # noqa: E402
from training.optim import OPTIMIZERS, make_optimizer  # noqa: E402
from training.trainer import Frozen, prepare_for_stage, step_losses  # noqa: E402


def frozen_parts(size: str, pretrained: str | None, device: torch.device, dtype: torch.dtype) -> Frozen:
    te, te2, tok, tok2 = builders.build_text_encoders_and_tokenizers(size, pretrained, device=device, dtype=dtype)
    vae = builders.build_vae(size, pretrained, device=device, dtype=dtype)
    for m in (vae, te, te2):
        m.requires_grad_(False).eval()
    return Frozen(vae, (te, te2), (tok, tok2), DDPMScheduler.from_config(builders.build_scheduler(pretrained).config))


def batch_of(b: int, resolution: int, subjects: int, model: AnyStoryModel, device: torch.device) -> dict:
    """A collated loader batch of random content at the loader's shapes and dtypes."""
    clip = model.clip.config.image_size
    ref = model.reference_net.config.reference_size
    latent = resolution // 8
    n = subjects
    masks = {f: (torch.rand(b, n, latent // f, latent // f) > 0.7).float() for f in model.routing_factors}
    batch = {
        "keys": [f"k{i}" for i in range(b)], "captions": ["a person and a dog in a park"] * b,
        "pixel_values": torch.randint(0, 256, (b, 3, resolution, resolution), dtype=torch.uint8),
        "time_ids": torch.tensor([resolution, resolution, 0, 0, resolution, resolution]).float().repeat(b, 1),
        "clip_pixel_values": torch.randint(0, 256, (b, n, 3, clip, clip), dtype=torch.uint8),
        "ref_pixel_values": torch.randint(0, 256, (b, n, 3, ref, ref), dtype=torch.uint8),
        "ref_masks": (torch.rand(b, n, 1, ref // 8, ref // 8) > 0.5).float(),
        "subject_valid": torch.ones(b, n, dtype=torch.bool), "routing_masks": masks,
        "drop_subjects": torch.zeros(b, dtype=torch.bool),
    }
    moved = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    moved["routing_masks"] = {f: m.to(device) for f, m in masks.items()}
    return normalize(moved)


def timed_steps(step, steps: int, device: torch.device) -> tuple[float, float | None]:
    """Median seconds per step after one warm-up, and peak allocated GiB (CUDA only)."""
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return sorted(times)[len(times) // 2], peak


def run_stage(stage: int, args, device: torch.device) -> list[tuple]:
    torch.manual_seed(0)
    low = torch.bfloat16 if device.type == "cuda" else torch.float32
    # As the trainer: straight to the device in the training dtype (stage 1's UNet in fp32, ReferenceNet copied).
    model = AnyStoryModel.build(args.size, args.pretrained, device=device,
                                dtype=torch.float32 if stage == 1 else low)
    frozen = frozen_parts(args.size, args.pretrained, device, low)
    params = prepare_for_stage(model, stage, low)
    if args.checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    opt = make_optimizer(params, OptimConfig(optimizer=args.optimizer))
    rows = []
    for b in args.batches:
        batch = batch_of(b, args.resolution, args.subjects, model, device)

        def train_step():
            with torch.autocast(device.type, dtype=low, enabled=low != torch.float32):
                terms, _ = step_losses(model, frozen, batch, stage, 0.1)
            terms["loss"].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        def base_step():  # frozen SDXL UNet forward + backward to its input: the floor of any adapter training
            lat = torch.randn(b, 4, args.resolution // 8, args.resolution // 8, device=device, dtype=low,
                              requires_grad=True)
            text = torch.randn(b, 77, model.unet.config.cross_attention_dim, device=device, dtype=low)
            pooled_dim = (model.unet.config.projection_class_embeddings_input_dim
                          - 6 * model.unet.config.addition_time_embed_dim)
            added = {"text_embeds": torch.randn(b, pooled_dim, device=device, dtype=low),
                     "time_ids": batch["time_ids"].to(low)}
            with torch.autocast(device.type, dtype=low, enabled=low != torch.float32):
                out = model(lat, torch.full((b,), 500, device=device), text, added, None).noise_pred
            out.float().square().mean().backward()

        try:
            t_step, peak = timed_steps(train_step, args.steps, device)
            t_base, _ = timed_steps(base_step, args.steps, device)
        except torch.OutOfMemoryError:
            rows.append((stage, b, None, None, None))
            break
        finally:
            opt.zero_grad(set_to_none=True)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append((stage, b, t_step, peak, t_base))
    del model, frozen, opt
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=builders.SIZES, help="default: sdxl on CUDA, else the tiny smoke run")
    p.add_argument("--pretrained", help="SDXL diffusers directory (default: random weights from shipped configs)")
    p.add_argument("--resolution", type=int)
    p.add_argument("--batches", type=int, nargs="+")
    p.add_argument("--subjects", type=int, default=2)
    p.add_argument("--steps", type=int)
    p.add_argument("--stages", type=int, nargs="+", default=[2, 1])
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw", help="adamw8bit: bitsandbytes")
    p.add_argument("--no-checkpointing", dest="checkpointing", action="store_false",
                   help="without gradient checkpointing")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    if args.size is None and device.type != "cuda":  # SDXL-size training needs more than a CPU box's memory
        print("no CUDA device: the tiny smoke run (its figures mean nothing); --size sdxl forces the real size")
    real = args.size == "sdxl" or (args.size is None and device.type == "cuda")
    args.size = "sdxl" if real else "tiny"
    args.resolution = args.resolution or (1024 if real else 64)
    args.batches = args.batches or ([1, 2, 4, 8, 16] if real else [1, 2])
    args.steps = args.steps or (5 if real else 2)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    precision = "bf16" if device.type == "cuda" else "fp32"
    print(f"train step: {args.size} at {args.resolution}², {args.subjects} subjects/sample, {precision}, gradient "
          f"checkpointing {'on' if args.checkpointing else 'off'}, {args.optimizer}, on {name}")
    for stage in args.stages:
        for _, b, t_step, peak, t_base in run_stage(stage, args, device):
            if t_step is None:
                print(f"  stage {stage} batch {b:3d}: out of memory")
                continue
            mem = f"{peak:6.1f} GiB" if peak is not None else "   n/a"
            target = {2: " (target <= 24 GB, <= 1.0 s)", 1: " (target <= 40 GB with adamw8bit)"}[stage] \
                if b == 1 and peak is not None else ""
            print(f"  stage {stage} batch {b:3d}: {t_step:7.3f} s/step | {b / t_step:6.2f} samples/s | peak {mem}"
                  f"{target} | base UNet fwd+bwd {t_base:7.3f} s | ratio {t_step / t_base:.2f}x")


if __name__ == "__main__":
    main()
