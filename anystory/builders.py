"""Build every component from the JSON configs shipped in ``anystory/configs/`` — no hub needed for any shape.

Two sizes share one structure: ``"sdxl"`` (SDXL base UNet and VAE, CLIP ViT-H/14 image encoder as used by
IP-Adapter) and ``"tiny"`` (same block types and micro-conditioning, tiny widths) for tests and CPU smoke runs.
Real weights come from ``pretrained=``: a local directory or a Hugging Face cache entry, always with
``local_files_only=True``; a missing model fails at once with its name and the command that fetches it.

Build full SDXL sizes without weights only on the meta device (``with torch.device("meta"): build_unet()``).

Every builder puts its module straight into ``dtype`` on ``device``: weights stream from the safetensors files to
the device (``low_cpu_mem_usage``, ``device_map``), random ones are created there in that dtype
(``init_context``). No fp32 copy is made on the host first (that copy was ≈ 25 GB per rank at SDXL size).
"""

from __future__ import annotations

import json
from contextlib import ExitStack, contextmanager
from functools import cache
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from diffusers import (
    AutoencoderKL,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    SchedulerMixin,
    UNet2DConditionModel,
)
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

CONFIG_DIR = Path(__file__).parent / "configs"
SIZES = ("sdxl", "tiny")
SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
CLIP_VIT_H = "h94/IP-Adapter"  # its models/image_encoder is laion/CLIP-ViT-H-14, the encoder IP-Adapter Plus uses
CLIP_VIT_H_SUBFOLDER = "models/image_encoder"


def load_config(size: str, which: str) -> dict[str, Any]:
    """The shipped config ``<size>_<which>.json``; ``which`` in unet, vae, clip_vision, anystory, text_encoder,
    text_encoder_2. ``load_config(size, "scheduler")`` is the one SDXL scheduler config."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {SIZES}")
    path = CONFIG_DIR / ("scheduler.json" if which == "scheduler" else f"{size}_{which}.json")
    if not path.is_file():
        shipped = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
        raise FileNotFoundError(f"no config {path.name} in {CONFIG_DIR}; shipped: {shipped}")
    return json.loads(path.read_text())


def from_local(load: Callable[..., Any], what: str, path: str, subfolder: str | None, fetch: str, **kwargs) -> Any:
    """``load(path, subfolder=..., local_files_only=True)``, re-raising a miss with the model and how to get it."""
    if subfolder:
        kwargs["subfolder"] = subfolder
    try:
        return load(path, local_files_only=True, **kwargs)
    except (OSError, ValueError) as e:  # transformers/diffusers raise OSError (EnvironmentError) for missing files
        where = f"{path}/{subfolder}" if subfolder else path
        raise FileNotFoundError(
            f"{what}: no weights at {where!r} (a local directory or the Hugging Face cache; downloads are off). "
            f"Fetch them with `{fetch}`, or pass a local directory. ({type(e).__name__}: {e})"
        ) from e


def _sdxl_fetch(subfolders: str) -> str:
    return f"hf download {SDXL_BASE} --include {subfolders}"


@contextmanager
def init_context(device=None, dtype=None) -> Iterator[None]:
    """Modules built inside are created on ``device`` in ``dtype`` (torch's default device and dtype, restored on
    exit): a random SDXL UNet in bf16 on the GPU never exists in fp32 on the host."""
    previous = torch.get_default_dtype()
    with ExitStack() as stack:
        if device is not None:
            stack.enter_context(torch.device(device))
        if dtype is not None:
            torch.set_default_dtype(dtype)
        try:
            yield
        finally:
            torch.set_default_dtype(previous)


def _load_kwargs(device, dtype, dtype_key: str) -> dict[str, Any]:
    """``from_pretrained`` keywords that load ``dtype`` straight onto ``device`` (diffusers: ``torch_dtype``,
    transformers 5: ``dtype``). ``device_map`` needs a concrete device: "cuda" becomes the current CUDA device."""
    kwargs: dict[str, Any] = {dtype_key: dtype, "low_cpu_mem_usage": True}
    if device is not None:
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        kwargs["device_map"] = {"": device}
    return kwargs


def build_unet(size: str = "sdxl", pretrained: str | None = None, device=None, dtype=None) -> UNet2DConditionModel:
    """SDXL UNet: random from the shipped config, or from ``pretrained`` (an SDXL directory or hub id, ``unet/``)."""
    if pretrained is not None:
        return from_local(UNet2DConditionModel.from_pretrained, "SDXL UNet", pretrained, "unet",
                          _sdxl_fetch("'unet/*'"), **_load_kwargs(device, dtype, "torch_dtype"))
    with init_context(device, dtype):
        return UNet2DConditionModel.from_config(load_config(size, "unet"))


def build_vae(size: str = "sdxl", pretrained: str | None = None, device=None, dtype=None) -> AutoencoderKL:
    if pretrained is not None:
        return from_local(AutoencoderKL.from_pretrained, "SDXL VAE", pretrained, "vae", _sdxl_fetch("'vae/*'"),
                          **_load_kwargs(device, dtype, "torch_dtype"))
    with init_context(device, dtype):
        return AutoencoderKL.from_config(load_config(size, "vae"))


def build_clip_vision(size: str = "sdxl", pretrained: str | None = None, subfolder: str | None = None, device=None,
                      dtype=None) -> CLIPVisionModelWithProjection:
    """CLIP ViT-H/14 image encoder (hidden 1280, 32 layers, 257 tokens at 224²). For ``pretrained=CLIP_VIT_H`` the
    subfolder defaults to IP-Adapter's ``models/image_encoder``."""
    if pretrained is not None:
        if subfolder is None and pretrained == CLIP_VIT_H:
            subfolder = CLIP_VIT_H_SUBFOLDER
        return from_local(CLIPVisionModelWithProjection.from_pretrained, "CLIP ViT-H/14 image encoder", pretrained,
                          subfolder, f"hf download {CLIP_VIT_H} --include '{CLIP_VIT_H_SUBFOLDER}/*'",
                          **_load_kwargs(device, dtype, "dtype"))
    with init_context(device, dtype):
        return CLIPVisionModelWithProjection(CLIPVisionConfig(**load_config(size, "clip_vision")))


