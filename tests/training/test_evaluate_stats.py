"""Intervals over subjects: a cluster bootstrap covers the truth about 95 % of the time where subjects repeat over
prompts (the sample-level bootstrap it replaced does not); paired differences; no interval below two subjects."""

import numpy as np
import pytest

from training.evaluate.report import summary
from training.evaluate.stats import NO_INTERVAL, summarize

SUBJECTS, PROMPTS, REPLICATIONS = 30, 25, 200


def _coverage(cluster_of, replications: int = REPLICATIONS) -> float:
    """Share of replications whose 95 % interval holds the true mean 0.5: each of 30 subjects has its own effect
    (sd 0.1) shared by its 25 prompts, each image its own noise (sd 0.1)."""
    rng = np.random.default_rng(0)
    clusters = np.repeat(np.arange(SUBJECTS), PROMPTS)
    hits = 0
    for r in range(replications):
        values = 0.5 + rng.normal(0, 0.1, SUBJECTS)[clusters] + rng.normal(0, 0.1, SUBJECTS * PROMPTS)
        lo, hi = summarize(values, cluster_of(clusters), seed=r, resamples=400)["ci"]
        hits += lo <= 0.5 <= hi
    return hits / replications


def test_cluster_bootstrap_covers_the_truth_about_95_percent():
    assert 0.90 <= _coverage(lambda clusters: clusters) <= 0.99  # measured 0.945


def test_resampling_samples_as_if_independent_does_not():
    # each sample its own cluster: the old sample-level bootstrap; its intervals are about 3x too narrow here
    assert _coverage(lambda clusters: np.arange(len(clusters)), replications=50) < 0.7  # measured 0.42


def test_no_interval_below_two_subjects_and_n_counts_samples_and_subjects():
    one = summarize([0.5, 0.7, 0.6], ["dog", "dog", "dog"])
    assert one["ci"] is None and one["why"] == NO_INTERVAL and (one["n"], one["n_subjects"]) == (3, 1)
    assert summarize([None, float("nan")], ["a", "b"])["mean"] is None
    two = summarize([0.4, 0.5, 0.8, None], ["a", "a", "b", "b"])
    assert (two["n"], two["n_subjects"]) == (3, 2) and two["ci"][0] <= two["mean"] <= two["ci"][1]


def test_paired_difference_to_the_baseline_has_its_interval_over_subjects():
    """AnyStory is base + 0.05 on every image, plus per-subject noise: the paired difference finds 0.05 with an
    interval that holds it and excludes 0, though the two systems' own intervals overlap widely."""
    rng = np.random.default_rng(1)
    rows = []
    for subject in range(12):
        level = rng.normal(0.5, 0.15)  # subjects differ far more than the systems do
        for prompt in range(5):
            base = level + rng.normal(0, 0.05)
            for system, value in (("base-sdxl", base), ("anystory", base + 0.05 + rng.normal(0, 0.01))):
                rows.append({"sample": f"{subject}-{prompt}", "set": "sim", "cluster": str(subject),
                             "system": system, "subjects": 1, "locator": None, "dino": value})
    metrics = summary(rows, {})
    diff = metrics["difference"]["single"]["anystory - base-sdxl"]["dino"]
    assert diff["mean"] == pytest.approx(0.05, abs=0.01) and 0 < diff["ci"][0] <= 0.05 <= diff["ci"][1]
    assert (diff["n"], diff["n_subjects"]) == (60, 12)
    mine, base = (metrics["metrics"]["single"][s]["dino"]["ci"] for s in ("anystory", "base-sdxl"))
    assert mine[0] < base[1]  # the unpaired intervals overlap: only pairing shows the difference
    assert set(metrics["metrics"]) == {"single"}
