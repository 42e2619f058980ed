"""``python -m pipelines <source|all> --config FILE [--out DIR] [--address ADDR] [--models auto|real|tiny]
[--limit N] [--retry-quarantined]``
and ``python -m pipelines retrieve --dataset DIR --out DIR2 [--config FILE]`` (pipelines/retrieve.py).

``all`` runs every source that has a section in the config (in name order) into one dataset.
Exit status: 0 when the run finished (quarantined units included), 2 for a bad config or arguments, missing
weights, actor pools that cannot fit, an output that is unusable or in use by another run, or an unreadable ledger
file (nothing was started), 130 / 143 when interrupted by Ctrl-C / SIGTERM (the rerun resumes), 1 for anything
else.
"""

from __future__ import annotations

import argparse
import logging
import sys

from datagen.models import MissingModelError
from datagen.quiet import quiet


def _count(text: str) -> int:
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {n}")
    return n


def parse(argv: list[str] | None) -> argparse.Namespace:
    from pipelines.sources import SOURCES

    p = argparse.ArgumentParser(prog="python -m pipelines", description=__doc__.split("\n\n")[0])
    # "retrieve" is dispatched before this parser (its own arguments); listed so --help shows it
    p.add_argument("source", choices=[*SOURCES, "all", "retrieve"])
    p.add_argument("--config", required=True, help="pipeline YAML (see configs/)")
    p.add_argument("--out", help="dataset directory or fsspec URL (overrides `out`)")
    p.add_argument("--address", help="Ray cluster address: auto, ray://host:10001 (overrides ray.address)")
    p.add_argument("--models", choices=["auto", "real", "tiny"], help="overrides `models`")
    p.add_argument("--limit", type=_count, help="process only the first N units of each source (N ≥ 0)")
    p.add_argument("--retry-quarantined", action="store_true",
                   help="run again the units that failed before (filtered units stay filtered)")
    return p.parse_args(argv)


def _stop_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["retrieve"]:  # cross-context pairs from a finished dataset: its own arguments
        from pipelines.retrieve import main as retrieve_main

        return retrieve_main(argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    quiet()
    args = parse(argv)
    from pipelines.config import ConfigError, load_config
    from pipelines.lock import OutputError
    from pipelines.ledger import CorruptLedger
    from pipelines.runner import (InputError, ResourceError, Terminated, report, run_source, stop_on_sigterm,
                                  write_quality_report)
    from pipelines.sources import SOURCES

    overrides = {k: v for k, v in (("out", args.out), ("ray.address", args.address),
                                   ("models", args.models)) if v is not None}
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    configured = [n for n in type(cfg.sources).model_fields if getattr(cfg.sources, n) is not None]
    names = configured if args.source == "all" else [args.source]
    if args.source != "all" and args.source not in configured:
        print(f"error: config {args.config} has no `sources.{args.source}` section", file=sys.stderr)
        return 2
    if not names:
        print(f"error: config {args.config} configures no source", file=sys.stderr)
        return 2
    quarantined = 0
    stop_on_sigterm()
    for name in names:
        try:
            result = run_source(SOURCES[name], cfg, limit=args.limit, retry_failed=args.retry_quarantined)
        except (MissingModelError, ResourceError, InputError, OutputError, CorruptLedger) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: what is written stays valid, a rerun resumes
            _stop_ray()
            print(f"interrupted ({e or 'Ctrl-C'}) while running {name}: the output lock is released; rerun the "
                  "same command to resume", file=sys.stderr)
            return 143 if isinstance(e, Terminated) else 130
        print(report(result))
        quarantined += result.processed["filtered"] + result.processed["failed"]
    print(f"done: dataset at {cfg.out}; {quarantined} units quarantined in this run "
          f"(see {cfg.out}/quarantine.parquet)")
    quality = write_quality_report(cfg.out)
    if quality:
        print(f"data-quality report: {quality}")
    return 0
