"""``python -m datagen.shards stats DIR [--json] [--source NAME]``: what a dataset holds.

Samples per pipeline source (shard name prefix) with its kinds (meta/index ``source``), frames and subjects per sample, subject area range, and from the manifest and
quarantine: units kept, filtered and failed by reason; frames, boxes and subjects dropped inside units by reason.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from datagen import shards


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    areas = [a for r in rows for a in (r["subject_area_min"], r["subject_area_max"]) if a is not None]
    return {
        "samples": len(rows),
        "shards": len({r["shard"] for r in rows}),
        "frames_per_sample": dict(sorted(Counter(r["n_frames"] for r in rows).items())),
        "subjects_per_sample": dict(sorted(Counter(r["n_subjects"] for r in rows).items())),
        "subject_area": [min(areas), max(areas)] if areas else None,
    }


def stats(dataset: str, source: str | None = None) -> dict[str, Any]:
    """``by_source``: per kind (the index's ``source``: video, objaverse, image, router); ``by_pipeline``: per
    pipeline source (the shard name's prefix: video, objaverse, deepfashion2, coco, urls) with its kinds.
    ``source``: only samples (and manifest sections) of that pipeline source or kind."""
    index = shards.read_table(dataset, shards.INDEX_FILE).to_pylist()
    for r in index:
        r["pipeline"] = shards.pipeline_of(r["shard"])
    index = [r for r in index if source in (None, r["pipeline"], r["source"])]
    quarantine = shards.read_table(dataset, shards.QUARANTINE_FILE).to_pylist()
    manifest = shards.read_manifest(dataset)
    sections = {name: sec for name, sec in manifest.get("sources", {}).items()
                if source in (None, name, sec.get("kind"))}
    by_pipeline = {}
    for name in sorted({r["pipeline"] for r in index}):
        rows = [r for r in index if r["pipeline"] == name]
        by_pipeline[name] = {"kinds": sorted({r["source"] for r in rows}), **_summary(rows)}
    return {
        "dataset": dataset,
        "samples": len(index),
        "synthetic_models": manifest.get("synthetic_models"),
        "by_source": {kind: _summary([r for r in index if r["source"] == kind])
                      for kind in sorted({r["source"] for r in index})},
        "by_pipeline": by_pipeline,
        "quarantined": dict(sorted(Counter(f"{r.get('source') or '?'}:{r['stage']}/{r['reason']}"
                                           for r in quarantine if source is None or r.get("source") in sections
                                           ).items())),
        "counts": manifest.get("counts", {}),
        "pipelines": {name: sec.get("counts", {}) for name, sec in sections.items()},
    }


def render(s: dict[str, Any]) -> str:
    lines = [f"{s['dataset']}: {s['samples']} samples"
             + ("  [SYNTHETIC MODELS: labels from tiny random models]" if s["synthetic_models"] else "")]
    for name, v in s["by_pipeline"].items():
        area = "-" if v["subject_area"] is None else f"{v['subject_area'][0]:.3f}–{v['subject_area'][1]:.3f}"
        kinds = f"({', '.join(v['kinds'])})"
        lines.append(f"  {name:12s} {kinds:10s} {v['samples']:7d} samples in {v['shards']} shards; frames/sample "
                     f"{v['frames_per_sample']}; subjects/sample {v['subjects_per_sample']}; subject area {area}")
    for name, c in s["pipelines"].items():
        lines.append(f"  pipeline {name}: {c.get('units', 0)} units: kept {c.get('units_kept', 0)}, filtered "
                     f"{c.get('units_filtered', 0)}, failed {c.get('units_failed', 0)}")
        for title in ("filtered", "failed", "dropped"):
            for reason, n in (c.get(title) or {}).items():
                lines.append(f"      {title:8s} {reason}: {n}")
    return "\n".join(lines)


def main(dataset: str, as_json: bool, source: str | None = None) -> int:
    s = stats(dataset, source)
    print(json.dumps(s, indent=2) if as_json else render(s))
    return 0
