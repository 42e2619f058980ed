"""Outputs of an evaluation: ``metrics.json``, ``samples.parquet`` (one row per sample and system, with its
``locator`` and ``cluster``), ``report.html`` (self-contained: images inline, a table sortable by any score, every
text escaped) and the terminal summary.

Numbers a person can read: single- and multi-subject samples apart; per metric its direction and scale, the mean,
the 95 % cluster-bootstrap interval over subjects (``stats``) and n (samples and subjects); each system minus the
baseline on the same prompts and seeds, with its interval. A difference in a region metric between systems whose
subjects were located differently is refused (``null`` with the reason): it would measure the locators.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from anystory.visualize import PALETTE
from datagen.shards.gallery import data_uri
from training.evaluate.calibration import SYSTEMS as CALIBRATION
from training.evaluate.metrics import INFO, METRICS, REGION_METRICS, crop
from training.evaluate.run import BASE, Generated
from training.evaluate.sets import EvalSample
from training.evaluate.stats import LEVEL, NO_INTERVAL, summarize

THUMB = 256
ROUTING_COLUMNS = tuple(f"{m}_routing" for m in REGION_METRICS)
SPLITS = {"single": "one subject", "multi": "two or more subjects"}


def image_path(sample: str, system: str) -> str:
    return f"images/{re.sub(r'[^A-Za-z0-9_.-]', '_', sample)}.{system}.png"


def _split(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {"single": df[df.subjects == 1], "multi": df[df.subjects >= 2]}


def _columns(df: pd.DataFrame) -> list[str]:
    return [m for m in (*METRICS, *ROUTING_COLUMNS) if m in df and df[m].notna().any()]


def _by_system(df: pd.DataFrame, columns: list[str]) -> dict:
    return {system: {m: summarize(g[m].tolist(), g["cluster"].tolist()) for m in columns}
            for system, g in df.groupby("system", sort=False)}


def _differences(df: pd.DataFrame, baseline: str) -> dict:
    """Each system minus ``baseline`` on the samples both generated (same prompt and seed)."""
    out = {}
    base = df[df.system == baseline].set_index("sample")
    for system in (s for s in df.system.unique() if s != baseline and s not in CALIBRATION):
        mine = df[df.system == system].set_index("sample")
        both = mine.index.intersection(base.index)
        cells = {}
        for m in METRICS:
            if m not in df:
                continue
            located = set(mine.loc[both, "locator"].dropna()) | set(base.loc[both, "locator"].dropna())
            if m in REGION_METRICS and len(located) > 1:
                cells[m] = {"mean": None, "ci": None, "n": 0, "n_subjects": 0,
                            "refused": f"{system} and {baseline} located differently ({', '.join(sorted(located))})"}
                continue
            diff = mine.loc[both, m].astype(float) - base.loc[both, m].astype(float)
            cells[m] = summarize(diff.tolist(), mine.loc[both, "cluster"].tolist())
        out[f"{system} - {baseline}"] = cells
    return out


def summary(rows: list[dict], info: dict, baseline: str = BASE) -> dict:
    df = pd.DataFrame(rows)
    columns = _columns(df)
    splits = {k: g for k, g in _split(df).items() if len(g)}
    return {**info, "n_samples": int(df["sample"].nunique()), "baseline": baseline, "level": LEVEL,
            "metric_info": {m: dict(zip(("direction", "scale", "source"), INFO[m])) for m in METRICS},
            "locators": {s: sorted(set(g["locator"].dropna())) for s, g in df.groupby("system", sort=False)},
            "metrics": {k: _by_system(g, columns) for k, g in splits.items()},
            "difference": {k: _differences(g, baseline) for k, g in splits.items()},
            "per_set": {name: {k: _by_system(g, columns) for k, g in _split(d).items() if len(g)}
                        for name, d in df.groupby("set")}}


def _cell(c: dict | None) -> str:
    """"mean [lo, hi] (n samples / m subjects)"; no interval below two subjects."""
    if c is None or c.get("refused"):
        return "refused: " + c["refused"] if c else ""
    if c["mean"] is None:
        return "—"
    ci = f" [{c['ci'][0]:.3f}, {c['ci'][1]:.3f}]" if c["ci"] else " [no interval]"
    return f"{c['mean']:.3f}{ci} (n={c['n']}/{c['n_subjects']} subj)"


def _label(m: str) -> str:
    base = m.removesuffix("_routing")
    arrow = {"higher": "↑", "lower": "↓"}[INFO[base][0]]
    return f"{base} {arrow}" + (" (routing maps)" if m != base else "")


def text_summary(metrics: dict) -> str:
    """The terminal summary: the same numbers as the report's headline tables."""
    lines = ["SYNTHETIC: tiny random models, numbers mean nothing"] if metrics.get("synthetic") else []
    for split, systems in metrics["metrics"].items():
        lines.append(f"== {SPLITS[split]}: mean [95 % interval over subjects] (n samples/subjects)")
        for system, cells in systems.items():
            located = ", ".join(metrics["locators"].get(system, [])) or "not located"
            lines.append(f"{system} (located by {located})")
            lines += [f"  {_label(m):<28} {_cell(c)}" for m, c in cells.items()]
        for name, cells in metrics["difference"].get(split, {}).items():
            lines.append(f"{name} (paired: same prompts and seeds)")
            lines += [f"  {_label(m):<28} {_cell(c)}" for m, c in cells.items()]
    lines.append(f"no interval: {NO_INTERVAL}")
    return "\n".join(lines)


