"""``python -m anystory.generate --adapters DIR --subject IMG[:MASK] ... --prompt "..." [--seed N] --out DIR``

Writes into ``--out``: ``image_<k>.png`` (the generated images), ``routing_subject<i>.png`` (Fig. 5: subject i's
routing map at every cross-attention layer, a column per shown denoising step, labelled with the step and
layer numbers), ``mask_subject<i>.png`` (the
reference-prompted segmentation of subject i in image 0, §3.3: routing maps averaged over steps and layers,
argmax) and ``overlay.png`` (those masks tinted over image 0).

``--adapters``: a ``save_adapters`` folder (a training run's ``<output_dir>/adapters``) or an
``AnyStoryPipeline.save_pretrained`` folder (its ``model_index.json`` names the base models). The base comes from
``--pretrained`` / ``--clip-pretrained`` (local files only), or ``--size tiny``: tiny random models, a smoke run
that needs no weights (``--adapters`` optional; random tiny bases are seeded like training's ``init_seed``: 0).
Sampling settings left out keep ``AnyStoryPipeline``'s defaults.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from anystory import builders
from anystory.model import MissingAdapterPart
from anystory.pipeline import AnyStoryPipeline
from anystory.visualize import labelled_routing_grid, routing_overlay, segment_from_routing_maps

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_subject(spec: str) -> tuple[PIL.Image.Image, PIL.Image.Image | None]:
    """``IMG`` or ``IMG:MASK`` (a mask's white pixels are the subject; without one the whole image is)."""
    image, _, mask = spec.partition(":")
    for path in filter(None, (image, mask)):
        if not Path(path).is_file():
            raise FileNotFoundError(f"--subject {spec!r}: no file {path!r}")
    return PIL.Image.open(image).convert("RGB"), PIL.Image.open(mask).convert("L") if mask else None


def load_pipeline(args) -> AnyStoryPipeline:
    device, dtype = args.device, DTYPES[args.dtype]
    if args.adapters and (Path(args.adapters) / "model_index.json").is_file():
        overrides = {k: v for k, v in {"pretrained": args.pretrained, "clip_pretrained": args.clip_pretrained}.items()
                     if v is not None}
        return AnyStoryPipeline.from_pretrained(args.adapters, device=device, dtype=dtype, **overrides)
    if args.size == "sdxl" and (args.pretrained is None or args.adapters is None):
        raise SystemExit("--size sdxl needs --pretrained (an SDXL directory) and --adapters; --size tiny runs "
                         "without weights")
    torch.manual_seed(0)  # tiny random bases: the same as training's (model.init_seed 0)
    return AnyStoryPipeline.build(args.size, args.pretrained, args.clip_pretrained, adapters=args.adapters,
                                  device=device, dtype=dtype)


def shown_steps(n: int, most: int) -> list[int]:
    """Up to ``most`` steps, evenly spaced, first and last included."""
    k = min(n, most)
    return sorted({round(i * (n - 1) / max(1, k - 1)) for i in range(k)})


def write_outputs(out_dir: Path, images: list[PIL.Image.Image], routing_maps, grid_steps: int) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for k, image in enumerate(images):
        image.save(out_dir / f"image_{k}.png")
        written.append(out_dir / f"image_{k}.png")
    n = routing_maps[0][0].shape[1] - 1
    steps = shown_steps(len(routing_maps), grid_steps)
    size = images[0].size[::-1]
    masks = segment_from_routing_maps(routing_maps, size)[0]
    for i in range(n):
        # subject i's maps alone (its channel and the background): one row of panels
        mine = [[m[:, [i, n]] for m in step] for step in routing_maps]
        paths = {"routing": out_dir / f"routing_subject{i}.png", "mask": out_dir / f"mask_subject{i}.png"}
        PIL.Image.fromarray(labelled_routing_grid(mine, steps, [f"subject {i}"])).save(paths["routing"])
        PIL.Image.fromarray(masks[i].astype(np.uint8) * 255).save(paths["mask"])
        written += paths.values()
    PIL.Image.fromarray(routing_overlay(images[0], routing_maps)).save(out_dir / "overlay.png")
    return written + [out_dir / "overlay.png"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m anystory.generate", description=__doc__.split("\n\n")[1])
    p.add_argument("--adapters", help="save_adapters or save_pretrained folder (optional with --size tiny)")
    p.add_argument("--subject", action="append", required=True, metavar="IMG[:MASK]")
    p.add_argument("--prompt", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--size", choices=builders.SIZES, default="sdxl")
    p.add_argument("--pretrained", help="SDXL base: a diffusers directory or a hub id in the local HF cache")
    p.add_argument("--clip-pretrained", help="CLIP ViT-H/14 image encoder (default with --pretrained: IP-Adapter's)")
    p.add_argument("--steps", type=int, help="denoising steps (default: the pipeline's)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the pipeline's)")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--images", type=int, default=1, help="images per prompt")
    p.add_argument("--eta", type=float, default=1.0, help="Eq. 5 strength (0: no CLIP subject term)")
    p.add_argument("--gamma", type=float, default=0.0, help="reference attention bias (-inf: off)")
    p.add_argument("--grid-steps", type=int, default=5, help="denoising steps shown in the routing grids")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=DTYPES, default="bf16" if torch.cuda.is_available() else "fp32")
    args = p.parse_args(argv)
    subjects = [parse_subject(s) for s in args.subject]
    try:
        pipe = load_pipeline(args)
    except MissingAdapterPart as e:
        print(f"anystory.generate: --adapters {e}", file=sys.stderr)
        return 2
    pipe.set_progress_bar_config(disable=not sys.stderr.isatty())
    options = {k: v for k, v in {"num_inference_steps": args.steps, "guidance_scale": args.guidance,
                                 "height": args.height, "width": args.width}.items() if v is not None}
    out = pipe(args.prompt, subjects=[im for im, _ in subjects], subject_masks=[m for _, m in subjects],
               eta=args.eta, gamma=args.gamma, num_images_per_prompt=args.images,
               generator=torch.Generator().manual_seed(args.seed), **options)
    for path in write_outputs(Path(args.out), out.images, out.routing_maps, args.grid_steps):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