SAMPLERS = ("edm", "edm-heun", "edm-euler", "euler")
SAMPLER = "edm"  # the paper's sampling: the default of every generation (pipeline, generate, evaluations)


def build_scheduler(pretrained: str | None = None, sampler: str = SAMPLER) -> SchedulerMixin:
    """SDXL's noise schedule (``scheduler.json`` or ``pretrained``'s) with one of ``SAMPLERS`` (default ``SAMPLER``;
    training's noise schedule is "euler"'s config):

    - "edm": DPM-Solver++(2M), second order, on EDM's noise levels (Karras et al. 2022, Eq. 5, ρ = 7, from the UNet's
      σ(t=999) down to σ(t=0)): the algorithm and levels of diffusers' ``EDMDPMSolverMultistepScheduler``, which
      itself cannot drive SDXL (it feeds the UNet ¼·ln σ as the timestep and assumes EDM's σ_data preconditioning; a
      test checks both give the same trajectory). The paper's sampling (25 EDM steps, CFG 7.5) uses it;
    - "edm-heun": EDM's deterministic Algorithm 1 (Heun) on the same levels, two UNet calls a step but the last;
    - "edm-euler": first-order Euler on the same levels; "euler": SDXL's own Euler scheduler."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler {sampler!r}: one of {SAMPLERS}")
    if pretrained is not None:
        scheduler = from_local(EulerDiscreteScheduler.from_pretrained, "SDXL scheduler", pretrained, "scheduler",
                               _sdxl_fetch("'scheduler/*'"))
    else:
        scheduler = EulerDiscreteScheduler.from_config(load_config("sdxl", "scheduler"))
    if sampler == "euler":
        return scheduler
    edm = dict(use_karras_sigmas=True, timestep_spacing="linspace")  # "linspace": from t = 999 to t = 0
    if sampler == "edm":
        return DPMSolverMultistepScheduler.from_config(scheduler.config, algorithm_type="dpmsolver++", solver_order=2,
                                                       final_sigmas_type="zero", **edm)
    cls = HeunDiscreteScheduler if sampler == "edm-heun" else EulerDiscreteScheduler
    return cls.from_config(scheduler.config, **edm)


@cache
def _tiny_vocab() -> dict[str, int]:
    # Byte-level BPE with no merges: every byte is a token (and its end-of-word form), as CLIP's vocab starts.
    chars = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({f"{c}</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    return vocab


def tiny_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer built in memory (514 byte-level tokens, 77 positions): nothing read from a hub."""
    return CLIPTokenizer(vocab=_tiny_vocab(), merges=[], model_max_length=77)


def build_text_encoders_and_tokenizers(size: str = "tiny", pretrained: str | None = None, device=None, dtype=None
                                       ) -> tuple[CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer,
                                                  CLIPTokenizer]:
    """SDXL's two text encoders and tokenizers: from ``pretrained`` (an SDXL directory or hub id), or random ones
    from the shipped configs (SDXL: CLIP ViT-L/14 and OpenCLIP bigG/14 text towers at their real sizes) with the
    in-memory byte-level tokenizer — real shapes for memory and smoke runs, not SDXL's vocabulary."""
    if pretrained is not None:
        fetch = _sdxl_fetch("'text_encoder/*' 'text_encoder_2/*' 'tokenizer/*' 'tokenizer_2/*'")
        load = _load_kwargs(device, dtype, "dtype")
        te = from_local(CLIPTextModel.from_pretrained, "SDXL text encoder", pretrained, "text_encoder", fetch, **load)
        te2 = from_local(CLIPTextModelWithProjection.from_pretrained, "SDXL text encoder 2", pretrained,
                         "text_encoder_2", fetch, **load)
        tok = from_local(CLIPTokenizer.from_pretrained, "SDXL tokenizer", pretrained, "tokenizer", fetch)
        tok2 = from_local(CLIPTokenizer.from_pretrained, "SDXL tokenizer 2", pretrained, "tokenizer_2", fetch)
        return te, te2, tok, tok2
    with init_context(device, dtype):
        te = CLIPTextModel(CLIPTextConfig(**load_config(size, "text_encoder")))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**load_config(size, "text_encoder_2")))
    return te, te2, tiny_tokenizer(), tiny_tokenizer()


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
