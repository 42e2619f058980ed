"""``python -m datagen.shards view DIR --out FILE.html``: a self-contained HTML gallery of a dataset.

Every frame is shown with each subject's mask overlaid in its own colour, its box and phrase label; under it
the caption and the frame's fields (time, camera); per sample the subjects (phrase, scores, extras) and the
provenance. Images are inlined as data URIs, so the file opens anywhere without the dataset.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from itertools import islice
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from datagen import shards

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128)]
THUMB = 384
REPORT_FILE = "report.html"  # python -m datagen.shards report's output inside a dataset
ALPHA = 0.45

CSS = """
body{font-family:system-ui,sans-serif;margin:16px;background:#fafafa;color:#222}
h1{font-size:20px} .sample{background:#fff;border:1px solid #ddd;border-radius:8px;margin:14px 0;padding:10px}
.key{font-family:monospace;font-size:13px;color:#555} .frames{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0;max-width:%dpx} figure img{display:block;max-width:100%%;border-radius:4px}
figcaption{font-size:12px;color:#333;margin-top:3px} .fields{font-family:monospace;font-size:11px;color:#777}
.chip{display:inline-block;border-radius:10px;padding:1px 8px;margin:2px;font-size:12px;color:#fff}
details{font-size:12px;margin-top:6px} pre{white-space:pre-wrap;font-size:11px}
""" % THUMB


def colour(subject_index: int) -> tuple[int, int, int]:
    return PALETTE[subject_index % len(PALETTE)]


def overlay(frame: shards.Frame, subjects: list[shards.Subject], j: int) -> Image.Image:
    """The frame with each subject's mask tinted in its colour, box outlined, phrase written."""
    image = frame.image.astype(np.float32)
    for n, s in enumerate(subjects):
        if j in s.masks:
            m = s.masks[j][..., None]
            image = np.where(m, image * (1 - ALPHA) + np.array(colour(n)) * ALPHA, image)
    im = Image.fromarray(image.clip(0, 255).astype(np.uint8))
    scale = min(1.0, THUMB / max(im.size))
    im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.LANCZOS)
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=13)
    for n, s in enumerate(subjects):
        if j in s.masks or j in s.boxes:
            x0, y0, x1, y1 = (v * scale for v in s.box(j))
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=colour(n), width=2)
            draw.text((x0 + 3, y0 + 2), f"{s.id}: {s.phrase}", fill=(255, 255, 255), font=font, stroke_width=2,
                      stroke_fill=colour(n))
    return im


def data_uri(im: Image.Image) -> str:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def sample_html(sample: shards.Sample, pipeline: str) -> str:
    esc = html.escape
    figures = []
    for j, fr in enumerate(sample.frames):
        fields = json.dumps(fr.fields, default=str) if fr.fields else ""
        figures.append(
            f'<figure><img alt="frame {j}" src="{data_uri(overlay(fr, sample.subjects, j))}">'
            f"<figcaption><b>frame {j}</b> ({fr.width}×{fr.height}) {esc(fr.caption)}"
            f'<div class="fields">{esc(fields[:400])}</div></figcaption></figure>'
        )
    chips = "".join(
        f'<span class="chip" style="background:rgb{colour(n)}">{s.id}: {esc(s.phrase)} '
        f"{'' if s.det_score is None else f'det {s.det_score:.2f} '}"
        f"{'' if s.match_score is None else f'match {s.match_score:.2f} '}"
        f"{esc(json.dumps(s.fields)) if s.fields else ''} · frames {sorted(s.masks)}</span>"
        for n, s in enumerate(sample.subjects)
    )
    prov = esc(json.dumps({"provenance": sample.provenance, "models": sample.models, "scores": sample.scores},
                          indent=1, default=str))
    return (f'<div class="sample"><div class="key">{esc(sample.key)} · source {esc(pipeline)} · kind '
            f'{esc(sample.source)} · '
            f"{len(sample.frames)} frames · {len(sample.subjects)} subjects</div>"
            f'<div class="frames">{"".join(figures)}</div><div>{chips}</div>'
            f"<details><summary>provenance</summary><pre>{prov}</pre></details></div>")


def pipeline_samples(dataset: str, source: str | None = None) -> Iterator[tuple[str, shards.Sample]]:
    """(pipeline source, sample) of every sample whose pipeline source or kind is ``source`` (all by default)."""
    for name in shards.list_shards(dataset):
        pipeline = shards.pipeline_of(name)
        if source not in (None, pipeline) and source not in shards.KINDS:
            continue  # a pipeline's shards are named after it: the others hold none of its samples
        for raw in shards.iter_raw(shards.shard_urls(dataset, [name])):
            sample = shards.decode_sample(raw)
            if source in (None, pipeline, sample.source):
                yield pipeline, sample


def gallery(dataset: str, limit: int = 100, source: str | None = None, report_href: str | None = None) -> str:
    body = [sample_html(s, pipeline) for pipeline, s in islice(pipeline_samples(dataset, source), limit)]
    title = html.escape(f"{dataset} — {len(body)} samples")
    link = f'<p><a href="{html.escape(report_href)}">data-quality report</a></p>' if report_href else ""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{CSS}</style>"
            f"</head><body><h1>{title}</h1>{link}{''.join(body)}</body></html>")


def report_href(dataset: str, out: str) -> str | None:
    """The dataset's ``report.html`` (written at the end of a pipeline run) relative to the gallery file, if any."""
    report = os.path.join(dataset, REPORT_FILE)
    if "://" in dataset or not os.path.exists(report):
        return None
    return os.path.relpath(report, os.path.dirname(os.path.abspath(out)))


def main(dataset: str, out: str, limit: int, source: str | None) -> int:
    page = gallery(dataset, limit, source, report_href(dataset, out))
    with open(out, "w", encoding="utf-8") as f:
        f.write(page)
    print(f"wrote {out} ({len(page) / 1e6:.1f} MB)")
    return 0
