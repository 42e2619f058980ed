"""``python -m training.train --config configs/train/<stage>.yaml [key.path=value ...] [--resume latest|DIR]``

Multi-GPU / multi-node: ``accelerate launch [--num_processes N --num_machines M ...] -m training.train ...``.
Each rank reads its own shards (``split_by_node``; ``data.resampled: true`` for many nodes), so the loader is not
given to ``accelerator.prepare``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from training.config import load_config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="YAML file (configs/train/stage1.yaml, stage2.yaml, *_tiny.yaml)")
    p.add_argument("overrides", nargs="*", help="key.path=value, e.g. train.max_steps=10 data.batch_size=2")
    p.add_argument("--resume", help="'latest' (newest checkpoint of train.output_dir, if any) or a step-<N> folder")
    p.add_argument("--allow-synthetic", action="store_true",
                   help="accept datasets built with tiny random models (smoke runs only)")
    args = p.parse_args(argv)
    overrides = list(args.overrides) + (["data.allow_synthetic=true"] if args.allow_synthetic else [])
    cfg = load_config(args.config, overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from anystory import MissingAdapterPart
    from training.trainer import train  # heavy imports after the config is known to be valid

    try:
        train(cfg, resume=args.resume)
    except MissingAdapterPart as e:  # model.stage1_adapters (stage 2) or a resumed checkpoint lacks a part
        print(f"training.train: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
