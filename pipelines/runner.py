"""Runs one source: units → Ray Data stage graph → shard writer → ledger → dataset files + manifest.

The only place that knows how work is spread. Sources declare units and stages; the runner
- lists units, drops the finished ones (ledger), resolves the models once (fails before any work),
- streams the rest through the stages on Ray Data (tasks for CPU stages, actor pools for models),
- writes shards in the workers (size-capped, atomic, numbered by one small actor), one ledger part each,
- shows progress (units done of those listed, samples written, ETA from recent throughput: ``progress.py``) and
  ends with a stats report, also kept in the manifest.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datagen import models as registry
from datagen import shards
from datagen.shards import card
from datagen.quiet import worker_env
from datagen.units import Outcome
from pipelines import ledger
from pipelines.config import PipelineConfig, WriterConfig, config_hash, storage_env
from pipelines.lease import Lease, LeaseGuard
from pipelines.lock import output_lock
from pipelines.progress import RunBar
from pipelines.run_actors import KeyClaims, ShardNumbers
from pipelines.sources import Source
from pipelines.stages import ActorStage, CrashLog, TaskStage, apply, items_of, unit_row

log = logging.getLogger(__name__)


def write_batch(batch: dict[str, np.ndarray], *, out: str, source: str, numbers: Any, claims: Any, run_id: str,
                max_shard_bytes: int, jpeg_quality: int, lease: LeaseGuard | None = None) -> dict[str, np.ndarray]:
    """Writer stage: encode the batch's samples into shards, record one ledger part, report per unit.
    With an object-store lease, each shard put and the ledger commit first check that the run still holds it."""
    import ray

    items = items_of(batch)
    encoded: list[tuple[Any, list[dict[str, Any]]]] = []
    for it in items:
        if it.alive and not it.samples:
            it.outcome = Outcome("filtered", "write", "no_samples", "every stage ran, no sample was left")
        if not it.alive:
            continue
        try:
            encoded.append((it, [shards.encode_sample(s, jpeg_quality) for s in it.samples]))
        except Exception as e:  # noqa: BLE001 — a sample breaking the contract is quarantined, not written
            it.outcome = Outcome("failed", "write", type(e).__name__, str(e))
    refused = ray.get(claims.claim.remote({it.unit.id: [s.key for s in it.samples] for it, _ in encoded}))
    for it, _ in encoded:
        if it.unit.id in refused:
            it.outcome = Outcome("filtered", "write", "duplicate_key", refused[it.unit.id])

    def allocate() -> str:
        return shards.shard_name(source, ray.get(numbers.next.remote()))

    index, units, where = [], [], {}
    check = lease.check if lease else None
    with shards.ShardWriter(shards.join(out, shards.SHARDS_DIR), allocate, max_shard_bytes, check) as writer:
        for it, docs in encoded:
            if not it.alive:
                continue
            where[it.unit.id] = set()
            for sample, doc in zip(it.samples, docs):
                name = writer.write(doc)
                where[it.unit.id].add(name)
                index.append(shards.index_row(sample, name))
    for it in items:
        if it.alive:
            units.append(ledger.unit_record(it.unit.id, ledger.KEPT, [s.key for s in it.samples], where[it.unit.id],
                                            drops=it.drops))
        else:
            o = it.outcome
            units.append(ledger.unit_record(it.unit.id, o.kind, stage=o.stage, reason=o.reason, detail=o.detail,
                                            drops=it.drops))
    if lease:
        lease.check()
    ledger.write_part(out, source, run_id, units, pa.Table.from_pylist(index, schema=shards.INDEX_SCHEMA),
                      node=ray.get_runtime_context().get_node_id())
    return {
        "unit_id": np.array([u["unit_id"] for u in units], dtype=object),
        "status": np.array([u["status"] for u in units], dtype=object),
        "n_samples": np.array([len(u["keys"]) for u in units], dtype=np.int64),
    }


def writer_batch_units(unit_bytes: int, writer: WriterConfig) -> int:
    """Units per writer call: as many as ``max_batch_bytes`` holds at the source's per-unit bound, clamped to [1,
    ``units_per_shard``]. Ray Data batches by rows only (its ``batch_size="auto"`` guesses bytes per row from the
    first block, which may be a unit that was filtered and holds no frame), so the bound is computed up front."""
    return max(1, min(writer.units_per_shard, writer.max_batch_bytes // max(1, unit_bytes)))


class ResourceError(RuntimeError):
    """The stages' actor pools cannot all be placed on the cluster at once (the run would hang)."""


class InputError(RuntimeError):
    """A source's inputs cannot be listed (a list file that is not a table, a folder that went away...)."""


