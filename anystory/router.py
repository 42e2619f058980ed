"""Decoupled instance-aware subject router (§3.3, Fig. 2 right).

Per subject a one-query routing QFormer over its CLIP tokens gives R_i; the zero image gives the background R_{N+1}.
At every cross-attention layer l a small segmentation decoder turns {R_i} and the latent Z^l into N+1 maps:

1. coarse logits: linearly projected inner product of {R_i} and Z^l;
2. masked cross-attention (Mask2Former [9]): each R_i attends to Z^l only where the coarse map assigns it;
3. refined logits: the same projected inner product with the refined features → M^l = softmax over the N+1 axis.

σ(M) (Eq. 5, 8) is the one-hot of the argmax over N+1 at inference and a hard, straight-through Gumbel-softmax
sample in training [30]. Padded subjects (``valid`` False) get logit −∞: no probability, never selected.

The router is a model (saved on its own, trained in stage 2); the attention processors call it.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import Attention
from torch import nn

from anystory.encoder import RoutingQFormer


class RouterLayer(nn.Module):
    """Routing head of one cross-attention layer: projections for the map logits and the masked cross-attention."""

    def __init__(self, latent_dim: int, routing_dim: int, map_dim: int, map_heads: int):
        super().__init__()
        self.to_q = nn.Linear(routing_dim, map_dim)
        self.to_k = nn.Linear(latent_dim, map_dim)
        self.norm = nn.LayerNorm(routing_dim)
        self.masked_attn = Attention(query_dim=routing_dim, cross_attention_dim=latent_dim, heads=map_heads,
                                     dim_head=map_dim // map_heads, out_bias=True)

    def logits(self, routing: torch.Tensor, latents: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Projected inner product, (B, N+1, S); padded subjects −∞."""
        q, k = self.to_q(routing), self.to_k(latents)
        logits = q @ k.transpose(1, 2) * q.shape[-1] ** -0.5
        return logits.masked_fill(~valid[..., None], float("-inf"))

    def refine(self, routing: torch.Tensor, latents: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Routing features after the masked cross-attention: R_i attends to Z^l only where the coarse map
        assigns it, (B, N+1, routing_dim)."""
        coarse = self.logits(routing, latents, valid)
        assigned = assignment(coarse, stochastic=False).bool()
        # Mask2Former: a query that the coarse map assigns nowhere attends everywhere (no all −∞ row).
        assigned |= ~assigned.any(-1, keepdim=True)
        bias = torch.zeros_like(coarse).masked_fill(~assigned, float("-inf"))
        return routing + self.masked_attn(self.norm(routing), latents, attention_mask=bias)

    def forward(self, routing: torch.Tensor, latents: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.logits(self.refine(routing, latents, valid), latents, valid)


class SubjectRouter(ModelMixin, ConfigMixin):
    """Routing QFormer plus one ``RouterLayer`` per UNet cross-attention layer (in execution order)."""

    @register_to_config
    def __init__(self, latent_dims: Sequence[int], embed_dims: int = 1280, routing_dim: int = 1024,
                 hidden_dims: int = 1280, depth: int = 4, dim_head: int = 64, heads: int = 20, ffn_ratio: float = 4,
                 map_dim: int = 256, map_heads: int = 4):
        super().__init__()
        self.routing_qformer = RoutingQFormer(embed_dims, routing_dim, hidden_dims, depth, dim_head, heads, ffn_ratio)
        self.layers = nn.ModuleList(RouterLayer(d, routing_dim, map_dim, map_heads) for d in latent_dims)

    def routing_features(self, clip_tokens: torch.Tensor) -> torch.Tensor:
        """R_i from CLIP tokens (B, 257, embed_dims) → (B, routing_dim)."""
        return self.routing_qformer(clip_tokens)

    def forward(self, layer: int, latents: torch.Tensor, routing: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Refined routing logits of cross-attention layer ``layer``: latents Z^l (B, S, C_l), routing features
        (B, N+1, routing_dim), valid (B, N+1) → (B, N+1, S); M^l is their softmax over dim 1."""
        return self.layers[layer](routing, latents, valid)


def assignment(logits: torch.Tensor, stochastic: bool) -> torch.Tensor:
    """σ(M) of Eq. 5/8 over dim 1, exactly one-hot in value: the argmax, or a straight-through Gumbel-softmax sample
    (the one-hot of the sample's argmax, with the soft sample's gradient). Written out because
    ``F.gumbel_softmax(hard=True)`` returns ``hard − soft.detach() + soft``, whose ones are 1 ± 1 ulp."""
    if not stochastic:
        return F.one_hot(logits.argmax(1), logits.shape[1]).movedim(-1, 1).to(logits.dtype)
    soft = F.gumbel_softmax(logits, tau=1.0, hard=False, dim=1)
    hard = F.one_hot(soft.argmax(1), logits.shape[1]).movedim(-1, 1).to(logits.dtype)
    return hard + (soft - soft.detach())  # the second term is exactly 0 in value


def downsample_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(…, H, W) masks → (…, h, w) in {0, 1}: area average, cells at least half covered (the loader's rule)."""
    lead = masks.shape[:-2]
    pooled = F.adaptive_avg_pool2d(masks.float().reshape(-1, 1, *masks.shape[-2:]), size)
    return (pooled >= 0.5).float().reshape(*lead, *size)


def masks_at(masks: torch.Tensor | Mapping[object, torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Ground-truth masks (B, N, h, w) at ``size``: downsampled from a tensor at any resolution, or picked by shape
    from a mapping of precomputed ones (e.g. the loader's ``{factor: (B, N, h, w)}``)."""
    if isinstance(masks, Mapping):
        for m in masks.values():
            if tuple(m.shape[-2:]) == tuple(size):
                return m.float()
        raise KeyError(f"no ground-truth masks at {tuple(size)}; have {[tuple(m.shape[-2:]) for m in masks.values()]}")
    return downsample_masks(masks, size)


def routing_loss(maps: Sequence[torch.Tensor], gt_masks: torch.Tensor | Mapping[object, torch.Tensor],
                 valid: torch.Tensor, weight: float = 0.1,
                 ignore: torch.Tensor | Mapping[object, torch.Tensor] | None = None) -> torch.Tensor:
    """Eq. 4 averaged over layers: λ · (1/N) Σ_i ‖M_i^l − M_i^gt‖², with ‖·‖² the mean over the h·w positions (so
    λ = 0.1 does not depend on the layer's resolution) and N the sample's valid subjects.

    maps: soft M^l per layer, (B, N+1, h, w) (the background map, last, is not supervised); gt_masks: (B, N, H, W)
    instance masks of the target at any resolution, or ``{key: (B, N, h, w)}`` per layer resolution; valid (B, N).
    Samples without subjects add nothing; the loss is their mean over the others. ``ignore`` (B, 1, H, W), like
    ``gt_masks``: positions left out of the mean (instances the data engine dropped without a subject slot, which
    the background map would otherwise be taught to claim).
    """
    valid = valid.float()
    count = valid.sum(1)
    per_layer = []
    for m in maps:
        gt = masks_at(gt_masks, m.shape[-2:]).to(m.dtype)
        keep = 1 - masks_at(ignore, m.shape[-2:]).to(m.dtype) if ignore is not None else torch.ones_like(m[:, :1])
        err = ((m[:, :-1] - gt).pow(2) * keep).sum((-2, -1)) / keep.sum((-2, -1)).clamp(min=1) * valid
        per_layer.append(err.sum(1) / count.clamp(min=1))
    per_sample = torch.stack(per_layer).mean(0)
    has = (count > 0).float()
    return weight * (per_sample * has).sum() / has.sum().clamp(min=1)
