"""``python -m datagen.shards export-hf DATASET OUT``: a shard dataset as parquet files that the Hugging Face
``datasets`` library loads as they are (``load_dataset("parquet", data_files=...)``, streaming too).

Why not the shards themselves: ``datasets``' webdataset builder needs every sample of a tar to hold the same
member names, and ours hold as many ``frame.<j>.jpg`` and ``mask.<j>.<i>.png`` as the sample has frames and
subjects. One row a sample instead: the index columns, ``frames`` (a list of images), ``masks`` (a list of
``{frame, subject, mask}``), ``meta`` (the sample's ``meta.json`` as a string). The image bytes are copied as
they are in the tars (no decode, no re-encode).

One output file per shard, ``OUT/data/<shard stem>.parquet``, written under a temporary name and renamed when
whole: a rerun skips the finished ones, so an export killed midway continues where it stopped; a file whose
shard changed size since (deleted and redone by a pipeline run) is exported again, one whose shard is gone is
removed. The export holds the dataset's index and at most one row group of samples (``row_group_bytes``).
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator

import datasets
import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import webdataset as wds
from datasets.arrow_writer import get_parquet_column_options
from datasets.utils.py_utils import convert_file_size_to_int

from datagen import shards
from datagen.shards.card import export_card, write_card

DATA_DIR = "data"
# The datasets library's bound on a parquet row group (100 MB: the Hub's viewer reads one row group at a time);
# it also bounds the samples the export holds at once (plus one sample: a bigger sample is a group of its own).
ROW_GROUP_BYTES = convert_file_size_to_int(datasets.config.MAX_ROW_GROUP_SIZE)
EXPORT_METADATA = b"anystory"  # parquet key-value metadata of an exported file: its shard, shard size, licences

FEATURES = datasets.Features({
    **datasets.Features.from_arrow_schema(shards.INDEX_SCHEMA),
    "frames": datasets.List(datasets.Image()),
    "masks": datasets.List({"frame": datasets.Value("int32"), "subject": datasets.Value("int32"),
                            "mask": datasets.Image()}),
    "meta": datasets.Value("string"),
})


@dataclass
class ExportedFile:
    """What the card needs of one exported file, read from its parquet footer."""

    name: str
    rows: int
    bytes: int
    shard_bytes: int
    licenses: dict[str, int]


def export_name(shard: str) -> str:
    return shard.removesuffix(".tar") + ".parquet"


def export_row(raw: dict[str, Any], meta: dict[str, Any], index_row: dict[str, Any]) -> dict[str, Any]:
    """A raw WebDataset sample (bytes values), its parsed ``meta.json`` and its index row → a row of ``FEATURES``."""
    frames = [{"bytes": raw[f"frame.{j}.jpg"], "path": None} for j in range(len(meta["frames"]))]
    masks = [{"frame": j, "subject": s["id"], "mask": {"bytes": raw[name], "path": None}}
             for j in range(len(frames)) for s in meta["subjects"]
             if (name := f"mask.{j}.{s['id']}.png") in raw]
    return FEATURES.encode_example({**index_row, "frames": frames, "masks": masks,
                                    "meta": raw["meta.json"].decode("utf-8")})


def sample_bytes(raw: dict[str, Any]) -> int:
    return sum(len(v) for k, v in raw.items() if isinstance(v, bytes))


def sample_license(meta: dict[str, Any]) -> str:
    value = (meta.get("provenance") or {}).get("license")
    return value if isinstance(value, str) and value else "unknown"


def iter_tar(url: str) -> Iterator[dict[str, Any]]:
    """Raw samples of one shard at any fsspec URL, streamed (webdataset's own opener knows no memory://, s3fs
    options, ...; its tar grouping is reused)."""
    with fsspec.open(url, "rb") as f:
        yield from wds.tariterators.group_by_keys(wds.tariterators.tar_file_expander([{"stream": f, "url": url}]))


def export_shard(dataset: str, shard: str, index: pa.Table, out_url: str, shard_bytes: int,
                 row_group_bytes: int = ROW_GROUP_BYTES) -> ExportedFile:
    """Write one shard's samples as one parquet file, holding at most a row group of ``row_group_bytes``."""
    rows_by_key = {r["key"]: r for r in index.to_pylist()}
    licenses: Counter = Counter()
    n = 0
    schema = FEATURES.arrow_schema
    with shards.atomic_open(out_url) as f, pq.ParquetWriter(
        f, schema,
        # as datasets' own parquet writer: image bytes stored plain (JPEG/PNG do not compress), chunks cut by
        # content (a changed file re-uploads only its changed chunks to the Hub's Xet storage), a page index
        use_content_defined_chunking=datasets.config.DEFAULT_CDC_OPTIONS, write_page_index=True,
        **get_parquet_column_options(FEATURES, schema),
    ) as writer:
        group: list[dict[str, Any]] = []
        group_bytes = 0
        for raw in iter_tar(shards.join(dataset, shards.SHARDS_DIR, shard)):
            row = rows_by_key.pop(raw["__key__"], None)
            if row is None:
                raise shards.FormatError(f"{shard}: sample {raw['__key__']} is not in the index (run validate)")
            size = sample_bytes(raw)
            if group and group_bytes + size > row_group_bytes:
                writer.write_table(pa.Table.from_pylist(group, schema=schema))
                n, group, group_bytes = n + len(group), [], 0
            meta = json.loads(raw["meta.json"])
            group.append(export_row(raw, meta, row))
            group_bytes += size
            licenses[sample_license(meta)] += 1
        if group:
            writer.write_table(pa.Table.from_pylist(group, schema=schema))
            n += len(group)
        if rows_by_key:
            raise shards.FormatError(f"{shard}: the index lists {len(rows_by_key)} samples the tar lacks, e.g. "
                                     f"{next(iter(rows_by_key))} (run validate)")
        writer.add_key_value_metadata({EXPORT_METADATA: json.dumps(
            {"shard": shard, "shard_bytes": shard_bytes, "licenses": dict(sorted(licenses.items()))})})
    fs, path = fsspec.core.url_to_fs(out_url)
    return ExportedFile(export_name(shard), n, fs.size(path), shard_bytes, dict(licenses))


