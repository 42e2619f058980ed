"""A frame's ``ignore`` region (instances the data engine's rules dropped, kept on request) reaches the batch as
``routing_ignore`` and the routing loss leaves it out: the router is not taught that a person is background."""

from __future__ import annotations

import torch

from anystory.router import routing_loss
from tests.shard_factory import write_dataset
from tests.training.conftest import colour_sample
from tests.training.test_loader import FACTORS, SMALL, data_cfg
from training.loader import DataPosition, make_loader


def test_the_routing_loss_leaves_the_ignored_positions_out():
    gt = torch.zeros(1, 1, 4, 6)
    gt[0, 0, :2, :2] = 1
    right = torch.cat([gt, 1 - gt], 1)  # subject map and background map, exactly the ground truth
    wrong = right.clone()
    wrong[0, :, 2:, 4:] = torch.tensor([1.0, 0.0])[:, None, None]  # claims an unlabeled person as the subject
    ignore = torch.zeros(1, 1, 4, 6)
    ignore[0, 0, 2:, 4:] = 1
    valid = torch.ones(1, 1, dtype=torch.bool)
    assert routing_loss([right], gt, valid).item() == 0
    assert routing_loss([wrong], gt, valid).item() > 0
    assert routing_loss([wrong], gt, valid, ignore=ignore).item() == 0
    # elsewhere an error still counts, averaged over the positions left
    elsewhere = right.clone()
    elsewhere[0, 0, 0, 5] = 1.0
    loss = routing_loss([elsewhere], gt, valid, weight=1.0, ignore=ignore)
    assert loss.item() == torch.tensor(1 / (24 - 4)).item()


def test_the_loader_turns_the_frames_ignore_boxes_into_routing_ignore(tmp_path):
    samples = []
    for k in range(2):
        s = colour_sample(f"r{k}", {0: [0], 1: [0]}, n_frames=1, source="router")
        s.frames[0].fields["ignore"] = [[72.0, 40.0, 96.0, 64.0]]  # the bottom-right quarter of the 96×64 frame
        samples.append(s)
    root = write_dataset(str(tmp_path / "ds"), [samples])
    cfg = data_cfg([root], augment={**SMALL, "center_crop": True})
    batch = next(iter(make_loader(cfg, FACTORS, 0, DataPosition(1))))
    ignore = batch["routing_ignore"][1]  # 8×12 grid over the 64×96 bucket: the box is rows 5-7, columns 9-11
    assert ignore.shape == (2, 1, 8, 12)
    expected = torch.zeros(8, 12)
    expected[5:, 9:] = 1
    assert torch.equal(ignore[0, 0], expected) and torch.equal(ignore[1, 0], expected)
    assert batch["routing_ignore"][2].shape == (2, 1, 4, 6)
