"""Mutation check: each mutant of the paper's mechanism (``tests/anystory/mutants.py``) turns the tests that guard
it red. Slow (one pytest run per mutant): ``make test-slow``."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.anystory.mutants import MUTANTS

ROOT = Path(__file__).resolve().parents[2]
MECH, PIPE = "tests/anystory/test_mechanism.py", "tests/anystory/test_pipeline.py"
CAUGHT_BY = {
    "eq5_everywhere": [f"{MECH}::test_eq5_equals_hand_computed_attention[1.0]",
                       f"{MECH}::test_eq5_equals_hand_computed_attention[0.05]",
                       *(f"{MECH}::test_eq5_subject_i_changes_the_output_only_where_its_map_selects[{i}]"
                         for i in range(3))],
    "reference_ignores_maps": [*(f"{MECH}::test_eq6_equals_hand_computed_attention[{g}]" for g in (0.0, -0.7, 1.3)),
                               *(f"{MECH}::test_eq6_subject_i_features_change_the_output_only_where_the_previous"
                                 f"_map_selects[{i}]" for i in range(2)),
                               f"{MECH}::test_eq6_background_positions_see_plain_self_attention"],
    "router_unmasked": [f"{MECH}::test_router_refined_feature_ignores_latents_outside_its_coarse_region"],
    "cfg_swapped": [f"{PIPE}::test_unconditional_half_comes_first_with_the_background_embedding"],
}


def test_every_mutant_has_its_tests():
    assert set(CAUGHT_BY) == set(MUTANTS)


@pytest.mark.slow
@pytest.mark.parametrize("mutant", sorted(CAUGHT_BY))
def test_mutant_turns_its_tests_red(mutant):
    tests = CAUGHT_BY[mutant]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rf", "-p", "tests.anystory.mutants", *tests],
                         cwd=ROOT, env={**os.environ, "ANYSTORY_MUTANT": mutant}, capture_output=True, text=True,
                         timeout=600)
    failed = set(re.findall(r"^FAILED (\S+)", run.stdout, re.M))
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
    assert failed == set(tests), run.stdout[-3000:]
