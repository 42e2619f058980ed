"""Simplified ReferenceNet (§3.2, Table 1, Eq. 3): the second path of the subject encoder.

A copy of the SDXL UNet with every cross-attention (attn2 and its norm2) removed — the ReferenceNet only extracts
visual features, it needs no text (2.57 B → 2.02 B parameters) — and one zero-initialised subject-mask input
channel. It runs once at timestep 0 on [VAE latent of the segmented reference; downsampled subject mask] and
exposes G^l, the input of every self-attention layer (AnimateAnyone's reference features [28]). G^1 is dropped
(Eq. 3): the first UNet layer has no preceding routing map to mask reference attention with.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import AttnProcessor2_0
from torch import nn

from anystory.attention import transformer_blocks


def simplified_reference_unet(unet: UNet2DConditionModel, mask_channels: int = 1) -> UNet2DConditionModel:
    """In place, and returned: drop attn2 and norm2 of every transformer block (diffusers then skips cross-attention)
    and widen ``conv_in`` by ``mask_channels`` input channels with zero weights (the output is unchanged at init)."""
    for _, block in transformer_blocks(unet):
        block.attn2 = block.norm2 = None
    if mask_channels:
        old = unet.conv_in
        new = nn.Conv2d(old.in_channels + mask_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                        device=old.weight.device, dtype=old.weight.dtype)
        with torch.no_grad():
            new.weight.zero_()
            new.weight[:, : old.in_channels] = old.weight
            new.bias.copy_(old.bias)
        unet.conv_in = new
        unet.register_to_config(in_channels=new.in_channels)
    return unet


class ReferenceCaptureProcessor(AttnProcessor2_0):
    """Plain self-attention that also records its input (the normed hidden states) as G^layer."""

    def __init__(self, layer: int):
        super().__init__()
        self.layer = layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 reference_bank: dict | None = None):
        if reference_bank is not None:
            reference_bank[self.layer] = hidden_states
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class ReferenceNet(ModelMixin, ConfigMixin):
    """``simplified_reference_unet`` as a model: ``forward(latents, masks)`` → [None, G^2, …, G^L].

    ``unet_config`` is the base UNet's config (without the mask channel); ``reference_size`` the reference image
    side (512 in the paper), used for SDXL's size micro-conditioning.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, unet_config: dict, mask_channels: int = 1, reference_size: int = 512):
        super().__init__()
        self.unet = simplified_reference_unet(UNet2DConditionModel.from_config(unet_config), mask_channels)
        blocks = transformer_blocks(self.unet)
        index = {name: i for i, (name, _) in enumerate(blocks)}
        self.unet.set_attn_processor({key: ReferenceCaptureProcessor(index[key.rsplit(".attn1", 1)[0]])
                                      for key in self.unet.attn_processors})
        self.num_layers = len(blocks)

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel, mask_channels: int = 1, reference_size: int = 512) -> ReferenceNet:
        """Initialised from the (pre-trained) UNet's weights (§3.2), copied; the mask channel starts at zero."""
        config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
        with torch.device("meta"):  # keywords: diffusers records positional config arguments as defaults
            ref = cls(unet_config=config, mask_channels=mask_channels, reference_size=reference_size)
        wanted = ref.unet.state_dict()
        state = {k: v.detach().clone() for k, v in unet.state_dict().items() if k in wanted}
        w = state["conv_in.weight"]
        state["conv_in.weight"] = torch.cat([w, w.new_zeros(w.shape[0], mask_channels, *w.shape[2:])], 1)
        ref.unet.load_state_dict(state, strict=True, assign=True)
        return ref

    def forward(self, latents: torch.Tensor, masks: torch.Tensor) -> list[torch.Tensor | None]:
        """latents (K, 4, h, w): VAE latents (× scaling factor) of segmented references; masks (K, 1, h, w) in
        [0, 1] at latent size → per layer G^l (K, h_l·w_l, C_l); None for layer 1."""
        k, cfg = latents.shape[0], self.unet.config
        added = None
        if cfg.addition_embed_type == "text_time":
            # No text reaches the ReferenceNet: a zero pooled-text embedding; an uncropped square reference.
            text_dim = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
            s = self.config.reference_size
            added = {"text_embeds": latents.new_zeros(k, text_dim),
                     "time_ids": latents.new_tensor([s, s, 0, 0, s, s]).expand(k, 6)}
        bank: dict[int, torch.Tensor] = {}
        self.unet(torch.cat([latents, masks.to(latents)], 1), torch.zeros(k, dtype=torch.long, device=latents.device),
                  encoder_hidden_states=latents.new_zeros(k, 1, cfg.cross_attention_dim),  # unused: no attn2
                  added_cond_kwargs=added, cross_attention_kwargs={"reference_bank": bank})
        return [None] + [bank[i] for i in range(1, self.num_layers)]

    def feature_parameter_names(self) -> set[str]:
        """Parameters that reach some G^l. The rest (the last block's attn1/ff, the up path after it, conv_out)
        never get a gradient: stage 1 leaves them frozen so DDP sees no unused parameters. Found by one backward
        on a meta-device copy (about a second at SDXL size, no memory)."""
        in_channels = self.config.unet_config["in_channels"]
        with torch.device("meta"), torch.enable_grad():
            probe = ReferenceNet.from_config(self.config)
            feats = probe(torch.zeros(1, in_channels, 8, 8), torch.zeros(1, self.config.mask_channels, 8, 8))
            sum(f.sum() for f in feats if f is not None).backward()
        return {n for n, p in probe.named_parameters() if p.grad is not None}


@torch.no_grad()
def reference_latents(vae: AutoencoderKL, pixels: torch.Tensor) -> torch.Tensor:
    """ReferenceNet input latents: ``vae.encode(pixels in [−1, 1]).latent_dist.mode() × scaling_factor``. SDXL's VAE
    overflows in float16 (``force_upcast``): it then encodes in float32."""
    upcast = vae.dtype == torch.float16 and vae.config.force_upcast
    x = pixels.to(device=vae.device, dtype=torch.float32 if upcast else vae.dtype)
    if upcast:
        vae.to(torch.float32)
    latents = vae.encode(x).latent_dist.mode() * vae.config.scaling_factor
    if upcast:
        vae.to(torch.float16)
    return latents.to(pixels.dtype)
