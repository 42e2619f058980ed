"""The two AnyStory training stages (§3.4) on accelerate.

Stage 1 trains the subject encoder (subject QFormer, ReferenceNet, subject and reference k/v) with the diffusion
loss (Eq. 1) on paired data, SDXL frozen; the untrained router is bypassed by the target's instance masks
(``AnyStoryModel`` docs). Stage 2 loads the stage-1 adapters, freezes everything but the router and trains it with
the diffusion loss plus λ × the routing loss (Eq. 4, λ = 0.1) on multi-person images.

One optimizer step = ``train.grad_accum`` loader batches on every process. Noise, timesteps and the Gumbel samples
come from the global RNGs, which ``accelerator.save_state`` records, so a resume continues bit for bit (on the same
hardware and process count).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, gather_object, set_seed
from diffusers import DDPMScheduler
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from anystory import (
    AnyStoryModel,
    SubjectBatch,
    build_scheduler,
    build_text_encoders_and_tokenizers,
    build_vae,
    reference_latents,
    routing_grid,
    routing_loss,
)
from anystory.router import masks_at
from training import checkpoints, optim
from training.augment import normalize
from training.config import Config
from training.evaluate.during_training import TrainingEvaluation
from training.loader import DataPosition, make_loader, open_sources

log = logging.getLogger(__name__)

# What each stage trains, as AnyStoryModel adapter parts: what its checkpoints hold and a resume reloads.
STAGE_PARTS = {1: ("subject_encoder", "reference_net"), 2: ("router",)}
DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Frozen:
    """The frozen SDXL parts outside ``AnyStoryModel``: VAE, the two text encoders and tokenizers, noise schedule."""

    vae: Any
    text_encoders: tuple[Any, Any]
    tokenizers: tuple[Any, Any]
    noise_scheduler: DDPMScheduler


@dataclass
class TrainResult:
    model: AnyStoryModel
    losses: list[dict[str, float]] = field(default_factory=list)  # per optimizer step, this run only
    output_dir: Path | None = None


def build(cfg: Config, device: torch.device) -> tuple[AnyStoryModel, Frozen]:
    """Every component from ``anystory.builders`` (tiny random ones seeded by ``model.init_seed``), and in stage 2
    the stage-1 adapters. Each is loaded (or created) straight on ``device`` in the training dtype, frozen parts
    in ``train.mixed_precision``'s. Stage 1 loads the UNet in fp32: its trainable ReferenceNet is copied from it
    before ``train`` casts the frozen weights down."""
    m = cfg.model
    dtype = DTYPES[cfg.train.mixed_precision]
    torch.manual_seed(m.init_seed)
    model = AnyStoryModel.build(m.size, m.pretrained, m.clip_pretrained, m.ip_adapter if cfg.stage == 1 else None,
                                device=device, dtype=torch.float32 if cfg.stage == 1 else dtype)
    if cfg.stage == 2:
        loaded = model.load_adapters(m.stage1_adapters, STAGE_PARTS[1])
        log.info("stage 2: loaded stage-1 adapters %s from %s", loaded, m.stage1_adapters)
    te, te2, tok, tok2 = build_text_encoders_and_tokenizers(m.size, m.pretrained, device=device, dtype=dtype)
    noise = DDPMScheduler.from_config(build_scheduler(m.pretrained, "euler").config)
    frozen = Frozen(build_vae(m.size, m.pretrained, device=device, dtype=dtype), (te, te2), (tok, tok2), noise)
    for module in (frozen.vae, te, te2):
        module.requires_grad_(False).eval()
    return model, frozen


def prepare_for_stage(model: AnyStoryModel, stage: int, dtype: torch.dtype) -> list[torch.nn.Parameter]:
    """Freeze all but the stage's parameters, frozen weights to ``dtype``, trained ones to fp32 (the optimizer's
    master copy); returns the trained ones."""
    params = model.freeze_for_stage(stage)
    if dtype != torch.float32:
        model.cast_frozen(dtype)
    for p in params:
        p.data = p.data.float()
    return params


def check_sizes(cfg: Config, model: AnyStoryModel, frozen: Frozen) -> None:
    """The loader's sizes must be the model's: CLIP input, ReferenceNet input, VAE downsampling."""
    aug = cfg.data.augment
    want = {"clip_size": model.clip.config.image_size,
            "reference_size": model.reference_net.config.reference_size,
            "latent_scale": 2 ** (len(frozen.vae.config.block_out_channels) - 1)}
    wrong = {k: (getattr(aug, k), v) for k, v in want.items() if getattr(aug, k) != v}
    if wrong:
        raise ValueError("data.augment does not match the model: "
                         + ", ".join(f"{k} is {a}, the model needs {b}" for k, (a, b) in wrong.items()))


@torch.no_grad()
def encode_prompt(captions: list[str], frozen: Frozen, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL text conditioning: both encoders' penultimate hidden states concatenated, (B, 77, C), and the second
    encoder's pooled projection, (B, P) (as diffusers' SDXL training script)."""
    hidden, pooled = [], None
    for tokenizer, encoder in zip(frozen.tokenizers, frozen.text_encoders):
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(device)
        out = encoder(ids, output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        pooled = getattr(out, "text_embeds", None)
    return torch.cat(hidden, -1), pooled


@torch.no_grad()
def subject_batch(batch: dict[str, Any], vae: Any) -> SubjectBatch:
    """The loader's subject tensors → ``SubjectBatch``; ReferenceNet latents encoded for the valid slots only."""
    valid = batch["subject_valid"]
    b, n = valid.shape
    pixels = batch["ref_pixel_values"].flatten(0, 1)[valid.flatten()]
    lat = reference_latents(vae, pixels)
    latents = lat.new_zeros(b * n, *lat.shape[1:])
    latents[valid.flatten()] = lat
    return SubjectBatch(batch["clip_pixel_values"], latents.unflatten(0, (b, n)), batch["ref_masks"], valid,
                        batch["drop_subjects"])


def step_losses(model: torch.nn.Module, frozen: Frozen, batch: dict[str, Any], stage: int, routing_weight: float,
                noise_offset: float = 0.0) -> tuple[dict[str, torch.Tensor], Any]:
    """Eq. 1 (+ λ · Eq. 4 in stage 2) on one batch already on the device and normalised."""
    device = batch["pixel_values"].device
    latents = reference_latents(frozen.vae, batch["pixel_values"])  # VAE mode × scaling factor, as the references
    noise = torch.randn_like(latents)
    if noise_offset:
        noise = noise + noise_offset * torch.randn(latents.shape[0], latents.shape[1], 1, 1, device=device)
    sched = frozen.noise_scheduler
    t = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],), device=device)
    noisy = sched.add_noise(latents, noise, t)
    target = noise if sched.config.prediction_type == "epsilon" else sched.get_velocity(latents, noise, t)
    prompt_embeds, pooled = encode_prompt(batch["captions"], frozen, device)
    added = {"text_embeds": pooled, "time_ids": batch["time_ids"].to(prompt_embeds.dtype)}
    subjects = subject_batch(batch, frozen.vae)
    gt = batch["routing_masks"]
    out = model(noisy, t, prompt_embeds, added, subjects, routing_masks=gt if stage == 1 else None)
    diffusion = F.mse_loss(out.noise_pred.float(), target.float())
    terms = {"diffusion": diffusion}
    if stage == 2:
        terms["routing"] = routing_loss([m.float() for m in out.routing_maps], gt, subjects.valid, routing_weight,
                                        batch.get("routing_ignore"))
    terms["loss"] = sum(terms.values())
    return terms, out


