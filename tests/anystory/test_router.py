"""Router pieces (§3.3, Eq. 4): σ, ground-truth downsampling and the routing loss, with numbers."""

import torch

from anystory.router import SubjectRouter, assignment, downsample_masks, routing_loss


def test_assignment_is_one_hot_and_gumbel_is_straight_through():
    logits = torch.tensor([[[2.0, -1.0], [1.0, 3.0], [float("-inf"), float("-inf")], [0.0, 0.0]]])
    hard = assignment(logits, stochastic=False)
    assert torch.equal(hard, torch.tensor([[[1.0, 0], [0, 1], [0, 0], [0, 0]]]))
    torch.manual_seed(0)
    x = logits.clone().requires_grad_(True)
    sample = assignment(x, stochastic=True)
    assert torch.equal(sample.sum(1), torch.ones(1, 2)) and (sample[:, 2] == 0).all()  # −∞: never sampled
    sample[:, 0].sum().backward()
    assert x.grad[:, :2].abs().sum() > 0 and torch.isfinite(x.grad[:, [0, 1, 3]]).all()


def test_downsample_masks_keeps_cells_at_least_half_covered():
    m = torch.zeros(1, 1, 4, 4)
    m[..., :2, :2] = 1  # top-left cell full
    m[..., 2, 2:] = 1  # bottom-right cell half covered
    m[..., 0, 2] = 1  # top-right cell a quarter
    assert downsample_masks(m, (2, 2))[0, 0].tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_routing_loss_numbers():
    # layer A (2×2): subject map 0.5 everywhere against an all-ones mask → mean squared error 0.25
    # layer B (1×1): subject map 1 against 1 → 0; Eq. 4 averaged over layers → 0.125, λ = 0.1 → 0.0125
    a = torch.full((2, 2, 2, 2), 0.5)
    b = torch.stack([torch.ones(2, 1, 1), torch.zeros(2, 1, 1)], 1)
    gt = torch.ones(2, 1, 2, 2)
    valid = torch.tensor([[True], [False]])  # sample 2 has no subject: it adds nothing
    loss = routing_loss([a, b], gt, valid)
    torch.testing.assert_close(loss, torch.tensor(0.0125))
    by_size = {1: gt, 2: torch.ones(2, 1, 1, 1)}
    torch.testing.assert_close(routing_loss([a, b], by_size, valid, weight=1.0), torch.tensor(0.125))
    assert routing_loss([a, b], gt, torch.zeros(2, 1, dtype=torch.bool)) == 0


def test_router_layers_follow_the_unet_widths_and_save_round_trip(tmp_path):
    torch.manual_seed(0)
    router = SubjectRouter(latent_dims=[32, 64], embed_dims=16, routing_dim=8, hidden_dims=64, dim_head=32,
                           heads=2, map_dim=16, map_heads=2)
    routing = router.routing_features(torch.randn(3, 257, 16))
    assert routing.shape == (3, 8)
    valid = torch.tensor([[True, True, True]])
    logits = router(1, torch.randn(1, 16, 64), routing[None], valid)
    assert logits.shape == (1, 3, 16)
    router.save_pretrained(tmp_path)
    back = SubjectRouter.from_pretrained(tmp_path)
    assert list(back.config.latent_dims) == [32, 64]
    torch.testing.assert_close(back(1, torch.ones(1, 16, 64), routing[None], valid),
                               router(1, torch.ones(1, 16, 64), routing[None], valid))
