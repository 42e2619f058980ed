"""Captions with Qwen2-VL (AnyStory §3.4 captions its paired data with Qwen2-VL): images in, one string each.

``Captioner(spec, params)(images)`` batches the images through the processor's chat template and greedy
``generate``; any Qwen2-VL-family checkpoint that ``AutoModelForImageTextToText`` loads works.
"""

from __future__ import annotations

import numpy as np
import torch

from datagen import devices, tiny
from datagen.models import ModelSpec
from datagen.params import Params


class CaptionParams(Params):
    prompt: str = "Describe this image in one sentence, naming the people, animals and objects in it."
    max_new_tokens: int = 60
    batch_size: int = 8  # images per generate call
    # Qwen2-VL resizes each image to this pixel budget (its visual token count); real checkpoints only
    min_pixels: int = 256 * 28 * 28
    max_pixels: int = 640 * 28 * 28


class Captioner:
    def __init__(self, spec: ModelSpec, params: CaptionParams | None = None):
        self.params = params or CaptionParams()
        self.device, dtype = devices.placement(spec)
        if spec.mode == "tiny":
            model, self.processor = tiny.qwen2_vl()
        else:
            from transformers import AutoModelForImageTextToText, AutoProcessor

            self.processor = AutoProcessor.from_pretrained(spec.path, min_pixels=self.params.min_pixels,
                                                           max_pixels=self.params.max_pixels)
            model = AutoModelForImageTextToText.from_pretrained(spec.path, dtype=dtype)
        self.model = model.to(self.device, dtype).eval()
        self.processor.tokenizer.padding_side = "left"  # batched generation continues every row at the end
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.params.prompt}]}]
        self.text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    @torch.inference_mode()
    def __call__(self, images: list[np.ndarray]) -> list[str]:
        captions: list[str] = []
        for start in range(0, len(images), self.params.batch_size):
            batch = images[start:start + self.params.batch_size]
            inputs = self.processor(text=[self.text] * len(batch), images=list(batch), padding=True,
                                    return_tensors="pt").to(self.device)
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
            out = self.model.generate(**inputs, max_new_tokens=self.params.max_new_tokens, do_sample=False)
            new = out[:, inputs["input_ids"].shape[1]:]
            captions += [c.strip() for c in self.processor.batch_decode(new, skip_special_tokens=True)]
        return captions
