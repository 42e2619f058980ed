"""Generate every sample with AnyStory and the baselines on the same prompt and seed, and score each image.

Systems: ``anystory`` (the trained adapters), ``base-sdxl`` (the same pipeline with ``subjects=None``: the
adapters bypassed), ``ip-adapter`` (IP-Adapter Plus SDXL loaded by diffusers' ``load_ip_adapter`` into the
same base; run last because it replaces the UNet's attention processors), and the known-answer systems of
``calibration`` on samples with a real target frame.

Like with like: by default every system's subjects are located the same way, by phrase with Grounding DINO + SAM
(``locate.PhraseLocator``); AnyStory's routing maps give extra ``*_routing`` columns. ``locate="routing"`` scores
AnyStory by its routing maps instead (the report then refuses its differences in the region metrics). Each row
records its ``locator``.
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
from training.evaluate import calibration
from training.evaluate.metrics import REGION_METRICS, crop, region_scores, score
from training.evaluate.sets import EvalSample

log = logging.getLogger(__name__)

ANYSTORY, BASE, IP_ADAPTER = "anystory", "base-sdxl", "ip-adapter"
BASELINES = (BASE, IP_ADAPTER)
SEGMENTED, UNSEGMENTED = "segmented", "unsegmented"  # how CLIP-I and DINO see the references
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
    routed: np.ndarray | None = None  # (N, H, W) bool subject regions from AnyStory's routing maps
    overlay: np.ndarray | None = None  # the routing-map segmentation over the image
    regions: np.ndarray | None = None  # the regions scored: routed or located by phrase
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
    routed = segment_from_routing_maps(out.routing_maps, image.shape[:2])[0]
    return Generated(image, routed, routing_overlay(image, out.routing_maps))


def _locate(gen: Generated, sample: EvalSample, locator: PhraseLocator | None, locate: str) -> None:
    """Set ``gen.regions`` and ``gen.locator``: the routing maps where asked (or where no locator is loaded), else
    the phrase locator, else nothing."""
    if gen.routed is not None and (locate == ROUTING or locator is None):
        gen.regions, gen.locator = gen.routed, ROUTING
    elif locator is not None:
        gen.regions, gen.locator = locator(gen.image, [s.phrase for s in sample.subjects]), GROUNDING


def _references(sample: EvalSample, references: str) -> tuple[list, list, list | None]:
    """Per subject: what CLIP-I and DINO compare with (the real images, or segmented), the segmented crops the
    region metrics compare with, and (real target frame only) the crop each subject was generated from."""
    segmented = [[crop(img, m) for img, m in s.scoring] for s in sample.subjects]
    whole = segmented if references == SEGMENTED else [[img for img, _ in s.scoring] for s in sample.subjects]
    given = [crop(s.image, s.mask) for s in sample.subjects] if sample.target is not None else None
    return whole, segmented, given


def run(samples: list[EvalSample], pipe: AnyStoryPipeline, encoders: Encoders, settings: Settings,
        ip_adapter: str | None = None, progress: bool = True, locator: PhraseLocator | None = None,
        locate: str = GROUNDING, references: str = UNSEGMENTED, calibrate: tuple[str, ...] = ()
        ) -> tuple[list[dict], dict[tuple[str, str], Generated]]:
    """One row per (sample, system) with its scores, and the images by (sample id, system). ``ip_adapter``: a
    weight file from ``ip_adapter_file`` (None: not run); ``calibrate``: known-answer systems of ``calibration``
    (samples without a real target frame skip them). ``locator`` finds the subjects of every image (None: only
    routing maps locate); ``locate``: GROUNDING (every system alike) or ROUTING (AnyStory by its maps)."""
    systems = [ANYSTORY, BASE]
    passes = [(systems, pipe)]
    if ip_adapter is not None:
        plain = StableDiffusionXLPipeline(**{k: v for k, v in pipe.components.items()
                                             if k in StableDiffusionXLPipeline._get_signature_keys(
                                                 StableDiffusionXLPipeline)[0]}, add_watermarker=False)
        passes.append(([IP_ADAPTER], plain))
    if calibrate:
        passes.append((list(calibrate), None))
    rows, images = [], {}
    for names, p in passes:
        if IP_ADAPTER in names:
            folder, weight = os.path.split(ip_adapter)
            p.load_ip_adapter(folder, subfolder="", weight_name=weight, image_encoder_folder=None)
        for sample in tqdm(samples, desc=" + ".join(names), unit="sample", disable=not progress, dynamic_ncols=True):
            whole, segmented, given = _references(sample, references)
            phrases = [s.phrase for s in sample.subjects]
            for system in names:
                if system in calibration.SYSTEMS:
                    if not calibration.applicable(sample):
                        continue
                    gen = Generated(calibration.generate(system, sample))
                else:
                    gen = generate(p, system, sample, settings)
                _locate(gen, sample, locator, locate)
                images[sample.id, system] = gen
                row = score(encoders, gen.image, sample.prompt, whole, gen.regions, phrases, segmented, given)
                if gen.routed is not None and gen.locator != ROUTING:  # the routing maps' view, labelled
                    routed = region_scores(encoders, gen.image, gen.routed, phrases,
                                           [encoders.dino_images(r) for r in segmented],
                                           None if given is None else [encoders.dino_images([g]) for g in given])
                    row |= {f"{m}_routing": routed[m] for m in REGION_METRICS}
                rows.append({"sample": sample.id, "set": sample.set, "cluster": sample.cluster, "system": system,
                             "locator": gen.locator, "references": references, "subjects": len(sample.subjects),
                             "phrases": phrases, "prompt": sample.prompt, "seed": sample.seed, **row})
    return rows, images