def check_resources(stages: list, writer_cpus: float, cluster: dict[str, float], local: bool) -> None:
    """Actor pools hold their resources for the whole run: they, plus one task, must fit in the cluster.

    Ray Data would otherwise wait forever for an actor that cannot be placed. On a local run this is an error
    naming the stages to shrink; on a cluster (which may autoscale) a warning.
    """
    actors = [s for s in stages if isinstance(s, ActorStage)]
    need_cpu = sum(s.resources.concurrency * s.resources.num_cpus for s in actors)
    need_gpu = sum(s.resources.concurrency * s.resources.num_gpus for s in actors)
    task_cpu = max([writer_cpus] + [s.resources.num_cpus for s in stages if isinstance(s, TaskStage)])
    have_cpu, have_gpu = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
    problems = []
    if need_cpu + task_cpu > have_cpu:
        problems.append(f"actor pools need {need_cpu:g} CPUs plus {task_cpu:g} for tasks, the cluster has "
                        f"{have_cpu:g}")
    if need_gpu > have_gpu:
        problems.append(f"actor pools need {need_gpu:g} GPUs, the cluster has {have_gpu:g}")
    if not problems:
        return
    pools = ", ".join(f"{s.name}: {s.resources.concurrency}×({s.resources.num_cpus:g} CPU, "
                      f"{s.resources.num_gpus:g} GPU)" for s in actors)
    message = (f"{'; '.join(problems)} ({pools}). Lower `concurrency`/`num_cpus`/`num_gpus` of these stages "
               "in the config, or add nodes.")
    if local:
        raise ResourceError(message)
    log.warning("%s", message)


@dataclass
class RunResult:
    source: str
    listed: int
    skipped: int
    processed: Counter
    samples: int
    seconds: float
    counts: dict[str, Any]


def code_version() -> str:
    from importlib.metadata import version

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return version("anystory-data") + (f"+g{sha}" if sha else "")


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, ``kill``, a container stop): unwinds like Ctrl-C, so the output lock is released, Ray is
    stopped and everything written so far stays valid for the rerun."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated(f"signal {signum}")


def stop_on_sigterm() -> None:
    if threading.current_thread() is threading.main_thread():  # Python takes signals in the main thread only
        signal.signal(signal.SIGTERM, _terminate)