def routing_image(maps: list[torch.Tensor], gt: dict[int, torch.Tensor], valid: torch.Tensor) -> np.ndarray:
    """Fig. 5-style grid of sample 0's subjects: predicted maps (top) above the ground truth of every layer."""
    keep = torch.cat([valid[0].nonzero().squeeze(1), valid.new_tensor([valid.shape[1]], dtype=torch.long)])
    pred, truth = [], []
    for m in maps:
        g = masks_at(gt, m.shape[-2:]).to(m)[:1]
        truth.append(torch.cat([g, 1 - g.sum(1, keepdim=True).clamp(max=1)], 1)[:, keep].cpu())
        pred.append(m[:1, keep].detach().float().cpu())
    top, bottom = routing_grid(pred), routing_grid(truth)
    return np.concatenate([top, np.full((8, top.shape[1], 3), 255, np.uint8), bottom])


class RankPositions:
    """Every rank's ``DataPosition`` in one checkpoint file: accelerate writes registered objects from the main
    process only, and each rank reads its own shards, so each needs its own position back."""

    def __init__(self, position: DataPosition, rank: int, ranks: int):
        self.position, self.rank, self.ranks = position, rank, ranks

    def state_dict(self) -> dict[str, Any]:
        return {"ranks": gather_object([self.position.state_dict()])}  # collective: save_state runs on all ranks

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["ranks"]) != self.ranks:
            raise ValueError(f"resume needs the same number of processes (saved {len(state['ranks'])}, now "
                             f"{self.ranks})")
        self.position.load_state_dict(state["ranks"][self.rank])


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.to(device, non_blocking=True)
        elif isinstance(v, dict):
            out[k] = {kk: vv.to(device, non_blocking=True) for kk, vv in v.items()}
        else:
            out[k] = v
    return out


