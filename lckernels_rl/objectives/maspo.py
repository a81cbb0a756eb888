"""MASPO -- Mass-Adaptive Soft Policy Optimization.

Paper: arXiv 2602.17550; the gate follows the authors' code (see :func:`lckernels.soft_gaussian_gate`)::

    L_it = −Â_it · sg(w_it) · r_it
    w = exp(−(r − 1)² / (2σ²)),   σ = σ_pos where Â > 0 and r > 1,  σ = σ_neg where Â < 0 and r < 1,  w = 1 elsewhere
    σ_mass = clamp(σ_base / p_old^α, σ_base, σ_high),   p_old = π_old(o_it)
    σ_pos = σ_mass · clamp(1 + β_pos Â, a_low, a_high),   σ_neg = σ_mass · clamp(1 / (1 − β_neg Â), a_low, a_high)

A soft Gaussian trust region whose width grows for low-probability tokens (small p_old); with the advantage it
grows as (1 + β_pos Â) for Â > 0 and shrinks as 1 / (1 + β_neg |Â|) for Â < 0 (a strongly negative advantage gets
a *narrower* gate), each factor clamped to [a_low, a_high].

Status: **verified** (formula and defaults σ_base 1, α 0.3, β± 0.03, σ_high 10, a ∈ [0.1, 10] from the authors'
code: FlyTune/MASPO-RL, ``verl/trainer/ppo/core_algos.py``, the ``ratio_mode == "maspo"`` branch of the policy loss,
``sigma_neg = clamp(σ_base/old_prob**α, σ_base, σ_high) * clamp(1/(1 - β_neg*advantages), a_low, a_high)``, commit
22b4681; as recorded on :class:`lckernels.PolicyLossConfig`).  Mapping: ``mode="maspo"``; the gate w is computed by
the library's own kernel, :func:`lckernels.soft_gaussian_gate` (C++ on the CPU path, Triton on the GPU path, in both
the fused and the per-token loss).  Aggregation: the kernel default ``"token-mean"`` (ours; set ``loss_agg`` to
match the recipe you reproduce).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import PolicyObjective
from .registry import register_objective

__all__ = ["MASPO"]


@register_objective
@dataclass(kw_only=True)
class MASPO(PolicyObjective):
    """MASPO's mass-adaptive Gaussian gate on the ratio."""

    name: ClassVar[str] = "maspo"
    source: ClassVar[str] = "verified"
    sigma_base: float = 1.0
    alpha: float = 0.3
    beta_pos: float = 0.03
    beta_neg: float = 0.03
    sigma_high: float = 10.0
    a_low: float = 0.1
    a_high: float = 10.0
    loss_agg: str = "token-mean"

    def _mode_config(self) -> dict:
        return dict(mode="maspo", maspo_sigma_base=self.sigma_base, maspo_alpha=self.alpha,
                    maspo_beta_pos=self.beta_pos, maspo_beta_neg=self.beta_neg, maspo_sigma_high=self.sigma_high,
                    maspo_a_low=self.a_low, maspo_a_high=self.a_high)
