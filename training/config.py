"""Training configuration: typed sections with the paper's defaults (AnyStory §3.4, §4.1), unknown keys refused.

Only the CLI (``python -m training.train``) reads YAML; everything below it takes these objects as arguments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from datagen.params import load_yaml


class Section(BaseModel):
    # NaN and infinities are refused (a NaN rate or weight compares false with everything)
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=(), allow_inf_nan=False)


class SourceSpec(Section):
    """One stream of the mix: a dataset directory (local or fsspec URL), optionally one shard prefix of it."""

    path: str
    source: str | None = None  # shard prefix (e.g. "coco"); None = every shard of the directory
    weight: float = Field(1.0, gt=0)


class AugmentParams(Section):
    """Per-sample choices and reference augmentation (paper §3.4: rotation, cropping, zero-padding)."""

    max_subjects: int = Field(4, ge=1)  # N_max: subjects per sample (the data engine keeps at most 4, after MS-Diffusion)
    drop_rate: float = Field(0.1, ge=0, le=1)  # §4.1: subject conditions dropped on 10 % of images (CFG)
    margin: float = Field(0.1, ge=0)  # reference crop = subject box grown by this fraction of its size per side
    rotation: float = Field(15.0, ge=0, le=180)  # max |angle| in degrees
    crop_min: float = Field(0.8, gt=0, le=1)  # each side keeps a fraction in [crop_min, 1]
    pad_max: float = Field(0.2, ge=0)  # square pad plus up to this fraction of the side as extra padding
    fill: int = Field(255, ge=0, le=255)  # segmented background and padding (white, like inference references)
    clip_size: int = 224  # CLIP image encoder input side
    reference_size: int = 512  # ReferenceNet input side (§4.1)
    latent_scale: int = 8  # VAE downsampling: ReferenceNet mask channel and routing grids are at latent scale
    resolution: int = 1024  # target area = resolution² (SDXL)
    buckets: list[tuple[int, int]] | None = None  # (height, width); None = SDXL aspect buckets at `resolution`
    bucket_step: int = 64
    max_aspect: float = 4.0
    center_crop: bool = False  # SDXL trains with random crops, conditioned on their top-left corner
    # Which of a subject's other frames is its reference (among the pairs the data engine kept, meta.json
    # ``pairs``): the one whose view differs most from the target (highest change_score; AnyStory §3.4 pairs
    # a subject "in a different context" against copy-paste), or any (uniform). 2.0 data has no measures: random.
    reference: Literal["most_changed", "random"] = "most_changed"


class DataConfig(Section):
    sources: list[SourceSpec]
    allow_synthetic: bool = False  # refuse datasets built with tiny random models unless set
    resampled: bool = False  # shards drawn with replacement per rank and worker (multi-node); else split
    batch_size: int = Field(1, ge=1)
    num_workers: int = Field(4, ge=0)
    round_samples: int = Field(2000, ge=1)  # the stream is cut into rounds; a resume replays at most one round
    # broken shards (truncated, unreadable) are skipped with a warning; more than this fraction of a source's
    # shards broken stops the run naming them
    max_broken_fraction: float = Field(0.05, ge=0, le=1)
    shuffle_buffer: int = Field(1000, ge=1)
    augment: AugmentParams = AugmentParams()


class ModelConfig(Section):
    size: Literal["sdxl", "tiny"] = "sdxl"  # anystory's shipped configs; "tiny" builds small random models offline
    pretrained: str | None = None  # SDXL base: a diffusers directory or a hub id in the local HF cache
    clip_pretrained: str | None = None  # CLIP ViT-H/14 image encoder (default with `pretrained`: IP-Adapter's)
    ip_adapter: str | None = None  # stage 1 warm start: an IP-Adapter Plus-SDXL file (QFormer + subject k/v)
    stage1_adapters: str | None = None  # stage 2: the stage-1 adapters directory, loaded and frozen
    init_seed: int = 0  # random initialisation of the model (tiny bases must match across stages)


class OptimConfig(Section):
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"  # adamw8bit: bitsandbytes (extra `train8bit`)
    lr: float = 1e-4  # §4.1
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-2
    eps: float = 1e-8
    warmup_steps: int = Field(500, ge=0)
    scheduler: str = "constant_with_warmup"  # any diffusers.optimization scheduler name
    max_grad_norm: float | None = 1.0


class TrainConfig(Section):
    output_dir: str
    max_steps: int = Field(ge=1)
    grad_accum: int = Field(1, ge=1)
    mixed_precision: Literal["no", "bf16", "fp16"] = "bf16"
    gradient_checkpointing: bool = True
    seed: int = 0
    routing_weight: float = 0.1  # λ of Eq. 4 (stage 2)
    noise_offset: float = 0.0
    checkpoint_every: int = Field(500, ge=1)
    keep_last: int = Field(3, ge=1)
    log_every: int = Field(10, ge=1)
    image_every: int = Field(500, ge=1)  # routing-map images (stage 2)
    tracker: str | None = "tensorboard"  # any accelerate tracker name; None disables logging
    eval_every: int | None = Field(None, ge=1)  # a small evaluation (training.evaluate) every N steps; None = off
    eval_shards: str | None = None  # the held-out dataset it reads
    eval_samples: int = Field(4, ge=1)  # its first N samples with a subject, the same every time
    eval_steps: int = Field(25, ge=1)  # denoising steps per evaluation image

    @model_validator(mode="after")
    def _eval_needs_data(self) -> "TrainConfig":
        if self.eval_every and not self.eval_shards:
            raise ValueError("train.eval_every needs train.eval_shards (a held-out dataset directory)")
        return self


class Config(Section):
    stage: Literal[1, 2]
    model: ModelConfig = ModelConfig()
    data: DataConfig
    optim: OptimConfig = OptimConfig()
    train: TrainConfig

    @model_validator(mode="after")
    def _stage2_needs_stage1(self) -> "Config":
        if self.stage == 2 and not self.model.stage1_adapters:
            raise ValueError("stage 2 trains the router on a trained encoder: set model.stage1_adapters")
        return self


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {dotted}: {p} is not a section")
    node[leaf] = value


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """YAML file plus ``key.path=value`` overrides (values parsed as YAML: ``train.max_steps=10``)."""
    tree = load_yaml(Path(path).read_text()) or {}  # no aliases: a YAML alias bomb is refused, not expanded
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key.path=value")
        key, value = item.split("=", 1)
        _set_dotted(tree, key, yaml.safe_load(value))
    return Config.model_validate(tree)
