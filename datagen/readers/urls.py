"""URL lists (img2dataset / LAION style: ``url, caption`` in parquet, CSV/TSV or JSONL) → router samples.

One unit per row; or one unit per image of an img2dataset output folder (``datagen.readers.img2dataset``), read
instead of fetched, with the same sample key as its URL would have in a list. ``Download`` fetches a batch of rows
at once on a thread pool (``datagen.readers.download``); then the labeling chain shared with the video source
finds people (``labeling.DetectSubjects`` for the ``phrases``, Grounding DINO; ``labeling.SegmentSubjects``, SAM
from the boxes), and ``router_data`` keeps images with 2–N people after the B.1 filters: ``select_boxes`` before
SAM (masks only for images that can survive), ``persons`` after it. Captions: the row's caption (alt text) unless a captioner re-captions the kept images.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa

from datagen import files
from datagen.labeling import router_data
from datagen.labeling.detection import DetectionParams
from datagen.readers.download import DownloadParams, Fetcher, decode_image, fetch_image
from datagen.readers.img2dataset import StoredImages
from datagen.labeling.router_data import RouterRules
from datagen.labeling.segmentation import SegmentationParams
from datagen.shards import Frame, Sample, stable_key
from datagen.units import BadInput, Item, Outcome, Rejected, Unit

DOWNLOAD = "download"  # stage name of ``Download`` (it records per-item outcomes itself)


class PersonParams(RouterRules):
    phrases: list[str] = ["person"]  # what the detector is asked for; each found instance is a subject
    detection: DetectionParams = DetectionParams()
    segmentation: SegmentationParams = SegmentationParams()


def read_rows(path: str) -> tuple[list[str], list[dict]]:
    """A URL list's column names and rows: ``.parquet``, ``.csv``, ``.tsv``, ``.jsonl``/``.json`` (one object per
    line). JSON lines are parsed one by one (Arrow's reader refuses a whole file whose column changes type on one
    row: that row is quarantined by ``list_units`` instead)."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    ext = path.rsplit(".", 1)[-1].lower()
    with files.open_url(path, "rb") as f:
        if ext == "parquet":
            table = pq.read_table(f)
        elif ext in ("csv", "tsv"):
            table = pcsv.read_csv(f, parse_options=pcsv.ParseOptions(delimiter="\t" if ext == "tsv" else ","))
            # CSV has no types: a caption "2024" is text (Arrow's inference would make the column a number)
            table = table.cast(pa.schema([(n, pa.string()) for n in table.column_names]))
        elif ext in ("jsonl", "json"):
            rows = [json.loads(line) for line in f if line.strip()]
            bad = next((n for n, r in enumerate(rows) if not isinstance(r, dict)), None)
            if bad is not None:
                raise ValueError(f"{path}: line {bad + 1} is not a JSON object")
            return list(dict.fromkeys(k for r in rows for k in r)), rows
        else:
            raise ValueError(f"{path}: URL lists are .parquet, .csv, .tsv or .jsonl")
    return table.column_names, table.to_pylist()


def list_id(path: str) -> str:
    """A list file's part of its unit ids: its name (readable) and a hash of its full path (unique: this month's
    and next month's ``part-0.parquet`` in two folders must not share unit ids)."""
    full = path if "://" in path else os.path.abspath(path)
    return f"{os.path.basename(path)}-{hashlib.sha1(full.encode()).hexdigest()[:10]}"


