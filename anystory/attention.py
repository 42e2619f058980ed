"""Routed attention processors for the SDXL UNet (§3.3, Eq. 5–8), swapped in with ``unet.set_attn_processor``.

Layer l is the l-th ``BasicTransformerBlock`` in execution order (down, mid, up; 70 on SDXL); its cross-attention
(attn2) is "cross-attention layer l" of the paper and its self-attention (attn1) runs just before it.

- ``RoutedAttnProcessor`` (attn2, Eq. 5): text attention plus η Σ_{i=1}^{N+1} σ(M_i^l) ⊙ Attn(Q, E_i Ŵ_k, E_i Ŵ_v),
  with E_{N+1} the background (zero-image) embedding; it computes M^l with the router from Z^l (its input).
- ``ReferenceAttnProcessor`` (attn1, Eq. 6–8): keys/values [Z W_k, G_1 W̃_k, …, G_N W̃_k] with the additive bias
  [0, g(M_1^{l−1}) + γ, …, g(M_N^{l−1}) + γ], g = 0 where σ(M_i^{l−1}) selects the query's position, −∞ elsewhere.
  Layer 1 has no preceding routing map: like the paper, which drops G^1 for this reason (Eq. 3), it stays plain.

Strengths: η scales Eq. 5 (0 = no CLIP subject condition); γ is an additive attention bias on the reference
tokens: γ = −∞ turns reference attention off, 0 is the neutral (trained) strength (the paper's convention; "γ = 0
for off" would leave it on). η = 0 with γ = −∞ reproduces base SDXL exactly. Without a ``RoutingState`` (``anystory=None``) both processors are plain SDXL attention: that is
the adapter bypass.

The processors are written for SDXL's transformer-block attention (3-D tokens; no group, spatial or q/k norm;
no residual inside attention) and fall back to diffusers' ``AttnProcessor2_0`` wherever they add nothing.

Per-forward data reaches the processors as ``cross_attention_kwargs={"anystory": RoutingState(...)}``: no state
lives on the modules, so gradient checkpointing can recompute any block (maps are stored per layer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

from anystory.router import SubjectRouter, assignment, masks_at

_SECTIONS = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
_PLAIN = AttnProcessor2_0()  # SDXL's own attention: the bypass and the layers without subject input


def transformer_blocks(unet: UNet2DConditionModel) -> list[tuple[str, BasicTransformerBlock]]:
    """(name, block) of every transformer block in execution order. ``named_modules`` lists ``up_blocks`` before
    ``mid_block`` (registration order), so sort by UNet section; the sort is stable within a section."""
    blocks = [(n, m) for n, m in unet.named_modules() if isinstance(m, BasicTransformerBlock)]
    return sorted(blocks, key=lambda nm: _SECTIONS[nm[0].split(".")[0]])


@dataclass
class SubjectConditions:
    """Encoded subjects of a batch: computed once per generation, reused at every denoising step (the cache).

    embeddings: (B, N+1, m, C) — E_1..E_N (Eq. 2), then E_{N+1}, the background (zero image) embedding;
    routing: (B, N+1, d_r) — R_1..R_N, R_{N+1};
    reference: per layer, G^l (B, N, T_l, C_l) from the ReferenceNet (Eq. 3), None where unused (layer 1, or no
      subject in the batch);
    valid: (B, N+1) bool — padded subject slots False, the background always True.
    """

    embeddings: torch.Tensor
    routing: torch.Tensor
    reference: list[torch.Tensor | None]
    valid: torch.Tensor

    @property
    def num_subjects(self) -> int:
        return self.valid.shape[1] - 1

    def unconditional(self) -> SubjectConditions:
        """Every subject's E_i replaced by the background E_{N+1}: the CFG unconditional (§3.3, §4.1). Routing and
        reference features are kept."""
        bg = self.embeddings[:, -1:].expand_as(self.embeddings)
        return replace(self, embeddings=bg)

    def repeat(self, n: int) -> SubjectConditions:
        def rep(t):
            return None if t is None else t.repeat_interleave(n, 0)

        return SubjectConditions(rep(self.embeddings), rep(self.routing), [rep(g) for g in self.reference],
                                 rep(self.valid))

    @staticmethod
    def cat(parts: list[SubjectConditions]) -> SubjectConditions:
        def cat(ts):
            return None if ts[0] is None else torch.cat(ts)

        return SubjectConditions(cat([p.embeddings for p in parts]), cat([p.routing for p in parts]),
                                 [cat(list(gs)) for gs in zip(*(p.reference for p in parts))],
                                 cat([p.valid for p in parts]))


@dataclass
class RoutingState:
    """What one UNet forward shares across its processors, and the routing maps it produced.

    ``routing_masks`` (B, N, H, W) or a mapping by resolution, optional: ground-truth instance masks that replace
    σ(M) (and the router) — for stage 1, where the router is not trained yet, or for user-given layouts.
    """

    conditions: SubjectConditions
    router: SubjectRouter
    latent_size: tuple[int, int]
    eta: float = 1.0
    gamma: float = 0.0
    stochastic: bool = False  # Gumbel-softmax σ (training) instead of argmax
    routing_masks: object = None
    maps: dict[int, torch.Tensor] = field(default_factory=dict)  # soft M^l, (B, N+1, h·w)
    assignments: dict[int, torch.Tensor] = field(default_factory=dict)  # σ(M^l), (B, N+1, h·w)

    def grid(self, tokens: int) -> tuple[int, int]:
        """(h, w) of a layer with ``tokens`` positions: the latent halved k times (stride-2 convs round up)."""
        h, w = self.latent_size
        while h * w > tokens:
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        if h * w != tokens:
            raise ValueError(f"{tokens} positions is no downsampling of the {self.latent_size} latent")
        return h, w

    def route(self, layer: int, latents: torch.Tensor) -> torch.Tensor:
        """σ(M^l) for cross-attention layer ``layer`` from its input Z^l (B, S, C); records M^l and σ(M^l)."""
        if self.routing_masks is not None:
            h, w = self.grid(latents.shape[1])
            gt = masks_at(self.routing_masks, (h, w)).to(latents) * self.conditions.valid[:, :-1, None, None]
            gt = torch.cat([gt, 1 - gt.sum(1, keepdim=True).clamp(max=1)], 1).flatten(2)  # background: no mask
            sigma = soft = assignment(gt, stochastic=False)  # overlaps: the first subject wins
        else:
            c = self.conditions
            logits = self.router(layer, latents.to(c.routing.dtype), c.routing, c.valid)
            soft, sigma = logits.softmax(1), assignment(logits, self.stochastic)
        self.maps[layer], self.assignments[layer] = soft, sigma.detach()
        return sigma

    def previous_assignment(self, layer: int, tokens: int) -> torch.Tensor:
        """σ(M^{l−1}) resized (nearest: stays one-hot) to this layer's grid, (B, N+1, tokens)."""
        prev = self.assignments[layer - 1]
        src, dst = self.grid(prev.shape[-1]), self.grid(tokens)
        if src == dst:
            return prev
        return F.interpolate(prev.unflatten(-1, src), size=dst, mode="nearest").flatten(2)

    def routing_maps(self) -> list[torch.Tensor]:
        """Soft maps M^l per layer in order, (B, N+1, h, w)."""
        return [self.maps[k].unflatten(-1, self.grid(self.maps[k].shape[-1])) for k in sorted(self.maps)]


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, H·D) → (B, H, L, D)."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """(B, H, L, D) → (B, L, H·D)."""
    return x.transpose(1, 2).flatten(-2)


def _clone_linear(linear: nn.Linear) -> nn.Linear:
    """A new trainable copy of ``linear`` (same shape, device, dtype and weights)."""
    new = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype)
    new.load_state_dict(linear.state_dict())
    return new


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, bias: torch.Tensor | None = None):
    """Multi-head attention of (B, L, H·D) tokens, or of (B, N, L, H·D) per-subject tokens (Eq. 5): the subject axis
    is folded into the batch, because PyTorch's fused kernels (flash, memory-efficient) take 4-D tensors only and
    5-D ones fall back to the math path."""
    lead = q.shape[:-2]
    q, k, v = (x.flatten(0, len(lead) - 1) for x in (q, k, v))
    out = F.scaled_dot_product_attention(_heads(q, heads), _heads(k, heads), _heads(v, heads), attn_mask=bias)
    return _merge(out).unflatten(0, lead).to(q.dtype)


class ReferenceAttnProcessor(nn.Module):
    """Self-attention of layer ``layer`` with reference attention (Eq. 6–8). Trainable W̃_k, W̃_v (``to_k_ref``,
    ``to_v_ref``), initialised from the layer's own W_k, W_v (AnimateAnyone's reference attention shares them).
    Layer 0 stays plain, so it has none (no parameter without a gradient)."""

    def __init__(self, attn: Attention, layer: int):
        super().__init__()
        self.layer = layer
        if layer == 0:
            return
        self.to_k_ref, self.to_v_ref = _clone_linear(attn.to_k), _clone_linear(attn.to_v)

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, temb=None, anystory: RoutingState | None = None) -> torch.Tensor:
        reference = None if anystory is None or self.layer == 0 else anystory.conditions.reference[self.layer]
        if reference is None or anystory.gamma == float("-inf"):
            return _PLAIN(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        b, s, _ = hidden_states.shape
        n, t = reference.shape[1:3]
        reference = reference.to(hidden_states)
        key = torch.cat([attn.to_k(hidden_states), self.to_k_ref(reference).flatten(1, 2)], 1)
        value = torch.cat([attn.to_v(hidden_states), self.to_v_ref(reference).flatten(1, 2)], 1)
        # Eq. 7-8: query u sees subject i's tokens iff σ(M_i^{l−1})_u = 1; they get + γ.
        sigma = anystory.previous_assignment(self.layer, s)[:, :n].transpose(1, 2)  # (B, S, N)
        ref_bias = torch.where(sigma.bool(), anystory.gamma, float("-inf")).to(hidden_states.dtype)
        bias = torch.cat([ref_bias.new_zeros(b, s, s), ref_bias.repeat_interleave(t, -1)], -1)
        out = _attention(attn.to_q(hidden_states), key, value, attn.heads, bias[:, None])
        return attn.to_out[1](attn.to_out[0](out))


class RoutedAttnProcessor(nn.Module):
    """Cross-attention of layer ``layer`` with routed decoupled subject attention (Eq. 5). Trainable Ŵ_k, Ŵ_v
    (``to_k_ip``, ``to_v_ip``, shared by the N+1 embeddings), initialised from the text W_k, W_v as IP-Adapter does."""

    def __init__(self, attn: Attention, layer: int):
        super().__init__()
        self.layer = layer
        self.to_k_ip, self.to_v_ip = _clone_linear(attn.to_k), _clone_linear(attn.to_v)

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, temb=None, anystory: RoutingState | None = None) -> torch.Tensor:
        if anystory is None:
            return _PLAIN(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        b, s, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, encoder_hidden_states.shape[1], b)
            attention_mask = attention_mask.view(b, attn.heads, -1, attention_mask.shape[-1])
        query = attn.to_q(hidden_states)
        out = _attention(query, attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states), attn.heads,
                         attention_mask)
        sigma = anystory.route(self.layer, hidden_states)  # (B, N+1, S)
        if anystory.eta != 0:
            subjects = anystory.conditions.embeddings.to(hidden_states)  # (B, N+1, m, C)
            n1 = subjects.shape[1]
            per_subject = _attention(query[:, None].expand(-1, n1, -1, -1), self.to_k_ip(subjects),
                                     self.to_v_ip(subjects), attn.heads)  # (B, N+1, S, inner)
            out = out + anystory.eta * (sigma.to(out.dtype)[..., None] * per_subject).sum(1)
        return attn.to_out[1](attn.to_out[0](out))


def install_processors(unet: UNet2DConditionModel) -> list[tuple[ReferenceAttnProcessor, RoutedAttnProcessor]]:
    """Swap every transformer block's attn1/attn2 processor for the AnyStory ones (layer = execution index) and
    return them in layer order. Their parameters become part of ``unet`` (as ``…attn1.processor.to_k_ref``)."""
    blocks = transformer_blocks(unet)
    layers = [(ReferenceAttnProcessor(b.attn1, i), RoutedAttnProcessor(b.attn2, i)) for i, (_, b) in
              enumerate(blocks)]
    index = {name: i for i, (name, _) in enumerate(blocks)}
    procs = {}
    for key in unet.attn_processors:
        block, _, which = key.rpartition(".processor")[0].rpartition(".")
        procs[key] = layers[index[block]][0 if which == "attn1" else 1]
    unet.set_attn_processor(procs)
    return layers


def installed_processors(unet: UNet2DConditionModel) -> list[tuple[ReferenceAttnProcessor, RoutedAttnProcessor]]:
    """The AnyStory processors already on ``unet`` in layer order, or [] when it has plain ones."""
    layers = [(b.attn1.processor, b.attn2.processor) for _, b in transformer_blocks(unet)]
    if all(isinstance(a, ReferenceAttnProcessor) and isinstance(c, RoutedAttnProcessor) for a, c in layers):
        return layers
    return []
