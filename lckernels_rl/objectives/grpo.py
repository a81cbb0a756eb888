"""GRPO -- Group Relative Policy Optimization.

Paper: Shao et al., "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models",
arXiv 2402.03300, eq. (3) (objective) and eq. (4) (KL estimator)::

    J(θ) = E[ 1/G Σ_i 1/|o_i| Σ_t { min(r_it Â_it, clip(r_it, 1 − ε, 1 + ε) Â_it) − β D_KL[π_θ ‖ π_ref] } ]
    r_it = π_θ(o_it | q, o_i,<t) / π_θold(o_it | q, o_i,<t)
    D_KL = π_ref/π_θ − log(π_ref/π_θ) − 1                       (the "k3" estimator, per token)
    Â_it = (R_i − mean(R)) / std(R)                               (outcome supervision, section 4.1.2)

Status: **verified** (the paper's equations).  Mapping onto :class:`lckernels.PolicyLossConfig`: ``mode="clip"``,
``kl="k3"``, and the paper's 1/G Σ_i 1/|o_i| Σ_t is ``loss_agg="seq-mean-token-mean"`` (also TRL's
``loss_type="grpo"``; verl's default is ``"token-mean"`` -- pass ``loss_agg="token-mean"`` for that, or use
``dapo``).  Our choices: ε = 0.2 on both sides; β = 0 by default because trainers usually add the KL outside the
policy loss (verl ``use_kl_loss``, TRL ``beta``) and recent recipes drop it -- the paper uses β = 0.04: pass
``kl_beta=0.04`` with ``ref_log_prob``.  The group-relative advantage is an input (an advantage estimator's job).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import PolicyObjective
from .registry import register_objective

__all__ = ["GRPO"]


@register_objective
@dataclass(kw_only=True)
class GRPO(PolicyObjective):
    """GRPO clipped surrogate.  ``eps_low`` / ``eps_high``: clip range [1 − eps_low, 1 + eps_high]."""

    name: ClassVar[str] = "grpo"
    source: ClassVar[str] = "verified"
    eps_low: float = 0.2
    eps_high: float = 0.2
    loss_agg: str = "seq-mean-token-mean"

    def _mode_config(self) -> dict:
        return dict(mode="clip", eps_low=self.eps_low, eps_high=self.eps_high)
