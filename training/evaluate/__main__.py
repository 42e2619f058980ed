"""``python -m training.evaluate --adapters DIR (--set SET | --shards DIR) --out DIR [--baseline ip-adapter]``

Generates every sample of the set with AnyStory and the baselines on the same prompt and seed (base SDXL always;
IP-Adapter Plus SDXL with ``--baseline ip-adapter`` when its weights are here) and writes ``metrics.json``,
``samples.parquet``, ``report.html`` and ``images/`` to ``--out``. Subjects are located (M-DINO, blending) from
AnyStory's routing maps and, for the baselines, by phrase with Grounding DINO + SAM (``--locate grounding``: for
every system). ``--size tiny``: tiny random models, offline (smoke runs and tests; every output is marked
synthetic). Missing weights, a bad spec or an empty set fail before any generation.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from training.evaluate import sets

log = logging.getLogger("training.evaluate")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--adapters", help="adapters folder of a run (<output_dir>/adapters or checkpoints/step-N/adapters)")
    p.add_argument("--set", help="a spec file (.yaml/.jsonl), a folder with spec.yaml, a DreamBench-layout folder, or "
                                 "a shipped set name (mini)")
    p.add_argument("--shards", help="a dataset folder: evaluate on its samples (held-out data)")
    p.add_argument("--limit", type=int, help="at most N samples from --set and N from --shards")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--baseline", action="append", choices=["base-sdxl", "ip-adapter"], default=[],
                   help="base-sdxl always runs; ip-adapter adds IP-Adapter Plus SDXL when its weights are here")
    p.add_argument("--ip-adapter", help="IP-Adapter Plus SDXL: the .safetensors file or a folder with "
                                        "sdxl_models/ (default: h94/IP-Adapter in the HF cache)")
    p.add_argument("--size", choices=["sdxl", "tiny"], default="sdxl")
    p.add_argument("--pretrained", help="SDXL base (directory or hub id in the HF cache; default SDXL base 1.0)")
    p.add_argument("--clip-pretrained", help="AnyStory's CLIP ViT-H/14 image encoder (default: IP-Adapter's)")
    p.add_argument("--clip", help="CLIP ViT-B/32 for CLIP-I/CLIP-T (default openai/clip-vit-base-patch32)")
    p.add_argument("--dino", help="DINO ViT-S/16 for DINO/M-DINO (default facebook/dino-vits16)")
    p.add_argument("--locate", choices=["routing", "grounding"], default="routing",
                   help="routing: AnyStory's routing maps, Grounding DINO + SAM for systems without them (default); "
                        "grounding: Grounding DINO + SAM for every system")
    p.add_argument("--detector", help="Grounding DINO: hub id in the HF cache or a folder "
                                      "(default: the data engine's registry, IDEA-Research/grounding-dino-base)")
    p.add_argument("--segmenter", help="SAM: hub id in the HF cache or a folder (default: facebook/sam-vit-huge)")
    p.add_argument("--steps", type=int, help="denoising steps (default 25; tiny 2)")
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--resolution", type=int, help="side of spec samples / bucket area of shard samples "
                                                  "(default 1024; tiny 64)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of DreamBench-layout prompts")
    p.add_argument("--device", default=None, help="default: cuda when available")
    args = p.parse_args(argv)
    if args.set is None and args.shards is None:
        p.error("give --set and/or --shards")
    if args.adapters is None and args.size != "tiny":
        p.error("--adapters is required (only --size tiny runs untrained adapters)")
    return args


def adapters_problem(folder: str | None) -> str | None:
    """What makes ``--adapters`` unusable, checked before any model is built; None when it can be loaded. Only
    safetensors are read (a folder of pickled .bin/.pt weights is refused: loading them could run code)."""
    from anystory.model import ADAPTER_CONFIG, ADAPTER_FILES

    if folder is None:
        return None
    path = Path(folder)
    if not path.is_dir():
        return f"--adapters {folder}: not a folder"
    missing = [n for n in (ADAPTER_CONFIG, ADAPTER_FILES["subject_encoder"]) if not (path / n).is_file()]
    if missing:
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt"))
        return (f"--adapters {folder}: missing {', '.join(missing)}"
                + (f" (pickled weights {pickles[:3]} are never loaded: save adapters as safetensors)" if pickles else ""))
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    problem = adapters_problem(args.adapters)
    if problem:
        log.error("%s", problem)
        return 2
    tiny = args.size == "tiny"
    resolution = args.resolution or (64 if tiny else 1024)
    try:
        samples = sets.load(args.set, args.shards, args.limit, args.seeds, resolution)
    except sets.SpecError as e:
        log.error("%s", e)
        return 2
    # Heavy imports once the set is known to be good; every model is built before the first generation.
    import torch

    from anystory import AnyStoryPipeline, builders
    from datagen import shards
    from training.evaluate import encoders, locate, report, run

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.startswith("cuda") and not tiny else None
    enc = encoders.build_encoders(args.size, args.clip or encoders.CLIP_B32, args.dino or encoders.DINO_S16, device)
    locator = locate.PhraseLocator.build(locate.resolve(args.size, args.detector, args.segmenter))
    ip_file, skipped = None, {}
    if "ip-adapter" in args.baseline:
        ip_file, why = (None, "IP-Adapter Plus has no tiny variant") if tiny else run.ip_adapter_file(args.ip_adapter)
        if ip_file is None:
            skipped["ip-adapter"] = why
            log.warning("baseline ip-adapter skipped: %s", why)
    torch.manual_seed(0)  # tiny random models: the same every run
    pretrained = None if tiny else (args.pretrained or builders.SDXL_BASE)
    pipe = AnyStoryPipeline.build(args.size, pretrained, args.clip_pretrained, args.adapters, device=device,
                                  dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    settings = run.Settings(steps=args.steps or (2 if tiny else 25), guidance=args.guidance,
                            size=(resolution, resolution))
    rows, images = run.run(samples, pipe, enc, settings, ip_file, locator=locator, locate=args.locate)
    data_synthetic = bool(args.shards and shards.read_manifest(args.shards).get("synthetic_models"))
    info = {"synthetic": tiny or enc.synthetic or locator.synthetic or data_synthetic, "encoders": enc.names,
            "locate": args.locate, "locator_models": locator.described, "adapters": args.adapters,
            "set": args.set, "shards": args.shards, "skipped": skipped,
            "settings": {"steps": settings.steps, "guidance": settings.guidance, "resolution": resolution}}
    metrics = report.write(args.out, samples, rows, images, info)
    print(json.dumps({s: {m: v["mean"] for m, v in ms.items()} for s, ms in metrics["metrics"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
