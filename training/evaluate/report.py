"""Outputs of an evaluation: ``metrics.json`` (means with bootstrap intervals overall, per set and per subject
count, AnyStory minus each baseline on paired samples, and the locator each system's subjects were found with),
``samples.parquet`` (one row per sample and system, its ``locator`` among the columns)
and ``report.html`` (self-contained: images inline, a table sortable by any score, every text escaped)."""

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
from training.evaluate.metrics import METRICS, crop, summarize
from training.evaluate.run import ANYSTORY, Generated
from training.evaluate.sets import EvalSample

THUMB = 256


def image_path(sample: str, system: str) -> str:
    return f"images/{re.sub(r'[^A-Za-z0-9_.-]', '_', sample)}.{system}.png"


def _by_system(df: pd.DataFrame) -> dict:
    return {system: {m: summarize(g[m].tolist()) for m in METRICS} for system, g in df.groupby("system", sort=False)}


def summary(rows: list[dict], info: dict) -> dict:
    df = pd.DataFrame(rows)
    out = {**info, "n_samples": int(df["sample"].nunique()), "metrics": _by_system(df),
           "per_set": {s: _by_system(g) for s, g in df.groupby("set")},
           "per_subject_count": {str(n): _by_system(g) for n, g in df.groupby("subjects")}, "difference": {},
           "locators": {s: sorted(set(g["locator"].dropna())) for s, g in df.groupby("system", sort=False)}
           if "locator" in df else {}}
    mine = df[df.system == ANYSTORY].set_index("sample")
    for baseline in (s for s in df.system.unique() if s != ANYSTORY):
        other = df[df.system == baseline].set_index("sample").reindex(mine.index)
        out["difference"][f"{ANYSTORY} - {baseline}"] = {
            m: summarize([a - b for a, b in zip(mine[m], other[m]) if a is not None and b is not None
                          and np.isfinite(a) and np.isfinite(b)]) for m in METRICS}
    return out


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
figcaption{font-size:11px;color:#555} .imgs{display:flex;flex-wrap:wrap;max-width:720px} .n{font-family:monospace}"""
# Sorting by hand in a few lines of script: the page must work offline with no library.
JS = """document.querySelectorAll('th.s').forEach((th,k)=>th.onclick=()=>{const b=th.closest('table').tBodies[0];
const c=th.cellIndex,d=th.dataset.dir=th.dataset.dir==='asc'?'desc':'asc';const v=r=>{const t=r.cells[c].textContent;
return t===''?NaN:parseFloat(t)};[...b.rows].sort((x,y)=>{const a=v(x),z=v(y);if(isNaN(a))return 1;if(isNaN(z))return -1;
return d==='asc'?a-z:z-a}).forEach(r=>b.appendChild(r))});"""


def html_report(samples: list[EvalSample], rows: list[dict], images: dict[tuple[str, str], Generated],
                metrics: dict) -> str:
    systems = list(metrics["metrics"])
    by = {(r["sample"], r["system"]): r for r in rows}
    head = "".join(f'<th class="s">{html.escape(s)}<br>{m}</th>' for s in systems for m in METRICS)
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
    locators = metrics.get("locators", {})
    means = "".join(f"<tr><td>{html.escape(s)}</td><td>{html.escape(', '.join(locators.get(s, [])))}</td>" + "".join(
        f'<td class="n">{_num(metrics["metrics"][s][m]["mean"])}</td>' for m in METRICS) + "</tr>" for s in systems)
    note = " — SYNTHETIC: tiny random models, numbers mean nothing" if metrics.get("synthetic") else ""
    return (f"<!doctype html><html><head><meta charset=utf-8><title>AnyStory evaluation</title><style>{CSS}</style>"
            f"</head><body><h1>AnyStory evaluation{html.escape(note)}</h1>"
            f"<table><tr><th>system</th><th>located by</th>{''.join(f'<th>{m}</th>' for m in METRICS)}</tr>"
            f"{means}</table>"
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
