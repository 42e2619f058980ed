"""σ where the model really uses it: the real router and the real processors inside a tiny UNet forward, in eval
mode (argmax) and in seeded training mode (Gumbel), checked layer by layer against a hand computation of Eq. 5 and
Eq. 6–8 with an exactly one-hot σ, including σ(M^{l−1}) carried to the next layer's grid both ways (8×8 → 4×4 on
the way down, 4×4 → 8×8 on the way up). And the router through ``SubjectRouter.forward``, not its helpers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from anystory.attention import transformer_blocks
from anystory.router import SubjectRouter
from tests.anystory.conftest import make_model, make_subjects, make_unet_inputs, perturb_adapters
from tests.anystory.test_mechanism import _hand_attention as hand_attention


@pytest.fixture(scope="module")
def trained_tiny():
    model, _ = make_model()
    perturb_adapters(model, seed=5)  # reference and subject k/v away from the base weights they start from
    return model


def _one_hot(index: torch.Tensor, n: int) -> torch.Tensor:
    return F.one_hot(index, n).movedim(-1, 1).float()


def _carry(prev: torch.Tensor, src: int, dst: int) -> torch.Tensor:
    """σ(M^{l−1}) (B, N+1, src²) on a dst² grid by hand: each fine cell takes its coarse cell; each coarse cell its
    top-left fine cell (nearest), so it stays one-hot."""
    grid = prev.unflatten(-1, (src, src))
    if dst > src:
        grid = grid.repeat_interleave(dst // src, -2).repeat_interleave(dst // src, -1)
    elif dst < src:
        grid = grid[..., :: src // dst, :: src // dst]
    return grid.flatten(2)


def _record(model):
    """Forward hooks on every block's attn1/attn2: (layer, which, hidden input, text, output, RoutingState)."""
    calls, handles = [], []
    for layer, (_, block) in enumerate(transformer_blocks(model.unet)):
        for which in ("attn1", "attn2"):
            def hook(mod, args, kwargs, out, layer=layer, which=which):
                calls.append((layer, which, mod, args[0] if args else kwargs["hidden_states"],
                              kwargs.get("encoder_hidden_states"), out, kwargs["anystory"]))
            handles.append(getattr(block, which).register_forward_hook(hook, with_kwargs=True))
    return calls, handles


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_processors_in_a_unet_forward_use_an_exactly_one_hot_sigma(trained_tiny, mode):
    model = trained_tiny.train(mode == "train")
    inputs, subjects = make_unet_inputs(2), make_subjects([[True, True], [True, False]])  # a padded slot
    calls, handles = _record(model)
    try:
        torch.manual_seed(11)  # the Gumbel samples of training mode
        with torch.no_grad():
            model(**inputs, subjects=subjects)
    finally:
        for h in handles:
            h.remove()
        model.eval()
    state = calls[0][-1]
    cond = state.conditions
    n1 = cond.valid.shape[1]
    stochastic_differs, carried = False, set()
    with torch.no_grad():
        for layer, which, attn, hidden, text, out, _ in calls:
            proc, side = attn.processor, int(math.isqrt(hidden.shape[1]))
            q = attn.to_q(hidden)
            if which == "attn2":  # Eq. 5
                logits = model.router(layer, hidden, cond.routing, cond.valid)
                argmax = _one_hot(logits.argmax(1), n1)
                sigma = state.assignments[layer]
                assert torch.equal(sigma, _one_hot(sigma.argmax(1), n1)), f"layer {layer}: σ is not one-hot"
                if mode == "eval":
                    assert torch.equal(sigma, argmax), f"layer {layer}: σ is not the argmax of the router's maps"
                stochastic_differs |= not torch.equal(sigma, argmax)
                want = hand_attention(q, attn.to_k(text), attn.to_v(text), heads=attn.heads)
                for i in range(n1):
                    e = cond.embeddings[:, i]
                    subject = hand_attention(q, proc.to_k_ip(e), proc.to_v_ip(e), heads=attn.heads)
                    want = want + sigma[:, i, :, None] * subject
            else:  # Eq. 6–8
                if layer == 0:
                    continue
                prev = state.assignments[layer - 1]
                src = int(math.isqrt(prev.shape[-1]))
                carried.add((src, side))
                sel = _carry(prev, src, side)[:, :-1]  # (B, N, S)
                g = cond.reference[layer]  # (B, N, T, C)
                t = g.shape[2]
                k = torch.cat([attn.to_k(hidden), proc.to_k_ref(g).flatten(1, 2)], 1)
                v = torch.cat([attn.to_v(hidden), proc.to_v_ref(g).flatten(1, 2)], 1)
                ref = torch.where(sel.transpose(1, 2).bool(), 0.0, float("-inf")).repeat_interleave(t, -1)
                bias = torch.cat([ref.new_zeros(ref.shape[0], ref.shape[1], hidden.shape[1]), ref], -1)
                want = hand_attention(q, k, v, bias, heads=attn.heads)
            torch.testing.assert_close(out, attn.to_out[0](want), rtol=1e-4, atol=1e-5,
                                       msg=lambda m, layer=layer, which=which: f"layer {layer} {which}: {m}")
    assert {(8, 4), (4, 8)} <= carried  # fine → coarse and coarse → fine both checked
    assert stochastic_differs == (mode == "train")  # training mode really sampled


def test_router_forward_refines_each_subject_from_its_coarse_region_only():
    """Through ``SubjectRouter.forward``: moving the latent at one position u changes the refined logits of u's
    coarse owner at every other position (its feature attended to u) and no other subject's (masked
    cross-attention). Without the refinement only position u would change; unmasked, every subject would."""
    torch.manual_seed(3)
    s, dim, n1 = 12, 16, 3
    router = SubjectRouter(latent_dims=[dim], embed_dims=8, routing_dim=8, hidden_dims=16, depth=1, dim_head=8,
                           heads=1, map_dim=8, map_heads=2).double()
    layer = router.layers[0]
    routing, latents = torch.randn(1, n1, 8, dtype=torch.float64), torch.randn(1, s, dim, dtype=torch.float64)
    valid = torch.ones(1, n1, dtype=torch.bool)
    with torch.no_grad():
        coarse = layer.logits(routing, latents, valid).argmax(1)[0]  # who owns each position before refining
        assert set(coarse.tolist()) == set(range(n1))
        base = router(0, latents, routing, valid)
        g = torch.Generator().manual_seed(4)
        for u in range(s):
            moved = latents.clone()
            moved[0, u] += 0.01 * torch.randn(dim, generator=g, dtype=torch.float64)
            assert layer.logits(routing, moved, valid).argmax(1)[0, u] == coarse[u]  # the owner stays
            diff = (router(0, moved, routing, valid) - base).abs()[0]  # (N+1, S)
            others = [v for v in range(s) if v != u]
            owner = int(coarse[u])
            assert diff[owner, others].min() > 1e-9, f"position {u}: the owner's feature did not see it"
            assert diff[[i for i in range(n1) if i != owner]][:, others].max() == 0, f"position {u} leaked"
