"""The pipeline YAML: typed, validated in full before any work (unknown keys and missing paths name
their key path), with CLI overrides applied on top.

    out: data/sample            # dataset directory (local path or fsspec URL)
    models: auto                # auto | real | tiny   (datagen/models.py)
    ray: {address: null}        # null = a private local Ray; "auto" or ray://host:10001 = a cluster
    lock: {expiry_s: 60, heartbeat_s: 10}   # the lease of an object-store output (pipelines/lease.py)
    storage_options: {s3: {endpoint_url: ..., key: ..., secret: ...}}   # fsspec arguments per protocol
    writer: {units_per_shard: 256, max_batch_bytes: 2000000000, max_shard_bytes: 1000000000}
    registry: {captioner: {id: Qwen/Qwen2-VL-2B-Instruct, path: null}, ...}
    sources:
      objaverse: {...}          # one section per source, see pipelines/sources/<name>.py
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import yaml
from pydantic import Field, ValidationError, create_model

from datagen.models import Mode, RegistryConfig
from datagen.params import Params, load_yaml
from pipelines.lock import LockConfig
from pipelines.sources import SOURCES


class ConfigError(ValueError):
    """A config that cannot run; raised before any work starts."""


class RayConfig(Params):
    address: str | None = None
    num_cpus: int | None = None  # local Ray only; None = every core
    progress_bars: bool = False  # Ray Data's per-operator bars, beside our own
    runtime_env: dict[str, Any] | None = None  # e.g. {"working_dir": "."} when nodes lack the package


class WriterConfig(Params):
    units_per_shard: int = Field(256, ge=1)  # most units handed to one writer call (and one ledger part)
    # A writer call holds its units' frames and masks in memory (twice: Ray's pickled rows and the decoded items):
    # it takes at most this many bytes' worth at the source's per-unit bound (``unit_bytes``), at least one unit.
    # 2 GB keeps a writer task's worst case near 4 GB, one core's share of RAM on common machines, where 256 units
    # of 1080p video (~70 MB each) would hold 18 GB (README "Writer memory").
    max_batch_bytes: int = Field(2_000_000_000, ge=1)
    max_shard_bytes: int = Field(1_000_000_000, ge=1)
    jpeg_quality: int = Field(95, ge=1, le=100)
    num_cpus: float = 1.0
    input_blocks: int | None = None  # Ray blocks of the unit list; default 4 per writer batch


SourcesConfig = create_model(
    "SourcesConfig", __base__=Params, **{name: (src.Config | None, None) for name, src in SOURCES.items()}
)


class PipelineConfig(Params):
    out: str = "data/dataset"
    models: Mode = "auto"
    ray: RayConfig = RayConfig()
    writer: WriterConfig = WriterConfig()
    registry: RegistryConfig = RegistryConfig()
    sources: SourcesConfig = SourcesConfig()
    lock: LockConfig = LockConfig()
    # fsspec filesystem arguments per protocol ({s3: {endpoint_url, key, secret, client_kwargs...}}), for the
    # driver and every Ray worker; credentials are better left to the store's own places (AWS_* variables,
    # ~/.aws, instance roles), which need nothing here. Never written into the manifest or the logs.
    storage_options: dict[str, dict[str, Any]] = {}


def _describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {where}: unknown key")
        else:
            lines.append(f"  {where}: {e['msg']}")
    return "\n".join(lines)


def load_config(path: str, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Read, merge CLI overrides (dotted keys → values) and validate; ConfigError names each bad key."""
    try:
        with open(path) as f:
            doc = load_yaml(f.read()) or {}
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e}") from e
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"config {path} is not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"config {path}: top level must be a mapping")
    for dotted, value in (overrides or {}).items():
        node = doc
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {}) or {}
        node[leaf] = value
    options = doc.get("storage_options")
    if isinstance(options, dict) and all(isinstance(v, dict) for v in options.values()):
        storage_env(options)  # validation checks that the inputs exist: through the stores these options open
    try:
        return PipelineConfig.model_validate(doc)
    except ValidationError as e:
        raise ConfigError(f"config {path} is invalid:\n{_describe(e)}") from None


def config_hash(cfg: PipelineConfig, source: str | None, source_cfg: Params | None = None) -> str:
    """Hash of what decides the output (``out``, Ray placement, the lock and storage access excluded), for all
    sources or one."""
    doc = cfg.model_dump(mode="json", exclude={"out", "ray", "lock", "storage_options"})
    if source is not None:
        doc["sources"] = {source: source_cfg.model_dump(mode="json") if source_cfg is not None
                          else doc["sources"][source]}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def storage_env(options: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Apply ``storage_options`` to this process's fsspec and environment, and return the variables that give them
    to other processes: fsspec reads ``FSSPEC_<PROTOCOL>`` (a JSON object of filesystem arguments) when imported.
    A local Ray's workers inherit this environment; a cluster's get the variables through the job's runtime_env."""
    import os

    import fsspec.config

    env = {f"FSSPEC_{p.upper()}": json.dumps(kw) for p, kw in options.items()}
    for protocol, kwargs in options.items():
        fsspec.config.conf.setdefault(protocol, {}).update(kwargs)
    os.environ.update(env)
    return env