def list_units(path: str, url_col: str = "url", caption_col: str | None = "caption",
               keep_columns: tuple[str, ...] = ()) -> list[Unit]:
    """One unit per row (id ``urls:<list_id(path)>:<row>``); a URL seen on an earlier row is marked a duplicate,
    so the first stage rejects it with a reason instead of writing the same key twice."""
    columns, rows = read_rows(path)
    wanted = [url_col, *([caption_col] if caption_col else []), *keep_columns]
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise ValueError(f"{path}: no column {missing} (columns: {columns})")
    rows = [{c: r.get(c) for c in wanted} for r in rows]
    dataset, name = os.path.basename(path), list_id(path)
    first: dict[str, str] = {}
    units = []
    for i, row in enumerate(rows):
        uid = f"urls:{name}:{i}"
        if not isinstance(row[url_col], (str, type(None))):  # a number, a list: this row is quarantined
            units.append(Unit.unusable(uid, BadInput("bad_url", f"{path} row {i}: {url_col} is {row[url_col]!r}, "
                                                                f"not a string")))
            continue
        if caption_col and not isinstance(row[caption_col], (str, type(None))):  # the index's caption is a string
            units.append(Unit.unusable(uid, BadInput("bad_caption", f"{path} row {i}: {caption_col} is "
                                                                    f"{row[caption_col]!r}, not a string")))
            continue
        url = (row[url_col] or "").strip()
        ref = {"dataset": dataset, "row": i, "url": url, "caption": row[caption_col] if caption_col else None,
               "extra": {c: row[c] for c in keep_columns}, "duplicate_of": first.get(url) if url else None}
        first.setdefault(url, uid)
        units.append(Unit(uid, ref))
    return units


class Download:
    """Batch stage: the batch's rows downloaded concurrently (img2dataset's thread pool per shard), each item
    ending with its image in a one-frame sample or with the precise reason it failed."""

    def __init__(self, p: DownloadParams, phrases: list[str]):
        self.fetcher = Fetcher(p)
        self.stored = StoredImages()  # units listed from an img2dataset output: read, never fetched again
        self.pool = ThreadPoolExecutor(p.threads, thread_name_prefix="download")
        self.phrases = list(phrases)

    def __call__(self, items: list[Item]) -> list[Item]:
        return list(self.pool.map(self._one, items))

    def _one(self, item: Item) -> Item:
        try:
            self._load(item)
        except Rejected as e:
            item.outcome = Outcome("filtered", DOWNLOAD, e.reason, e.detail)
        except BadInput as e:
            item.outcome = Outcome("failed", DOWNLOAD, e.reason, e.detail)
        return item

    def _load(self, item: Item) -> None:
        ref = item.unit.ref
        if ref["duplicate_of"]:
            raise Rejected("duplicate_url", f"{ref['url']} is also unit {ref['duplicate_of']}")
        if not ref["url"]:
            raise BadInput("bad_url", "empty URL")
        if "stored" in ref:
            name = f"{ref['dataset']}:{ref['row']} ({ref['url']})"
            image, (w, h) = decode_image(self.stored.read(ref["stored"], name), name, self.fetcher.p)
        else:
            image, (w, h) = fetch_image(self.fetcher, ref["url"])
        provenance = {"url": ref["url"], "dataset": ref["dataset"], "row": ref["row"], "alt_text": ref["caption"],
                      "original_size": [w, h], **ref["extra"]}
        item.samples = [Sample(key=stable_key("url", ref["url"]), source="router",
                               frames=[Frame(image, ref["caption"] or "")], provenance=provenance)]
        item.scratch["phrases"] = [self.phrases]  # what labeling.DetectSubjects asks for, per frame


def select_boxes(item: Item, rules: PersonParams) -> Item:
    """B.1 box rules and the 2–N rule on the detections, before SAM runs."""
    frame = item.samples[0].frames[0]
    [found] = item.scratch["instances"]
    item.scratch["instances"] = [router_data.select(item, "select_boxes", found, frame.width, frame.height, rules)]
    return item


def persons(item: Item, rules: PersonParams, models: dict[str, Any]) -> Item:
    """Mask rule and 2–N rule again on SAM's masks; the survivors become the sample's subjects."""
    draft = item.samples[0]
    frame = draft.frames[0]
    [found] = item.scratch.pop("instances")
    kept = router_data.select(item, "persons", found, frame.width, frame.height, rules)
    text = frame.caption or router_data.caption([x.phrase for x in kept])
    sample = router_data.sample(draft.key, frame.image, text, kept, draft.provenance, models, exact=False,
                                ignore=item.scratch.get("ignore"))
    sample.scores = {"det": min(s.det_score for s in sample.subjects)}
    item.samples = [sample]
    item.scratch.clear()
    return item
