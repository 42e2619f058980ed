"""Mutants of the paper's mechanism and of the training path, applied by a pytest plugin
(``-p tests.anystory.mutants`` with ``ANYSTORY_MUTANT=<name>``) so ``test_mutants.py`` can check that the tests
guarding each property go red. Each is one small, plausible bug written from the property it breaks.

A mutant replaces one piece of source in one function (recompiled in its module, and set wherever the function was
imported by name) or one name in a module; it refuses to run when its piece is not found, so a refactor that moves
the code breaks the check loudly.
"""

from __future__ import annotations

import __future__
import inspect
import os
import sys
import textwrap

import anystory.attention
import anystory.encoder
import anystory.model
import anystory.pipeline
import anystory.reference_net
import anystory.router
import training.augment
import training.evaluate.during_training
import training.plan
import training.trainer

_A = anystory.attention


def _edit(owner, name: str, old: str, new: str):
    def apply():
        fn = getattr(owner, name)
        src = textwrap.dedent(inspect.getsource(fn))
        if old not in src:
            raise RuntimeError(f"mutant: {old!r} not found in {owner.__name__}.{name}")
        namespace: dict = {}
        code = compile(src.replace(old, new), inspect.getsourcefile(fn), "exec",
                       flags=__future__.annotations.compiler_flag, dont_inherit=True)
        exec(code, vars(inspect.getmodule(fn)), namespace)
        setattr(owner, name, namespace[name])
        if inspect.ismodule(owner):  # `from module import name` elsewhere holds the original
            for module in list(sys.modules.values()):
                if getattr(module, name, None) is fn:
                    setattr(module, name, namespace[name])
    return apply


def _swap_cfg_halves():
    class Swapped(_A.SubjectConditions):
        @staticmethod
        def cat(parts):
            return _A.SubjectConditions.cat(parts[::-1])

    anystory.pipeline.SubjectConditions = Swapped


_T, _M = training.trainer, anystory.model.AnyStoryModel

