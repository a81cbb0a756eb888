"""Advantage estimators: pure functions of small tensors (no model, no state).

=====================  ==========================================================  ===========================
name                   what                                                        source status
=====================  ==========================================================  ===========================
``grpo``               ``(r - mean_group) / std_group``                            verified (verl)
``dr_grpo``            ``r - mean_group``                                          verified (verl)
``batch_std``          ``(r - mean_group) / std_batch``                            papers' equation
``hian``               DuCA: turn and session advantages normalized apart, fused   inferred (abstract)
``dynamo_modulation``  DynaMO: ``A * beta_comp * beta_stab`` per token             authors' code + issue
``v05_baseline``       V0.5: prior / group-mean shrinkage, positive-part           third-party, inferred form
``v05_advantages``     ``r - b`` with the V0.5 baseline                            third-party, inferred form
``skill1_credit``      Skill1: EMA utility (select), ``R - u_hat`` (distill)        abstract + authors' script
=====================  ==========================================================  ===========================

Each module's docstring cites the paper, gives the equation and says what is verified and what is inferred.
:func:`get_estimator` returns the function for a name.
"""

from __future__ import annotations

from collections.abc import Callable

from .dynamo import dynamo_modulation, ppo_unclipped_mask
from .group import (batch_std_advantages, dr_grpo_advantages, group_ids, group_relative_advantages,
                    grpo_advantages)
from .hian import hian_advantages
from .skill1 import Skill1Credit, skill1_credit
from .v05 import v05_advantages, v05_baseline, v05_expected_mse, v05_shrinkage

ESTIMATORS: dict[str, Callable] = {
    "grpo": grpo_advantages,
    "dr_grpo": dr_grpo_advantages,
    "batch_std": batch_std_advantages,
    "hian": hian_advantages,
    "dynamo_modulation": dynamo_modulation,
    "v05_baseline": v05_baseline,
    "v05_advantages": v05_advantages,
    "skill1_credit": skill1_credit,
}


def list_estimators() -> list[str]:
    """The registered estimator names."""
    return sorted(ESTIMATORS)


def get_estimator(name: str) -> Callable:
    """The estimator function registered as ``name``; ``ValueError`` listing the names otherwise."""
    try:
        return ESTIMATORS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown advantage estimator {name!r}; available: {', '.join(list_estimators())}") from None


__all__ = ["ESTIMATORS", "get_estimator", "list_estimators", "group_ids", "group_relative_advantages",
           "grpo_advantages", "dr_grpo_advantages", "batch_std_advantages", "hian_advantages", "dynamo_modulation",
           "ppo_unclipped_mask", "v05_baseline", "v05_advantages", "v05_shrinkage", "v05_expected_mse",
           "skill1_credit", "Skill1Credit"]
