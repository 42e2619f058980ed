"""Invariants of the routed UNet (AnyStory Eq. 5-8) on tiny fp32 models."""

import pytest
import torch

from anystory.attention import SubjectConditions
from anystory.router import routing_loss
from tests.anystory.conftest import LATENT, base_noise, make_subjects, make_unet_inputs

OFF = float("-inf")


def run(model, inputs, subjects, **kw):
    with torch.no_grad():
        return model(**inputs, subjects=subjects, **kw)


def test_bypass_equals_base_sdxl(tiny):
    model, base = tiny
    inputs = make_unet_inputs(2)
    out = run(model, inputs, None)
    assert out.routing_maps == []
    assert (out.noise_pred - base_noise(base, inputs)).abs().max() < 1e-5


def test_eta_zero_and_gamma_off_equals_base_and_each_alone_does_not(tiny):
    model, base = tiny
    inputs, subjects = make_unet_inputs(2), make_subjects([[True, True], [True, False]])
    ref = base_noise(base, inputs)
    diff = lambda **kw: (run(model, inputs, subjects, **kw).noise_pred - ref).abs().max()  # noqa: E731
    assert diff(eta=0.0, gamma=OFF) < 1e-5
    assert diff(eta=1.0, gamma=OFF) > 1e-3  # Eq. 5 alone changes the output
    assert diff(eta=0.0, gamma=0.0) > 1e-3  # reference attention alone changes it
    assert diff(eta=0.0, gamma=-1e4) < 1e-5  # a very negative γ approaches "off"


def test_no_subjects_still_adds_the_background_term(tiny):
    model, base = tiny
    inputs = make_unet_inputs(2)
    ref = base_noise(base, inputs)
    for empty in (make_subjects([[False], [False]]), make_subjects([[], []])):
        out = run(model, inputs, empty)
        assert (out.noise_pred - ref).abs().max() > 1e-3  # E_{N+1} is injected everywhere
        assert all((m[:, -1] == 1).all() for m in out.routing_maps)  # σ selects the background everywhere
        assert (run(model, inputs, empty, eta=0.0).noise_pred - ref).abs().max() < 1e-5


