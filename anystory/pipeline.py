"""``AnyStoryPipeline``: SDXL text-to-image personalised with any number of subjects (§3, §4.1).

    pipe = AnyStoryPipeline.build("sdxl", pretrained=SDXL_DIR, clip_pretrained=CLIP_DIR, adapters=ADAPTER_DIR,
                                  dtype=torch.float16, device="cuda")
    out = pipe("two friends on a beach", subjects=[img_a, img_b], subject_masks=[mask_a, mask_b])
    out.images, out.routing_maps  # routing maps: per UNet call, per cross-attention layer, (B, N+1, h, w)

It is ``StableDiffusionXLPipeline`` with the AnyStory processors on its UNet: subjects are encoded once (CLIP →
subject QFormer and routing QFormer; VAE → ReferenceNet), the conditions are cached for every step and reach the
processors through ``cross_attention_kwargs``. Classifier-free guidance uses the background (zero-image) embedding
as the unconditional subject embedding (§3.3).

Subjects: ``subjects=None`` (the default) bypasses the adapters — plain SDXL; ``subjects=[]`` runs AnyStory with
the background embedding only (Eq. 5 still adds it, so the image differs from plain SDXL unless ``eta=0``).
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path

import diffusers
import numpy as np
import PIL.Image
import torch
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import StableDiffusionXLPipeline
from diffusers.utils import BaseOutput
from transformers import CLIPImageProcessor

from anystory import builders
from anystory.attention import RoutingState, SubjectConditions
from anystory.model import AnyStoryModel, SubjectBatch
from anystory.reference_net import reference_latents
from anystory.router import downsample_masks


@dataclass
class AnyStoryPipelineOutput(BaseOutput):
    images: list[PIL.Image.Image] | np.ndarray
    # [UNet call][layer] (B, N+1, h, w), float16 on CPU (one call a step; "edm-heun": two but the last); [] bypassed
    routing_maps: list[list[torch.Tensor]]


def segment_subject(image, mask=None, margin: float = 0.1, fill: int = 255) -> tuple[PIL.Image.Image, np.ndarray]:
    """§3.2: the subject cut out by its mask (background → ``fill``, white as in training), cropped to the mask's box
    grown by ``margin`` per side and padded to a square; returns the RGB square and its {0, 1} mask."""
    rgb = np.asarray(image.convert("RGB") if isinstance(image, PIL.Image.Image) else image, dtype=np.uint8)
    if mask is None:
        keep = np.ones(rgb.shape[:2], bool)
    else:
        keep = np.asarray(mask.convert("L") if isinstance(mask, PIL.Image.Image) else mask)
        keep = keep > (127 if keep.dtype == np.uint8 else 0.5)
    if not keep.any():
        raise ValueError("subject mask is empty")
    ys, xs = np.nonzero(keep)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    dy, dx = int((y1 - y0) * margin), int((x1 - x0) * margin)
    y0, y1, x0, x1 = max(0, y0 - dy), min(keep.shape[0], y1 + dy), max(0, x0 - dx), min(keep.shape[1], x1 + dx)
    rgb, keep = rgb[y0:y1, x0:x1], keep[y0:y1, x0:x1]
    side = max(keep.shape)
    top, left = (side - keep.shape[0]) // 2, (side - keep.shape[1]) // 2
    canvas = np.full((side, side, 3), fill, np.uint8)
    canvas_mask = np.zeros((side, side), np.float32)
    canvas[top:top + keep.shape[0], left:left + keep.shape[1]] = np.where(keep[..., None], rgb, np.uint8(fill))
    canvas_mask[top:top + keep.shape[0], left:left + keep.shape[1]] = keep
    return PIL.Image.fromarray(canvas), canvas_mask


ADAPTERS = "adapters"  # save_pretrained's adapter folder


def _absolute(path: str | None) -> str | None:
    """A local directory as an absolute path (the saved folder may move); a hub id as it is."""
    return str(Path(path).resolve()) if path is not None and Path(path).exists() else path


class AnyStoryPipeline(StableDiffusionXLPipeline):
    """SDXL pipeline plus ``image_encoder`` (CLIP ViT-H/14), ``subject_qformer``, ``reference_net`` and ``router``."""

    def __init__(self, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler, image_encoder,
                 subject_qformer, reference_net, router, feature_extractor: CLIPImageProcessor | None = None,
                 force_zeros_for_empty_prompt: bool = True, add_watermarker: bool = False):
        super().__init__(vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler, image_encoder,
                         feature_extractor or CLIPImageProcessor(), force_zeros_for_empty_prompt, add_watermarker)
        self.register_modules(subject_qformer=subject_qformer, reference_net=reference_net, router=router)
        self.model = AnyStoryModel(unet, image_encoder, subject_qformer, reference_net, router)

    @classmethod
    def from_model(cls, model: AnyStoryModel, vae, scheduler, text_encoders=(None, None),
                   tokenizers=(None, None)) -> AnyStoryPipeline:
        """A pipeline over ``model``'s parts (shared, not copied) and the SDXL parts outside it; text encoders may be
        left out when the caller passes prompt embeddings."""
        return cls(vae=vae, text_encoder=text_encoders[0], text_encoder_2=text_encoders[1], tokenizer=tokenizers[0],
                   tokenizer_2=tokenizers[1], unet=model.unet, scheduler=scheduler, image_encoder=model.clip,
                   subject_qformer=model.subject_qformer, reference_net=model.reference_net, router=model.router)

    @classmethod
    def build(cls, size: str = "sdxl", pretrained: str | None = None, clip_pretrained: str | None = None,
              adapters: str | None = None, ip_adapter: str | None = None, device=None, dtype=None,
              sampler: str = builders.SAMPLER) -> AnyStoryPipeline:
        """Every component from ``anystory.builders`` (``size="tiny"``: all random and offline), then the trained
        adapters from ``adapters`` (a ``save_adapters`` directory) when given. ``sampler``: one of
        ``builders.SAMPLERS``; "edm" (the default, as the paper samples) is the second-order DPM-Solver++(2M) on
        EDM's noise levels, "edm-heun" EDM's Heun sampler, "edm-euler" Euler on those levels, "euler" SDXL's own."""
        model = AnyStoryModel.build(size, pretrained, clip_pretrained, ip_adapter, device=device, dtype=dtype)
        if adapters is not None:
            model.load_adapters(adapters)
        te, te2, tok, tok2 = builders.build_text_encoders_and_tokenizers(size, pretrained, device=device, dtype=dtype)
        pipe = cls.from_model(model, builders.build_vae(size, pretrained, device=device, dtype=dtype),
                              builders.build_scheduler(pretrained, sampler), (te, te2), (tok, tok2))
        pipe.base = {"size": size, "pretrained": _absolute(pretrained), "clip_pretrained": _absolute(clip_pretrained)}
        return pipe

    def save_pretrained(self, save_directory: str | Path, **_) -> None:
        """diffusers' folder layout without the base weights: ``model_index.json`` (this class, the scheduler's class
        and the base models it was built from — ids or absolute paths), ``scheduler/`` and ``adapters/`` (the
        trained parts as safetensors, ``AnyStoryModel.save_adapters``). ``from_pretrained`` reads it back."""
        base = getattr(self, "base", None)
        if base is None:
            raise ValueError("save_pretrained references the base models: build the pipeline with "
                             "AnyStoryPipeline.build / from_pretrained (or set pipe.base)")
        directory = Path(save_directory)
        self.model.save_adapters(directory / ADAPTERS)
        self.scheduler.save_pretrained(directory / "scheduler")
        index = {"_class_name": type(self).__name__, "_diffusers_version": diffusers.__version__,
                 "scheduler": ["diffusers", type(self.scheduler).__name__], "adapters": ADAPTERS, "base": base}
        (directory / "model_index.json").write_text(json.dumps(index, indent=2))

    @classmethod
    def from_pretrained(cls, directory: str | Path, device=None, dtype=None, **base) -> AnyStoryPipeline:
        """A ``save_pretrained`` folder: the base models from where it references them (override with ``size=``,
        ``pretrained=``, ``clip_pretrained=``), its adapters and scheduler. Local files only."""
        directory = Path(directory)
        index = json.loads((directory / "model_index.json").read_text())
        if index.get("_class_name") != cls.__name__:
            raise ValueError(f"{directory}: model_index.json is a {index.get('_class_name')}, not a {cls.__name__}")
        ref = {**index["base"], **base}
        pipe = cls.build(ref["size"], ref["pretrained"], ref["clip_pretrained"], adapters=str(directory /
                         index["adapters"]), device=device, dtype=dtype)
        library, name = index["scheduler"]
        pipe.scheduler = getattr(importlib.import_module(library), name).from_pretrained(directory / "scheduler")
        return pipe

    def load_adapters(self, directory: str) -> list[str]:
        return self.model.load_adapters(directory)

    @torch.no_grad()
    def encode_subjects(self, subjects: list, subject_masks: list | None = None) -> SubjectConditions:
        """One sample's subject conditions: segmented subject → CLIP pixels (224²) and ReferenceNet input (VAE latent
        of the reference at ``reference_size``², plus its mask at latent size)."""
        masks = subject_masks if subject_masks is not None else [None] * len(subjects)
        if len(masks) != len(subjects):
            raise ValueError(f"{len(subjects)} subjects but {len(masks)} subject masks")
        size, device = self.reference_net.config.reference_size, self._execution_device
        latent = size // self.vae_scale_factor
        clip = torch.zeros(0, 3, 224, 224)
        refs, ref_masks = torch.zeros(0, 4, latent, latent), torch.zeros(0, 1, latent, latent)
        if subjects:
            squares = [segment_subject(image, mask) for image, mask in zip(subjects, masks)]
            clip = self.feature_extractor(images=[im for im, _ in squares], return_tensors="pt").pixel_values
            pixels = torch.stack([torch.from_numpy(np.array(im.resize((size, size), PIL.Image.Resampling.BICUBIC)))
                                  for im, _ in squares]).permute(0, 3, 1, 2).float() / 127.5 - 1
            refs = reference_latents(self.vae, pixels.to(device)).float()
            # one at a time: segmented squares differ in size between subjects
            ref_masks = torch.cat([downsample_masks(torch.from_numpy(m)[None, None], (latent, latent))
                                   for _, m in squares])
        batch = SubjectBatch(clip_pixel_values=clip[None].to(device), reference_latents=refs[None].to(device),
                             reference_masks=ref_masks[None].to(device),
                             valid=torch.ones(1, len(subjects), dtype=torch.bool, device=device))
        return self.model.encode_subjects(batch)

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, subjects: list | None = None,
                 subject_masks: list | None = None, *, eta: float = 1.0, gamma: float = 0.0,
                 num_images_per_prompt: int = 1, num_inference_steps: int = 25, guidance_scale: float = 7.5,
                 height: int | None = None, width: int | None = None, return_routing_maps: bool = True,
                 **kwargs) -> AnyStoryPipelineOutput:
        """``subjects``: images (PIL or HxWx3 uint8 arrays), each with an optional mask in ``subject_masks`` (PIL or
        array; None = the whole image); ``eta`` (Eq. 5) and ``gamma`` (Eq. 6: −inf = no reference attention, 0 =
        trained strength). Defaults are the paper's: 25 steps, CFG 7.5 (with ``build``'s "edm" sampler). Other
        keywords go to ``StableDiffusionXLPipeline.__call__`` (not ``cross_attention_kwargs`` /
        ``callback_on_step_end``, which AnyStory uses)."""
        common = dict(num_images_per_prompt=num_images_per_prompt, num_inference_steps=num_inference_steps,
                      guidance_scale=guidance_scale, height=height, width=width, **kwargs)
        if subjects is None:  # the bypass: plain SDXL
            out = super().__call__(prompt, **common)
            return AnyStoryPipelineOutput(images=out.images, routing_maps=[])
        if isinstance(prompt, str):
            batch = num_images_per_prompt
        elif prompt is not None:
            batch = len(prompt) * num_images_per_prompt
        else:
            batch = kwargs["prompt_embeds"].shape[0] * num_images_per_prompt
        conditions = self.encode_subjects(subjects, subject_masks).repeat(batch)
        if guidance_scale > 1 and self.unet.config.time_cond_proj_dim is None:  # the pipeline's CFG condition
            conditions = SubjectConditions.cat([conditions.unconditional(), conditions])
        height = height or self.default_sample_size * self.vae_scale_factor
        width = width or self.default_sample_size * self.vae_scale_factor
        state = RoutingState(conditions, self.router, (height // self.vae_scale_factor, width // self.vae_scale_factor),
                             eta=eta, gamma=gamma)
        maps: list[list[torch.Tensor]] = []

        def keep_maps(pipe, step, timestep, tensors):
            if return_routing_maps:  # the conditional half of the CFG batch
                maps.append([m[-batch:].to("cpu", torch.float16) for m in state.routing_maps()])
            return {}

        out = super().__call__(prompt, cross_attention_kwargs={"anystory": state}, callback_on_step_end=keep_maps,
                               **common)
        return AnyStoryPipelineOutput(images=out.images, routing_maps=maps)
