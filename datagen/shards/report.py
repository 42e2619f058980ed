"""``python -m datagen.shards report DIR --out report.html``: a self-contained data-quality report with plots.

What it shows, per source: the kept/filtered/failed funnel (manifest) with its reasons (quarantine), subjects per
sample, subject area, frames per sample, caption length, identity against change of the samples' pairs, frame
sizes, thumbnails of the most copy-paste-like and the least identical pairs, and the Objaverse cameras drawn in 3D.

Bounded memory at any index size: ``index.parquet`` is scanned column by column in batches of ``BATCH_ROWS`` into
fixed-size accumulators (histograms, a ``SCATTER_POINTS`` reservoir per source, top-k lists), and only the few shards
holding the chosen thumbnails and cameras are read (at most ``2 * THUMBS + CAMERA_OBJECTS`` shards). The pair columns
(``n_pairs``, ``pair_identity_min``, ``pair_change_min``) are optional: an index written before them reads as
having no pairs.

Plots are matplotlib SVG inlined in the page, not a JavaScript charting library: the page must open offline and
from an archive without a CDN, render in a headless screenshot without running scripts, and stay small (a plotting
library inlined would add megabytes to every report); matplotlib is already installed (pycocotools needs it). Text
in the plots comes from the data (reasons, phrases), so it is drawn as glyph paths (no markup, no mathtext).
"""

from __future__ import annotations

import html
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from datagen import shards
from datagen.shards.gallery import REPORT_FILE, data_uri, overlay  # noqa: F401 (REPORT_FILE: its place in a dataset)

BATCH_ROWS = 262_144  # index rows per scanned batch: ~30 MB of columns, whatever the index's size
SCATTER_POINTS = 2000  # identity/change points drawn per source (a uniform reservoir sample)
THUMBS = 6  # pairs shown per thumbnail section
CAMERA_OBJECTS = 3  # Objaverse samples whose cameras are drawn
MAX_COUNT = 16  # subjects / frames / pairs per sample: larger values share the last bar
WORDS_MAX = 80  # caption length histogram: words, the last bin holds longer captions
SIZE_BIN = 64  # frame size bubbles: pixels per bin side
SIZE_MAX = 4096
AREA_BINS = np.linspace(0, 1, 41)
PAIR_COLUMNS = {"n_pairs": pa.int32(), "pair_identity_min": pa.float64(), "pair_change_min": pa.float64()}
COLUMNS = ("key", "shard", "source", "n_frames", "n_subjects", "width", "height", "caption", "subject_area_min",
           "subject_area_max", *PAIR_COLUMNS)


class ReportError(ValueError):
    """The dataset has no index to report on."""


def index_dataset(dataset: str) -> pads.Dataset:
    """``index.parquet`` (a folder since v2, one file in v1) with the pair columns added where files lack them."""
    fs, path = fsspec.core.url_to_fs(shards.join(dataset, shards.INDEX_FILE))
    if not fs.exists(path):
        raise ReportError(f"{dataset}: no {shards.INDEX_FILE}")
    schema = shards.INDEX_SCHEMA
    for name, kind in PAIR_COLUMNS.items():
        if name not in schema.names:
            schema = schema.append(pa.field(name, kind))
    return pads.dataset(path, schema=schema, format="parquet", filesystem=fs)


@dataclass
class TopK:
    """The ``k`` rows with the smallest ``order`` values seen so far (one sort of k + batch rows per batch)."""

    k: int
    rows: list[tuple[float, float, str, str, str]] = field(default_factory=list)  # (order, tie, key, shard, source)

    def offer(self, order: np.ndarray, tie: np.ndarray, key: pa.Array, shard: pa.Array, source: pa.Array) -> None:
        valid = ~np.isnan(order)
        if not valid.any():
            return
        idx = np.flatnonzero(valid)
        best = idx[np.lexsort((tie[idx], order[idx]))[:self.k]]
        take = pa.array(best)
        new = zip(order[best], tie[best], key.take(take).to_pylist(), shard.take(take).to_pylist(),
                  source.take(take).to_pylist())
        self.rows = sorted([*self.rows, *new], key=lambda r: (r[0], r[1]))[:self.k]


