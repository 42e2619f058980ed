"""Turn a plan into tensors: the target at its aspect bucket with SDXL micro-conditioning and routing ground truth,
and per subject a segmented, augmented reference for CLIP (224²) and ReferenceNet (512² + latent-size mask).

Geometry is done once per output with PIL's ``resize(box=…)`` so images and masks go through the same transform.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from datagen import shards
from training.config import AugmentParams
from training.plan import Plan

_CLIP_MEAN = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)
_CLIP_STD = torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)


def fit_target(height: int, width: int, bucket: tuple[int, int], rng: np.random.Generator,
               center: bool) -> tuple[tuple[float, float, float, float], dict[str, tuple[int, int]]]:
    """Resize-to-cover then crop to the bucket: the crop box in source pixels and SDXL's micro-conditioning
    (original size, crop top-left in resized pixels, target size; SDXL paper §2.2)."""
    bh, bw = bucket
    scale = max(bh / height, bw / width)
    spare_y, spare_x = max(0, int(height * scale + 1e-6) - bh), max(0, int(width * scale + 1e-6) - bw)
    top = spare_y // 2 if center else int(rng.integers(spare_y + 1))
    left = spare_x // 2 if center else int(rng.integers(spare_x + 1))
    box = (left / scale, top / scale, (left + bw) / scale, (top + bh) / scale)
    micro = {"original_size": (height, width), "crop_top_left": (top, left), "target_size": (bh, bw)}
    return box, micro


def downsample_mask(mask: np.ndarray, box: tuple[float, ...] | None, size: tuple[int, int],
                    min_cover: float = 0.5) -> np.ndarray:
    """Area-average the mask (within ``box``) onto an h×w grid and keep cells covered at least ``min_cover``
    ({0, 1}; half by default)."""
    im = Image.fromarray(mask.astype(np.float32), "F")
    out = np.asarray(im.resize((size[1], size[0]), Image.Resampling.BOX, box=box))
    return (out >= min_cover).astype(np.float32)


def ignore_mask(boxes: list[list[float]], height: int, width: int) -> np.ndarray:
    """A frame's ``ignore`` region (meta: boxes of instances without a subject) as an H×W mask."""
    out = np.zeros((height, width), bool)
    for x0, y0, x1, y1 in boxes:
        out[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = True
    return out


def routing_targets(masks: list[np.ndarray], box: tuple[float, ...], bucket: tuple[int, int], latent_scale: int,
                    factors: tuple[int, ...], min_cover: float = 0.5) -> dict[int, np.ndarray]:
    """Eq. 4's M_gt: each subject's whole target-frame mask, downsampled to every attention grid of the UNet
    (latent / factor). The whole instance is the target even when its reference was cropped (§3.3)."""
    out = {}
    for f in factors:
        step = latent_scale * f
        if bucket[0] % step or bucket[1] % step:
            raise ValueError(f"bucket {bucket} is not a multiple of {step} (latent scale × attention factor {f})")
        size = (bucket[0] // step, bucket[1] // step)
        out[f] = (np.stack([downsample_mask(m, box, size, min_cover) for m in masks]) if masks
                  else np.zeros((0, *size)))
    return out


def segmented_crop(image: np.ndarray, mask: np.ndarray, margin: float, fill: int) -> tuple[Image.Image, Image.Image]:
    """The subject's box grown by ``margin`` of its size per side, background replaced by ``fill`` (§3.2)."""
    x0, y0, x1, y1 = shards.mask_box(mask)
    mx, my = margin * (x1 - x0), margin * (y1 - y0)
    h, w = mask.shape
    x0, y0 = int(max(0, x0 - mx)), int(max(0, y0 - my))
    x1, y1 = int(min(w, np.ceil(x1 + mx))), int(min(h, np.ceil(y1 + my)))
    crop_mask = mask[y0:y1, x0:x1]
    crop = np.where(crop_mask[..., None], image[y0:y1, x0:x1], np.uint8(fill))
    return Image.fromarray(crop), Image.fromarray(crop_mask.astype(np.uint8) * 255)


def augment_reference(image: Image.Image, mask: Image.Image, params: AugmentParams,
                      rng: np.random.Generator) -> tuple[Image.Image, Image.Image, dict[str, Any]]:
    """Random rotation, random crop and padding to a square (§3.4), the same on image and mask; returns the
    drawn parameters too."""
    fill = (params.fill,) * 3
    angle = float(rng.uniform(-params.rotation, params.rotation))
    image = image.rotate(angle, Image.Resampling.BICUBIC, expand=True, fillcolor=fill)
    mask = mask.rotate(angle, Image.Resampling.BILINEAR, expand=True, fillcolor=0)
    w, h = image.size
    keep = rng.uniform(params.crop_min, 1.0, size=2)  # (y, x) fractions kept
    ch, cw = max(1, round(h * keep[0])), max(1, round(w * keep[1]))
    top, left = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
    image, mask = image.crop((left, top, left + cw, top + ch)), mask.crop((left, top, left + cw, top + ch))
    pad = float(rng.uniform(0, params.pad_max))
    side = round(max(cw, ch) * (1 + pad))
    oy, ox = int(rng.integers(side - ch + 1)), int(rng.integers(side - cw + 1))
    canvas, canvas_mask = Image.new("RGB", (side, side), fill), Image.new("L", (side, side), 0)
    canvas.paste(image, (ox, oy))
    canvas_mask.paste(mask, (ox, oy))
    drawn = {"angle": angle, "keep": tuple(keep.tolist()), "pad": pad, "side": side}
    return canvas, canvas_mask, drawn


def _chw(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image, np.uint8)).permute(2, 0, 1)


def reference_inputs(canvas: Image.Image, canvas_mask: Image.Image, params: AugmentParams) -> dict[str, torch.Tensor]:
    """CLIP and ReferenceNet pixels (uint8, normalised on the device by ``normalize``) and the ReferenceNet
    subject-mask channel at latent size."""
    c, s = params.clip_size, params.reference_size
    m = s // params.latent_scale
    ref_mask = downsample_mask(np.asarray(canvas_mask) > 127, None, (m, m))
    return {
        "clip": _chw(canvas.resize((c, c), Image.Resampling.BICUBIC)),
        "ref": _chw(canvas.resize((s, s), Image.Resampling.BICUBIC)),
        "ref_mask": torch.from_numpy(ref_mask)[None],
    }


def normalize(batch: dict[str, Any], dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """uint8 pixels → model inputs, on whatever device the batch is: target and ReferenceNet pixels in [−1, 1],
    CLIP pixels standardised with CLIP's mean and std. (Workers ship uint8: 4× less to copy and pin.)"""
    out = dict(batch)
    out["pixel_values"] = (batch["pixel_values"].to(dtype) / 127.5 - 1)
    out["ref_pixel_values"] = (batch["ref_pixel_values"].to(dtype) / 127.5 - 1)
    clip = batch["clip_pixel_values"].to(dtype) / 255.0
    mean, std = _CLIP_MEAN.to(clip.device, dtype), _CLIP_STD.to(clip.device, dtype)
    out["clip_pixel_values"] = (clip - mean) / std
    return out


class SampleError(RuntimeError):
    """A sample the loader could not turn into tensors (key, stage and reason in the message)."""


def realize(plan: Plan, params: AugmentParams, factors: tuple[int, ...]) -> dict[str, Any]:
    """Decode the frames and masks the plan uses (not all: a 7-view sample needs two) and build its tensors."""
    rng = np.random.default_rng(plan.seed)
    raw, key = plan.raw, plan.key
    images: dict[int, np.ndarray] = {}

    def frame(j: int) -> np.ndarray:
        if j not in images:
            images[j] = shards.decode_image(raw[f"frame.{j}.jpg"])
        return images[j]

    def mask(j: int, i: int) -> np.ndarray:
        return shards.decode_image(raw[f"mask.{j}.{i}.png"], "L") > 127

    try:
        target = frame(plan.target)
        box, micro = fit_target(*target.shape[:2], plan.bucket, rng, params.center_crop)
        bh, bw = plan.bucket
        pixels = Image.fromarray(target).resize((bw, bh), Image.Resampling.BICUBIC, box=box)
        routing = routing_targets([mask(plan.target, i) for i, _ in plan.subjects], box, plan.bucket,
                                  params.latent_scale, factors)
        # any cell an ignored instance touches is left out of the routing loss
        boxes = plan.meta["frames"][plan.target].get("ignore", [])
        ignore = routing_targets([ignore_mask(boxes, *target.shape[:2])], box, plan.bucket, params.latent_scale,
                                 factors, min_cover=1e-6)
        refs = []
        for i, j in plan.subjects:
            canvas, canvas_mask, _ = augment_reference(*segmented_crop(frame(j), mask(j, i), params.margin,
                                                                       params.fill), params, rng)
            refs.append(reference_inputs(canvas, canvas_mask, params))
    except Exception as e:  # noqa: BLE001 - re-raised with the sample's key and the stage
        raise SampleError(f"{key} ({raw.get('__source__', '?')}): realize: {type(e).__name__}: {e}") from e
    return {
        "key": key,
        "caption": plan.meta["frames"][plan.target].get("caption", ""),
        "pixel_values": _chw(pixels),
        "time_ids": torch.tensor([*micro["original_size"], *micro["crop_top_left"], *micro["target_size"]],
                                 dtype=torch.float32),
        "refs": refs,
        "routing": {f: torch.from_numpy(m) for f, m in routing.items()},
        "routing_ignore": {f: torch.from_numpy(m) for f, m in ignore.items()},
        "drop": plan.drop,
        "pair_change": plan.pair_change,
    }


def collate(items: list[dict[str, Any]], params: AugmentParams, factors: tuple[int, ...]) -> dict[str, Any]:
    """Stack samples of one bucket; subjects padded to ``max_subjects`` with ``subject_valid`` marking real ones."""
    b, n = len(items), params.max_subjects
    c, s, m = params.clip_size, params.reference_size, params.reference_size // params.latent_scale
    clip = torch.zeros(b, n, 3, c, c, dtype=torch.uint8)
    ref = torch.zeros(b, n, 3, s, s, dtype=torch.uint8)
    ref_mask = torch.zeros(b, n, 1, m, m)
    valid = torch.zeros(b, n, dtype=torch.bool)
    change = torch.full((b, n), float("nan"))  # the reference pair's change_score; NaN: self-reference, unmeasured
    routing = {f: torch.zeros(b, n, *items[0]["routing"][f].shape[1:]) for f in factors}
    for k, item in enumerate(items):
        for i, r in enumerate(item["refs"]):
            clip[k, i], ref[k, i], ref_mask[k, i], valid[k, i] = r["clip"], r["ref"], r["ref_mask"], True
            if item["pair_change"][i] is not None:
                change[k, i] = item["pair_change"][i]
        for f in factors:
            routing[f][k, : len(item["refs"])] = item["routing"][f]
    return {
        "keys": [it["key"] for it in items],
        "captions": [it["caption"] for it in items],
        "pixel_values": torch.stack([it["pixel_values"] for it in items]),
        "time_ids": torch.stack([it["time_ids"] for it in items]),
        "clip_pixel_values": clip,
        "ref_pixel_values": ref,
        "ref_masks": ref_mask,
        "subject_valid": valid,
        "routing_masks": routing,
        "routing_ignore": {f: torch.stack([it["routing_ignore"][f] for it in items]) for f in factors},
        "drop_subjects": torch.tensor([it["drop"] for it in items]),
        "pair_change": change,
    }
