"""CISPO -- Clipped IS-weight Policy Optimization.

Paper: MiniMax, "MiniMax-M1: Scaling Test-Time Compute Efficiently with Lightning Attention", arXiv 2506.13585,
section 3.1, eqs. (4)-(5)::

    J(θ) = E[ 1/Σ_i|o_i| Σ_i Σ_t sg(r̂_it) Â_it log π_θ(o_it | q, o_i,<t) ]
    r̂_it = clip(r_it, 1 − ε^IS_low, 1 + ε^IS_high)

The IS weight is clipped and detached, so every token keeps a gradient (no token is dropped by the clip).  The
report imposes no effective lower bound (ε^IS_low large) and tunes only ε^IS_high.

Status: **verified** (report equations).  Mapping: ``mode="cispo"``, ``loss_agg="token-mean"``.  The report's
ε^IS_high value is not restated here: our default ``eps_high=4.0`` (weights capped at 5, TRL's ``epsilon_high=5.0``
recommendation for cispo expressed as an upper ratio) and ``eps_low=1.0`` (lower bound 0, i.e. none) are choices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import PolicyObjective
from .registry import register_objective

__all__ = ["CISPO"]


@register_objective
@dataclass(kw_only=True)
class CISPO(PolicyObjective):
    """CISPO: REINFORCE with a clipped, detached importance weight.  Weights are clipped to
    [1 − eps_low, 1 + eps_high]."""

    name: ClassVar[str] = "cispo"
    source: ClassVar[str] = "verified"
    eps_low: float = 1.0
    eps_high: float = 4.0
    loss_agg: str = "token-mean"

    def _mode_config(self) -> dict:
        return dict(mode="cispo", cispo_eps_low=self.eps_low, cispo_eps_high=self.eps_high)
