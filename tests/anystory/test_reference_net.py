"""Simplified ReferenceNet (§3.2, Eq. 3): no cross-attention, zero-initialised mask channel, per-layer features."""

import torch

from anystory import builders
from anystory.attention import transformer_blocks
from anystory.reference_net import ReferenceNet, reference_latents, simplified_reference_unet
from tests.anystory.conftest import LATENT


def _inputs(k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k, 4, LATENT, LATENT, generator=g), (torch.rand(k, 1, LATENT, LATENT, generator=g) > 0.5).float()


def test_cross_attention_removed_and_mask_channel_zero():
    torch.manual_seed(0)
    unet = builders.build_unet("tiny")
    ref = ReferenceNet.from_unet(unet, mask_channels=1, reference_size=64)
    blocks = transformer_blocks(ref.unet)
    assert len(blocks) == 11 and all(b.attn2 is None and b.norm2 is None for _, b in blocks)
    w = ref.unet.conv_in.weight
    assert w.shape[1] == 5 and (w[:, 4] == 0).all() and torch.equal(w[:, :4], unet.conv_in.weight)
    assert ref.unet.config.in_channels == 5 and ref.config.unet_config["in_channels"] == 4
    # weights are copies of the UNet's, not shared storage
    q_ref = ref.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.weight
    q_unet = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.weight
    assert torch.equal(q_ref, q_unet) and q_ref.data_ptr() != q_unet.data_ptr()
    plain = simplified_reference_unet(builders.build_unet("tiny"), mask_channels=0)
    assert plain.conv_in.in_channels == 4
    assert builders.count_parameters(ref) - builders.count_parameters(plain) == 3 * 3 * 32


def test_features_per_layer_first_dropped_and_mask_ignored_at_init():
    torch.manual_seed(0)
    ref = ReferenceNet.from_unet(builders.build_unet("tiny"), reference_size=64)
    latents, masks = _inputs()
    with torch.no_grad():
        feats = ref(latents, masks)
        no_mask = ref(latents, torch.zeros_like(masks))
    assert feats[0] is None and len(feats) == 11
    dims = [b.attn1.to_q.in_features for _, b in transformer_blocks(ref.unet)]
    tokens = [LATENT**2, *[(LATENT // 2) ** 2] * 8, LATENT**2, LATENT**2]
    assert [tuple(f.shape) for f in feats[1:]] == [(2, t, d) for t, d in zip(tokens[1:], dims[1:])]
    assert all(torch.equal(a, b) for a, b in zip(feats[1:], no_mask[1:]))  # zero-initialised mask channel
    with torch.no_grad():
        ref.unet.conv_in.weight[:, 4] = 0.1
        assert not torch.allclose(ref(latents, masks)[1], ref(latents, torch.zeros_like(masks))[1])


def test_save_and_load_pretrained_round_trip(tmp_path):
    torch.manual_seed(0)
    ref = ReferenceNet.from_unet(builders.build_unet("tiny"), reference_size=64)
    ref.save_pretrained(tmp_path)
    back = ReferenceNet.from_pretrained(tmp_path)
    assert back.config.reference_size == 64 and back.config.mask_channels == 1
    latents, masks = _inputs()
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(ref(latents, masks)[1:], back(latents, masks)[1:]))


def test_feature_parameters_found_on_meta_match_a_real_backward():
    torch.manual_seed(0)
    ref = ReferenceNet.from_unet(builders.build_unet("tiny"), reference_size=64)
    latents, masks = _inputs()
    sum(f.sum() for f in ref(latents, masks) if f is not None).backward()
    with_grad = {n for n, p in ref.named_parameters() if p.grad is not None}
    assert ref.feature_parameter_names() == with_grad
    assert len(with_grad) < len(list(ref.parameters()))


def test_reference_latents_are_the_scaled_vae_mode():
    torch.manual_seed(0)
    vae = builders.build_vae("tiny")
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    lat = reference_latents(vae, pixels)
    assert lat.shape == (2, 4, 8, 8)
    torch.testing.assert_close(lat, vae.encode(pixels).latent_dist.mode().detach() * 0.13025)
