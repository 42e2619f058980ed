"""Writes an output folder the way img2dataset 1.x does (``img2dataset/writer.py`` and ``downloader.py``), for the
tests of the ``urls`` source reading it: the same file names, keys, fields and types.

- shard ``NNNNN`` (``oom_shard_count`` = 5 digits); key ``shard * 10**oom_sample_per_shard + row``, zero-padded to
  ``oom_sample_per_shard + 5`` digits, ``oom_sample_per_shard = ceil(log10(number_sample_per_shard))``;
- metadata per row: the input columns (``url``, ``caption``, ``save_additional_columns``), then ``key``,
  ``status``, ``error_message``, ``width``, ``height``, ``original_width``, ``original_height``, ``exif``,
  ``sha256``; rows are written in the order downloads finish (``imap_unordered``), not in row order;
- webdataset: ``NNNNN.tar`` with ``<key>.jpg``, ``<key>.txt``, ``<key>.json`` (``json.dumps(meta, indent=4)``)
  for the stored rows, ``NNNNN.parquet`` with the metadata of every row, ``NNNNN_stats.json``;
- files: ``NNNNN/<key>.jpg|.txt|.json`` and ``NNNNN.parquet``;
- parquet: ``NNNNN.parquet`` with the metadata columns plus a binary ``jpg`` column (null when not stored); its
  ``txt`` is dropped by img2dataset's buffered writer (not in the schema), so the caption is the ``caption`` column.
  The buffered writer writes a table every 100 rows: row groups of 100.
"""

from __future__ import annotations

import hashlib
import json
import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds

BUFFER = 100  # img2dataset's BufferedParquetWriter buffer_size


def _schema(extra: list[str]) -> pa.Schema:
    fields = [pa.field("url", pa.string()), pa.field("caption", pa.string())]
    fields += [pa.field(c, pa.string()) for c in extra]
    fields += [pa.field("key", pa.string()), pa.field("status", pa.string()), pa.field("error_message", pa.string())]
    fields += [pa.field(c, pa.int32()) for c in ("width", "height", "original_width", "original_height")]
    return pa.schema(fields + [pa.field("exif", pa.string()), pa.field("sha256", pa.string())])


def _parquet(path: str, schema: pa.Schema, rows: list[dict]) -> None:
    with pq.ParquetWriter(path, schema) as w:
        for i in range(0, len(rows), BUFFER):
            w.write_table(pa.Table.from_pylist(rows[i:i + BUFFER], schema))


def write(folder: str, rows: list[dict], output_format: str, number_sample_per_shard: int = 10000,
          extra: tuple[str, ...] = (), seed: int = 0) -> list[dict]:
    """``rows``: ``url``, ``caption``, ``extra`` columns and either ``jpg`` (the bytes img2dataset stored, with
    ``size`` = (width, height)) or ``error`` (a failed row). Returns the metadata written, in row order."""
    os.makedirs(folder, exist_ok=True)
    oom_sample = math.ceil(math.log10(number_sample_per_shard))
    schema = _schema(list(extra))
    written = []
    order = np.random.default_rng(seed)
    for shard in range(math.ceil(len(rows) / number_sample_per_shard)):
        name = f"{shard:05d}"
        part = rows[shard * number_sample_per_shard:(shard + 1) * number_sample_per_shard]
        metas = []
        for i, row in enumerate(part):
            ok = "jpg" in row
            w, h = row["size"] if ok else (None, None)
            metas.append({"url": row["url"], "caption": row["caption"], **{c: row[c] for c in extra},
                          "key": f"{10 ** oom_sample * shard + i:0{oom_sample + 5}d}",
                          "status": "success" if ok else row["status"], "error_message": None if ok else row["error"],
                          "width": w, "height": h, "original_width": w, "original_height": h,
                          "exif": "{}" if ok else None,
                          "sha256": hashlib.sha256(row["jpg"]).hexdigest() if ok else None})
        written += metas
        done = [int(i) for i in order.permutation(len(part))]  # the order downloads finished in
        stored = [i for i in done if "jpg" in part[i]]
        with open(f"{folder}/{name}_stats.json", "w") as f:
            json.dump({"count": len(part), "successes": len(stored), "failed_to_download": len(part) - len(stored)},
                      f, indent=4)
        if output_format == "parquet":
            _parquet(f"{folder}/{name}.parquet", schema.append(pa.field("jpg", pa.binary())),
                     [{**metas[i], "jpg": part[i].get("jpg")} for i in done])
            continue
        _parquet(f"{folder}/{name}.parquet", schema, [metas[i] for i in done])
        if output_format == "webdataset":
            with wds.TarWriter(f"{folder}/{name}.tar") as tar:
                for i in stored:
                    tar.write({"__key__": metas[i]["key"], "jpg": part[i]["jpg"], "txt": part[i]["caption"] or "",
                               "json": json.dumps(metas[i], indent=4)})
        else:
            os.makedirs(f"{folder}/{name}", exist_ok=True)
            for i in stored:
                base = f"{folder}/{name}/{metas[i]['key']}"
                with open(f"{base}.jpg", "wb") as f:
                    f.write(part[i]["jpg"])
                with open(f"{base}.txt", "w") as f:
                    f.write(part[i]["caption"] or "")
                with open(f"{base}.json", "w") as f:
                    f.write(json.dumps(metas[i], indent=4))
    return written
