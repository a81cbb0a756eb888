"""AOPD -- Asymmetric On-Policy Distillation.

Paper: "Asymmetric On-Policy Distillation", arXiv 2605.06387.  Status: **inferred** from the abstract (as
summarized in issue 6); every choice below is a parameter.

The student π_θ samples; the teacher π_T scores each sampled token.  The token-level reward is the teacher/student
log-ratio ::

    Â_t = log π_T(y_t) − log π_θold(y_t)                   (detached; > 0: the teacher likes y_t more than the student)

and the loss treats the two signs asymmetrically::

    Â_t > 0:  −min(r_t Â_t, clip(r_t, 1 − ε_low, 1 + ε_high) Â_t)      (the clipped policy gradient: reinforce y_t)
    Â_t ≤ 0:  kl_coef · KL(π_θ ‖ π_T)(· | y_<t) = kl_coef · Σ_v π_θ(v) (log π_θ(v) − log π_T(v))
                                                       (a local reverse KL over the whole next-token distribution)

Inferred details (ours): the advantage uses the rollout policy's log-prob (``old_log_prob``; the current log-prob,
detached, when on-policy); both parts are aggregated with the same per-token weights (``loss_agg``, default
token-mean over all valid tokens, so the loss is one average over positions); the KL uses the full vocabulary, or the
teacher's top-k tokens (``teacher_topk_ids``) with both distributions renormalized over those k ids; the student's
temperature applies to its logits, ``teacher_temperature`` (default: the same) to the teacher's; ``kl_coef = 1``.

Inputs: ``advantages`` may be ``None`` when ``teacher_log_prob`` [B, T] (teacher log-prob of the sampled token) is
given.  ``teacher_logits``: [B, T, V], or [B, T, k] at ``teacher_topk_ids`` [B, T, k].  The per-token path also needs
the student's ``student_logits`` [B, T, V] (or [B, T, k] already gathered at the top-k ids); the fused path computes
the student logits itself, only at the Â ≤ 0 positions (and only the k columns in top-k mode), and takes the Â > 0
part from :func:`lckernels.fused_policy_loss`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

import lckernels
from lckernels import PolicyLossConfig

from .base import Objective, expand_advantages, to_metrics
from .registry import register_objective

__all__ = ["AOPD", "local_kl", "teacher_token_log_prob"]


def local_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
             teacher_temperature: Optional[float] = None) -> torch.Tensor:
    """KL(π_s ‖ π_T) per row: ``[..., K]`` logits (K = V, or k ids shared by both) -> ``[...]`` fp32, differentiable
    w.r.t. the student logits.  Both are renormalized over the last dimension."""
    tt = temperature if teacher_temperature is None else teacher_temperature
    ls = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    lt = torch.log_softmax(teacher_logits.detach().float() / tt, dim=-1)
    return (ls.exp() * (ls - lt)).sum(-1)


def teacher_token_log_prob(teacher_logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                           ignore_index: int = -100) -> torch.Tensor:
    """log π_T(y_t) from full-vocabulary teacher logits [B, T, V] and targets [B, T] -> [B, T] (0 where ignored)."""
    ok = targets != ignore_index
    lt = torch.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    out = lt.gather(-1, targets.clamp_min(0).long()[..., None]).squeeze(-1)
    return torch.where(ok, out, torch.zeros_like(out))


@register_objective
@dataclass(kw_only=True)
class AOPD(Objective):
    """Asymmetric on-policy distillation: clipped PG where the teacher prefers the sampled token (Â > 0), local
    KL(π_θ ‖ π_T) elsewhere."""

    name: ClassVar[str] = "aopd"
    source: ClassVar[str] = "inferred"
    extra_inputs: ClassVar[tuple[str, ...]] = ("teacher_log_prob", "teacher_logits", "teacher_topk_ids",
                                               "student_logits")
    required_inputs: ClassVar[tuple[str, ...]] = ("teacher_logits", "student_logits")
    eps_low: float = 0.2
    eps_high: float = 0.2
    kl_coef: float = 1.0
    temperature: float = 1.0
    teacher_temperature: Optional[float] = None
    loss_agg: str = "token-mean"
    loss_norm_constant: Optional[float] = None
    ignore_index: int = -100

    def context_requirements(self) -> frozenset:
        return frozenset({"teacher"})

    def batch_inputs(self, batch, ctx) -> dict:
        """The teacher's full-vocabulary logits at the sampled tokens and its log-prob of each; the advantage is the
        teacher/student log-ratio (so the estimator's advantages are replaced by ``None``)."""
        with torch.no_grad():
            th = batch.hidden(ctx.teacher)
            tl = (th @ ctx.teacher.lm_head.weight.T).float()
        tt = self.temperature if self.teacher_temperature is None else self.teacher_temperature
        tlp = teacher_token_log_prob(tl, batch.targets, temperature=tt)
        return {"advantages": None, "teacher_logits": tl, "teacher_log_prob": tlp}

    def __post_init__(self):
        self.pg_config()
        if self.kl_coef < 0:
            raise ValueError(f"AOPD.kl_coef must be >= 0; got {self.kl_coef}")

    def pg_config(self) -> PolicyLossConfig:
        return PolicyLossConfig(mode="clip", eps_low=self.eps_low, eps_high=self.eps_high, loss_agg=self.loss_agg,
                                loss_norm_constant=self.loss_norm_constant, temperature=self.temperature,
                                ignore_index=self.ignore_index)

    # ------------------------------------------------------------------------------------------------- pieces
    @staticmethod
    def _advantages(advantages, teacher_log_prob, student_log_prob):
        if advantages is not None:
            return advantages
        if teacher_log_prob is None:
            raise ValueError("aopd: pass `advantages` or `teacher_log_prob` (Â_t = log π_T(y_t) − log π_θold(y_t))")
        return teacher_log_prob.detach().float() - student_log_prob.detach().float()

    @staticmethod
    def _split(advantages, valid):
        adv = torch.where(valid, expand_advantages(advantages, valid.shape), torch.zeros((), device=valid.device))
        pos = valid & (adv > 0)
        return adv, pos, valid & ~pos

    def _kl_part(self, student_neg, teacher_neg, ids_neg, valid, neg):
        if ids_neg is not None:
            k = ids_neg.shape[-1]
            if student_neg.shape[-1] != k:
                student_neg = student_neg.gather(-1, ids_neg)
            if teacher_neg.shape[-1] != k:
                teacher_neg = teacher_neg.gather(-1, ids_neg)
        elif student_neg.shape[-1] != teacher_neg.shape[-1]:
            raise ValueError("aopd: student and teacher logits must share the last dimension (V, or k with "
                             f"teacher_topk_ids); got {student_neg.shape[-1]} and {teacher_neg.shape[-1]}")
        kl_tok = local_kl(student_neg, teacher_neg, self.temperature, self.teacher_temperature)
        w = lckernels.loss_agg_weights(valid, self.loss_agg, self.loss_norm_constant)[neg]  # the kernel's own
        return (w * kl_tok).sum(), kl_tok

    def _finish(self, pg_loss, stats, kl_loss, kl_tok, valid, pos):
        loss = pg_loss + self.kl_coef * kl_loss
        m = to_metrics(loss, stats)
        n = max(int(valid.sum()), 1)
        m.update(pg_loss=float(pg_loss.detach()), kl_loss=float(kl_loss.detach()), pos_frac=int(pos.sum()) / n,
                 local_kl_mean=float(kl_tok.detach().mean()) if kl_tok.numel() else 0.0)
        return loss, m

    @staticmethod
    def _check_unused(rollout_log_prob, ref_log_prob):
        if rollout_log_prob is not None or ref_log_prob is not None:
            raise ValueError("aopd uses neither rollout_log_prob nor ref_log_prob (the teacher is the reference)")

    # ------------------------------------------------------------------------------------------------- paths
    def __call__(self, log_prob, old_log_prob, advantages, response_mask, rollout_log_prob=None, ref_log_prob=None,
                 *, teacher_logits: torch.Tensor, student_logits: torch.Tensor,
                 teacher_log_prob: Optional[torch.Tensor] = None, teacher_topk_ids: Optional[torch.Tensor] = None):
        """Per-token path; ``student_logits`` [B, T, V] (raw, differentiable, consistent with ``log_prob``)."""
        self._check_unused(rollout_log_prob, ref_log_prob)
        valid = torch.ones_like(log_prob, dtype=torch.bool) if response_mask is None else response_mask.bool()
        student_lp = old_log_prob if old_log_prob is not None else log_prob
        adv, pos, neg = self._split(self._advantages(advantages, teacher_log_prob, student_lp), valid)
        pg_loss, stats = lckernels.policy_loss_from_logprobs(log_prob, adv * pos, old_log_prob, mask=valid,
                                                             config=self.pg_config())
        ids = teacher_topk_ids[neg] if teacher_topk_ids is not None else None
        kl_loss, kl_tok = self._kl_part(student_logits[neg], teacher_logits[neg], ids, valid, neg)
        return self._finish(pg_loss, stats, kl_loss, kl_tok, valid, pos)

    def fused(self, hidden, lm_head_weight, targets, advantages, old_log_prob=None, response_mask=None,
              rollout_log_prob=None, ref_log_prob=None, *, teacher_logits: torch.Tensor,
              teacher_log_prob: Optional[torch.Tensor] = None, teacher_topk_ids: Optional[torch.Tensor] = None,
              backend: str = "auto", return_logprobs: bool = False):
        """Fused path: PG part through :func:`lckernels.fused_policy_loss`, KL part from ``hidden[neg] @ W.T``
        (all V columns, or the k teacher ids)."""
        self._check_unused(rollout_log_prob, ref_log_prob)
        valid = targets != self.ignore_index
        if response_mask is not None:
            valid = valid & response_mask.bool()
        student_lp = old_log_prob
        if advantages is None and student_lp is None:
            with torch.no_grad():
                student_lp = lckernels.fused_logprobs(hidden, lm_head_weight, targets, temperature=self.temperature,
                                                      ignore_index=self.ignore_index, backend=backend)
        adv, pos, neg = self._split(self._advantages(advantages, teacher_log_prob, student_lp), valid)
        out = lckernels.fused_policy_loss(hidden, lm_head_weight, targets, adv * pos, old_log_prob, mask=valid,
                                          config=self.pg_config(), backend=backend)
        h = hidden[neg].float()                                        # [n, D]
        w = lm_head_weight.float()
        if teacher_topk_ids is not None:
            ids = teacher_topk_ids[neg].long()                         # [n, k]
            student = torch.einsum("nd,nkd->nk", h, w[ids])            # only the k columns
        else:
            ids = None
            student = h @ w.t()                                        # [n, V]: only the Â <= 0 rows
        kl_loss, kl_tok = self._kl_part(student, teacher_logits[neg], ids, valid, neg)
        loss, m = self._finish(out.loss, out.stats, kl_loss, kl_tok, valid, pos)
        return (loss, m, out.logprobs) if return_logprobs else (loss, m)
