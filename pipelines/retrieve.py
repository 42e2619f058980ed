"""``python -m pipelines retrieve --dataset DIR --out DIR2 [--config FILE] [--models auto|real|tiny]``

Cross-context pairs by retrieval over a finished dataset (datagen/retrieval.py has the logic), in three steps:
1. embed: every shard of DIR → one parquet of its subjects' embeddings under ``DIR2/_retrieval/embeddings/``
   (a Ray actor pool of the matcher's embedder; a shard whose file exists is skipped, so a rerun embeds only new
   or unfinished shards);
2. pairs: an ANN index over the embeddings, candidates from other units with agreeing phrases, verified
   (``DIR2/_retrieval/pairs.parquet``); a rerun keeps the pairs found before and queries only the subjects of
   shards embedded since (a change of ``params`` pairs everything again);
3. write: each pair is a unit of the ``retrieval`` source, run by the pipelines' runner into DIR2 (shards
   ``retrieval-NNNNNN.tar``, index, ledger, quarantine, manifest: the same format, resumable like every source),
   which the trainer reads as another source (``{path: DIR2, source: retrieval}``).
Exit status as ``python -m pipelines``: 2 for a bad config or arguments, missing weights or an unusable output.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from functools import partial
from typing import Any

import numpy as np
import yaml
from pydantic import ValidationError

from datagen import models as registry
from datagen import retrieval, shards
from datagen.models import MissingModelError, Mode, RegistryConfig
from datagen.params import Params
from datagen.units import Item, Unit
from pipelines.config import ConfigError, PipelineConfig, RayConfig, WriterConfig
from pipelines.sources import frame_bytes
from pipelines.stages import Resources, Stage, TaskStage

WORK_DIR = "_retrieval"
SOURCE_NAME = "retrieval"
MAX_SIDE = 1536  # the sources' default stored long side (README "Frame size"): the bound of one frame
MAX_MASKS = 7  # the retrieved subject plus up to 3 others in each frame (sources keep at most 4 subjects)


class RetrieveConfig(Params):
    models: Mode = "auto"
    ray: RayConfig = RayConfig()
    writer: WriterConfig = WriterConfig()
    registry: RegistryConfig = RegistryConfig()  # the `embedder` role is used
    embed: Resources = Resources(batch_size=1)  # actor pool of the embedder; a batch is shards
    write: Resources = Resources()
    params: retrieval.RetrieveParams = retrieval.RetrieveParams()


class SourceParams(Params):
    dataset: str
    pairs: str
    params: retrieval.RetrieveParams = retrieval.RetrieveParams()


def build_pair(item: Item, dataset: str) -> Item:
    """Stage: read the two recorded frames and write them as one cross-context sample."""
    r = item.unit.ref
    views = [retrieval.read_view(shards.join(dataset, shards.SHARDS_DIR, r[f"{s}_shard"]), r[f"{s}_key"],
                                 r[f"{s}_frame"], {n: tuple(v) for n, v in json.loads(r[f"{s}_members"]).items()})
             for s in ("a", "b")]
    item.samples = [retrieval.cross_sample(item.unit.id, views[0], r["a_subject"], views[1], r["b_subject"],
                                           float(r["similarity"]), (r["a_shard"], r["b_shard"]))]
    return item


class RetrievalSource:
    """The pairs file as a pipeline source: one unit per pair (its id is the sample key)."""

    name = SOURCE_NAME
    kind = "image"
    Config = SourceParams

    def __init__(self, write: Resources):
        self.write = write

    def units(self, cfg: SourceParams) -> list[Unit]:
        import pyarrow.parquet as pq

        return [Unit(row["pair"], row) for row in pq.read_table(cfg.pairs).to_pylist()]

    def roles(self, cfg: SourceParams) -> list[str]:
        return ["embedder"]  # recorded in the manifest (and whether it was a tiny random one)

    def unit_bytes(self, cfg: SourceParams) -> int:
        return 2 * frame_bytes(MAX_SIDE, MAX_SIDE * MAX_SIDE, MAX_MASKS)

    def stages(self, cfg: SourceParams, models: dict[str, Any]) -> list[Stage]:
        return [TaskStage("pair", partial(build_pair, dataset=cfg.dataset), self.write)]


class EmbedShards:
    """Actor: the embedder loads once; each call embeds whole shards and writes one parquet file per shard."""

    def __init__(self, spec: registry.ModelSpec, dataset: str, folder: str):
        from datagen.labeling.matching import Embedder

        self.embedder = Embedder(spec)
        self.dataset, self.folder = dataset, folder

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import pyarrow.parquet as pq

        counts = []
        for name in batch["shard"]:
            table = retrieval.embed_shard(shards.shard_urls(self.dataset, [name])[0], name, self.embedder)
            with shards.atomic_open(os.path.join(self.folder, embedding_file(name))) as f:
                pq.write_table(table, f)
            counts.append(table.num_rows)
        return {"shard": batch["shard"], "subjects": np.array(counts, np.int64)}


def embedding_file(shard: str) -> str:
    return shard.removesuffix(".tar") + ".parquet"


def embed_dataset(dataset: str, folder: str, spec: registry.ModelSpec, cfg: RetrieveConfig) -> tuple[int, int]:
    """Embed the shards without an embeddings file yet; returns (shards embedded now, shards in all)."""
    import ray.data

    from pipelines.runner import init_ray

    names = shards.list_shards(dataset)
    os.makedirs(folder, exist_ok=True)
    done = set(os.listdir(folder))
    todo = [n for n in names if embedding_file(n) not in done]
    if todo:
        init_ray(PipelineConfig(ray=cfg.ray))
        r = cfg.embed
        extra = {"memory": r.memory} if r.memory else {}
        ds = ray.data.from_items([{"shard": n} for n in todo], override_num_blocks=len(todo)).map_batches(
            EmbedShards, fn_constructor_args=(spec, dataset, folder),
            compute=ray.data.ActorPoolStrategy(size=r.concurrency), batch_size=r.batch_size, batch_format="numpy",
            num_cpus=r.num_cpus, num_gpus=r.num_gpus, **extra)
        for row in ds.iter_rows():
            print(f"[retrieve] embedded {row['shard']}: {row['subjects']} subjects")
    return len(todo), len(names)


PAIRED_FILES, PAIRED_PARAMS = b"paired_files", b"params"  # pairs.parquet's metadata: what its pairs cover


def paired_before(pairs_path: str, params: retrieval.RetrieveParams) -> tuple[list[str], Any]:
    """The embedding files an earlier run paired, in its row order, and its pairs; none when there was no run or
    it ran with other params (its pairs would not be this run's)."""
    import pyarrow.parquet as pq

    if not os.path.exists(pairs_path):
        return [], None
    table = pq.read_table(pairs_path)
    meta = table.schema.metadata or {}
    if PAIRED_FILES not in meta or meta.get(PAIRED_PARAMS) != params.model_dump_json().encode():
        return [], None
    return json.loads(meta[PAIRED_FILES]), table.replace_schema_metadata(None).cast(retrieval.PAIR_SCHEMA)


def retrieve(dataset: str, out: str, cfg: RetrieveConfig) -> dict[str, Any]:
    """The three steps; returns the counts also written into the manifest under ``retrieval``."""
    from pipelines.runner import run_source

    if not shards.list_shards(dataset):
        raise ConfigError(f"--dataset {dataset}: no shards under {shards.join(dataset, shards.SHARDS_DIR)}")
    spec = registry.resolve(["embedder"], cfg.registry, cfg.models)["embedder"]  # fails here, before any work
    work = os.path.join(out, WORK_DIR)
    t0 = time.time()
    embedded, total = embed_dataset(dataset, os.path.join(work, "embeddings"), spec, cfg)
    t1 = time.time()
    import pyarrow.parquet as pq

    pairs_path = os.path.join(work, "pairs.parquet")
    current = [embedding_file(n) for n in shards.list_shards(dataset)]
    done, previous = paired_before(pairs_path, cfg.params)
    if not set(done) <= set(current):  # a shard paired before is gone: its pairs cannot be kept
        done, previous = [], None
    names = done + [n for n in current if n not in set(done)]  # rows of the files paired before keep their numbers
    pairs, queried = retrieval.find_pairs([os.path.join(work, "embeddings", n) for n in names],
                                          os.path.join(work, "vectors.npy"), cfg.params,
                                          paired=len(done), previous=previous)
    state = {PAIRED_FILES: json.dumps(names), PAIRED_PARAMS: cfg.params.model_dump_json()}
    with shards.atomic_open(pairs_path) as f:  # the pairs and what they cover, in one atomic write
        pq.write_table(pairs.replace_schema_metadata(state), f)
    t2 = time.time()
    print(f"[retrieve] {total} shards ({embedded} embedded now, {t1 - t0:.1f}s); {pairs.num_rows} verified pairs, "
          f"{pairs.num_rows - (previous.num_rows if previous is not None else 0)} new from {queried} subjects "
          f"queried ({t2 - t1:.1f}s)")
    pipeline = PipelineConfig(out=out, models=cfg.models, ray=cfg.ray, writer=cfg.writer, registry=cfg.registry)
    source_cfg = SourceParams(dataset=dataset, pairs=os.path.join(work, "pairs.parquet"), params=cfg.params)
    result = run_source(RetrievalSource(cfg.write), pipeline, source_cfg=source_cfg)
    summary = {"dataset": dataset, "shards": total, "pairs": pairs.num_rows, "queried": queried,
               "embed_s": round(t1 - t0, 2), "pairs_s": round(t2 - t1, 2)}
    manifest = shards.read_manifest(out)
    try:  # a pair of synthetic samples is synthetic too
        upstream = shards.read_manifest(dataset).get("synthetic_models", True)
    except FileNotFoundError:
        upstream = True
    manifest["synthetic_models"] = bool(manifest.get("synthetic_models")) or bool(upstream)
    manifest["retrieval"] = summary
    shards.write_manifest(out, manifest)
    from pipelines.runner import report, write_quality_report

    print(report(result))
    quality = write_quality_report(out)
    if quality:
        print(f"data-quality report: {quality}")
    return summary


def load(path: str | None, models: str | None) -> RetrieveConfig:
    doc: dict[str, Any] = {}
    if path:
        try:
            with open(path) as f:
                doc = yaml.safe_load(f) or {}
        except OSError as e:
            raise ConfigError(f"cannot read config {path}: {e}") from e
    if models:
        doc["models"] = models
    try:
        return RetrieveConfig.model_validate(doc)
    except ValidationError as e:
        where = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"config {path} is invalid: {where}") from None


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python -m pipelines retrieve", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, help="a finished dataset (local folder)")
    p.add_argument("--out", required=True, help="the dataset of cross-context pairs (local folder)")
    p.add_argument("--config", help="YAML: models, registry.embedder, ray, writer, embed/write resources, params")
    p.add_argument("--models", choices=["auto", "real", "tiny"])
    args = p.parse_args(argv)
    from pipelines.lock import OutputError
    from pipelines.runner import InputError

    try:
        retrieve(args.dataset, args.out, load(args.config, args.models))
    except (ConfigError, MissingModelError, InputError, OutputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
