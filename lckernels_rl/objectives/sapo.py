"""SAPO -- Soft Adaptive Policy Optimization.

Paper: Gao et al. (Qwen), "Soft Adaptive Policy Optimization", arXiv 2511.20347: the hard clip is replaced by a
temperature-controlled sigmoid gate, with a larger temperature for negative advantages::

    J(θ) = E[ 1/G Σ_i 1/|o_i| Σ_t f_it(r_it) Â_it ],   f(r) = σ(τ (r − 1)) · 4/τ,   τ = τ_pos if Â > 0 else τ_neg

(d f / d r at r = 1 is 1: near on-policy it is the plain policy gradient; far from r = 1 the gradient decays
smoothly instead of being cut.)  Defaults τ_pos = 1.0, τ_neg = 1.05.

Status: **third-party** -- the gate and the defaults as implemented identically in verl's ``sapo`` and TRL's
``loss_type="sapo"``; the paper itself was not re-read for this module.  Mapping: ``mode="sapo"``,
``loss_agg="seq-mean-token-mean"`` (verl and TRL aggregate SAPO per sequence).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import PolicyObjective
from .registry import register_objective

__all__ = ["SAPO"]


@register_objective
@dataclass(kw_only=True)
class SAPO(PolicyObjective):
    """SAPO's soft sigmoid gate."""

    name: ClassVar[str] = "sapo"
    source: ClassVar[str] = "third-party"
    tau_pos: float = 1.0
    tau_neg: float = 1.05
    loss_agg: str = "seq-mean-token-mean"

    def _mode_config(self) -> dict:
        return dict(mode="sapo", tau_pos=self.tau_pos, tau_neg=self.tau_neg)