def read_exported(out: str) -> dict[str, ExportedFile]:
    """The finished files of an export (footers only), by file name."""
    fs, root = fsspec.core.url_to_fs(shards.join(out, DATA_DIR))
    if not fs.isdir(root):
        return {}
    found = {}
    for info in fs.ls(root, detail=True):
        name = info["name"].rstrip("/").rsplit("/", 1)[-1]
        if not name.endswith(".parquet") or name.startswith("."):
            continue
        with fs.open(info["name"], "rb") as f:
            meta = pq.read_metadata(f)
        mine = json.loads((meta.metadata or {}).get(EXPORT_METADATA, b"{}"))
        found[name] = ExportedFile(name, meta.num_rows, info["size"], mine.get("shard_bytes", -1),
                                   mine.get("licenses", {}))
    return found


def shard_sizes(dataset: str) -> dict[str, int]:
    fs, root = fsspec.core.url_to_fs(shards.join(dataset, shards.SHARDS_DIR))
    if not fs.isdir(root):
        return {}
    return {info["name"].rstrip("/").rsplit("/", 1)[-1]: info["size"] for info in fs.ls(root, detail=True)}


def shard_slices(index: pa.Table) -> dict[str, tuple[int, int]]:
    """Each shard's rows as (offset, length) in an index sorted by shard: one sort, no scan per shard."""
    counts = pc.value_counts(index["shard"])
    order = pc.sort_indices(counts.field("values"))
    names = counts.field("values").take(order).to_pylist()
    lengths = counts.field("counts").take(order).to_pylist()
    return {n: (o, k) for n, o, k in zip(names, itertools.accumulate([0, *lengths]), lengths)}


def export(dataset: str, out: str, row_group_bytes: int = ROW_GROUP_BYTES, log: Any = print) -> dict[str, ExportedFile]:
    """Export every shard the index names that ``out`` does not hold yet; returns every file of the export."""
    index = shards.read_table(dataset, shards.INDEX_FILE).sort_by([("shard", "ascending")])
    slices = shard_slices(index)
    names = sorted(slices)
    sizes = shard_sizes(dataset)
    missing = [s for s in names if s not in sizes]
    if missing:
        raise shards.FormatError(f"the index names shards that are not in {dataset}/shards: {missing[:3]}")
    done = read_exported(out)
    wanted = {export_name(s): s for s in names}
    fs, root = fsspec.core.url_to_fs(shards.join(out, DATA_DIR))
    for name in sorted(set(done) - set(wanted)):
        log(f"removing {name}: its shard is no longer in the dataset")
        fs.rm_file(f"{root}/{name}")
        del done[name]
    todo = [s for s in names if export_name(s) not in done or done[export_name(s)].shard_bytes != sizes[s]]
    log(f"{dataset}: {len(names)} shards, {len(names) - len(todo)} already exported, {len(todo)} to export")
    for i, s in enumerate(todo, 1):
        done[export_name(s)] = export_shard(dataset, s, index.slice(*slices[s]),
                                            shards.join(out, DATA_DIR, export_name(s)), sizes[s], row_group_bytes)
        log(f"  [{i}/{len(todo)}] {s} → {DATA_DIR}/{export_name(s)} ({done[export_name(s)].rows} samples)")
    return done


def main(dataset: str, out: str, row_group_bytes: int = ROW_GROUP_BYTES) -> int:
    """Export, then the export's card and a copy of the dataset's manifest (its provenance)."""
    if row_group_bytes < 1:
        print(f"export-hf: --row-group-bytes must be 1 or more, got {row_group_bytes}")
        return 2
    try:
        manifest = shards.read_manifest(dataset)
        for path in shards.remove_temporaries(out, [DATA_DIR]):  # one export per output: these are a killed export's
            print(f"removing {path}, left half-written by an export that was killed")
        files = export(dataset, out, row_group_bytes)
    except (FileNotFoundError, shards.FormatError) as e:
        print(f"export-hf: {dataset}: {type(e).__name__}: {e}")
        return 2
    shards.write_manifest(out, manifest)
    name = dataset.rstrip("/").rsplit("/", 1)[-1]
    write_card(out, export_card(manifest, [files[k] for k in sorted(files)], name, DATA_DIR, FEATURES))
    print(f"{out}: {sum(f.rows for f in files.values())} samples in {len(files)} files, "
          f"{sum(f.bytes for f in files.values()) / 1e6:,.1f} MB; card {out.rstrip('/')}/README.md")
    return 0
