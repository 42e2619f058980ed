"""The evaluation's encoders: CLIP ViT-B/32 (CLIP-I, CLIP-T) and DINO ViT-S/16 (DINO, M-DINO), as MS-Diffusion §4.

Real weights come from a local directory or the Hugging Face cache only (``anystory.builders.from_local``: a missing
one fails at start-up with its name and the command that fetches it); ``size="tiny"`` builds small random models
from configs (tests, smoke runs) and marks every number ``synthetic``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, ViTConfig, ViTImageProcessor, ViTModel

from anystory.builders import from_local, tiny_tokenizer

CLIP_B32 = "openai/clip-vit-base-patch32"
DINO_S16 = "facebook/dino-vits16"
TINY_SIDE = 32  # tiny encoders' input side


@dataclass
class Encoders:
    clip: CLIPModel
    clip_processor: CLIPProcessor
    dino: ViTModel
    dino_processor: ViTImageProcessor
    synthetic: bool
    names: dict[str, str] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.clip.parameters()).device

    @torch.no_grad()
    def clip_images(self, images: list[np.ndarray]) -> torch.Tensor:
        """Unit-norm CLIP image embeddings (projected), (B, D)."""
        pixels = self.clip_processor(images=list(images), return_tensors="pt",  # HWC always: a 1×1×3 crop is
                                    input_data_format="channels_last").pixel_values.to(self.device)  # not CHW
        return F.normalize(self.clip.get_image_features(pixel_values=pixels).pooler_output.float(), dim=-1)

    @torch.no_grad()
    def clip_texts(self, texts: list[str]) -> torch.Tensor:
        """Unit-norm CLIP text embeddings, (B, D); prompts longer than CLIP's 77 tokens are truncated."""
        tok = self.clip_processor(text=list(texts), return_tensors="pt", padding=True, truncation=True)
        out = self.clip.get_text_features(input_ids=tok.input_ids.to(self.device),
                                          attention_mask=tok.attention_mask.to(self.device))
        return F.normalize(out.pooler_output.float(), dim=-1)

    @torch.no_grad()
    def dino_images(self, images: list[np.ndarray]) -> torch.Tensor:
        """Unit-norm DINO CLS tokens of the last layer, (B, D)."""
        pixels = self.dino_processor(images=list(images), return_tensors="pt",
                                    input_data_format="channels_last").pixel_values.to(self.device)
        return F.normalize(self.dino(pixel_values=pixels).last_hidden_state[:, 0].float(), dim=-1)


def tiny_clip(seed: int = 0) -> tuple[CLIPModel, CLIPProcessor]:
    """A small random CLIP over the in-memory byte-level tokenizer of ``anystory.builders``."""
    tok = tiny_tokenizer()
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=77, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id)
    vision = dict(image_size=TINY_SIDE, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2)
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    images = CLIPImageProcessor(size={"shortest_edge": TINY_SIDE}, crop_size={"height": TINY_SIDE, "width": TINY_SIDE})
    return model, CLIPProcessor(image_processor=images, tokenizer=tok)


def tiny_dino(seed: int = 0) -> tuple[ViTModel, ViTImageProcessor]:
    torch.manual_seed(seed)
    config = ViTConfig(image_size=TINY_SIDE, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2)
    return (ViTModel(config, add_pooling_layer=False).eval(),
            ViTImageProcessor(size={"height": TINY_SIDE, "width": TINY_SIDE}))


def build_encoders(size: str = "sdxl", clip: str = CLIP_B32, dino: str = DINO_S16, device=None) -> Encoders:
    """Both encoders, real (``clip``/``dino``: hub ids in the local cache or directories) or tiny random."""
    if size == "tiny":
        (c, cp), (d, dp) = tiny_clip(), tiny_dino()
        names = {"clip": "tiny random CLIP", "dino": "tiny random DINO ViT"}
    else:
        c = from_local(CLIPModel.from_pretrained, "CLIP ViT-B/32 (CLIP-I, CLIP-T)", clip, None,
                       f"hf download {clip}")
        cp = from_local(CLIPProcessor.from_pretrained, "CLIP ViT-B/32 processor", clip, None, f"hf download {clip}")
        d = from_local(ViTModel.from_pretrained, "DINO ViT-S/16 (DINO, M-DINO)", dino, None, f"hf download {dino}",
                       add_pooling_layer=False)
        dp = from_local(ViTImageProcessor.from_pretrained, "DINO ViT-S/16 processor", dino, None,
                        f"hf download {dino}")
        names = {"clip": clip, "dino": dino}
    return Encoders(c.eval().to(device), cp, d.eval().to(device), dp, synthetic=size == "tiny", names=names)
