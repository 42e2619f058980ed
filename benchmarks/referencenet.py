"""Original vs simplified ReferenceNet forward time, ratio against the baseline measured in the same run (paper
Table 1: 62.0 → 53.2 ms on an A100, batch 1, 64×64 latent: ratio 0.858), and the peak memory of 1024² AnyStory
inference with 2 and 4 subjects (CUDA only).

    python benchmarks/referencenet.py [--size sdxl|tiny] [--device cuda|cpu] [--repeats 20] [--steps 2]
        [--resolution 1024] [--subjects 2 4]

Random weights from the shipped configs. Default: SDXL sizes in bf16 on CUDA; without CUDA, tiny sizes in fp32 on
CPU — a smoke run whose ratio says nothing about SDXL. "Original" is the full UNet (AnimateAnyone's ReferenceNet,
with cross-attention over 77 text-width tokens); "simplified" is ``ReferenceNet`` (no attn2/norm2, mask channel).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from anystory import builders  # noqa: E402
from anystory.model import AnyStoryModel  # noqa: E402
from anystory.pipeline import AnyStoryPipeline  # noqa: E402


def timed(fn, device: torch.device, repeats: int, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` in ms."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


@torch.no_grad()
def forward_times(model: AnyStoryModel, repeats: int) -> tuple[float, float]:
    """Median ms of the full UNet (no AnyStory state: plain SDXL attention) and of the simplified ReferenceNet."""
    cfg, device, dtype = model.unet.config, model.unet.device, model.unet.dtype
    latents = torch.randn(1, cfg.in_channels, 64, 64, device=device, dtype=dtype)
    t = torch.zeros(1, dtype=torch.long, device=device)
    text = torch.randn(1, 77, cfg.cross_attention_dim, device=device, dtype=dtype)
    text_dim = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    added = {"text_embeds": torch.zeros(1, text_dim, device=device, dtype=dtype),
             "time_ids": torch.tensor([[512, 512, 0, 0, 512, 512]], device=device, dtype=dtype)}
    mask = torch.ones(1, 1, 64, 64, device=device, dtype=dtype)
    original = timed(lambda: model.unet(latents, t, text, added_cond_kwargs=added), device, repeats)
    simplified = timed(lambda: model.reference_net(latents, mask), device, repeats)
    return original, simplified


@torch.no_grad()
def peak_memory(model: AnyStoryModel, subjects: int, steps: int, resolution: int = 1024) -> tuple[float, float]:
    """GiB allocated before and at the peak of one ``resolution``² generation with ``subjects`` subjects (CFG
    on). Random prompt embeddings stand in for the text encoders."""
    device, dtype = model.unet.device, model.unet.dtype
    with torch.device(device):
        vae = builders.build_vae("sdxl", dtype=dtype)
    pipe = AnyStoryPipeline.from_model(model, vae, builders.build_scheduler())  # prompt embeddings given below
    pipe.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (512, 512, 3), dtype=np.uint8) for _ in range(subjects)]
    masks = [np.pad(np.ones((384, 256), np.uint8) * 255, ((64, 64), (128, 128))) for _ in range(subjects)]
    cfg = model.unet.config
    text = torch.randn(1, 77, cfg.cross_attention_dim, device=device, dtype=dtype)
    pooled = torch.randn(1, cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim,
                         device=device, dtype=dtype)
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    pipe(prompt_embeds=text, pooled_prompt_embeds=pooled, subjects=images, subject_masks=masks,
         height=resolution, width=resolution, num_inference_steps=steps, output_type="latent")
    peak = torch.cuda.max_memory_allocated(device)
    return before / 2**30, peak / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=builders.SIZES, default=None, help="default: sdxl on CUDA, tiny on CPU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--steps", type=int, default=2, help="denoising steps of the memory runs")
    parser.add_argument("--resolution", type=int, default=1024, help="side of the inference memory runs")
    parser.add_argument("--subjects", type=int, nargs="+", default=[2, 4], help="subjects per memory run")
    args = parser.parse_args()
    device = torch.device(args.device)
    size = args.size or ("sdxl" if device.type == "cuda" else "tiny")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.device(device):
        model = AnyStoryModel.build(size, dtype=dtype).eval()
    original, simplified = forward_times(model, args.repeats)
    print(f"ReferenceNet forward ({size}, {dtype}, {device}, batch 1, 64×64 latent, median of {args.repeats}):")
    print(f"  original (full UNet) {original:8.2f} ms | simplified {simplified:8.2f} ms | "
          f"ratio {simplified / original:.3f} (paper: 53.2 / 62.0 = 0.858)")
    if device.type != "cuda" or size != "sdxl":
        print(f"peak memory of {args.resolution}² inference: skipped (needs CUDA and SDXL sizes)")
        return
    for n in args.subjects:
        before, peak = peak_memory(model, n, args.steps, args.resolution)
        print(f"{args.resolution}² inference, {n} subjects (CFG, {args.steps} steps): peak {peak:.2f} GiB allocated "
              f"({before:.2f} GiB of it weights and inputs)")


if __name__ == "__main__":
    main()
