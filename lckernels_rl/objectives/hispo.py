"""HisPO -- Hierarchical importance-Sampling Policy Optimization (LongCat-Flash-Prover).

Source: LongCat-Flash-Prover technical report (arXiv 2603.21065), section 3.3, eq. (9), as recorded on
:class:`lckernels.PolicyLossConfig` and in the project's faithfulness audit::

    J(θ) = E[ 1/(G · max|y|) Σ_i Σ_t H_it · min(r_it Â_it, clip(r_it, 1 − ε_neg_low, 1 + ε_pos_high) Â_it) ]
           (capped at ε_neg_high · Â_it for Â_it < 0)
    r_dis_t = π_old_train(o_t) / μ_infer(o_t)                        (train / inference mismatch)
    H_t = 1[ |exp(mean_t log r_dis) − 1| < δ_seq ] · 1[ |r_dis_t − 1| < δ_tok ]   (sequence mask, token mask)
    r_t = π_θ(o_t) / π_old_train(o_t)                                (staleness ratio, "r_stale")

Status: **third-party** -- no code is released, and the report's text was not re-read for this module (only its
abstract was found): the form (masks, triplet clip, the 1/(G · max|y|) normaliser) rests on the reading of §3.3
recorded in the kernel's ``PolicyLossConfig`` docstring and the project's faithfulness audit (issue #16, item 1).
The report publishes no values, so every default (δ_seq 0.1, δ_tok 1.0, ε_neg_low 0.2, ε_pos_high 0.28,
ε_neg_high 3.0) is **inferred** (ours, the kernel's defaults).

Aggregation (the report's, the default): ``loss_agg="seq-mean-token-sum-norm"`` -- Σ_i Σ_t (...) / (B · L) with
``L = max_response_len``, a **constant** maximum generation length (the rollout's max new tokens; for multi-turn
trajectories the cap on trained tokens per sample).  B = G per group; with groups of unequal size (a budget
allocator) every sequence weighs the same, 1/(B · L), instead of 1/(P · G_j · L) (ours).  ``max_response_len=None``
falls back to ``loss_norm_constant`` and then to T, the batch's padded response width -- the objective cannot see
the trainer's ``rl.max_new_tokens``, so pass ``objective_args: {max_response_len: ...}`` to get the report's
constant (T changes from batch to batch).  A given ``max_response_len`` takes precedence over
``loss_norm_constant``, which hosts may fill as a fallback (the verl integration copies verl's ``loss_scale_factor``
into an unset ``loss_norm_constant``; there verl's ``loss_agg_mode`` also replaces ``loss_agg``, so configure verl with
``seq-mean-token-sum-norm`` for the report's aggregation).  The previous default, ``loss_agg="token-mean"`` (Σ / number of valid
tokens), stays available; the two differ by the factor (mean response length) / L (≈ 2x for a half-full batch).

Reading of eq. (9)'s ratio (ambiguous notation): the clipped ratio is the *staleness* ratio r_t = π_θ / π_old_train
(default), not the literal π_θ / μ_old, because the report's prose separates the two discrepancies -- staleness is
clipped, the train/inference mismatch r_dis only gates through H (inferred).

Token mask and δ_tok: ``|r_dis_t − 1| < δ_tok`` with the default δ_tok = 1.0 keeps every 0 < r_dis_t < 2, and
r_dis_t > 0 always, so the default masks **only the high side** (r_dis ≥ 2) -- the low side needs δ_tok < 1
(e.g. 0.5 masks r_dis ≤ 0.5 and ≥ 1.5).  Kept as the kernel's default since the report gives no value.

Mapping: ``mode="hispo"``; needs ``rollout_log_prob`` (the inference engine's log-probs, μ).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import ClassVar, Optional

from .base import PolicyObjective
from .registry import register_objective

__all__ = ["HisPO"]


@register_objective
@dataclass(kw_only=True)
class HisPO(PolicyObjective):
    """HisPO: hierarchical sequence/token masks on the train/inference ratio, triplet clip on the staleness ratio,
    normalised by 1/(B · max_response_len)."""

    name: ClassVar[str] = "hispo"
    source: ClassVar[str] = "third-party"
    uses_rollout_log_prob: ClassVar[bool] = True
    delta_seq: float = 0.1
    delta_tok: float = 1.0
    eps_neg_low: float = 0.2
    eps_pos_high: float = 0.28
    eps_neg_high: float = 3.0
    max_response_len: Optional[float] = None
    loss_agg: str = "seq-mean-token-sum-norm"

    def __post_init__(self):
        m = self.max_response_len
        if m is not None and (isinstance(m, bool) or not isinstance(m, numbers.Real) or not math.isfinite(m)
                              or not m > 0):
            raise ValueError(f"HisPO: max_response_len must be a finite positive number or None, got {m!r}")
        super().__post_init__()

    def _mode_config(self) -> dict:
        norm = float(self.max_response_len) if self.max_response_len is not None else self.loss_norm_constant
        return dict(mode="hispo", hispo_delta_seq=self.delta_seq, hispo_delta_tok=self.delta_tok,
                    hispo_eps_neg_low=self.eps_neg_low, hispo_eps_pos_high=self.eps_pos_high,
                    hispo_eps_neg_high=self.eps_neg_high, loss_norm_constant=norm)
