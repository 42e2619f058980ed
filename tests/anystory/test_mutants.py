"""Mutation check: each mutant of the paper's mechanism and of the training path (``tests/anystory/mutants.py``)
turns the tests that guard it red, and only those of the listed tests. Slow (one pytest run per mutant):
``make test-slow``."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.anystory.mutants import MUTANTS

ROOT = Path(__file__).resolve().parents[2]
MECH, PIPE = "tests/anystory/test_mechanism.py", "tests/anystory/test_pipeline.py"
MODEL, PATH = "tests/anystory/test_model.py", "tests/anystory/test_routing_path.py"
STEP, LEARN = "tests/training/test_training_path.py", "tests/training/test_learning.py"
SIGMA = f"{PATH}::test_processors_in_a_unet_forward_use_an_exactly_one_hot_sigma"
CAUGHT_BY = {
    "eq5_everywhere": [f"{MECH}::test_eq5_equals_hand_computed_attention[1.0]",
                       f"{MECH}::test_eq5_equals_hand_computed_attention[0.05]",
                       *(f"{MECH}::test_eq5_subject_i_changes_the_output_only_where_its_map_selects[{i}]"
                         for i in range(3))],
    "reference_ignores_maps": [*(f"{MECH}::test_eq6_equals_hand_computed_attention[{g}]" for g in (0.0, -0.7, 1.3)),
                               *(f"{MECH}::test_eq6_subject_i_features_change_the_output_only_where_the_previous"
                                 f"_map_selects[{i}]" for i in range(2)),
                               f"{MECH}::test_eq6_background_positions_see_plain_self_attention"],
    "router_unmasked": [f"{MECH}::test_router_refined_feature_ignores_latents_outside_its_coarse_region",
                        f"{PATH}::test_router_forward_refines_each_subject_from_its_coarse_region_only"],
    "cfg_swapped": [f"{PIPE}::test_unconditional_half_comes_first_with_the_background_embedding"],
    # §1 σ exactly one-hot
    "sigma_soft_in_training": [f"{SIGMA}[train]"],
    "gumbel_in_eval": [f"{SIGMA}[eval]"],
    "carry_by_area": [f"{SIGMA}[eval]", f"{SIGMA}[train]"],
    "carry_bilinear": [f"{SIGMA}[eval]", f"{SIGMA}[train]"],
    # §1 the path the model runs
    "router_forward_skips_refine": [f"{PATH}::test_router_forward_refines_each_subject_from_its_coarse_region_only"],
    # §1 the loss
    "lambda_twice": [f"{STEP}::test_stage2_step_loss_is_diffusion_plus_lambda_times_eq4_over_valid_subjects"],
    "eq4_over_all_slots": [f"{STEP}::test_stage2_step_loss_is_diffusion_plus_lambda_times_eq4_over_valid_subjects"],
    "stage1_routing_term": [f"{STEP}::test_stage1_step_loss_is_the_diffusion_loss_alone"],
    # §1 conditioning flow
    "drop_ignored": [f"{STEP}::test_condition_drop_reaches_the_model_on_the_drawn_samples_only",
                     f"{MODEL}::test_drop_replaces_subject_embeddings_by_the_background"],
    "drop_not_collated": [f"{STEP}::test_condition_drop_reaches_the_model_on_the_drawn_samples_only"],
    "reference_net_noisy_t": [f"{STEP}::test_reference_net_runs_at_timestep_zero_and_clip_features_are_the"
                              "_penultimate_layer"],
    "clip_last_layer": [f"{STEP}::test_reference_net_runs_at_timestep_zero_and_clip_features_are_the"
                        "_penultimate_layer"],
    "reference_from_target": [f"{STEP}::test_slot_k_holds_one_subject_reference_mask_and_a_reference_frame_other"
                              "_than_the_target",
                              "tests/training/test_loader.py::test_pair_choice_prefers_another_frame_and_falls_back"
                              "_to_the_target"],
    "routing_slots_reversed": [f"{STEP}::test_slot_k_holds_one_subject_reference_mask_and_a_reference_frame_other"
                               "_than_the_target"],
    # §1 stages connect
    "stage2_skips_reference_net": [f"{STEP}::test_stage2_starts_from_every_stage1_part"],
    "stage2_trains_encoder": [f"{STEP}::test_stage2_starts_from_every_stage1_part",
                              f"{MODEL}::test_stage2_trains_the_router_only_with_gumbel_maps"],
    "missing_parts_accepted": [f"{STEP}::test_stage2_refuses_stage1_adapters_missing_a_part",
                               f"{STEP}::test_adapters_missing_a_part_are_refused_by_evaluate",
                               f"{PIPE}::test_adapters_missing_a_part_are_refused_naming_it",
                               "tests/anystory/test_generate.py::test_adapters_missing_a_part_exit_2_naming_it",
                               "tests/anystory/test_adapters.py::test_stage_parts_save_and_load_alone"],
    # §1 pipeline segmentation; the evaluation's sampler
    "pipeline_ignores_masks": [f"{PIPE}::test_subject_masks_segment_the_subjects_before_encoding"],
    "training_eval_euler": [f"{STEP}::test_in_training_evaluation_samples_with_the_generate_sampler"],
    # §2 learning
    "routing_loss_detached": [f"{LEARN}::test_stage2_router_learns_to_route_unseen_images"],
    "router_blind_to_subjects": [f"{LEARN}::test_stage2_router_learns_to_route_unseen_images"],
    "reference_net_no_grad": [f"{LEARN}::test_stage1_step_trains_the_reference_path_and_nothing_frozen",
                              f"{MODEL}::test_stage1_gradients_reach_every_trainable_parameter_and_nothing_else"],
    "reference_attention_off": [f"{LEARN}::test_stage1_step_trains_the_reference_path_and_nothing_frozen"],
    "subject_tokens_zeroed": [f"{MODEL}::test_subject_embeddings_are_the_qformer_of_each_subjects_clip_tokens"],
}


def test_every_mutant_has_its_tests():
    assert set(CAUGHT_BY) == set(MUTANTS)


@pytest.mark.slow
@pytest.mark.parametrize("mutant", sorted(CAUGHT_BY))
def test_mutant_turns_its_tests_red(mutant):
    tests = CAUGHT_BY[mutant]
    # -m "": addopts deselects slow tests, and some guarding tests (the learning ones) are slow
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rf", "-m", "", "-p", "tests.anystory.mutants",
                          *tests],
                         cwd=ROOT, env={**os.environ, "ANYSTORY_MUTANT": mutant}, capture_output=True, text=True,
                         timeout=1200)
    failed = set(re.findall(r"^FAILED (\S+)", run.stdout, re.M))
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
    assert failed == set(tests), run.stdout[-3000:]
