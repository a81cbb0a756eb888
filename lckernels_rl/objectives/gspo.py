"""GSPO -- Group Sequence Policy Optimization.

Paper: Zheng et al., "Group Sequence Policy Optimization", arXiv 2507.18071, eqs. (5)-(7) and the GSPO-token
variant (section 4.3)::

    J(θ) = E[ 1/G Σ_i min(s_i Â_i, clip(s_i, 1 − ε_low, 1 + ε_high) Â_i) ]
    s_i = (π_θ(y_i|x) / π_θold(y_i|x))^(1/|y_i|) = exp(1/|y_i| Σ_t log r_it)
    GSPO-token: s_it = sg[s_i] · π_θ(y_it) / sg[π_θ(y_it)]

with ε_low = 3e-4, ε_high = 4e-4 in the paper's experiments.

Status: **verified** (paper; verl's ``gspo`` loss agrees).  Mapping: ``mode="gspo"`` (the kernel's per-token form
s_it, so every token of a sequence shares its sequence's clip) with ``loss_agg="seq-mean-token-mean"`` -- for a
per-sequence advantage this is exactly 1/G Σ_i of the sequence objective.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import PolicyObjective
from .registry import register_objective

__all__ = ["GSPO"]


@register_objective
@dataclass(kw_only=True)
class GSPO(PolicyObjective):
    """GSPO: sequence-level (length-normalized) importance ratio, clipped per sequence."""

    name: ClassVar[str] = "gspo"
    source: ClassVar[str] = "verified"
    eps_low: float = 3e-4
    eps_high: float = 4e-4
    loss_agg: str = "seq-mean-token-mean"

    def _mode_config(self) -> dict:
        return dict(mode="gspo", eps_low=self.eps_low, eps_high=self.eps_high)
