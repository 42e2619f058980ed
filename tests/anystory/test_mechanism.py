"""The paper's mechanism at the attention processors and the router (§3.3, Eq. 5–8), with hand-set routing maps σ
and hand-computed attention in float64, so a change to where subjects are injected shows up exactly.

Mutants these tests are checked against (``tests/anystory/test_mutants.py`` applies them): Eq. 5 injecting every
subject everywhere, reference attention ignoring the routing maps, the router's cross-attention without its mask.
"""

import math

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch.nn.attention import SDPBackend, sdpa_kernel

from anystory.attention import ReferenceAttnProcessor, RoutedAttnProcessor, RoutingState, SubjectConditions
from anystory.router import RouterLayer, SubjectRouter

B, N, H, W = 2, 2, 4, 6  # two samples, two subjects, a non-square 4×6 grid
S, DIM, HEADS, CTX, M, T = H * W, 16, 2, 12, 3, 5  # positions, width, heads, text width, tokens per subject
DT = torch.float64
LAYER = 2  # a layer with a preceding routing map (layer 0 stays plain)


def _masks() -> torch.Tensor:
    """σ for subjects 0 and 1, (B, N, H, W): different per sample; the rest is background."""
    m = torch.zeros(B, N, H, W, dtype=DT)
    m[0, 0, :2, :3], m[0, 1, 2:, 3:] = 1, 1
    m[1, 0, 1:, :2], m[1, 1, :, 4:] = 1, 1
    return m


def _one_hot(masks: torch.Tensor) -> torch.Tensor:
    """(B, N, H, W) disjoint masks → σ over N+1 (background last), (B, N+1, S)."""
    return torch.cat([masks, 1 - masks.sum(1, keepdim=True)], 1).flatten(2)


def _attn(cross: bool, seed: int = 0) -> Attention:
    torch.manual_seed(seed)
    return Attention(DIM, cross_attention_dim=CTX if cross else None, heads=HEADS, dim_head=DIM // HEADS,
                     out_bias=True).to(DT)


def _conditions(seed: int = 1) -> SubjectConditions:
    g = torch.Generator().manual_seed(seed)
    reference = [None] * (LAYER + 1)
    reference[LAYER] = torch.randn(B, N, T, DIM, generator=g, dtype=DT)
    return SubjectConditions(embeddings=torch.randn(B, N + 1, M, CTX, generator=g, dtype=DT),
                             routing=torch.zeros(B, N + 1, 1, dtype=DT), reference=reference,
                             valid=torch.ones(B, N + 1, dtype=torch.bool))


def _state(conditions, **kw) -> RoutingState:
    # routing_masks stand in for σ(M^l) (the router is not called); the previous layer's σ is set by hand
    state = RoutingState(conditions, router=None, latent_size=(H, W), routing_masks=_masks(), **kw)
    return state


def _inputs(seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, S, DIM, generator=g, dtype=DT), torch.randn(B, 7, CTX, generator=g, dtype=DT)


