"""Dual-track GRPO (TRUST-SQL, arXiv 2603.16448), as the public code trains it.

Status: **verified** from the public code (its authorship is not confirmed).  Paper: arXiv 2603.16448.
Source: repo ``stulove123/TRUST-SQL-`` (authorship not confirmed), read at commit 8cf260a:
``TrustSQL/slime/backends/megatron_utils/loss.py`` (``_compute_group_advantages``,
``get_grpo_returns_schema_answer_separate``, ``get_grpo_returns_weighted_schema_answer``,
``compute_advantages_schema_reward_weighted``, the ``use_weighted_schema_policy_loss`` branch of ``policy_loss``) and
``TrustSQL/submit_training.sh`` (``use_schema=True``, ``SCHEMA_WEIGHT=0.25``, ``SCHEMA_SCORING_MODE="truematch"``,
``EPS_CLIP=0.2``, ``EPS_CLIP_HIGH=0.28``, ``KL_LOSS_COEF=0``, 8 samples x 32 prompts, temperature 0.8).

Two rewards per response: the answer reward ``r_a`` (SQL score + format bonus, the episode reward) and the schema
reward ``r_s`` (the verdict component ``schema``: the schema-linking score of the proposal, 0 without one).  Per
group (aborted samples are already out of the batch -- the trainer drops crashed episodes)::

    A = clamp((r - mean_g r) / (std_g r + 1e-6), -10, 10)      std: population (unbiased=False); a group of 1 -> 0

``variant`` (the three advantage paths of the public code):

* ``"dual_track"`` (default: what ``use_schema=True`` selects in the training script, i.e.
  ``--use_weighted_schema_policy_loss``): ``A_s`` on the schema span (the sampled tokens before the end of the last
  Propose turn), ``A_a`` on all sampled tokens; ``L = answer_weight * L_a + schema_weight * L_s``, each the clipped
  PPO surrogate reduced as slime's ``sum_of_sample_mean``: the per-sample token mean over the track's mask, averaged
  over the batch's samples (a sample with an empty schema span adds 0 to ``L_s`` but still counts).
* ``"weighted_advantage"`` (``--use_weighted_schema_advantage``): one loss on ``A = A_a + schema_weight * A_s *
  span``.
* ``"reward_weighted"`` (the loss code's fallback when neither flag is set): one loss on ``A = A_a * (1 +
  schema_weight * r_s * span)``.

Which of these the paper's reported runs used is **not established** (the paper text was not read; the released
submission script selects ``dual_track``, so it is the default).  ``advantage="configured"`` uses the trainer's
configured estimator for both rewards instead of the public formula (then without the clamp).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from lckernels_rl.advantages.group import group_relative_advantages

from .base import Objective, expand_advantages
from .grpo import GRPO
from .registry import register_objective

__all__ = ["DualTrackGRPO", "public_group_advantages", "VARIANTS"]

VARIANTS = ("dual_track", "weighted_advantage", "reward_weighted")
ADV_CLAMP = 10.0


def public_group_advantages(rewards: torch.Tensor, group_index) -> torch.Tensor:
    """The public code's ``_compute_group_advantages``: ``clamp((r - mean) / (std + 1e-6), -10, 10)`` per group with
    the population std; groups of one sample get 0."""
    adv = group_relative_advantages(rewards, group_index, norm="group", eps=1e-6, unbiased=False, singleton="zero")
    return adv.clamp(-ADV_CLAMP, ADV_CLAMP)


@register_objective
@dataclass(kw_only=True)
class DualTrackGRPO(Objective):
    """Dual-track GRPO.  Extra inputs (built by :meth:`batch_inputs` from the batch): ``schema_advantages`` ([B] or
    [B, T]) and ``schema_mask`` [B, T] for ``variant="dual_track"``; the other variants fold the schema track into
    token-level ``advantages`` and need no extra input."""

    name: ClassVar[str] = "dual_track_grpo"
    source: ClassVar[str] = "verified"  # from the public code (authorship not confirmed); see the module docstring
    extra_inputs: ClassVar[tuple[str, ...]] = ("schema_advantages", "schema_mask")
    supports_token_weight: ClassVar[bool] = True
    variant: str = "dual_track"
    schema_weight: float = 0.25
    answer_weight: float = 1.0
    advantage: str = "public"
    eps_low: float = 0.2
    eps_high: float = 0.28
    loss_agg: str = "seq-mean-token-mean"
    loss_norm_constant: Optional[float] = None
    kl: str = "k3"
    kl_beta: float = 0.0
    temperature: float = 1.0
    ignore_index: int = -100

    schema_span: str = "schema"
    schema_component: str = "schema"

    @property
    def required_inputs(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("schema_advantages", "schema_mask") if self.variant == "dual_track" else ()

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"DualTrackGRPO.variant must be one of {VARIANTS}; got {self.variant!r}")
        if self.advantage not in ("public", "configured"):
            raise ValueError(f"DualTrackGRPO.advantage must be 'public' or 'configured'; got {self.advantage!r}")
        for n in ("schema_weight", "answer_weight"):
            v = getattr(self, n)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"DualTrackGRPO.{n} must be a number >= 0; got {v!r}")
        self.tracks()

    # ------------------------------------------------------------------ inputs from the batch
    def batch_inputs(self, batch, ctx) -> dict:
        """Advantages of both tracks from the batch: the answer reward is ``batch.rewards``, the schema reward the
        verdicts' ``schema_component`` (0 where a sample has none), the span ``schema_span`` over sampled tokens
        (empty for a sample without it)."""
        if self.schema_component not in batch.components:
            raise ValueError(f"dual_track_grpo needs the environment's verdicts to carry reward component "
                             f"{self.schema_component!r} and span {self.schema_span!r}; the batch has components "
                             f"{sorted(batch.components)} and spans {sorted(batch.spans)} (set objective_args "
                             "schema_span / schema_component)")
        r_s = torch.nan_to_num(batch.components[self.schema_component].float(), nan=0.0)
        adv_fn = public_group_advantages if self.advantage == "public" else ctx.advantage_fn
        a_ans = adv_fn(batch.rewards.float(), batch.group_index).float()
        span = batch.spans.get(self.schema_span)  # absent when no sample of the batch has the span
        span = torch.zeros_like(batch.mask, dtype=torch.float32) if span is None else (span & batch.mask).float()
        if self.variant == "dual_track":
            return {"advantages": a_ans, "schema_advantages": adv_fn(r_s, batch.group_index).float(),
                    "schema_mask": span > 0}
        if self.variant == "weighted_advantage":
            a_s = adv_fn(r_s, batch.group_index).float()
            return {"advantages": a_ans[:, None] + self.schema_weight * a_s[:, None] * span}
        return {"advantages": a_ans[:, None] * (1.0 + self.schema_weight * r_s[:, None] * span)}

    # ------------------------------------------------------------------ the loss
    def tracks(self):
        """(answer-track objective, schema-track objective): GRPO with these parameters; no KL on the schema track."""
        kw = dict(eps_low=self.eps_low, eps_high=self.eps_high, loss_agg=self.loss_agg,
                  loss_norm_constant=self.loss_norm_constant, temperature=self.temperature,
                  ignore_index=self.ignore_index)
        return GRPO(kl=self.kl, kl_beta=self.kl_beta, **kw), GRPO(kl_beta=0.0, **kw)

    def _schema(self, schema_advantages, schema_mask, response_mask):
        if self.variant != "dual_track":
            if schema_advantages is not None or schema_mask is not None:
                raise ValueError(f"dual_track_grpo variant {self.variant!r} takes the schema track inside "
                                 "`advantages`; do not pass schema_advantages / schema_mask")
            return None
        if schema_advantages is None or schema_mask is None:
            raise ValueError("dual_track_grpo (variant 'dual_track') needs schema_advantages ([B] or [B, T]) and "
                             "schema_mask ([B, T])")
        if response_mask is None:
            response_mask = torch.ones(schema_mask.shape, dtype=torch.bool, device=schema_mask.device)
        if schema_mask.shape != response_mask.shape:
            raise ValueError(f"schema_mask must have the shape of response_mask {tuple(response_mask.shape)}; got "
                             f"{tuple(schema_mask.shape)}")
        smask = schema_mask.bool() & response_mask.bool()
        adv = expand_advantages(schema_advantages, smask.shape)
        # slime's sum_of_sample_mean averages per-sample means over *all* samples: rescale the mean over the samples
        # that have schema tokens by (samples with schema tokens) / (samples with any token)
        n_all = int((response_mask.bool().sum(1) > 0).sum())
        n_schema = int((smask.sum(1) > 0).sum())
        return adv, smask, (n_schema / n_all if n_all else 0.0)

    def _combine(self, full, schema, scale):
        (lf, mf) = full
        m = {f"answer/{k}": v for k, v in mf.items()}
        loss = self.answer_weight * lf
        if schema is not None:
            ls, ms = schema
            loss = loss + self.schema_weight * scale * ls
            m.update({f"schema/{k}": v for k, v in ms.items()})
            m["schema/sample_fraction"] = scale
        m["loss"] = float(loss.detach())
        return loss, m

    def __call__(self, log_prob, old_log_prob, advantages, response_mask, rollout_log_prob=None, ref_log_prob=None,
                 *, schema_advantages: torch.Tensor = None, schema_mask: torch.Tensor = None,
                 entropy: Optional[torch.Tensor] = None, token_weight: Optional[torch.Tensor] = None):
        full_obj, schema_obj = self.tracks()
        sch = self._schema(schema_advantages, schema_mask, response_mask)
        full = full_obj(log_prob, old_log_prob, advantages, response_mask, rollout_log_prob, ref_log_prob,
                        entropy=entropy, token_weight=token_weight)
        schema = None if sch is None or sch[2] == 0 else \
            schema_obj(log_prob, old_log_prob, sch[0], sch[1], rollout_log_prob, None, entropy=entropy,
                       token_weight=token_weight)
        return self._combine(full, schema, sch[2] if sch else 0.0)

    def fused(self, hidden, lm_head_weight, targets, advantages, old_log_prob=None, response_mask=None,
              rollout_log_prob=None, ref_log_prob=None, *, schema_advantages: torch.Tensor = None,
              schema_mask: torch.Tensor = None, token_weight: Optional[torch.Tensor] = None, backend: str = "auto",
              return_logprobs: bool = False):
        full_obj, schema_obj = self.tracks()
        rmask = response_mask if response_mask is not None else targets != self.ignore_index
        sch = self._schema(schema_advantages, schema_mask, rmask)
        lf, mf, lp = full_obj.fused(hidden, lm_head_weight, targets, advantages, old_log_prob, response_mask,
                                    rollout_log_prob, ref_log_prob, token_weight=token_weight, backend=backend,
                                    return_logprobs=True)
        schema = None if sch is None or sch[2] == 0 else \
            schema_obj.fused(hidden, lm_head_weight, targets, sch[0], old_log_prob, sch[1], rollout_log_prob, None,
                             token_weight=token_weight, backend=backend)
        loss, m = self._combine((lf, mf), schema, sch[2] if sch else 0.0)
        return (loss, m, lp) if return_logprobs else (loss, m)
