"""Mutants of the paper's mechanism, applied by a pytest plugin (``-p tests.anystory.mutants`` with
``ANYSTORY_MUTANT=<name>``) so ``test_mutants.py`` can check that the tests guarding each mechanism go red.

A mutant replaces one piece of source in one function (recompiled in its module, set on its class) or one name in a
module; it refuses to run when its piece is not found, so a refactor that moves the code breaks the check loudly.
"""

from __future__ import annotations

import inspect
import os
import textwrap

import anystory.attention
import anystory.pipeline
import anystory.router

_A = anystory.attention


def _edit(owner, name: str, old: str, new: str):
    def apply():
        fn = getattr(owner, name)
        src = textwrap.dedent(inspect.getsource(fn))
        if old not in src:
            raise RuntimeError(f"mutant: {old!r} not found in {owner.__name__}.{name}")
        namespace: dict = {}
        exec(compile(src.replace(old, new), inspect.getsourcefile(fn), "exec"), vars(inspect.getmodule(fn)), namespace)
        setattr(owner, name, namespace[name])
    return apply


def _swap_cfg_halves():
    class Swapped(_A.SubjectConditions):
        @staticmethod
        def cat(parts):
            return _A.SubjectConditions.cat(parts[::-1])

    anystory.pipeline.SubjectConditions = Swapped


MUTANTS = {
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
}


def pytest_configure(config):
    MUTANTS[os.environ["ANYSTORY_MUTANT"]]()