MUTANTS = {
    # -- the paper's mechanism (Eq. 5-8) ----------------------------------------------------------------------------
    # Eq. 5 without σ(M_i^l): every subject (and the background) injected at every position
    "eq5_everywhere": _edit(_A.RoutedAttnProcessor, "__call__", "(sigma.to(out.dtype)[..., None] * per_subject)",
                            "per_subject"),
    # Eq. 6-8 without g(M^{l-1}): every query sees every subject's reference tokens
    "reference_ignores_maps": _edit(_A.ReferenceAttnProcessor, "__call__", "torch.where(sigma.bool(),",
                                    "torch.where(sigma.bool() | True,"),
    # the router's cross-attention without its coarse-map mask
    "router_unmasked": _edit(anystory.router.RouterLayer, "refine", "attention_mask=bias", "attention_mask=None"),
    # classifier-free guidance with the conditional subject half first
    "cfg_swapped": _swap_cfg_halves,
    # -- §1 σ is exactly one-hot where Eq. 5 and Eq. 6-8 use it -----------------------------------------------------
    # training mode uses the soft Gumbel sample as σ
    "sigma_soft_in_training": _edit(anystory.router, "assignment", "return hard + (soft - soft.detach())",
                                    "return soft"),
    # Gumbel noise at inference too (σ is no longer the argmax in eval mode)
    "gumbel_in_eval": _edit(_M, "forward", "stochastic=self.training", "stochastic=True"),
    # σ(M^{l-1}) averaged onto a coarser grid: fractional, so a position can see two subjects' references
    "carry_by_area": _edit(_A.RoutingState, "previous_assignment", 'mode="nearest"', 'mode="area"'),
    # σ(M^{l-1}) interpolated onto a finer grid: fractional at the borders
    "carry_bilinear": _edit(_A.RoutingState, "previous_assignment", 'mode="nearest"', 'mode="bilinear"'),
    # -- §1 tests drive the path the model runs ----------------------------------------------------------------------
    # SubjectRouter.forward stops calling the refinement (the coarse logits only)
    "router_forward_skips_refine": _edit(anystory.router.RouterLayer, "forward",
                                         "self.refine(routing, latents, valid)", "routing"),
    # -- §1 the loss is what §3.4 says --------------------------------------------------------------------------------
    # λ applied a second time when the terms are summed
    "lambda_twice": _edit(_T, "step_losses", 'terms["loss"] = sum(terms.values())',
                          'terms["loss"] = diffusion + routing_weight * terms.get("routing", 0)'),
    # Eq. 4's 1/N over every slot, padded ones included
    "eq4_over_all_slots": _edit(anystory.router, "routing_loss", "count = valid.sum(1)",
                                "count = torch.full_like(valid.sum(1), valid.shape[1])"),
    # a routing term in stage 1
    "stage1_routing_term": _edit(_T, "step_losses", "if stage == 2:", "if stage in (1, 2):"),
    # -- §1 conditioning flow -----------------------------------------------------------------------------------------
    # the loader's condition drop never reaches the embeddings
    "drop_ignored": _edit(_M, "encode_subjects", "drop = None if subjects.drop is None else subjects.drop.bool()",
                          "drop = None"),
    # the collated batch loses the planned drop
    "drop_not_collated": _edit(training.augment, "collate", 'torch.tensor([it["drop"] for it in items])',
                               "torch.tensor([False for it in items])"),
    # the ReferenceNet at a noisy timestep instead of 0
    "reference_net_noisy_t": _edit(anystory.reference_net.ReferenceNet, "forward",
                                   "torch.zeros(k, dtype=torch.long, device=latents.device)",
                                   "torch.full((k,), 500, dtype=torch.long, device=latents.device)"),
    # CLIP's last layer instead of the penultimate
    "clip_last_layer": _edit(anystory.encoder, "clip_hidden_states", "hidden_states[-2]", "hidden_states[-1]"),
    # a subject's reference cut from the target frame although another frame shows it
    "reference_from_target": _edit(training.plan, "choose", "subjects.append((i, target if ref is None else ref))",
                                   "subjects.append((i, target))"),
    # routing masks in the reverse order of the references
    "routing_slots_reversed": _edit(training.augment, "collate", 'item["routing"][f]\n',
                                    'item["routing"][f].flip(0)\n'),
    # -- §1 stages connect ---------------------------------------------------------------------------------------------
    # stage 2 loads the stage-1 subject encoder but not its ReferenceNet
    "stage2_skips_reference_net": _edit(_T, "build", "model.load_adapters(m.stage1_adapters, STAGE_PARTS[1])",
                                        "model.load_adapters(m.stage1_adapters, STAGE_PARTS[1][:1])"),
    # stage 2 trains the subject QFormer too
    "stage2_trains_encoder": _edit(_M, "stage2_parameters", "return list(self.router.parameters())",
                                   "return [*self.router.parameters(), *self.subject_qformer.parameters()]"),
    # adapters folders load the parts they hold, silently (the behaviour before issue 19)
    "missing_parts_accepted": _edit(_M, "load_adapters",
                                    "for name in (ADAPTER_CONFIG, *(ADAPTER_FILES[p] for p in parts)):",
                                    "parts = tuple(p for p in parts if (directory / ADAPTER_FILES[p]).is_file())\n"
                                    "    for name in (ADAPTER_CONFIG,):"),
    # -- §1 the pipeline segments subjects; evaluation samples like generate -------------------------------------------
    "pipeline_ignores_masks": _edit(anystory.pipeline.AnyStoryPipeline, "encode_subjects",
                                    "masks = subject_masks if subject_masks is not None else [None] * len(subjects)",
                                    "masks = [None] * len(subjects)"),
    "training_eval_euler": _edit(training.evaluate.during_training.TrainingEvaluation, "__init__",
                                 "build_scheduler(cfg.model.pretrained)",
                                 'build_scheduler(cfg.model.pretrained, "euler")'),
    # -- §2 learning ---------------------------------------------------------------------------------------------------
    # the routing loss reaches no parameter (maps detached)
    "routing_loss_detached": _edit(_T, "step_losses", "routing_loss([m.float() for m in out.routing_maps]",
                                   "routing_loss([m.float().detach() for m in out.routing_maps]"),
    # the router sees the background's routing feature for every subject (its subject input lost)
    "router_blind_to_subjects": _edit(_M, "encode_subjects", "routing=slots(routing)",
                                      "routing=slots(routing[-1:].expand_as(routing))"),
    # the subject QFormer reads zeros instead of CLIP's tokens: Eq. 5's subject embeddings carry no subject
    "subject_tokens_zeroed": _edit(_M, "encode_subjects",
                                   "embeds = self.subject_qformer(tokens.to(self.subject_qformer.dtype))",
                                   "embeds = self.subject_qformer(torch.zeros_like(tokens).to(self.subject_qformer"
                                   ".dtype))"),
    # no gradient into the ReferenceNet
    "reference_net_no_grad": _edit(_M, "encode_subjects", "torch.set_grad_enabled(torch.is_grad_enabled() and any(",
                                   "torch.set_grad_enabled(False and any("),
    # reference attention never runs (the ReferenceNet path cut off)
    "reference_attention_off": _edit(_A.ReferenceAttnProcessor, "__call__",
                                     'if reference is None or anystory.gamma == float("-inf"):', "if True:"),
}


def pytest_configure(config):
    MUTANTS[os.environ["ANYSTORY_MUTANT"]]()