def _hand_attention(q, k, v, bias=None, heads=HEADS):
    """softmax(Q Kᵀ / √d + bias) V per head, written out; q (B, L, H·D), k/v (B, L', H·D), bias (B, L, L')."""
    split = lambda x: x.unflatten(-1, (heads, -1)).transpose(1, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias[:, None]
    return (scores.softmax(-1) @ v).transpose(1, 2).flatten(-2)


# -- Eq. 5: routed decoupled cross-attention --------------------------------------------------------------------


@pytest.mark.parametrize("eta", [1.0, 0.05])
def test_eq5_equals_hand_computed_attention(eta):
    attn, hidden, text = _attn(True), *_inputs()
    proc, cond = RoutedAttnProcessor(attn, LAYER), _conditions()
    out = proc(attn, hidden, text, anystory=_state(cond, eta=eta))
    q = attn.to_q(hidden)
    want = _hand_attention(q, attn.to_k(text), attn.to_v(text))
    sigma = _one_hot(_masks())
    for i in range(N + 1):
        e = cond.embeddings[:, i]
        want = want + eta * sigma[:, i, :, None] * _hand_attention(q, proc.to_k_ip(e), proc.to_v_ip(e))
    torch.testing.assert_close(out, attn.to_out[0](want), rtol=0, atol=1e-10)


def _changed(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Positions (B, S) where two outputs differ."""
    return (a - b).abs().amax(-1) > 1e-9


@pytest.mark.parametrize("i", range(N + 1))
def test_eq5_subject_i_changes_the_output_only_where_its_map_selects(i):
    attn, hidden, text = _attn(True), *_inputs()
    proc, cond = RoutedAttnProcessor(attn, LAYER), _conditions()
    other = _conditions()
    other.embeddings[:, i] = torch.randn(B, M, CTX, generator=torch.Generator().manual_seed(9), dtype=DT)
    out = proc(attn, hidden, text, anystory=_state(cond))
    moved = proc(attn, hidden, text, anystory=_state(other))
    where = _one_hot(_masks())[:, i].bool()  # i = N: the background term E_{N+1}
    assert where.any() and (~where).any()
    assert torch.equal(_changed(out, moved), where)


def test_eq5_in_four_dims_runs_on_a_fused_kernel_and_equals_the_math_path():
    attn, hidden, text = _attn(True), *_inputs()
    proc, state = RoutedAttnProcessor(attn, LAYER).float(), _state(_conditions())
    attn, hidden, text = attn.float(), hidden.float(), text.float()
    state.conditions.embeddings = state.conditions.embeddings.float()
    with sdpa_kernel(SDPBackend.MATH):
        want = proc(attn, hidden, text, anystory=state)
    # CPU's fused (flash) kernel takes 4-D tensors only: with 5-D per-subject tensors this raises "No available kernel"
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        fused = proc(attn, hidden, text, anystory=state)
    torch.testing.assert_close(fused, want, rtol=1e-5, atol=1e-6)


# -- Eq. 6–8: reference attention, masked by the previous layer's routing maps -----------------------------------


def _reference_state(conditions, gamma, previous: torch.Tensor | None = None) -> RoutingState:
    state = _state(conditions, gamma=gamma)
    state.assignments[LAYER - 1] = _one_hot(_masks()) if previous is None else previous
    return state


@pytest.mark.parametrize("gamma", [0.0, -0.7, 1.3])
def test_eq6_equals_hand_computed_attention(gamma):
    attn, (hidden, _) = _attn(False), _inputs()
    proc, cond = ReferenceAttnProcessor(attn, LAYER), _conditions()
    out = proc(attn, hidden, anystory=_reference_state(cond, gamma))
    g = cond.reference[LAYER]  # (B, N, T, DIM)
    k = torch.cat([attn.to_k(hidden), proc.to_k_ref(g).flatten(1, 2)], 1)
    v = torch.cat([attn.to_v(hidden), proc.to_v_ref(g).flatten(1, 2)], 1)
    sigma = _one_hot(_masks())  # σ(M^{l−1}) (B, N+1, S)
    bias = torch.zeros(B, S, S + N * T, dtype=DT)
    for i in range(N):  # Eq. 7–8: g = 0 where σ_i selects the query's position, −∞ elsewhere; plus γ
        for u in range(S):
            bias[:, u, S + i * T:S + (i + 1) * T] = torch.where(sigma[:, i, u, None].bool(), gamma, -torch.inf)
    want = attn.to_out[0](_hand_attention(attn.to_q(hidden), k, v, bias))
    torch.testing.assert_close(out, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("i", range(N))
def test_eq6_subject_i_features_change_the_output_only_where_the_previous_map_selects(i):
    attn, (hidden, _) = _attn(False), _inputs()
    proc, cond = ReferenceAttnProcessor(attn, LAYER), _conditions()
    other = _conditions()
    other.reference[LAYER] = other.reference[LAYER].clone()
    other.reference[LAYER][:, i] += 1
    # the current layer's σ is different from the previous one: only σ(M^{l−1}) may matter
    previous = _one_hot(_masks().flip(-1))
    out = proc(attn, hidden, anystory=_reference_state(cond, 0.0, previous))
    moved = proc(attn, hidden, anystory=_reference_state(other, 0.0, previous))
    where = previous[:, i].bool()
    assert where.any() and (~where).any() and not torch.equal(where, _one_hot(_masks())[:, i].bool())
    assert torch.equal(_changed(out, moved), where)


def test_eq6_background_positions_see_plain_self_attention():
    attn, (hidden, _) = _attn(False), _inputs()
    out = ReferenceAttnProcessor(attn, LAYER)(attn, hidden, anystory=_reference_state(_conditions(), 0.5))
    plain = AttnProcessor2_0()(attn, hidden)
    background = _one_hot(_masks())[:, N].bool()
    assert torch.equal(~_changed(out, plain), background)


def test_eq6_previous_map_from_a_finer_layer_is_resized_nearest():
    attn, (hidden, _) = _attn(False), _inputs()
    proc, cond = ReferenceAttnProcessor(attn, LAYER), _conditions()
    fine = _masks().repeat_interleave(2, -2).repeat_interleave(2, -1)  # the same layout at 8×12
    state = RoutingState(cond, router=None, latent_size=(2 * H, 2 * W), gamma=0.0)
    state.assignments[LAYER - 1] = _one_hot(fine)
    torch.testing.assert_close(proc(attn, hidden, anystory=state),
                               proc(attn, hidden, anystory=_reference_state(cond, 0.0)), rtol=0, atol=0)


# -- the router ----------------------------------------------------------------------------------------------------


def test_router_refined_feature_ignores_latents_outside_its_coarse_region():
    torch.manual_seed(3)
    layer = RouterLayer(latent_dim=DIM, routing_dim=8, map_dim=8, map_heads=2).to(DT)
    routing, latents = torch.randn(1, N + 1, 8, dtype=DT), torch.randn(1, S, DIM, dtype=DT)
    valid = torch.ones(1, N + 1, dtype=torch.bool)
    coarse = layer.logits(routing, latents, valid).argmax(1)[0]  # (S,) the coarse owner of each position
    assert set(coarse.tolist()) == set(range(N + 1))  # every query has a region, none has all
    refined = layer.refine(routing, latents, valid)
    g = torch.Generator().manual_seed(4)
    for u in range(S):
        moved = latents.clone()
        moved[0, u] += 0.01 * torch.randn(DIM, generator=g, dtype=DT)
        assert layer.logits(routing, moved, valid).argmax(1)[0, u] == coarse[u]  # the coarse owner is unchanged
        after = layer.refine(routing, moved, valid)
        owner = int(coarse[u])
        others = [i for i in range(N + 1) if i != owner]
        torch.testing.assert_close(after[0, others], refined[0, others], rtol=0, atol=0)
        assert (after[0, owner] - refined[0, owner]).abs().max() > 1e-6  # the owner does see u


def test_routing_maps_follow_a_known_mask_in_the_latents():
    """Identity projections and latents that carry a known layout (position u = scale · e_k, k its owner): the
    router's maps M^l and σ(M^l) reproduce the layout; a padded subject whose signature is present gets nothing.
    (The masked cross-attention is zeroed here: its own test is above.)"""
    d = N + 2  # N subjects, a padded slot, the background
    torch.manual_seed(0)
    router = SubjectRouter(latent_dims=[d], embed_dims=8, routing_dim=d, hidden_dims=16, depth=1, dim_head=8,
                           heads=1, map_dim=d, map_heads=1).to(DT)
    layer = router.layers[0]
    with torch.no_grad():
        for lin in (layer.to_q, layer.to_k):
            lin.weight.copy_(torch.eye(d)), lin.bias.zero_()
        layer.masked_attn.to_out[0].weight.zero_(), layer.masked_attn.to_out[0].bias.zero_()  # R_i kept as given
    layout = torch.full((1, H, W), N + 1)  # background
    layout[0, :2, 1:4], layout[0, 2:, 4:], layout[0, 3, 0] = 0, 1, 2  # subject 0, subject 1, the padded slot
    latents = 4 * torch.nn.functional.one_hot(layout.flatten(1), d).to(DT)
    latents[0, 3 * W, N + 1] = 4  # the padded slot's position also carries the background's signature
    latents += 0.1 * torch.randn(latents.shape, generator=torch.Generator().manual_seed(1), dtype=DT)
    valid = torch.tensor([[True, True, False, True]])
    cond = SubjectConditions(torch.zeros(1, d, M, CTX, dtype=DT), 4 * torch.eye(d, dtype=DT)[None], [None], valid)
    state = RoutingState(cond, router, latent_size=(H, W))
    sigma = state.route(0, latents)
    want = torch.nn.functional.one_hot(layout.flatten(1), d).movedim(-1, 1).to(DT)
    want[0, N + 1] += want[0, N]  # the padded slot's position: the background wins (valid False → −∞)
    want[0, N] = 0
    assert torch.equal(sigma, want)
    soft = state.routing_maps()[0]
    assert soft.shape == (1, d, H, W) and (soft[0, :2][want[0, :2].view(2, H, W).bool()] > 0.9).all()
