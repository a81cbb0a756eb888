"""HisPO -- Hierarchical importance-Sampling Policy Optimization (LongCat-Flash-Prover).

Source: LongCat-Flash-Prover technical report, section 3.3, as recorded on :class:`lckernels.PolicyLossConfig`::

    r_dis_t = π_old_train(o_t) / μ_infer(o_t)                        (train / inference mismatch)
    H_t = 1[ |exp(mean_t log r_dis) − 1| < δ_seq ] · 1[ |r_dis_t − 1| < δ_tok ]   (sequence mask, token mask)
    L_t = −H_t · min(r_t Â_t, clip(r_t, 1 − ε_neg_low, 1 + ε_pos_high) Â_t),  capped at −ε_neg_high · Â_t for Â_t < 0
    r_t = π_θ(o_t) / π_old_train(o_t)                                (staleness ratio)

Status: **verified** for the form (report); the report publishes no values, so every default (δ_seq 0.1, δ_tok 1.0,
ε_neg_low 0.2, ε_pos_high 0.28, ε_neg_high 3.0) is **inferred** (ours, the kernel's defaults).  Mapping:
``mode="hispo"``; needs ``rollout_log_prob`` (the inference engine's log-probs, μ).  Aggregation: ``"token-mean"``
(ours).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import PolicyObjective
from .registry import register_objective

__all__ = ["HisPO"]


@register_objective
@dataclass(kw_only=True)
class HisPO(PolicyObjective):
    """HisPO: hierarchical sequence/token masks on the train/inference ratio, triplet clip on the staleness ratio."""

    name: ClassVar[str] = "hispo"
    source: ClassVar[str] = "verified"
    uses_rollout_log_prob: ClassVar[bool] = True
    delta_seq: float = 0.1
    delta_tok: float = 1.0
    eps_neg_low: float = 0.2
    eps_pos_high: float = 0.28
    eps_neg_high: float = 3.0
    loss_agg: str = "token-mean"

    def _mode_config(self) -> dict:
        return dict(mode="hispo", hispo_delta_seq=self.delta_seq, hispo_delta_tok=self.delta_tok,
                    hispo_eps_neg_low=self.eps_neg_low, hispo_eps_pos_high=self.eps_pos_high,
                    hispo_eps_neg_high=self.eps_neg_high)
