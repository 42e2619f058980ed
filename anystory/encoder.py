"""CLIP path of the subject encoder (§3.2, Eq. 2): CLIP ViT-H/14 penultimate hidden states (257 tokens) of the
segmented subject, compressed by a 4-layer QFormer into m = 64 tokens of the UNet's text width (2048 on SDXL).

The QFormer is IP-Adapter Plus's Resampler (diffusers' ``IPAdapterPlusImageProjection``: learned queries that
cross-attend to [CLIP tokens; queries]), so IP-Adapter Plus-SDXL weights can warm-start it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import IPAdapterPlusImageProjection
from safetensors.torch import load_file


def clip_hidden_states(clip: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """F_clip: the penultimate layer's hidden states, (B, 257, hidden) — aligned with captions (§3.2, [69])."""
    return clip(pixel_values, output_hidden_states=True).hidden_states[-2]


class SubjectQFormer(ModelMixin, ConfigMixin):
    """Eq. 2: E = QFormer(F_clip), (B, num_queries, output_dims)."""

    @register_to_config
    def __init__(self, embed_dims: int = 1280, output_dims: int = 2048, hidden_dims: int = 1280, depth: int = 4,
                 dim_head: int = 64, heads: int = 20, num_queries: int = 64, ffn_ratio: float = 4):
        super().__init__()
        self.resampler = IPAdapterPlusImageProjection(embed_dims=embed_dims, output_dims=output_dims,
                                                      hidden_dims=hidden_dims, depth=depth, dim_head=dim_head,
                                                      heads=heads, num_queries=num_queries, ffn_ratio=ffn_ratio)

    def forward(self, clip_tokens: torch.Tensor) -> torch.Tensor:
        return self.resampler(clip_tokens)

    def load_ip_adapter_image_proj(self, image_proj: dict[str, torch.Tensor], unet: UNet2DConditionModel) -> None:
        """Warm start from IP-Adapter Plus's ``image_proj`` (its Resampler, original key names). Keys are mapped by
        diffusers' own converter. IP-Adapter Plus-SDXL has 16 queries and we have 64: its queries are repeated to
        fill ours, plus noise at a tenth of the init scale so the copies do not stay identical under training."""
        converted = unet._convert_ip_adapter_image_proj_to_diffusers(image_proj, low_cpu_mem_usage=False)
        state = converted.state_dict()
        theirs, ours = state["latents"], self.resampler.latents
        if theirs.shape[1] != ours.shape[1]:
            reps = -(-ours.shape[1] // theirs.shape[1])
            tiled = theirs.repeat(1, reps, 1)[:, : ours.shape[1]]
            state["latents"] = tiled + torch.randn_like(tiled) / tiled.shape[-1] ** 0.5 * 0.1
        self.resampler.load_state_dict(state, strict=True)


class RoutingQFormer(IPAdapterPlusImageProjection):
    """§3.3: a one-query QFormer over one subject's CLIP tokens, giving its routing feature R_i, (B, routing_dim)."""

    def __init__(self, embed_dims: int, routing_dim: int, hidden_dims: int, depth: int = 4, dim_head: int = 64,
                 heads: int = 20, ffn_ratio: float = 4):
        super().__init__(embed_dims=embed_dims, output_dims=routing_dim, hidden_dims=hidden_dims, depth=depth,
                         dim_head=dim_head, heads=heads, num_queries=1, ffn_ratio=ffn_ratio)

    def forward(self, clip_tokens: torch.Tensor) -> torch.Tensor:
        return super().forward(clip_tokens)[:, 0]


def read_ip_adapter(path: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """An IP-Adapter checkpoint as ``{"image_proj": ..., "ip_adapter": ...}``, from ``.bin`` or ``.safetensors``
    (the latter stores them flat, prefixed ``image_proj.`` / ``ip_adapter.``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"IP-Adapter Plus-SDXL weights: no file {str(path)!r}. Fetch them with "
            "`hf download h94/IP-Adapter sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors`."
        )
    if path.suffix == ".safetensors":
        flat = load_file(str(path))
        out: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
        for key, value in flat.items():
            part, _, rest = key.partition(".")
            out[part][rest] = value
        return out
    return torch.load(path, map_location="cpu", weights_only=True)