def init_ray(cfg: PipelineConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    address = cfg.ray.address
    if not address:
        # A private local cluster: Ray 2.60 turns token auth on by default, which a one-box run does not need.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # "local" starts a private instance even when `ray start` left a cluster running on this machine.
    kwargs = {} if address else {"num_cpus": cfg.ray.num_cpus, "include_dashboard": False}
    runtime_env = worker_env(cfg.ray.runtime_env)
    if cfg.storage_options and address:  # a cluster's workers open the same stores (a local Ray's inherit them)
        runtime_env["env_vars"] = {**runtime_env["env_vars"], **storage_env(cfg.storage_options)}
    ray.init(address=address or "local", runtime_env=runtime_env, log_to_driver=True,
             logging_level=logging.WARNING, **kwargs)
    stop_on_sigterm()  # after ray.init: Ray's failure handler takes SIGTERM over (abort, exit 134, a stack dump)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = cfg.ray.progress_bars
    ctx.print_on_execution_start = cfg.ray.progress_bars


def run_source(source: Source, cfg: PipelineConfig, limit: int | None = None, retry_failed: bool = False,
               source_cfg: Any = None) -> RunResult:
    """Run one source into ``cfg.out``; ``source_cfg`` defaults to the config's ``sources.<name>`` section.

    Holds the output lock throughout (OutputError before any work when the output is unusable or in use).
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be 0 or more, got {limit}")
    storage_env(cfg.storage_options)
    with output_lock(cfg.out, source.name, cfg.lock) as lease:
        for path in shards.remove_temporaries(cfg.out):  # no other run writes here: these are a killed run's
            log.warning("removing %s, left half-written by a run that was killed", path)
        return _run_locked(source, cfg, limit, retry_failed, source_cfg, lease)


def _run_locked(source: Source, cfg: PipelineConfig, limit: int | None, retry_failed: bool,
                source_cfg: Any, lease: Lease | None) -> RunResult:
    import ray
    import ray.data

    out = cfg.out
    scfg = source_cfg if source_cfg is not None else getattr(cfg.sources, source.name)
    start = time.time()
    # fails here, before any work; the tiny-fallback banner waits until the run has work to do
    specs = registry.resolve(source.roles(scfg), cfg.registry, cfg.models, announce=False)
    try:
        units = source.units(scfg)
    except (OSError, ValueError, KeyError) as e:  # nothing has started: say which input, not a traceback
        raise InputError(f"sources.{source.name}: cannot list the inputs: {type(e).__name__}: {e}") from e
    if limit is not None:
        units = units[:limit]
    ids = pa.array([u.id for u in units], pa.string())
    if pc.count_distinct(ids).as_py() != len(ids):
        counts = pc.value_counts(ids)
        dup = counts.filter(pc.greater(counts.field("counts"), 1))[0]["values"].as_py()
        raise ValueError(f"source {source.name} listed unit {dup!r} twice: unit ids must be unique")
    state = ledger.Ledger.read(out, source.name)  # the one read of the ledger: reconcile, skip, finalize use it
    manifest = _old_manifest(out)
    prior = ledger.read_section(out, source.name) or manifest.get("sources", {}).get(source.name) or {}
    # Sticky: samples an earlier run labelled with tiny models may still be in the dataset.
    synthetic = registry.synthetic(specs) or bool(prior.get("synthetic_models"))
    finished = pc.is_in(ids, value_set=state.done(retry_failed)).to_numpy(zero_copy_only=False)
    todo = [u for u, done in zip(units, finished) if not done]
    unit_bytes = source.unit_bytes(scfg)
    batch = writer_batch_units(unit_bytes, cfg.writer)
    print(f"[{source.name}] {len(units)} units listed, {len(units) - len(todo)} already done, "
          f"{len(todo)} to process; models: {_models_line(specs)}; writer batches of {batch} units "
          f"(≤ {unit_bytes / 1e6:,.1f} MB a unit, writer.max_batch_bytes {cfg.writer.max_batch_bytes / 1e6:,.0f} MB)")

    processed: Counter = Counter()
    samples = 0
    if todo:
        ledger.write_section(out, source.name, {**prior, "synthetic_models": synthetic})  # before any sample
        if cfg.models == "auto":
            registry.announce_missing(list(specs), cfg.registry)
        init_ray(cfg)
        numbers = ray.remote(num_cpus=0)(ShardNumbers).remote(state.shard_numbers())
        claims = ray.remote(num_cpus=0)(KeyClaims).remote(state.kept_keys())
        stages = source.stages(scfg, specs)
        check_resources(stages, cfg.writer.num_cpus, ray.cluster_resources(), local=not cfg.ray.address)
        run_id = uuid.uuid4().hex[:12]
        blocks = min(len(todo), cfg.writer.input_blocks or max(1, len(todo) // batch) * 4)
        ds = ray.data.from_items([unit_row(u) for u in todo], override_num_blocks=max(1, blocks))
        crashes = ray.remote(num_cpus=0)(CrashLog).remote()
        for stage in stages:
            ds = apply(ds, stage, crashes)
        ds = ds.map_batches(
            write_batch, batch_size=batch, batch_format="numpy",
            num_cpus=cfg.writer.num_cpus,
            fn_kwargs=dict(out=out, source=source.name, numbers=numbers, claims=claims, run_id=run_id,
                           lease=lease.guard if lease else None,
                           max_shard_bytes=cfg.writer.max_shard_bytes, jpeg_quality=cfg.writer.jpeg_quality),
        )
        bar = RunBar(source.name, len(todo))
        for row in ds.iter_rows():
            if lease:
                lease.check()  # lost: stop here (the writers stop by themselves at their next write)
            processed[row["status"]] += 1
            samples += int(row["n_samples"])
            bar.update(1, int(row["n_samples"]), processed[ledger.KEPT],
                       processed[ledger.FILTERED] + processed[ledger.FAILED])
        bar.close()
        ray.kill(numbers)
        ray.kill(claims)
        ray.kill(crashes)

    if lease:
        lease.check()  # the driver's own writes: the ledger merge, quarantine and manifest
    if todo:  # nothing written (the lock kept out others): no new part or shard to reconcile, no listing again
        state.refresh(retried=retry_failed)  # reads only this run's parts
    state.merge_loose()
    result = RunResult(source.name, len(units), len(units) - len(todo), processed, samples,
                       time.time() - start, state.summarize())
    finalize(cfg, source, scfg, specs, result, start, state, synthetic, manifest)
    return result


def _old_manifest(out: str) -> dict[str, Any]:
    """The manifest as it is, or {} when it is missing or unreadable (a truncated file is rebuilt at finalize from
    the sections kept with each source's ledger, not a reason to lose the run)."""
    try:
        manifest = shards.read_manifest(out)
    except FileNotFoundError:
        return {}
    except (ValueError, UnicodeDecodeError) as e:
        log.warning("%s is unreadable (%s): it is rebuilt from the ledger at the end of this run",
                    shards.join(out, shards.MANIFEST_FILE), e)
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _models_line(specs: dict[str, registry.ModelSpec]) -> str:
    return ", ".join(f"{r}={s.mode}" for r, s in specs.items()) or "none"


def finalize(cfg: PipelineConfig, source: Source, scfg: Any, specs: dict[str, registry.ModelSpec],
             result: RunResult, start: float, state: ledger.Ledger, synthetic: bool,
             manifest: dict[str, Any]) -> None:
    """The source's quarantine file and its manifest section; its index files are already in place (the
    writers append them, the ledger merges them), so the cost is this source's, not the dataset's.

    Each source's section is kept with its ledger; the manifest is rebuilt from those (``manifest`` — the one read
    at the start — only fills in sources written before sections were kept)."""
    out = cfg.out
    shards.write_quarantine(out, state.quarantine(), source.name)
    if not shards.index_parts(out):  # nothing kept yet: an empty index file, so the dataset reads as empty
        shards.write_index_part(out, f"{source.name}-empty", [])

    iso = lambda t: dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat()  # noqa: E731
    section = {
        "kind": source.kind,
        "config": scfg.model_dump(mode="json"),
        "config_hash": config_hash(cfg, source.name, scfg),
        "models": registry.describe(specs),
        "synthetic_models": synthetic,
        "counts": result.counts,
        "start_time": iso(start),
        "end_time": iso(time.time()),
        "code_version": code_version(),
    }
    ledger.write_section(out, source.name, section)
    old = manifest.get("sources", {})
    per_source = {n: _known_section(ledger.read_section(out, n) or old.get(n), section)
                  for n in ledger.sources(out) if n != source.name}
    per_source[source.name] = section
    totals = _merge_counts([s["counts"] for s in per_source.values()])
    manifest.update(
        format_version=shards.FORMAT_VERSION,
        format_minor=shards.FORMAT_MINOR,
        code_version=section["code_version"],
        config={"writer": cfg.writer.model_dump(mode="json"), "models": cfg.models,
                "registry": cfg.registry.model_dump(mode="json"),
                "sources": {n: s["config"] for n, s in per_source.items()}},
        config_hash=config_hash(cfg, None),
        models={n: s["models"] for n, s in per_source.items()},
        synthetic_models=any(s["synthetic_models"] for s in per_source.values()),
        counts=totals,
        start_time=min(s["start_time"] for s in per_source.values()),
        end_time=max(s["end_time"] for s in per_source.values()),
        sources=per_source,
    )
    shards.write_manifest(out, manifest)
    card.write_card(out, card.dataset_card(out, manifest))  # the Hub's README.md, from the manifest just written


def _known_section(found: dict[str, Any] | None, like: dict[str, Any]) -> dict[str, Any]:
    """Another source's section, completed where a killed run left only part of it. What is not known is said
    so, and such a source counts as synthetic: the trainer must not trust labels nobody can vouch for."""
    unknown = {"kind": "unknown", "config": {}, "config_hash": "", "models": "unknown", "synthetic_models": True,
               "counts": {}, "start_time": like["start_time"], "end_time": like["end_time"], "code_version": ""}
    return {**unknown, **(found or {})}


def _merge_counts(counts: list[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {}
    for c in counts:
        for k, v in c.items():
            if isinstance(v, dict):
                merged = Counter(total.get(k, {}))
                merged.update(v)
                total[k] = dict(sorted(merged.items()))
            else:
                total[k] = total.get(k, 0) + v
    return total


def write_quality_report(out: str) -> str | None:
    """The dataset's data-quality report (``python -m datagen.shards report``), rewritten at the end of a run into
    ``<out>/report.html``; returns its path, or None (with a warning) when it could not be made: the run's data is
    written either way."""
    from datagen.shards.report import REPORT_FILE, write_report

    path = shards.join(out, REPORT_FILE)
    try:
        write_report(out, path)
    except Exception:  # noqa: BLE001 — a plotting bug must not turn a finished run into a failed one
        log.warning("could not write the data-quality report %s", path, exc_info=True)
        return None
    return path


def report(result: RunResult) -> str:
    """The end-of-run stats report (this run, then the dataset's totals for the source)."""
    c = result.counts
    run_units = sum(result.processed.values())
    lines = [
        f"== {result.source}: {result.listed} units listed, {result.skipped} skipped (done before), "
        f"{run_units} processed in {result.seconds:.1f}s "
        f"({run_units / max(result.seconds, 1e-9):.2f} units/s, {result.samples / max(result.seconds, 1e-9):.2f} "
        f"samples/s)",
        f"   this run: kept {result.processed[ledger.KEPT]}, filtered {result.processed[ledger.FILTERED]}, "
        f"failed {result.processed[ledger.FAILED]}, samples written {result.samples}",
        f"   dataset:  {c['units_kept']} units kept → {c['samples']} samples; "
        f"{c['units_filtered'] + c['units_failed']} quarantined "
        f"({c['units_filtered']} filtered, {c['units_failed']} failed)",
    ]
    for title, key in (("filtered", "filtered"), ("failed", "failed"), ("dropped in units", "dropped")):
        for reason, n in c[key].items():
            lines.append(f"   {title:16s} {reason}: {n}")
    return "\n".join(lines)
