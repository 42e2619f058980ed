"""Generate every sample with AnyStory and the baselines on the same prompt and seed, and score each image.

Systems: ``anystory`` (the trained adapters), ``base-sdxl`` (the same pipeline with ``subjects=None``: the
adapters bypassed) and ``ip-adapter`` (IP-Adapter Plus SDXL loaded by diffusers' ``load_ip_adapter`` into the
same base; run last because it replaces the UNet's attention processors).

Each subject is located in the image (for M-DINO and blending) from AnyStory's routing maps, or by its phrase with
Grounding DINO + SAM (``locate.PhraseLocator``) for a system without them; ``locate="grounding"`` uses the phrase
locator for every system, so all are compared with the same one. Each row records its ``locator``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import StableDiffusionXLPipeline
from huggingface_hub import try_to_load_from_cache
from tqdm.auto import tqdm

from anystory import AnyStoryPipeline, routing_overlay, segment_from_routing_maps
from training.evaluate.encoders import Encoders
from training.evaluate.locate import GROUNDING, ROUTING, PhraseLocator
from training.evaluate.metrics import crop, score
from training.evaluate.sets import EvalSample

log = logging.getLogger(__name__)

ANYSTORY, BASE, IP_ADAPTER = "anystory", "base-sdxl", "ip-adapter"
BASELINES = (BASE, IP_ADAPTER)
IP_ADAPTER_REPO, IP_ADAPTER_SUBFOLDER = "h94/IP-Adapter", "sdxl_models"
IP_ADAPTER_WEIGHT = "ip-adapter-plus_sdxl_vit-h.safetensors"


@dataclass
class Settings:
    steps: int = 25  # AnyStory §4.1 samples 25 steps
    guidance: float = 7.5  # and CFG 7.5
    size: tuple[int, int] = (1024, 1024)  # (height, width) when the sample gives none


@dataclass
class Generated:
    image: np.ndarray
    regions: np.ndarray | None = None  # (N, H, W) bool subject regions
    overlay: np.ndarray | None = None  # the routing-map segmentation over the image
    locator: str | None = None  # where ``regions`` come from: ROUTING, GROUNDING, or None (not located)


def ip_adapter_file(where: str | None) -> tuple[str | None, str]:
    """The IP-Adapter Plus SDXL weight file (``where``: the file, a folder holding ``sdxl_models/<file>``, or None
    for the HF cache of h94/IP-Adapter), or None and why it is missing."""
    if where and os.path.isfile(where):
        return where, ""
    if where:
        path = os.path.join(where, IP_ADAPTER_SUBFOLDER, IP_ADAPTER_WEIGHT)
        return (path, "") if os.path.isfile(path) else (None, f"no {path}")
    cached = try_to_load_from_cache(IP_ADAPTER_REPO, f"{IP_ADAPTER_SUBFOLDER}/{IP_ADAPTER_WEIGHT}")
    if isinstance(cached, str):
        return cached, ""
    return None, (f"{IP_ADAPTER_REPO}/{IP_ADAPTER_SUBFOLDER}/{IP_ADAPTER_WEIGHT} is not in the Hugging Face cache "
                  f"(fetch: hf download {IP_ADAPTER_REPO} {IP_ADAPTER_SUBFOLDER}/{IP_ADAPTER_WEIGHT})")


def generate(pipe, system: str, sample: EvalSample, settings: Settings) -> Generated:
    height, width = sample.size or settings.size
    common = dict(num_inference_steps=settings.steps, guidance_scale=settings.guidance, height=height, width=width,
                  generator=torch.Generator("cpu").manual_seed(sample.seed))
    if system == IP_ADAPTER:
        crops = [crop(s.image, s.mask) for s in sample.subjects]
        image = pipe(sample.prompt, ip_adapter_image=[crops], **common).images[0]
        return Generated(np.asarray(image.convert("RGB")))
    subjects = None if system == BASE else [s.image for s in sample.subjects]
    masks = None if system == BASE else [s.mask for s in sample.subjects]
    out = pipe(sample.prompt, subjects=subjects, subject_masks=masks, **common)
    image = np.asarray(out.images[0].convert("RGB"))
    if not out.routing_maps:
        return Generated(image)
    regions = segment_from_routing_maps(out.routing_maps, image.shape[:2])[0]
    return Generated(image, regions, routing_overlay(image, out.routing_maps), ROUTING)


def run(samples: list[EvalSample], pipe: AnyStoryPipeline, encoders: Encoders, settings: Settings,
        ip_adapter: str | None = None, progress: bool = True, locator: PhraseLocator | None = None,
        locate: str = ROUTING) -> tuple[list[dict], dict[tuple[str, str], Generated]]:
    """One row per (sample, system) with its scores, and the generated images by (sample id, system).
    ``ip_adapter``: a weight file from ``ip_adapter_file`` (None: not run). ``locator`` finds the subjects of
    images without routing maps (None: M-DINO and blending not measured there), and of every image when
    ``locate`` is GROUNDING."""
    systems = [ANYSTORY, BASE]
    passes = [(systems, pipe)]
    if ip_adapter is not None:
        plain = StableDiffusionXLPipeline(**{k: v for k, v in pipe.components.items()
                                             if k in StableDiffusionXLPipeline._get_signature_keys(
                                                 StableDiffusionXLPipeline)[0]}, add_watermarker=False)
        passes.append(([IP_ADAPTER], plain))
    rows, images = [], {}
    for names, p in passes:
        if IP_ADAPTER in names:
            folder, weight = os.path.split(ip_adapter)
            p.load_ip_adapter(folder, subfolder="", weight_name=weight, image_encoder_folder=None)
        for sample in tqdm(samples, desc=" + ".join(names), unit="sample", disable=not progress, dynamic_ncols=True):
            refs = [[crop(img, m) for img, m in s.scoring] for s in sample.subjects]
            for system in names:
                gen = generate(p, system, sample, settings)
                if locator is not None and (gen.regions is None or locate == GROUNDING):
                    gen.regions, gen.locator = locator(gen.image, [s.phrase for s in sample.subjects]), GROUNDING
                images[sample.id, system] = gen
                rows.append({"sample": sample.id, "set": sample.set, "system": system, "locator": gen.locator,
                             "subjects": len(sample.subjects), "phrases": [s.phrase for s in sample.subjects],
                             "prompt": sample.prompt, "seed": sample.seed,
                             **score(encoders, gen.image, sample.prompt, refs, gen.regions)})
    return rows, images
