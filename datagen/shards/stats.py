"""``python -m datagen.shards stats DIR [--json]``: what a dataset holds.

Samples per source, frames and subjects per sample, subject area range, and from the manifest and
quarantine: units kept, filtered and failed by reason; frames, boxes and subjects dropped inside units by reason.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from datagen import shards


def stats(dataset: str) -> dict[str, Any]:
    index = shards.read_table(dataset, shards.INDEX_FILE).to_pylist()
    quarantine = shards.read_table(dataset, shards.QUARANTINE_FILE).to_pylist()
    manifest = shards.read_manifest(dataset)
    by_source: dict[str, Any] = {}
    for kind in sorted({r["source"] for r in index}):
        rows = [r for r in index if r["source"] == kind]
        areas = [a for r in rows for a in (r["subject_area_min"], r["subject_area_max"]) if a is not None]
        by_source[kind] = {
            "samples": len(rows),
            "shards": len({r["shard"] for r in rows}),
            "frames_per_sample": dict(sorted(Counter(r["n_frames"] for r in rows).items())),
            "subjects_per_sample": dict(sorted(Counter(r["n_subjects"] for r in rows).items())),
            "subject_area": [min(areas), max(areas)] if areas else None,
        }
    return {
        "dataset": dataset,
        "samples": len(index),
        "synthetic_models": manifest.get("synthetic_models"),
        "by_source": by_source,
        "quarantined": dict(sorted(Counter(f"{r.get('source') or '?'}:{r['stage']}/{r['reason']}"
                                           for r in quarantine).items())),
        "counts": manifest.get("counts", {}),
        "pipelines": {name: sec.get("counts", {}) for name, sec in manifest.get("sources", {}).items()},
    }


def render(s: dict[str, Any]) -> str:
    lines = [f"{s['dataset']}: {s['samples']} samples"
             + ("  [SYNTHETIC MODELS: labels from tiny random models]" if s["synthetic_models"] else "")]
    for kind, v in s["by_source"].items():
        area = "-" if v["subject_area"] is None else f"{v['subject_area'][0]:.3f}–{v['subject_area'][1]:.3f}"
        lines.append(f"  {kind:10s} {v['samples']:7d} samples in {v['shards']} shards; frames/sample "
                     f"{v['frames_per_sample']}; subjects/sample {v['subjects_per_sample']}; subject area {area}")
    for name, c in s["pipelines"].items():
        lines.append(f"  pipeline {name}: {c.get('units', 0)} units: kept {c.get('units_kept', 0)}, filtered "
                     f"{c.get('units_filtered', 0)}, failed {c.get('units_failed', 0)}")
        for title in ("filtered", "failed", "dropped"):
            for reason, n in (c.get(title) or {}).items():
                lines.append(f"      {title:8s} {reason}: {n}")
    return "\n".join(lines)


def main(dataset: str, as_json: bool) -> int:
    s = stats(dataset)
    print(json.dumps(s, indent=2) if as_json else render(s))
    return 0
