"""LongCat-Flash-Thinking's objective: triplet clip with truncated importance sampling (TIS).

Source: LongCat-Flash-Thinking technical report (arXiv 2509.18883), eq. (4), as transcribed in issue 6::

    J(θ) = E[ 1/(G · T_max) Σ_i Σ_t min(r(µ)_it, C) · max( min(r_it Â_it, clip(r_it, 1 − ε_neglow, 1 + ε_poshigh) Â_it),
                                                          ε_neghigh · Â_it ) ]
    r(µ)_it = π_train(o_it) / π_infer(o_it)        (train/inference engine mismatch, truncated at C)
    r_it    = π_θ(o_it) / π_θold(o_it)

Status: **verified** for the form (the report's equation, via the issue's transcription; not re-checked against the
PDF here).  **Inferred**:

* The outer max with ε_neghigh · Â is the dual clip of Ye et al. 2020 and applies only where Â < 0: for Â > 0 and
  ε_neghigh > 1 + ε_poshigh the max would always pick the constant ε_neghigh · Â (no gradient), so the literal
  reading cannot be meant for positive advantages.
* π_train in r(µ) is the training engine's log-prob of the *rollout* policy (``old_log_prob``), µ the inference
  engine's (``rollout_log_prob``); r(µ) is a detached weight.
* Defaults: ε_neglow 0.2, ε_poshigh 0.28, ε_neghigh 3.0, C 2.0 (the report's values are not restated here).

Mapping onto :class:`lckernels.PolicyLossConfig`: ``mode="dual_clip"`` with ``eps_low=ε_neglow``,
``eps_high=ε_poshigh``, ``clip_c=ε_neghigh``; ``rollout_correction="token_truncate"`` with ``rc_threshold=C``;
``loss_agg="seq-mean-token-sum-norm"`` with ``loss_norm_constant=T_max`` (Σ / (B · T_max), B = G per group;
``t_max=None`` means the padded length T).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from .base import PolicyObjective
from .registry import register_objective

__all__ = ["LCFTTIS"]


@register_objective
@dataclass(kw_only=True)
class LCFTTIS(PolicyObjective):
    """LongCat-Flash-Thinking: dual-clip PPO times min(π_train/π_infer, C), normalized by G · T_max.  Needs
    ``rollout_log_prob``."""

    name: ClassVar[str] = "lcft_tis"
    source: ClassVar[str] = "verified"
    uses_rollout_log_prob: ClassVar[bool] = True
    eps_neg_low: float = 0.2
    eps_pos_high: float = 0.28
    eps_neg_high: float = 3.0
    tis_cap: float = 2.0
    t_max: Optional[float] = None
    loss_agg: str = "seq-mean-token-sum-norm"

    def _mode_config(self) -> dict:
        return dict(mode="dual_clip", eps_low=self.eps_neg_low, eps_high=self.eps_pos_high, clip_c=self.eps_neg_high,
                    rollout_correction="token_truncate", rc_threshold=self.tis_cap,
                    loss_norm_constant=self.t_max if self.t_max is not None else self.loss_norm_constant)