@dataclass
class SourceSummary:
    """Fixed-size accumulators of one source's index rows."""

    samples: int = 0
    subjects: np.ndarray = field(default_factory=lambda: np.zeros(MAX_COUNT + 1, np.int64))
    frames: np.ndarray = field(default_factory=lambda: np.zeros(MAX_COUNT + 1, np.int64))
    pairs: np.ndarray = field(default_factory=lambda: np.zeros(MAX_COUNT + 1, np.int64))
    words: np.ndarray = field(default_factory=lambda: np.zeros(WORDS_MAX + 1, np.int64))
    area_min: np.ndarray = field(default_factory=lambda: np.zeros(len(AREA_BINS) - 1, np.int64))
    area_max: np.ndarray = field(default_factory=lambda: np.zeros(len(AREA_BINS) - 1, np.int64))
    sizes: np.ndarray = field(default_factory=lambda: np.zeros((SIZE_MAX // SIZE_BIN,) * 2, np.int64))
    with_pairs: int = 0
    # reservoir of (priority, identity, change): the SCATTER_POINTS smallest random priorities
    scatter: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))


def _counts(values: pa.Array, top: int) -> np.ndarray:
    v = np.clip(values.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64), 0, top)
    return np.bincount(v, minlength=top + 1)


def _floats(values: pa.Array) -> np.ndarray:
    return values.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)


