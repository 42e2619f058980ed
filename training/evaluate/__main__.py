"""``python -m training.evaluate --adapters DIR (--set SET | --shards DIR) --out DIR [--baseline ...]``

Generates every sample of the set with AnyStory and the baselines on the same prompts and seeds (base SDXL always;
IP-Adapter Plus SDXL with ``--baseline ip-adapter`` when its weights are here; the known-answer systems
``--baseline target-oracle`` / ``reference-paste`` on held-out pairs) and writes ``metrics.json``,
``samples.parquet``, ``report.html`` and ``images/`` to ``--out``, and a summary to the terminal. Every system's
subjects are located alike, by phrase with Grounding DINO + SAM (``--locate routing`` scores AnyStory by its
routing maps instead, which are otherwise extra ``*_routing`` columns). ``--size tiny``: tiny random models,
offline (smoke runs and tests; every output is marked synthetic). Missing weights, a bad spec or an empty set fail
before any generation.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from training.evaluate import sets

log = logging.getLogger("training.evaluate")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--adapters", help="adapters folder of a run (<output_dir>/adapters or checkpoints/step-N/adapters)")
    p.add_argument("--set", help="a spec file (.yaml/.jsonl), a folder with spec.yaml, a DreamBench-layout folder, "
                                 "MS-Bench as published, or a shipped set name (mini)")
    p.add_argument("--shards", help="a dataset folder: evaluate on its samples (held-out data)")
    p.add_argument("--limit", type=int, help="at most N samples from --set, spread evenly over its subjects, and N "
                                              "pairs from --shards, spread evenly over its index")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--baseline", action="append", default=[],
                   choices=["base-sdxl", "ip-adapter", "target-oracle", "reference-paste"],
                   help="base-sdxl always runs; ip-adapter adds IP-Adapter Plus SDXL when its weights are here; "
                        "target-oracle (the real target frame) and reference-paste (the reference pasted into it) "
                        "calibrate the scores on samples with a real target frame")
    p.add_argument("--ip-adapter", help="IP-Adapter Plus SDXL: the .safetensors file or a folder with "
                                        "sdxl_models/ (default: h94/IP-Adapter in the HF cache)")
    p.add_argument("--size", choices=["sdxl", "tiny"], default="sdxl")
    p.add_argument("--pretrained", help="SDXL base (directory or hub id in the HF cache; default SDXL base 1.0)")
    p.add_argument("--clip-pretrained", help="AnyStory's CLIP ViT-H/14 image encoder (default: IP-Adapter's)")
    p.add_argument("--clip", help="CLIP ViT-B/32 for CLIP-I/CLIP-T (default openai/clip-vit-base-patch32)")
    p.add_argument("--dino", help="DINO ViT-S/16 for DINO/M-DINO (default facebook/dino-vits16)")
    p.add_argument("--locate", choices=["grounding", "routing"], default="grounding",
                   help="grounding (default): Grounding DINO + SAM for every system, AnyStory's routing maps as "
                        "extra columns; routing: AnyStory by its routing maps (its region-metric differences to "
                        "systems located by phrase are then refused)")
    p.add_argument("--references", choices=["unsegmented", "segmented"], default="unsegmented",
                   help="what CLIP-I and DINO compare with: the real images as they are (default, DreamBooth's "
                        "protocol) or the subjects segmented on white")
    p.add_argument("--unique-token", default="", help="{0} of the official DreamBench prompts (DreamBooth's rare "
                                                      "token, e.g. sks; default none: encoder methods learn none)")
    p.add_argument("--detector", help="Grounding DINO: hub id in the HF cache or a folder "
                                      "(default: the data engine's registry, IDEA-Research/grounding-dino-base)")
    p.add_argument("--segmenter", help="SAM: hub id in the HF cache or a folder (default: facebook/sam-vit-huge)")
    p.add_argument("--steps", type=int, help="denoising steps (default 25; tiny 2)")
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--resolution", type=int, help="side of spec samples / bucket area of shard samples "
                                                  "(default 1024; tiny 64)")
    p.add_argument("--seeds", type=int, default=4, help="images per prompt (seeds 0..K-1; default 4, DreamBooth "
                                                         "scores 4-6; spec cases with their own seeds keep them)")
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
    from datagen.quiet import quiet
    from training.errors import EXPECTED, one_line

    quiet()
    problem = adapters_problem(args.adapters)
    if problem:
        log.error("%s", problem)
        return 2

    try:
        return evaluate(args)
    except (*EXPECTED, FileNotFoundError) as e:  # missing weights or inputs, a bad dataset: one line, no traceback
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2


def evaluate(args: argparse.Namespace) -> int:
    tiny = args.size == "tiny"
    resolution = args.resolution or (64 if tiny else 1024)
    try:
        samples = sets.load(args.set, args.shards, args.limit, list(range(args.seeds)), resolution, args.unique_token)
    except sets.SpecError as e:
        log.error("%s", e)
        return 2
    # Heavy imports once the set is known to be good; every model is built before the first generation.
    import torch

    from anystory import AnyStoryPipeline, builders
    from datagen import shards
    from training.evaluate import encoders, locate, report, run

    tokenizer = text_tokenizer(tiny, args.pretrained or builders.SDXL_BASE)
    try:
        if tokenizer is not None:
            sets.check_phrases_reach_the_model(samples, tokenizer, tokenizer.model_max_length)
    except sets.SpecError as e:
        log.error("%s", e)
        return 2

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.startswith("cuda") and not tiny else None
    log.info("loading the CLIP and DINO encoders, the Grounding DINO + SAM locator and AnyStory on %s (once, "
             "slow on a first run)", device)
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
    log.info("generating %d samples; the first includes one-time warm-up", len(samples))
    calibrate = tuple(b for b in args.baseline if b in ("target-oracle", "reference-paste"))
    rows, images = run.run(samples, pipe, enc, settings, ip_file, locator=locator, locate=args.locate,
                           references=args.references, calibrate=calibrate)
    data_synthetic = bool(args.shards and shards.read_manifest(args.shards).get("synthetic_models"))
    info = {"synthetic": tiny or enc.synthetic or locator.synthetic or data_synthetic, "encoders": enc.names,
            "locate": args.locate, "locator_models": locator.described, "references": args.references,
            "seeds": args.seeds, "unique_token": args.unique_token, "adapters": args.adapters,
            "set": args.set, "shards": args.shards, "skipped": skipped,
            "settings": {"steps": settings.steps, "guidance": settings.guidance, "resolution": resolution}}
    metrics = report.write(args.out, samples, rows, images, info)
    print(report.text_summary(metrics))
    return 0


def text_tokenizer(tiny: bool, pretrained: str):
    """SDXL's first tokenizer (both read 77 tokens), or None where its files are not here (the model build then
    names what is missing)."""
    from transformers import CLIPTokenizer

    from anystory import builders

    if tiny:
        return builders.tiny_tokenizer()
    try:
        return CLIPTokenizer.from_pretrained(pretrained, subfolder="tokenizer", local_files_only=True)
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())
