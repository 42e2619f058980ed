"""Instance masks from boxes with SAM (MS-Diffusion §A and Subject-Diffusion §3.1 prompt SAM with the
detector's boxes): ``Segmenter(spec, params)(images, boxes)`` → per image one H×W bool mask per box.

Backends: transformers' ``SamModel`` (default; the image encoder runs once per batch of images, the mask
decoder once per image with all its boxes) and the official ``segment-anything`` (``backend: official``;
``path`` = its checkpoint, the model size read from the name, e.g. ``sam_vit_h_4b8939.pth``).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from datagen import devices, tiny
from datagen.models import ModelSpec
from datagen.params import Params

Box = list[float]


class SegmentationParams(Params):
    batch_size: int = 4  # images per image-encoder call
    official_model_type: str | None = None  # vit_h | vit_l | vit_b; None: from the checkpoint's file name


class Segmenter:
    def __init__(self, spec: ModelSpec, params: SegmentationParams | None = None):
        self.params = params or SegmentationParams()
        self.official = spec.backend == "official"
        self.device, self.dtype = devices.placement(spec)
        if self.official:
            from segment_anything import SamPredictor

            sam = tiny.sam_official() if spec.mode == "tiny" else load_official(spec.path, self.params)
            self.predictor = SamPredictor(sam.to(self.device).eval())
        else:
            if spec.mode == "tiny":
                model, self.processor = tiny.sam()
            else:
                from transformers import SamModel, SamProcessor

                self.processor = SamProcessor.from_pretrained(spec.path)
                model = SamModel.from_pretrained(spec.path, dtype=self.dtype)
            self.model = model.to(self.device, self.dtype).eval()

    @torch.inference_mode()
    def __call__(self, images: list[np.ndarray], boxes: list[list[Box]]) -> list[list[np.ndarray]]:
        masks: list[list[np.ndarray]] = [[] for _ in images]
        todo = [i for i, b in enumerate(boxes) if b]
        for start in range(0, len(todo), self.params.batch_size):
            batch = todo[start:start + self.params.batch_size]
            run = self._official if self.official else self._transformers
            for i, m in zip(batch, run([images[i] for i in batch], [boxes[i] for i in batch])):
                masks[i] = m
        return masks

    def _transformers(self, images: list[np.ndarray], boxes: list[list[Box]]) -> list[list[np.ndarray]]:
        inputs = self.processor(images=images, return_tensors="pt")
        embeddings = self.model.get_image_embeddings(inputs["pixel_values"].to(self.device, self.dtype))
        out = []
        for k, (image, bx) in enumerate(zip(images, boxes)):
            prompt = self.processor(images=image, input_boxes=[bx], return_tensors="pt")
            pred = self.model(image_embeddings=embeddings[k:k + 1],
                              input_boxes=prompt["input_boxes"].to(self.device, self.dtype), multimask_output=False)
            full = self.processor.post_process_masks(pred.pred_masks.float().cpu(), prompt["original_sizes"],
                                                     prompt["reshaped_input_sizes"])[0]  # (boxes, 1, H, W)
            out.append([m[0].numpy().astype(bool) for m in full])
        return out

    def _official(self, images: list[np.ndarray], boxes: list[list[Box]]) -> list[list[np.ndarray]]:
        out = []
        for image, bx in zip(images, boxes):
            self.predictor.set_image(image)
            prompt = self.predictor.transform.apply_boxes_torch(torch.tensor(bx, dtype=torch.float32,
                                                                             device=self.device), image.shape[:2])
            masks, _, _ = self.predictor.predict_torch(point_coords=None, point_labels=None, boxes=prompt,
                                                       multimask_output=False)
            out.append([m[0].cpu().numpy().astype(bool) for m in masks])
        return out


def load_official(checkpoint: str, p: SegmentationParams):
    from segment_anything import sam_model_registry

    model_type = p.official_model_type or next(
        (t for t in ("vit_h", "vit_l", "vit_b") if t in os.path.basename(checkpoint)), None)
    if model_type is None:
        raise ValueError(f"cannot tell the SAM size from {checkpoint!r}: set segmentation.official_model_type")
    return sam_model_registry[model_type](checkpoint=checkpoint)
