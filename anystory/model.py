"""``AnyStoryModel``: the frozen SDXL UNet and CLIP image encoder plus AnyStory's trainable parts, with the training
forward, the two stages' parameter groups and adapter-only checkpoints.

    model = AnyStoryModel.build("tiny")                      # or build("sdxl", pretrained=SDXL dir, clip_pretrained=…)
    out = model(noisy_latents, timesteps, prompt_embeds, {"text_embeds": …, "time_ids": …},
                SubjectBatch(clip_pixel_values, reference_latents, reference_masks, valid, drop))
    loss = mse(out.noise_pred, noise) + routing_loss(out.routing_maps, gt_masks, valid)      # stage 2

Parts and stages (§3.4): stage 1 trains the subject QFormer, the ReferenceNet and the per-layer subject k/v (Eq. 5)
and reference k/v (Eq. 6) in the UNet's attention processors; stage 2 freezes them and trains the router (routing
QFormer + per-layer routing heads). The router is untrained in stage 1: pass the target's instance masks as
``routing_masks`` there, they stand in for σ(M) (the paper does not say how stage 1 routes; this keeps stage 1's
subject injection where inference will put it).

``subjects=None`` bypasses every adapter (output = base SDXL, bit for bit); a ``SubjectBatch`` with no valid
subject still adds Eq. 5's background term. Padded subject slots (``valid`` False) are excluded from routing,
from Eq. 5 and from reference attention.

Training recipe: ``params = model.freeze_for_stage(s)``; for bf16, ``model.cast_frozen(torch.bfloat16)`` and the
forward under ``torch.autocast``; ``model.enable_gradient_checkpointing()``. Every returned parameter gets a
gradient at every step when a batch holds a subject, η ≠ 0 and γ > −∞ (ReferenceNet weights that reach no feature
stay frozen, layer 1 has no reference k/v), so DDP needs no ``find_unused_parameters``. Checkpoints:
``save_adapters(dir)`` / ``load_adapters(dir)`` (safetensors, no base weights). Ground-truth masks are needed on
the cross-attention grids: latent side / ``routing_factors``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file
from torch import nn

from anystory import builders
from anystory.attention import (
    RoutingState,
    SubjectConditions,
    install_processors,
    installed_processors,
    transformer_blocks,
)
from anystory.encoder import SubjectQFormer, clip_hidden_states, read_ip_adapter
from anystory.reference_net import ReferenceNet
from anystory.router import SubjectRouter

ADAPTER_FORMAT = 1
ADAPTER_CONFIG = "anystory.json"
ADAPTER_FILES = {"subject_encoder": "subject_encoder.safetensors", "reference_net": "reference_net.safetensors",
                 "router": "router.safetensors"}
ADAPTER_PARTS = {"subject_encoder": "subject_qformer", "reference_net": "reference_net", "router": "router"}  # → config


class MissingAdapterPart(FileNotFoundError):
    """An adapters folder without a part it must hold (the message names the part and its file)."""


@dataclass
class SubjectBatch:
    """Subjects of a batch, padded to N_max slots.

    clip_pixel_values (B, N, 3, 224, 224): segmented subjects, CLIP-normalised;
    reference_latents (B, N, 4, h, w): ``reference_latents(vae, segmented reference)`` (512² in the paper);
    reference_masks (B, N, 1, h, w): subject masks at that latent size, in [0, 1];
    valid (B, N) bool: real subjects; drop (B,) bool, optional: replace the sample's subject embeddings by the
    background embedding (classifier-free guidance drop, 10 % in §4.1).
    """

    clip_pixel_values: torch.Tensor
    reference_latents: torch.Tensor
    reference_masks: torch.Tensor
    valid: torch.Tensor
    drop: torch.Tensor | None = None


@dataclass
class AnyStoryOutput:
    noise_pred: torch.Tensor
    routing_maps: list[torch.Tensor]  # soft M^l per cross-attention layer, (B, N+1, h_l, w_l); [] when bypassed


class AnyStoryModel(nn.Module):
    """Owns ``unet`` (frozen; the AnyStory processors carry the trainable subject/reference k/v), ``clip`` (frozen),
    ``subject_qformer``, ``reference_net`` and ``router``. Construct from parts (processors are installed on ``unet``
    unless it already has them) or with ``build``."""

    def __init__(self, unet: UNet2DConditionModel, clip: nn.Module, subject_qformer: SubjectQFormer,
                 reference_net: ReferenceNet, router: SubjectRouter):
        super().__init__()
        self.unet, self.clip = unet.requires_grad_(False), clip.requires_grad_(False)
        self.subject_qformer, self.reference_net, self.router = subject_qformer, reference_net, router
        processors = installed_processors(unet) or install_processors(unet)
        # A plain list: the processors are registered once, inside the UNet (no duplicate names in state_dict).
        self._processors = [p for pair in processors for p in pair]
        self.layer_names = [name for name, _ in transformer_blocks(unet)]

    @classmethod
    def build(cls, size: str = "sdxl", pretrained: str | None = None, clip_pretrained: str | None = None,
              ip_adapter: str | None = None, device=None, dtype=None) -> AnyStoryModel:
        """All parts from the shipped configs of ``size``; the UNet (and the ReferenceNet copied from it) from an SDXL
        directory or hub id ``pretrained``, CLIP from ``clip_pretrained`` (with ``pretrained``, it defaults to
        IP-Adapter's ViT-H/14 in the HF cache), the subject QFormer and subject k/v warm-started from an IP-Adapter
        Plus-SDXL file ``ip_adapter`` — each only when given; local files only. Every part is created (or loaded)
        directly on ``device`` in ``dtype`` (``builders.init_context``)."""
        if pretrained is not None and clip_pretrained is None:
            clip_pretrained = builders.CLIP_VIT_H
        unet = builders.build_unet(size, pretrained, device=device, dtype=dtype)
        clip = builders.build_clip_vision(size, clip_pretrained, device=device, dtype=dtype)
        cfg = builders.load_config(size, "anystory")
        clip_dim = clip.config.hidden_size
        with builders.init_context(device, dtype):
            qformer = SubjectQFormer(embed_dims=clip_dim, output_dims=unet.config.cross_attention_dim,
                                     **cfg["subject_qformer"])
            router = SubjectRouter(latent_dims=[b.attn1.to_q.in_features for _, b in transformer_blocks(unet)],
                                   embed_dims=clip_dim, **cfg["router"])
        model = cls(unet, clip, qformer, ReferenceNet.from_unet(unet, **cfg["reference_net"]), router)
        if ip_adapter is not None:
            model.load_ip_adapter_plus(ip_adapter)
        return model

    # -- encoding (once per generation: the cache) -------------------------------------------------------------

    def encode_subjects(self, subjects: SubjectBatch) -> SubjectConditions:
        """E (Eq. 2), R (§3.3) and G (Eq. 3) of every valid subject, plus the background E_{N+1}, R_{N+1} of the zero
        image (zeros in CLIP's normalised pixel space, as IP-Adapter's unconditional)."""
        valid = subjects.valid.bool()
        b, n = valid.shape
        flat = valid.flatten().nonzero().squeeze(1)  # indices of the valid slots in (B·N)
        pixels = subjects.clip_pixel_values.flatten(0, 1)[flat]
        pixels = torch.cat([pixels, pixels.new_zeros(1, *pixels.shape[1:])])  # last: the zero image
        with torch.no_grad():
            tokens = clip_hidden_states(self.clip, pixels.to(self.clip.dtype))
        embeds = self.subject_qformer(tokens.to(self.subject_qformer.dtype))
        routing = self.router.routing_features(tokens.to(self.router.dtype))

        def slots(per_valid: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
            bg = per_valid[-1]
            out = bg.expand(b * n, *bg.shape).index_copy(0, flat, per_valid[:-1]).unflatten(0, (b, n))
            if drop is not None:
                out = torch.where(drop.view(b, *[1] * (out.dim() - 1)), bg.expand_as(out), out)
            return torch.cat([out, bg.expand(b, 1, *bg.shape)], 1)

        reference: list[torch.Tensor | None] = [None] * len(self.layer_names)
        if len(flat):
            with torch.set_grad_enabled(torch.is_grad_enabled() and any(
                    p.requires_grad for p in self.reference_net.parameters())):
                dtype = self.reference_net.dtype
                feats = self.reference_net(subjects.reference_latents.flatten(0, 1)[flat].to(dtype),
                                           subjects.reference_masks.flatten(0, 1)[flat].to(dtype))
            reference = [None if g is None else
                         g.new_zeros(b * n, *g.shape[1:]).index_copy(0, flat, g).unflatten(0, (b, n)) for g in feats]
        drop = None if subjects.drop is None else subjects.drop.bool()
        return SubjectConditions(embeddings=slots(embeds, drop), routing=slots(routing), reference=reference,
                                 valid=torch.cat([valid, valid.new_ones(b, 1)], 1))

    # -- denoising ----------------------------------------------------------------------------------------------

    def forward(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, encoder_hidden_states: torch.Tensor,
                added_cond_kwargs: dict[str, torch.Tensor], subjects: SubjectBatch | SubjectConditions | None = None,
                *, eta: float = 1.0, gamma: float = 0.0,
                routing_masks: torch.Tensor | Mapping[object, torch.Tensor] | None = None) -> AnyStoryOutput:
        """Noise prediction and the soft routing maps. ``subjects``: a batch (encoded here), already encoded
        conditions (reuse across steps), or None (adapters bypassed). ``eta``: strength of Eq. 5 (0 = no CLIP subject
        term); ``gamma``: additive bias of reference attention, Eq. 7 (−inf = off, 0 = trained strength). σ(M) is a
        Gumbel sample in ``train()`` mode, the argmax in ``eval()``; ``routing_masks`` (B, N, H, W), or a mapping of
        per-resolution masks, replaces it by the ground truth (see module doc)."""
        if subjects is None:
            noise = self.unet(noisy_latents, timesteps, encoder_hidden_states,
                              added_cond_kwargs=added_cond_kwargs).sample
            return AnyStoryOutput(noise, [])
        conditions = subjects if isinstance(subjects, SubjectConditions) else self.encode_subjects(subjects)
        state = RoutingState(conditions, self.router, tuple(noisy_latents.shape[-2:]), eta=eta, gamma=gamma,
                             stochastic=self.training, routing_masks=routing_masks)
        noise = self.unet(noisy_latents, timesteps, encoder_hidden_states, added_cond_kwargs=added_cond_kwargs,
                          cross_attention_kwargs={"anystory": state}).sample
        return AnyStoryOutput(noise, state.routing_maps())

    @property
    def routing_factors(self) -> tuple[int, ...]:
        """Downsampling factors (latent / layer grid) of the cross-attention layers: (2, 4) on SDXL."""
        return tuple(sorted({2 ** _depth(self.unet, name) for name in self.layer_names}))

    # -- training -----------------------------------------------------------------------------------------------

    def attention_parameters(self) -> Iterator[nn.Parameter]:
        """Subject k/v (Eq. 5) and reference k/v (Eq. 6) of every layer."""
        for proc in self._processors:
            yield from proc.parameters()

    def stage1_parameters(self) -> list[nn.Parameter]:
        """Subject QFormer + ReferenceNet (those that reach a feature) + attention k/v."""
        used = self.reference_net.feature_parameter_names()
        reference = [p for name, p in self.reference_net.named_parameters() if name in used]
        return [*self.subject_qformer.parameters(), *reference, *self.attention_parameters()]

    def stage2_parameters(self) -> list[nn.Parameter]:
        """The router: routing QFormer and per-layer routing heads."""
        return list(self.router.parameters())

    def freeze_for_stage(self, stage: int) -> list[nn.Parameter]:
        """requires_grad on the stage's parameters only; returns them (give them to the optimizer)."""
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, not {stage!r}")
        self.requires_grad_(False)
        params = self.stage1_parameters() if stage == 1 else self.stage2_parameters()
        for p in params:
            p.requires_grad_(True)
        return params

    def cast_frozen(self, dtype: torch.dtype) -> None:
        """Frozen weights (base UNet, CLIP, the other stage's parts) to ``dtype``, e.g. bf16; trainable ones keep
        their dtype (fp32 for the optimizer). Call after ``freeze_for_stage``; run the forward under
        ``torch.autocast`` so that the two meet."""
        for p in self.parameters():
            if not p.requires_grad:
                p.data = p.data.to(dtype)

    def enable_gradient_checkpointing(self) -> None:
        self.unet.enable_gradient_checkpointing()
        self.reference_net.enable_gradient_checkpointing()

    # -- adapters -------------------------------------------------------------------------------------------------

    def adapter_state_dicts(self) -> dict[str, dict[str, torch.Tensor]]:
        """The trained tensors by file, keys prefixed by their module (``subject_qformer.``, ``attention.<layer>.``,
        ``reference_net.``, ``router.``): no base-UNet or CLIP tensor is in any of them."""
        attention = {f"attention.{self.layer_names[p.layer]}.{'attn1' if i % 2 == 0 else 'attn2'}.{k}": v
                     for i, p in enumerate(self._processors) for k, v in p.state_dict().items()}

        def prefixed(name: str) -> dict[str, torch.Tensor]:
            return {f"{name}.{k}": v for k, v in getattr(self, name).state_dict().items()}

        return {"subject_encoder": {**prefixed("subject_qformer"), **attention},
                "reference_net": prefixed("reference_net"), "router": prefixed("router")}

    def adapter_config(self) -> dict:
        """What ``anystory.json`` holds: the layer names and the configs of the saved models (JSON-normalised)."""
        configs = {name: {k: v for k, v in getattr(self, name).config.items() if not k.startswith("_")}
                   for name in ADAPTER_PARTS.values()}
        return json.loads(json.dumps({"format": ADAPTER_FORMAT, "layers": self.layer_names, **configs}, default=list))

    def save_adapters(self, directory: str | Path, parts: tuple[str, ...] = tuple(ADAPTER_FILES)) -> None:
        """Write ``anystory.json`` and one safetensors file per part: subject_encoder (QFormer + attention k/v),
        reference_net, router."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        states = self.adapter_state_dicts()
        for part in parts:
            save_file({k: v.detach().contiguous().cpu() for k, v in states[part].items()},
                      str(directory / ADAPTER_FILES[part]), metadata={"format": str(ADAPTER_FORMAT), "part": part})
        (directory / ADAPTER_CONFIG).write_text(json.dumps(self.adapter_config(), indent=2))

    def load_adapters(self, directory: str | Path, parts: tuple[str, ...] = tuple(ADAPTER_FILES)) -> list[str]:
        """Load ``parts`` (default: all three, what inference needs) from ``directory``, strictly; returns their
        names. A part missing from the folder raises ``MissingAdapterPart`` naming it (a stage-2 checkpoint holds
        the router only: loading it alone would leave the encoder untrained without a word). Refuses adapters saved
        for another architecture (layer names or part configs differ)."""
        directory = Path(directory)
        for name in (ADAPTER_CONFIG, *(ADAPTER_FILES[p] for p in parts)):
            if not (directory / name).is_file():
                part = next((p for p in parts if ADAPTER_FILES[p] == name), "config")
                raise MissingAdapterPart(f"{directory}: adapters lack their {part} part (no {name})")
        saved, ours = json.loads((directory / ADAPTER_CONFIG).read_text()), self.adapter_config()
        for key in ("format", "layers"):
            if saved.get(key) != ours[key]:
                raise ValueError(f"{directory}: adapters saved with another {key} than this model's")
        targets = self.adapter_state_dicts()
        for part in parts:
            if saved[ADAPTER_PARTS[part]] != ours[ADAPTER_PARTS[part]]:
                raise ValueError(f"{directory}: {ADAPTER_PARTS[part]} config differs from this model's")
            state = load_file(str(directory / ADAPTER_FILES[part]))
            missing, unexpected = set(targets[part]) - set(state), set(state) - set(targets[part])
            if missing or unexpected:
                raise ValueError(f"{directory / ADAPTER_FILES[part]}: missing {sorted(missing)[:5]}, "
                                 f"unexpected {sorted(unexpected)[:5]}")
            with torch.no_grad():
                for k, v in state.items():
                    targets[part][k].copy_(v)
        return list(parts)

    def load_ip_adapter_plus(self, path: str | Path) -> None:
        """Warm start from IP-Adapter Plus-SDXL (``ip-adapter-plus_sdxl_vit-h.safetensors`` / ``.bin``): its
        Resampler → subject QFormer, its per-layer ``to_k_ip``/``to_v_ip`` → our subject k/v (Eq. 5). IP-Adapter
        numbers processors in ``unet.attn_processors`` order, cross-attention ones odd: 1, 3, 5, …"""
        state = read_ip_adapter(path)
        self.subject_qformer.load_ip_adapter_image_proj(state["image_proj"], self.unet)
        cross = [p for k, p in self.unet.attn_processors.items() if k.endswith("attn2.processor")]
        with torch.no_grad():
            for i, proc in enumerate(cross):
                proc.to_k_ip.weight.copy_(state["ip_adapter"][f"{2 * i + 1}.to_k_ip.weight"])
                proc.to_v_ip.weight.copy_(state["ip_adapter"][f"{2 * i + 1}.to_v_ip.weight"])


def _depth(unet: UNet2DConditionModel, block_name: str) -> int:
    """How many times the latent is halved before block ``block_name`` runs."""
    section, rest = block_name.split(".", 1)
    n_down = sum(1 for b in unet.down_blocks if b.downsamplers is not None)
    if section == "mid_block":
        return n_down
    index = int(rest.split(".", 1)[0])
    if section == "down_blocks":
        return sum(1 for b in unet.down_blocks[:index] if b.downsamplers is not None)
    return n_down - sum(1 for b in unet.up_blocks[:index] if b.upsamplers is not None)