@dataclass
class IndexSummary:
    sources: dict[str, SourceSummary] = field(default_factory=dict)
    copy_paste: TopK = field(default_factory=lambda: TopK(THUMBS))  # least change, then most identity
    least_identical: TopK = field(default_factory=lambda: TopK(THUMBS))
    objects: list[tuple[str, str]] = field(default_factory=list)  # (key, shard) of Objaverse samples
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))

    def add(self, batch: pa.RecordBatch) -> None:
        encoded = pc.dictionary_encode(batch["source"])
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        identity, change = _floats(batch["pair_identity_min"]), _floats(batch["pair_change_min"])
        for code, name in enumerate(encoded.dictionary.to_pylist()):
            rows = pa.array(np.flatnonzero(codes == code))
            part = batch.take(rows)
            self._add_source(self.sources.setdefault(name, SourceSummary()), part, identity[rows.to_numpy()],
                             change[rows.to_numpy()])
            if name == "objaverse" and len(self.objects) < CAMERA_OBJECTS:
                n = CAMERA_OBJECTS - len(self.objects)
                self.objects += list(zip(part["key"][:n].to_pylist(), part["shard"][:n].to_pylist()))
        self.copy_paste.offer(change, -identity, batch["key"], batch["shard"], batch["source"])
        self.least_identical.offer(identity, change, batch["key"], batch["shard"], batch["source"])

    def _add_source(self, s: SourceSummary, part: pa.RecordBatch, identity: np.ndarray, change: np.ndarray) -> None:
        s.samples += part.num_rows
        s.subjects += _counts(part["n_subjects"], MAX_COUNT)
        s.frames += _counts(part["n_frames"], MAX_COUNT)
        s.pairs += _counts(part["n_pairs"], MAX_COUNT)
        words = pc.list_value_length(pc.utf8_split_whitespace(part["caption"]))
        s.words += _counts(words, WORDS_MAX)
        for column, hist in (("subject_area_min", s.area_min), ("subject_area_max", s.area_max)):
            areas = _floats(part[column])
            hist += np.histogram(areas[~np.isnan(areas)], AREA_BINS)[0]
        w = np.clip(_floats(part["width"]) // SIZE_BIN, 0, s.sizes.shape[1] - 1).astype(np.int64)
        h = np.clip(_floats(part["height"]) // SIZE_BIN, 0, s.sizes.shape[0] - 1).astype(np.int64)
        np.add.at(s.sizes, (h, w), 1)
        have = ~np.isnan(identity) & ~np.isnan(change)
        s.with_pairs += int(have.sum())
        points = np.column_stack([self.rng.random(int(have.sum())), identity[have], change[have]])
        merged = np.concatenate([s.scatter, points])
        s.scatter = merged[np.argsort(merged[:, 0])[:SCATTER_POINTS]] if len(merged) > SCATTER_POINTS else merged


def summarize_index(dataset: str) -> IndexSummary:
    summary = IndexSummary()
    for batch in index_dataset(dataset).to_batches(columns=list(COLUMNS), batch_size=BATCH_ROWS):
        if batch.num_rows:
            summary.add(batch)
    return summary


def quarantine_reasons(dataset: str) -> dict[str, Counter]:
    """Source → Counter of ``stage/reason`` over the quarantine's rows (scanned in batches)."""
    fs, path = fsspec.core.url_to_fs(shards.join(dataset, shards.QUARANTINE_FILE))
    out: dict[str, Counter] = {}
    if not fs.exists(path):
        return out
    ds = pads.dataset(path, schema=shards.QUARANTINE_SCHEMA, format="parquet", filesystem=fs)
    for batch in ds.to_batches(columns=["source", "stage", "reason"], batch_size=BATCH_ROWS):
        table = pa.table({"source": batch["source"].fill_null("?"),
                          "why": pc.binary_join_element_wise(batch["stage"], batch["reason"], "/")})
        for row in table.group_by(["source", "why"]).aggregate([([], "count_all")]).to_pylist():
            out.setdefault(row["source"], Counter())[row["why"]] += row["count_all"]
    return out


# ------------------------------------------------------------------------------------------------ plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "path", "text.parse_math": False, "font.size": 9, "figure.dpi": 96})
    return plt


def svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})  # the same data, the same page
    _pyplot().close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def funnel_figure(manifest: dict[str, Any], reasons: dict[str, Counter]) -> str | None:
    plt = _pyplot()
    counts = {name: sec.get("counts", {}) for name, sec in manifest.get("sources", {}).items()}
    if not counts and not reasons:
        return None
    names = sorted(counts) or sorted(reasons)
    fig, (bars, why) = plt.subplots(1, 2, figsize=(11, 0.6 * len(names) + 2.2), width_ratios=(1, 1.4),
                                    layout="constrained")
    left = np.zeros(len(names))
    for status, colour in (("units_kept", "#3a923a"), ("units_filtered", "#e0a030"), ("units_failed", "#c03030")):
        v = np.array([counts.get(n, {}).get(status, 0) for n in names], float)
        bars.barh(names, v, left=left, color=colour, label=status.removeprefix("units_"))
        left += v
    bars.set_xlabel("units")
    bars.set_title("units kept / filtered / failed (manifest)")
    bars.legend(loc="lower right")
    top = [(f"{src}: {why_}", n) for src in sorted(reasons) for why_, n in reasons[src].most_common(8)]
    if top:
        why.barh([t for t, _ in top][::-1], [n for _, n in top][::-1], color="#e0a030")
    why.set_title("quarantined units by source: stage/reason (quarantine)")
    why.set_xlabel("units")
    return svg(fig)


