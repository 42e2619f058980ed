"""``python -m datagen.shards validate|stats|view|report DIR``."""

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m datagen.shards", description="inspect a shard dataset (format v1)")
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate", help="check every tar, sample, index and manifest; exit 1 on any violation")
    v.add_argument("dataset")
    s = sub.add_parser("stats", help="counts per source, subjects per sample, kept/filtered by reason")
    s.add_argument("dataset")
    s.add_argument("--json", action="store_true")
    s.add_argument("--source", help="only this pipeline source (video|objaverse|deepfashion2|coco|urls) or kind "
                                    "(video|objaverse|image|router)")
    g = sub.add_parser("view", help="write a self-contained HTML gallery")
    g.add_argument("dataset")
    g.add_argument("--out", required=True)
    g.add_argument("--limit", type=int, default=100, help="at most this many samples")
    g.add_argument("--source", help="only samples of this pipeline source (video|objaverse|deepfashion2|coco|urls) "
                                    "or kind (video|objaverse|image|router)")
    h = sub.add_parser("export-hf", help="parquet files + dataset card for the Hugging Face datasets library")
    h.add_argument("dataset")
    h.add_argument("out")
    h.add_argument("--row-group-bytes", type=int, default=None, help="bytes of samples per parquet row group, "
                   "what the export holds at once (default: the datasets library's 100 MB)")
    r = sub.add_parser("report", help="write a self-contained HTML data-quality report with plots")
    r.add_argument("dataset")
    r.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.command == "validate":
        from datagen.shards.validate import validate

        report = validate(args.dataset)
        print(report.render())
        return 0 if report.ok else 1
    if args.command == "stats":
        from datagen.shards.stats import main as stats_main

        return stats_main(args.dataset, args.json, args.source)
    if args.command == "export-hf":
        from datagen.shards import hf

        return hf.main(args.dataset, args.out, args.row_group_bytes or hf.ROW_GROUP_BYTES)
    if args.command == "report":
        from datagen.shards.report import main as report_main

        return report_main(args.dataset, args.out)
    from datagen.shards.gallery import main as view_main

    return view_main(args.dataset, args.out, args.limit, args.source)


if __name__ == "__main__":
    sys.exit(main())