def test_routing_maps_sum_to_one_and_padded_subjects_get_nothing(tiny):
    model, _ = tiny
    out = run(model, make_unet_inputs(2), make_subjects([[True, True, True], [True, False, False]]))
    grids = [tuple(m.shape[-2:]) for m in out.routing_maps]
    assert len(grids) == 11 and set(grids) == {(LATENT, LATENT), (LATENT // 2, LATENT // 2)}
    assert model.routing_factors == (1, 2)
    for m in out.routing_maps:
        assert m.shape[:2] == (2, 4)
        torch.testing.assert_close(m.sum(1), torch.ones(2, *m.shape[-2:]))
        assert (m[1, 1:3] == 0).all()


def test_swapping_subjects_permutes_the_maps(tiny):
    model, _ = tiny
    inputs, subjects = make_unet_inputs(1), make_subjects([[True, True, True]])
    perm = [2, 0, 1]
    swapped = make_subjects([[True, True, True]])
    for name in ("clip_pixel_values", "reference_latents", "reference_masks"):
        setattr(swapped, name, getattr(subjects, name)[:, perm])
    a, b = run(model, inputs, subjects), run(model, inputs, swapped)
    torch.testing.assert_close(b.noise_pred, a.noise_pred, atol=1e-5, rtol=1e-5)
    for ma, mb in zip(a.routing_maps, b.routing_maps):
        torch.testing.assert_close(mb, ma[:, perm + [3]], atol=1e-5, rtol=1e-5)
    # the maps do depend on the subjects (the test could fail)
    assert max((ma[:, :3] - ma[:, perm]).abs().max() for ma in a.routing_maps) > 1e-3


def test_padded_slots_change_nothing(tiny):
    model, _ = tiny
    inputs = make_unet_inputs(1)
    one = make_subjects([[True]])
    padded = make_subjects([[True, False]], seed=9)  # the padded slot holds other random pixels
    for name in ("clip_pixel_values", "reference_latents", "reference_masks"):
        getattr(padded, name)[:, :1] = getattr(one, name)
    a, b = run(model, inputs, one), run(model, inputs, padded)
    torch.testing.assert_close(b.noise_pred, a.noise_pred, atol=1e-6, rtol=0)
    for ma, mb in zip(a.routing_maps, b.routing_maps):
        torch.testing.assert_close(mb[:, [0, 2]], ma, atol=1e-6, rtol=0)


def test_cached_conditions_give_the_same_output_as_recomputing(tiny):
    model, _ = tiny
    subjects = make_subjects([[True, True], [True, False]])
    early, late = make_unet_inputs(2, seed=3), make_unet_inputs(2, seed=4)
    with torch.no_grad():
        cache = model.encode_subjects(subjects)
        assert isinstance(cache, SubjectConditions) and cache.reference[0] is None
        first = model(**early, subjects=cache).noise_pred
        model(**late, subjects=cache)  # reuse at another step must not alter the cache
        again = model(**early, subjects=cache).noise_pred
    recomputed = run(model, early, subjects).noise_pred
    assert torch.equal(first, again)
    torch.testing.assert_close(recomputed, first, atol=0, rtol=0)


def test_drop_replaces_subject_embeddings_by_the_background(tiny):
    model, _ = tiny
    inputs = make_unet_inputs(2)
    dropped = make_subjects([[True, True], [True, True]], drop=[True, False])
    with torch.no_grad():
        cond = model.encode_subjects(dropped)
        kept = model.encode_subjects(make_subjects([[True, True], [True, True]]))
    e = cond.embeddings
    assert torch.equal(e[0, 0], e[0, 2]) and torch.equal(e[0, 1], e[0, 2])  # sample 0: all E_i = E_{N+1}
    assert torch.equal(e[1], kept.embeddings[1])
    uncond = kept.unconditional()
    assert torch.equal(uncond.embeddings[0], e[0]) and torch.equal(uncond.reference[1], kept.reference[1])
    torch.testing.assert_close(run(model, inputs, cond).noise_pred[0], run(model, inputs, uncond).noise_pred[0])


def test_subject_embeddings_are_the_qformer_of_each_subjects_clip_tokens(tiny):
    """Eq. 2: E_i = QFormer(CLIP's penultimate tokens of subject i's image), slot by slot; E_{N+1} is the zero
    image's. Two subjects' embeddings differ because their images do."""
    from anystory.model import clip_hidden_states

    model, _ = tiny
    subjects = make_subjects([[True, True]])
    with torch.no_grad():
        e = model.encode_subjects(subjects).embeddings[0]
        pixels = subjects.clip_pixel_values[0]
        pixels = torch.cat([pixels, torch.zeros_like(pixels[:1])])
        want = model.subject_qformer(clip_hidden_states(model.clip, pixels))
    torch.testing.assert_close(e, want)
    assert not torch.allclose(e[0], e[1])


def test_routing_masks_replace_the_router(tiny):
    model, _ = tiny
    gt = torch.zeros(1, 2, LATENT, LATENT)
    gt[0, 0, :, :4], gt[0, 1, :4, 4:] = 1, 1
    out = run(model, make_unet_inputs(1), make_subjects([[True, True]]), routing_masks=gt)
    full, half = out.routing_maps[0], out.routing_maps[1]
    assert torch.equal(full[0, 0], gt[0, 0]) and torch.equal(full[0, 1], gt[0, 1])
    assert torch.equal(full[0, 2], 1 - gt[0].amax(0))
    assert half.shape[-1] == LATENT // 2 and torch.equal(half[0, 0], gt[0, 0, ::2, ::2])


def _loss(out, noise, gt, valid):
    return (out.noise_pred - noise).pow(2).mean() + routing_loss(out.routing_maps, gt, valid)


def _stage_inputs():
    inputs, subjects = make_unet_inputs(2), make_subjects([[True, True], [True, False]])
    gt = torch.zeros(2, 2, LATENT, LATENT)
    gt[:, 0, :, :4], gt[:, 1, :, 4:] = 1, 1
    return inputs, subjects, gt, torch.randn(2, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(5))


def test_stage1_gradients_reach_every_trainable_parameter_and_nothing_else(tiny):
    model, _ = tiny
    params = model.freeze_for_stage(1)
    model.train()
    inputs, subjects, gt, noise = _stage_inputs()
    out = model(**inputs, subjects=subjects, routing_masks=gt)
    (out.noise_pred - noise).pow(2).mean().backward()
    trainable = {id(p) for p in params}
    assert trainable == {id(p) for p in model.parameters() if p.requires_grad}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    assert all(p.grad is None for p in model.parameters() if id(p) not in trainable)
    tail = [n for n, p in model.reference_net.named_parameters() if not p.requires_grad]
    assert tail and all(n.startswith(("up_blocks.1.attentions.1.transformer_blocks.0.attn1",
                                      "up_blocks.1.attentions.1.transformer_blocks.0.norm3",
                                      "up_blocks.1.attentions.1.transformer_blocks.0.ff",
                                      "up_blocks.1.attentions.1.proj_out", "conv_norm_out", "conv_out"),
                                     ) for n in (t.removeprefix("unet.") for t in tail))


def test_stage2_trains_the_router_only_with_gumbel_maps(tiny):
    model, _ = tiny
    params = model.freeze_for_stage(2)
    model.train()
    inputs, subjects, gt, noise = _stage_inputs()
    out = model(**inputs, subjects=subjects)
    _loss(out, noise, gt, subjects.valid).backward()
    assert {id(p) for p in params} == {id(p) for p in model.router.parameters()}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    assert all(m.requires_grad for m in out.routing_maps)


def test_gradient_checkpointing_gives_the_same_gradients(tiny):
    model, _ = tiny
    params = model.freeze_for_stage(2)
    model.train()
    inputs, subjects, gt, noise = _stage_inputs()

    def grads():
        model.zero_grad()
        torch.manual_seed(7)  # the same Gumbel noise
        _loss(model(**inputs, subjects=subjects), noise, gt, subjects.valid).backward()
        return [p.grad.clone() for p in params]

    plain = grads()
    model.enable_gradient_checkpointing()
    assert model.unet.down_blocks[1].attentions[0].gradient_checkpointing
    for a, b in zip(plain, grads()):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-4)


def test_freeze_for_stage_refuses_other_stages(tiny):
    with pytest.raises(ValueError, match="stage"):
        tiny[0].freeze_for_stage(3)


def test_stage1_in_bf16_autocast_keeps_trainable_weights_fp32(tiny):
    model, _ = tiny
    params = model.freeze_for_stage(1)
    model.cast_frozen(torch.bfloat16)
    model.train()
    assert model.unet.conv_in.weight.dtype == torch.bfloat16 and model.clip.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in params)
    inputs, subjects, gt, noise = _stage_inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**inputs, subjects=subjects, routing_masks=gt)
    (out.noise_pred.float() - noise).pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in params)