def train(cfg: Config, resume: str | None = None) -> TrainResult:
    t = cfg.train
    out_dir = Path(t.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=t.grad_accum, mixed_precision=t.mixed_precision, log_with=t.tracker,
        project_config=ProjectConfiguration(project_dir=str(out_dir), logging_dir=str(out_dir / "logs")),
        # DDP: gradients live in its all-reduce buckets, not in a second copy (stage 1: 10.6 GB saved per rank)
        kwargs_handlers=[DistributedDataParallelKwargs(gradient_as_bucket_view=True)],
    )
    o = cfg.optim
    optim.require(o.optimizer)  # a missing bitsandbytes fails here, before minutes of model loading
    sources = open_sources(cfg.data)  # so do synthetic, empty and (known) broken datasets
    model, frozen = build(cfg, accelerator.device)
    check_sizes(cfg, model, frozen)
    evaluation = TrainingEvaluation(cfg, accelerator.device) if t.eval_every and accelerator.is_main_process else None
    params = prepare_for_stage(model, cfg.stage, DTYPES[t.mixed_precision])
    if t.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    set_seed(t.seed)
    optimizer = optim.make_optimizer(params, o)
    lr_scheduler = get_scheduler(o.scheduler, optimizer, num_warmup_steps=o.warmup_steps,
                                 num_training_steps=t.max_steps)
    factors = model.routing_factors
    if accelerator.state.deepspeed_plugin is not None:  # ZeRO (configs/accelerate/zero2.yaml): no loader prepared
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.data.batch_size
    model, optimizer = accelerator.prepare(model, optimizer)
    if accelerator.gradient_accumulation_steps != t.grad_accum:
        raise ValueError(f"the accelerate config sets gradient_accumulation_steps "
                         f"{accelerator.gradient_accumulation_steps}, train.grad_accum is {t.grad_accum}: make them "
                         "equal (or leave it out of the accelerate config)")
    bare: AnyStoryModel = accelerator.unwrap_model(model)
    parts = STAGE_PARTS[cfg.stage]
    step = checkpoints.Counter()
    position = DataPosition(max(1, cfg.data.num_workers), accelerator.num_processes)
    # The scheduler is stepped once per optimizer step by hand (a prepared one steps once per process).
    accelerator.register_for_checkpointing(
        lr_scheduler, step, RankPositions(position, accelerator.process_index, accelerator.num_processes))
    checkpoints.install_hooks(accelerator, lambda d: bare.load_adapters(d, parts))
    start = checkpoints.resolve(out_dir, resume)
    if start is not None:
        checkpoints.load(accelerator, start)
        log.info("resumed from %s at step %d (%d batches read)", start, step.value, position.batches)
    if t.tracker:
        accelerator.init_trackers(f"anystory-stage{cfg.stage}", config=_flat(cfg.model_dump()))
    batches = iter(make_loader(cfg.data, factors, t.seed, position, sources))
    model.train()
    result = TrainResult(bare, output_dir=out_dir)
    samples_per_step = cfg.data.batch_size * t.grad_accum * accelerator.num_processes
    progress = tqdm(total=t.max_steps, initial=step.value, desc=f"stage {cfg.stage}", unit="step",
                    disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    while step.value < t.max_steps:
        totals: dict[str, float] = {}
        for _ in range(t.grad_accum):
            batch = next(batches)
            position.consumed(batch.pop("position"))
            batch = normalize(_to_device(batch, accelerator.device))
            with accelerator.accumulate(model), accelerator.autocast():
                terms, out = step_losses(model, frozen, batch, cfg.stage, t.routing_weight, t.noise_offset)
                accelerator.backward(terms["loss"])
                if accelerator.sync_gradients and o.max_grad_norm:
                    accelerator.clip_grad_norm_(params, o.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            for k, v in terms.items():
                totals[k] = totals.get(k, 0.0) + accelerator.reduce(v.detach(), "mean").item() / t.grad_accum
        lr_scheduler.step()
        step.value += 1
        if not all(math.isfinite(v) for v in totals.values()):
            raise FloatingPointError(f"step {step.value}: non-finite loss {totals} (batch keys {batch['keys']})")
        result.losses.append(totals)
        progress.update(1)
        rate = progress.format_dict["rate"]
        progress.set_postfix({k: f"{v:.4f}" for k, v in totals.items()}
                             | {"samples_s": f"{rate * samples_per_step:.2f}" if rate else "-"})
        if t.tracker and step.value % t.log_every == 0:
            accelerator.log({f"loss/{k}": v for k, v in totals.items()} | {"lr": lr_scheduler.get_last_lr()[0]},
                            step=step.value)
        if t.tracker and cfg.stage == 2 and step.value % t.image_every == 0 and accelerator.is_main_process:
            _log_image(accelerator, t.tracker, routing_image(out.routing_maps, batch["routing_masks"],
                                                                   batch["subject_valid"]), step.value)
        if evaluation is not None and step.value % t.eval_every == 0:
            grid = evaluation(bare, frozen, step.value, accelerator)
            if t.tracker:
                _log_image(accelerator, t.tracker, grid, step.value, "eval/images")
        if step.value % t.checkpoint_every == 0 or step.value == t.max_steps:
            checkpoints.save_checkpoint(accelerator, lambda d: bare.save_adapters(d, parts), out_dir, step.value,
                                        t.keep_last)
    progress.close()
    if accelerator.is_main_process:
        # Everything the pipeline needs in one folder (stage 2: the stage-1 encoder too).
        bare.save_adapters(out_dir / checkpoints.ADAPTERS, STAGE_PARTS[1] + (("router",) if cfg.stage == 2 else ()))
    accelerator.end_training()
    return result


def _log_image(accelerator: Accelerator, tracker: str, image: np.ndarray, step: int,
               name: str = "routing_maps") -> None:
    kwargs = {"dataformats": "NHWC"} if tracker == "tensorboard" else {}
    accelerator.get_tracker(tracker).log_images({name: image[None]}, step=step, **kwargs)