def masks_image(regions: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Each subject's region in its ``PALETTE`` colour on black."""
    out = np.zeros((*shape, 3), np.uint8)
    for i, r in enumerate(regions):
        out[r] = PALETTE[i % len(PALETTE)]
    return out


def _img(array: np.ndarray, title: str) -> str:
    im = Image.fromarray(array)
    im.thumbnail((THUMB, THUMB))
    return f'<figure><img src="{data_uri(im)}" alt="{html.escape(title)}"><figcaption>{html.escape(title)}</figcaption></figure>'


def _num(v) -> str:
    return "" if v is None or not np.isfinite(v) else f"{v:.3f}"


CSS = """body{font-family:system-ui,sans-serif;margin:16px;background:#fafafa;color:#222}
table{border-collapse:collapse;background:#fff} td,th{border:1px solid #ddd;padding:4px;vertical-align:top;font-size:12px}
th.s{cursor:pointer;background:#eef} figure{margin:2px;display:inline-block} figure img{display:block;max-width:160px}
figcaption{font-size:11px;color:#555} .imgs{display:flex;flex-wrap:wrap;max-width:720px} .n{font-family:monospace}
.synthetic{background:#c00;color:#fff;font-weight:bold;padding:8px;font-size:18px} tr.diff{background:#f4f4e8}"""
# Sorting by hand in a few lines of script: the page must work offline with no library.
JS = """document.querySelectorAll('th.s').forEach((th,k)=>th.onclick=()=>{const b=th.closest('table').tBodies[0];
const c=th.cellIndex,d=th.dataset.dir=th.dataset.dir==='asc'?'desc':'asc';const v=r=>{const t=r.cells[c].textContent;
return t===''?NaN:parseFloat(t)};[...b.rows].sort((x,y)=>{const a=v(x),z=v(y);if(isNaN(a))return 1;if(isNaN(z))return -1;
return d==='asc'?a-z:z-a}).forEach(r=>b.appendChild(r))});"""


def _headline(metrics: dict) -> str:
    """Per split: each system's cells (mean, interval, n) with its locator, then each difference to the baseline;
    the header row names every metric's direction, the next its scale."""
    parts = []
    for split, systems in metrics["metrics"].items():
        columns = list(next(iter(systems.values())))
        head = "".join(f"<th>{html.escape(_label(m))}</th>" for m in columns)
        scale = "".join(f"<td><i>{html.escape(INFO[m.removesuffix('_routing')][1])}</i></td>" for m in columns)
        body = [f"<tr><td>{html.escape(s)}</td><td>{html.escape(', '.join(metrics['locators'].get(s, [])))}</td>"
                + "".join(f'<td class="n">{html.escape(_cell(c.get(m)))}</td>' for m in columns) + "</tr>"
                for s, c in systems.items()]
        body += [f"<tr class=diff><td>{html.escape(name)}</td><td>paired</td>"
                 + "".join(f'<td class="n">{html.escape(_cell(c.get(m)))}</td>' for m in columns) + "</tr>"
                 for name, c in metrics["difference"].get(split, {}).items()]
        parts.append(f"<h2>{html.escape(SPLITS[split])}</h2><table class=headline><tr><th>system</th>"
                     f"<th>located by</th>{head}</tr><tr><td></td><td>scale</td>{scale}</tr>{''.join(body)}</table>")
    return "".join(parts)


def html_report(samples: list[EvalSample], rows: list[dict], images: dict[tuple[str, str], Generated],
                metrics: dict) -> str:
    systems = list(dict.fromkeys(r["system"] for r in rows))
    by = {(r["sample"], r["system"]): r for r in rows}
    head = "".join(f'<th class="s">{html.escape(s)}<br>{html.escape(_label(m))}</th>' for s in systems
                   for m in METRICS)
    body = []
    for sample in samples:
        pics = [_img(crop(s.image, s.mask), f"ref {i}: {s.phrase}") for i, s in enumerate(sample.subjects)]
        if sample.target is not None:
            pics.append(_img(sample.target, "real target frame"))
        for system in systems:
            gen = images.get((sample.id, system))
            if gen is None:
                continue
            pics.append(_img(gen.image, system))
            if gen.overlay is not None:
                pics.append(_img(gen.overlay, f"{system} routing overlay"))
            if gen.regions is not None:
                by_what = f" ({gen.locator})" if gen.locator else ""
                pics.append(_img(masks_image(gen.regions, gen.image.shape[:2]), f"{system} segmentation{by_what}"))
        cells = "".join(f'<td class="n">{_num(by.get((sample.id, s), {}).get(m))}</td>' for s in systems
                        for m in METRICS)
        body.append(f"<tr class=sample><td>{html.escape(sample.id)}<br><i>{html.escape(sample.set)}</i></td>"
                    f"<td>{html.escape(sample.prompt)}</td><td><div class=imgs>{''.join(pics)}</div></td>{cells}</tr>")
    banner = ("<p class=synthetic>SYNTHETIC: tiny random models ran; these numbers mean nothing</p>"
              if metrics.get("synthetic") else "")
    note = (f"Cells: mean [{LEVEL:.0%} interval] (n = samples / subjects). The interval is a cluster bootstrap "
            f"over subjects, then their prompts and seeds; {NO_INTERVAL}. Differences are paired: the same "
            f"prompts and seeds, system minus {metrics.get('baseline', BASE)}; a difference in a region metric "
            "between systems located differently is refused. ↑ higher is better, ↓ lower is better.")
    return (f"<!doctype html><html><head><meta charset=utf-8><title>AnyStory evaluation</title><style>{CSS}</style>"
            f"</head><body>{banner}<h1>AnyStory evaluation</h1>{_headline(metrics)}<p>{html.escape(note)}</p>"
            f"<p>{metrics['n_samples']} samples; click a score header to sort.</p>"
            f"<table id=samples><thead><tr><th>sample</th><th>prompt</th><th>images</th>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table><script>{JS}</script></body></html>")


def image_grid(samples: list[EvalSample], images: dict[tuple[str, str], Generated], cell: int = 128) -> np.ndarray:
    """One row per sample: its references, then per system the image (and AnyStory's routing overlay)."""
    def fit(a: np.ndarray) -> np.ndarray:
        im = Image.fromarray(a)
        im.thumbnail((cell, cell))
        square = Image.new("RGB", (cell, cell), (255, 255, 255))
        square.paste(im, ((cell - im.width) // 2, (cell - im.height) // 2))
        return np.asarray(square)

    rows = []
    for s in samples:
        tiles = [fit(sub.image) for sub in s.subjects]
        for (sid, _), gen in images.items():
            if sid == s.id:
                tiles += [fit(gen.image)] + ([fit(gen.overlay)] if gen.overlay is not None else [])
        rows.append(np.concatenate(tiles, 1))
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows])


def write(out: str | Path, samples: list[EvalSample], rows: list[dict], images: dict[tuple[str, str], Generated],
          info: dict) -> dict:
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for (sample, system), gen in images.items():
        Image.fromarray(gen.image).save(out / image_path(sample, system))
    metrics = summary(rows, info)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    frame = pd.DataFrame(rows).assign(image=[image_path(r["sample"], r["system"]) for r in rows],
                                      synthetic=bool(info.get("synthetic")))
    frame.to_parquet(out / "samples.parquet", index=False)
    (out / "report.html").write_text(html_report(samples, rows, images, metrics))
    return metrics
