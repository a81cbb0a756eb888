"""Dr. GRPO -- GRPO Done Right.

Paper: Liu et al., "Understanding R1-Zero-Like Training: A Critical Perspective", arXiv 2503.20783, section 3.2
(eq. of Dr. GRPO): GRPO without the 1/|o_i| length normalization and without the std normalization of the advantage::

    J(θ) = E[ 1/G Σ_i Σ_t min(r_it Â_it, clip(r_it, 1 − ε, 1 + ε) Â_it) ],   Â_i = R_i − mean(R)

implemented in the authors' code as a masked sum divided by a *constant* (the generation budget, max tokens).

Status: **verified** (paper).  Mapping: ``mode="clip"``, ``loss_agg="seq-mean-token-sum-norm"``: Σ over all
valid tokens / (B · ``loss_norm_constant``); ``loss_norm_constant=None`` means T, the padded length -- pass the
maximum response length to keep the denominator constant across batches (TRL divides by
``max_completion_length``).  The mean-only advantage is an input (an advantage estimator's job).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import PolicyObjective
from .registry import register_objective

__all__ = ["DrGRPO"]


@register_objective
@dataclass(kw_only=True)
class DrGRPO(PolicyObjective):
    """Dr. GRPO: clipped surrogate, token sum over a constant denominator."""

    name: ClassVar[str] = "dr_grpo"
    source: ClassVar[str] = "verified"
    eps_low: float = 0.2
    eps_high: float = 0.2
    loss_agg: str = "seq-mean-token-sum-norm"

    def _mode_config(self) -> dict:
        return dict(mode="clip", eps_low=self.eps_low, eps_high=self.eps_high)
