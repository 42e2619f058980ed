"""The planner's reference choice from the data engine's pair measures (meta.json ``pairs``, format 2.1):
``most_changed`` takes the frame whose view differs most from the target, ``random`` any kept pair; a pair the
engine's rules dropped is never a reference; the chosen pair's change_score travels in the batch."""

from __future__ import annotations

import math

import numpy as np
import torch

from datagen import shards
from datagen.labeling import pairs
from tests.shard_factory import write_dataset
from tests.training.conftest import colour_sample
from tests.training.test_loader import FACTORS, SMALL, data_cfg
from training import plan
from training.config import AugmentParams
from training.loader import DataPosition, make_loader

BUCKETS = [(64, 96)]


def measured_sample(key: str = "p", n_frames: int = 4) -> shards.Sample:
    """Subject 0 in every frame, moving 3 px right and 2 down a frame: the farther frame, the larger the change."""
    sample = colour_sample(key, {0: list(range(n_frames))}, n_frames=n_frames)
    sample.pairs = pairs.measure(sample)
    return sample


def change_of(sample: shards.Sample, a: int, b: int) -> float:
    return next(p["change_score"] for p in sample.pairs if sorted(p["frames"]) == sorted([a, b]))


def test_most_changed_takes_the_farthest_frame_and_random_takes_any_kept_pair():
    sample = measured_sample()
    scores = sorted({p["change_score"] for p in sample.pairs})
    assert len(scores) == 3 and scores[0] > 0  # frame distances 1, 2, 3 give three distinct changes
    raw = shards.encode_sample(sample)
    rng = np.random.default_rng(0)
    for _ in range(100):
        p = plan.choose(raw, AugmentParams(), BUCKETS, rng)
        [(subject, ref)] = p.subjects
        farthest = 0 if p.target >= 2 else 3
        assert ref == farthest and p.pair_change == [change_of(sample, ref, p.target)]
    refs = {(p.target, p.subjects[0][1]) for p in (plan.choose(raw, AugmentParams(reference="random"), BUCKETS, rng)
                                                  for _ in range(300))}
    assert refs == {(t, r) for t in range(4) for r in range(4) if t != r}


def test_a_pair_the_engine_dropped_is_never_a_reference():
    sample = measured_sample(n_frames=3)
    sample.pairs = [p for p in sample.pairs if p["frames"] != [0, 2]]  # as if near_duplicate_pair dropped it
    raw = shards.encode_sample(sample)
    rng = np.random.default_rng(1)
    for how in ("most_changed", "random"):
        for _ in range(100):
            p = plan.choose(raw, AugmentParams(reference=how), BUCKETS, rng)
            ref = p.subjects[0][1]
            assert {p.target, ref} != {0, 2} and ref != p.target
    sample.pairs = []  # every pair dropped: the subject is its own reference, as a one-frame subject
    p = plan.choose(shards.encode_sample(sample), AugmentParams(), BUCKETS, rng)
    assert p.subjects == [(0, p.target)] and p.pair_change == [None]


def test_data_without_measures_still_pairs_any_other_frame():
    raw = shards.encode_sample(colour_sample("old", {0: [0, 1, 2]}, n_frames=3))
    assert b'"pairs"' not in raw["meta.json"]  # not measured, as a 2.0 sample
    rng = np.random.default_rng(2)
    refs = set()
    for _ in range(100):
        p = plan.choose(raw, AugmentParams(), BUCKETS, rng)
        refs.add((p.target, p.subjects[0][1]))
        assert p.pair_change == [None]
    assert refs == {(t, r) for t in range(3) for r in range(3) if t != r}


def test_the_batch_carries_the_chosen_pairs_change(tmp_path):
    samples = [measured_sample(f"m{k}") for k in range(4)]
    root = write_dataset(str(tmp_path / "ds"), [samples[:2], samples[2:]])
    cfg = data_cfg([root], augment={**SMALL, "max_subjects": 2})
    batch = next(iter(make_loader(cfg, FACTORS, 0, DataPosition(1))))
    change = batch["pair_change"]
    assert change.shape == (2, 2) and torch.isnan(change[:, 1]).all()  # one subject: slot 1 is padding
    by_key = {s.key: s for s in samples}
    for k, key in enumerate(batch["keys"]):
        s = by_key[key]
        most_changed = {max(change_of(s, t, r) for r in range(4) if r != t) for t in range(4)}
        assert any(math.isclose(change[k, 0].item(), c, rel_tol=1e-6) for c in most_changed)