def bars_figure(summary: IndexSummary, attr: str, title: str, xlabel: str, top: int) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.4, 3))
    names = sorted(summary.sources)
    width = 0.8 / max(len(names), 1)
    for n, name in enumerate(names):
        v = getattr(summary.sources[name], attr)
        frac = v / max(v.sum(), 1)
        ax.bar(np.arange(len(v)) + n * width - 0.4 + width / 2, frac, width, label=name)
    ax.set_xticks(range(0, top + 1, max(1, top // 8)))
    ax.set_xlabel(xlabel + f" (last bar: ≥ {top})")
    ax.set_ylabel("fraction of samples")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return svg(fig)


def lines_figure(summary: IndexSummary, title: str, xlabel: str, x: np.ndarray,
                 series: list[tuple[str, str, str]], drawstyle: str = "default") -> str:
    """Per source, one line per (accumulator, label suffix, line style) as fractions of its samples, one colour."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.4, 3))
    for name in sorted(summary.sources):
        colour = None
        for attr, suffix, style in series:
            v = getattr(summary.sources[name], attr)
            colour = ax.plot(x, v / max(v.sum(), 1), ls=style, color=colour, drawstyle=drawstyle,
                             label=name + suffix)[0].get_color()
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of samples")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return svg(fig)


def sizes_figure(summary: IndexSummary) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.4, 4))
    peak = max((s.sizes.max() for s in summary.sources.values()), default=1) or 1
    for name in sorted(summary.sources):
        hs, ws = np.nonzero(summary.sources[name].sizes)
        n = summary.sources[name].sizes[hs, ws]
        ax.scatter((ws + 0.5) * SIZE_BIN, (hs + 0.5) * SIZE_BIN, s=8 + 400 * np.sqrt(n / peak), alpha=0.5,
                   label=name)
    ax.set_xlabel(f"width (px, {SIZE_BIN}-px bins)")
    ax.set_ylabel("height (px)")
    ax.set_title("stored frame sizes (frame 0; area ∝ samples)")
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(fontsize=7)
    return svg(fig)


def pairs_figure(summary: IndexSummary) -> str | None:
    plt = _pyplot()
    names = [n for n in sorted(summary.sources) if summary.sources[n].with_pairs]
    if not names:
        return None
    fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names) + 0.6, 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        s = summary.sources[name]
        ax.scatter(s.scatter[:, 2], s.scatter[:, 1], s=4 if len(s.scatter) > 200 else 12, alpha=0.5)
        ax.set_xlim(-0.02, 1.02)
        ax.set_xlabel("least change of a pair (pair_change_min)")
        ax.set_ylabel("least identity (pair_identity_min)")
        ax.set_title(f"{name}: {len(s.scatter)} of {s.with_pairs} samples")
    return svg(fig)


def cameras_figure(objects: list[tuple[str, dict[str, Any]]]) -> str | None:
    """Camera centres and viewing directions (OpenCV camera-to-world poses) around the unit cube, per object."""
    poses = [(key, [np.asarray(f["view"]["pose"], float) for f in meta["frames"] if "view" in f])
             for key, meta in objects]
    poses = [(k, p) for k, p in poses if p]
    if not poses:
        return None
    plt = _pyplot()
    fig = plt.figure(figsize=(3.6 * len(poses), 3.6))
    corners = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
    edges = [(a, b) for a in range(8) for b in range(a + 1, 8) if np.abs(corners[a] - corners[b]).sum() == 1]
    for n, (key, views) in enumerate(poses):
        ax = fig.add_subplot(1, len(poses), n + 1, projection="3d")
        for a, b in edges:
            ax.plot(*zip(corners[a], corners[b]), color="#888", lw=0.6)
        centres = np.array([p[:3, 3] for p in views])
        forward = np.array([p[:3, 2] for p in views]) * 0.4  # OpenCV: the camera looks along +z
        ax.quiver(*centres.T, *forward.T, color="#c03030")
        ax.scatter(*centres.T, color="#c03030", s=12)
        for j, c in enumerate(centres):
            ax.text(*c, str(j), fontsize=7)
        ax.set_title(key[:28], fontsize=7)
        lim = np.abs(centres).max() * 1.05
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), zlim=(-lim, lim), xlabel="x", ylabel="y", zlabel="z")
    return svg(fig)


# -------------------------------------------------------------------------------------- shard samples


def read_samples(dataset: str, wanted: list[tuple[str, str]]) -> dict[str, tuple[shards.Sample, dict[str, Any]]]:
    """key → (sample, meta) for the wanted (key, shard) pairs: each named shard read until its keys are found;
    a missing or broken shard leaves its keys out."""
    by_shard: dict[str, set[str]] = {}
    for key, shard in wanted:
        by_shard.setdefault(shard, set()).add(key)
    found: dict[str, tuple[shards.Sample, dict[str, Any]]] = {}
    for shard, keys in by_shard.items():
        try:
            for raw in shards.iter_raw(shards.shard_urls(dataset, [shard])):
                if raw["__key__"] in keys:
                    found[raw["__key__"]] = (shards.decode_sample(raw), json.loads(raw["meta.json"]))
                    if keys <= found.keys():
                        break
        except Exception as e:  # noqa: BLE001 — a thumbnail lost to a broken shard is noted, not fatal
            print(f"report: shard {shard} unreadable for thumbnails: {type(e).__name__}: {e}")
    return found


def pick_pair(meta: dict[str, Any], sample: shards.Sample, by: str) -> tuple[int, int, int, dict[str, Any]]:
    """(subject id, frame a, frame b, measures) of the sample's pair with the lowest ``by`` (``change_score`` or
    ``identity``); without stored pairs, the first subject seen in two frames."""
    pairs = [p for p in meta.get("pairs") or [] if p.get(by) is not None]
    if pairs:
        p = min(pairs, key=lambda q: q[by])
        return int(p["subject"]), int(p["frames"][0]), int(p["frames"][1]), p
    for s in sample.subjects:
        if len(s.masks) >= 2:
            a, b = sorted(s.masks)[:2]
            return s.id, a, b, {}
    return (sample.subjects[0].id if sample.subjects else -1), 0, min(1, len(sample.frames) - 1), {}


def thumbs_html(rows: list[tuple], found: dict[str, tuple[shards.Sample, dict[str, Any]]], by: str) -> str:
    esc = html.escape
    cards = []
    for order, _, key, shard, source in rows:
        if key not in found:
            cards.append(f'<div class="pair"><div class="key">{esc(key)} ({esc(shard)}): not readable</div></div>')
            continue
        sample, meta = found[key]
        sid, a, b, measures = pick_pair(meta, sample, by)
        subject = [s for s in sample.subjects if s.id == sid]
        images = "".join(f'<img alt="frame {j}" src="{data_uri(overlay(sample.frames[j], subject, j))}">'
                          for j in dict.fromkeys((a, b)))
        values = ", ".join(f"{k} {v:.3f}" for k, v in measures.items() if isinstance(v, (int, float))
                           and k not in ("subject",))
        phrase = subject[0].phrase if subject else ""
        cards.append(f'<div class="pair"><div class="imgs">{images}</div><div class="key">{esc(key)} · '
                     f"{esc(source)} · subject {sid} “{esc(phrase)}” · frames {a}, {b}</div>"
                     f'<div class="fields">{esc(values or f"index value {order:.3f}")}</div></div>')
    return f'<div class="pairs">{"".join(cards)}</div>' if cards else "<p>No sample has pair measures.</p>"


# ------------------------------------------------------------------------------------------------- page

CSS = """
body{font-family:system-ui,sans-serif;margin:16px;background:#fafafa;color:#222;max-width:1400px}
h1{font-size:20px} h2{font-size:16px;margin-top:26px;border-bottom:1px solid #ddd}
.grid{display:flex;flex-wrap:wrap;gap:10px} .grid>div,.wide{background:#fff;border:1px solid #ddd;border-radius:6px;padding:6px}
svg{max-width:100%;height:auto} table{border-collapse:collapse;font-size:13px} td,th{padding:2px 10px;text-align:right}
th:first-child,td:first-child{text-align:left} .pairs{display:flex;flex-wrap:wrap;gap:10px}
.pair{background:#fff;border:1px solid #ddd;border-radius:6px;padding:6px;max-width:560px}
.pair img{max-width:270px;max-height:270px;margin-right:4px;border-radius:4px}
.key{font-family:monospace;font-size:12px;color:#555} .fields{font-family:monospace;font-size:11px;color:#777}
.warn{background:#fde8c8;padding:6px;border-radius:4px}
"""


def _table(summary: IndexSummary) -> str:
    rows = "".join(f"<tr><td>{html.escape(n)}</td><td>{s.samples:,}</td><td>{s.with_pairs:,}</td>"
                   f"<td>{(s.frames * np.arange(len(s.frames))).sum() / max(s.samples, 1):.2f}</td>"
                   f"<td>{(s.subjects * np.arange(len(s.subjects))).sum() / max(s.samples, 1):.2f}</td></tr>"
                   for n, s in sorted(summary.sources.items()))
    return ("<table><tr><th>source</th><th>samples</th><th>with pair measures</th><th>frames / sample</th>"
            f"<th>subjects / sample</th></tr>{rows}</table>")


def report(dataset: str) -> str:
    """The report page of ``dataset`` (HTML, self-contained)."""
    summary = summarize_index(dataset)
    try:
        manifest = shards.read_manifest(dataset)
    except FileNotFoundError:
        manifest = {}
    reasons = quarantine_reasons(dataset)
    wanted = [(r[2], r[3]) for r in summary.copy_paste.rows + summary.least_identical.rows] + summary.objects
    found = read_samples(dataset, wanted)
    cameras = [(key, found[key][1]) for key, _ in summary.objects if key in found]
    total = sum(s.samples for s in summary.sources.values())
    esc = html.escape
    warn = ('<p class="warn">Labels from tiny random models (manifest: synthetic_models): not data to train on.</p>'
            if manifest.get("synthetic_models") else "")
    sections = [f"<h1>{esc(dataset)}: {total:,} samples</h1>{warn}{_table(summary)}"]
    funnel = funnel_figure(manifest, reasons)
    sections.append("<h2>Funnel</h2>" + (f'<div class="wide">{funnel}</div>' if funnel else "<p>No counts.</p>"))
    if summary.sources:
        sections.append('<h2>Distributions</h2><div class="grid">' + "".join(f"<div>{f}</div>" for f in (
            bars_figure(summary, "subjects", "subjects per sample", "subjects", MAX_COUNT),
            lines_figure(summary, "subject area", "subject mask area / frame area (smallest and largest subject "
                         "of a sample)", (AREA_BINS[:-1] + AREA_BINS[1:]) / 2,
                         [("area_max", " largest", "-"), ("area_min", " smallest", "--")]),
            bars_figure(summary, "frames", "frames per sample", "frames", MAX_COUNT),
            lines_figure(summary, "caption length", f"caption words (frame 0; last bin ≥ {WORDS_MAX})",
                         np.arange(WORDS_MAX + 1), [("words", "", "-")], "steps-mid"),
            sizes_figure(summary),
        )) + "</div>")
    pairs = pairs_figure(summary)
    sections.append("<h2>Pairs: identity against change</h2>" + (
        f'<div class="wide">{pairs}</div>' if pairs else
        "<p>No pair measures in this index (written before them, or no sample has a pair).</p>"))
    sections.append("<h2>Most copy-paste-like pairs (least change)</h2>"
                    + thumbs_html(summary.copy_paste.rows, found, "change_score"))
    sections.append("<h2>Least identical pairs</h2>" + thumbs_html(summary.least_identical.rows, found, "identity"))
    if summary.objects:
        cams = cameras_figure(cameras)
        sections.append("<h2>Objaverse cameras (OpenCV camera-to-world; unit cube = the object)</h2>"
                        + (f'<div class="wide">{cams}</div>' if cams else "<p>No camera could be read.</p>"))
    title = esc(f"{dataset}: data-quality report")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{CSS}</style></head>"
            f"<body>{''.join(sections)}</body></html>")


def write_report(dataset: str, out: str) -> int:
    """Write the report to ``out`` (a local path or fsspec URL); returns its size in bytes."""
    page = report(dataset)
    with shards.atomic_open(out, "w") as f:
        f.write(page)
    return len(page.encode())


def main(dataset: str, out: str) -> int:
    try:
        size = write_report(dataset, out)
    except ReportError as e:
        print(f"error: {e}")
        return 2
    print(f"wrote {out} ({size / 1e6:.1f} MB)")
    return 0
