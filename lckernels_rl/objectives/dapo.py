"""DAPO -- Decoupled Clip and Dynamic sAmpling Policy Optimization.

Paper: Yu et al., "DAPO: An Open-Source LLM Reinforcement Learning System at Scale", arXiv 2503.14476, eq. (8)::

    J(θ) = E[ 1/Σ_i|o_i| Σ_i Σ_t min(r_it Â_it, clip(r_it, 1 − ε_low, 1 + ε_high) Â_it) ]
    s.t. 0 < |{o_i : is_equivalent(a, o_i)}| < G                  (dynamic sampling)

with ε_low = 0.2, ε_high = 0.28 ("clip-higher") and no KL term.

Status: **verified** (the paper's equation and values).  Mapping: ``mode="clip"``, ``eps_low=0.2``,
``eps_high=0.28``, ``loss_agg="token-mean"`` (the token-level 1/Σ|o_i|).  Not in the loss: dynamic sampling (drop
all-0 / all-1 groups) is a budget allocator (``lckernels_rl.budget``'s ``dapo_filter``) and the overlong reward
shaping is part of the reward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import PolicyObjective
from .registry import register_objective

__all__ = ["DAPO"]


@register_objective
@dataclass(kw_only=True)
class DAPO(PolicyObjective):
    """DAPO's asymmetric clip with token-level aggregation."""

    name: ClassVar[str] = "dapo"
    source: ClassVar[str] = "verified"
    eps_low: float = 0.2
    eps_high: float = 0.28
    loss_agg: str = "token-mean"

    def _mode_config(self) -> dict:
        return dict(mode="clip", eps_low=self.eps_low, eps_high=self.eps_high)
