"""Dual-track GRPO (TRUST-SQL).

Paper: "TRUST-SQL", arXiv 2603.16448.  Status: **third-party** notes (as summarized in issue 6); what is inferred is
marked below.

A text-to-SQL agent's response has phases; the schema track covers the tokens up to the end of the *Propose* phase
(the proposed schema), the full track all tokens.  Each track has its own group-relative (GRPO) advantage::

    full track:    R_full   = R_exec + R_fmt      R_exec = 1.0 correct / 0.2 executable but wrong / 0 otherwise,
                                                   R_fmt = 0.1 when the format is valid
    schema track:  R_schema ∈ {0, 1}, paid only when R_exec = 1
    Â_full = GRPO(R_full) on every response token;  Â_schema = GRPO(R_schema) on tokens up to Propose, 0 after
    L = L_full + λ · L_schema,   λ = 0.25

Mapping: both tracks are the GRPO clipped surrogate (:class:`~lckernels_rl.objectives.grpo.GRPO`, one
:func:`lckernels.fused_policy_loss` call each in the fused path, sharing the ratio).  **Inferred** (ours): the schema
advantage is zeroed after Propose by multiplying it with ``schema_mask`` while both tracks keep the same response
mask, i.e. the same aggregation denominators (the notes say "advantages are zero after Propose"); the KL penalty
(if any) is added once, in the full track; GRPO's defaults (ε 0.2, seq-mean-token-mean).

Helpers: :func:`trust_sql_rewards` (the reward table above) and :func:`schema_token_mask` (tokens before the end of
Propose).  The group normalization itself belongs to the advantage estimators.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional, Sequence

import torch

from .base import Objective, expand_advantages
from .grpo import GRPO
from .registry import register_objective

__all__ = ["DualTrackGRPO", "trust_sql_rewards", "schema_token_mask"]

R_EXEC = {"correct": 1.0, "wrong": 0.2, "error": 0.0}


def trust_sql_rewards(exec_status: Sequence[str], format_ok: Sequence[bool], schema_correct: Sequence[bool], *,
                      r_fmt: float = 0.1, exec_rewards: Optional[dict] = None):
    """Per-response rewards -> ``(r_full, r_schema)`` fp32 tensors [N].

    ``exec_status``: ``"correct"`` (executes, right answer), ``"wrong"`` (executes, wrong answer) or ``"error"``
    (does not execute); ``format_ok``: the response follows the format (R_fmt); ``schema_correct``: the proposed
    schema is right (R_schema, paid only when R_exec = 1, i.e. the query is correct).
    """
    table = R_EXEC if exec_rewards is None else exec_rewards
    if not (len(exec_status) == len(format_ok) == len(schema_correct)):
        raise ValueError("trust_sql_rewards: the three sequences must have the same length")
    unknown = sorted(set(exec_status) - set(table))
    if unknown:
        raise ValueError(f"trust_sql_rewards: unknown exec_status {unknown}; valid: {sorted(table)}")
    r_exec = torch.tensor([table[s] for s in exec_status], dtype=torch.float32)
    r_full = r_exec + r_fmt * torch.tensor([bool(f) for f in format_ok], dtype=torch.float32)
    correct = torch.tensor([s == "correct" for s in exec_status])
    r_schema = (correct & torch.tensor([bool(c) for c in schema_correct])).float()
    return r_full, r_schema


def schema_token_mask(propose_end: torch.Tensor, length: int) -> torch.Tensor:
    """[B] int (index one past the last token of the Propose phase) -> [B, length] float mask, 1 for t < end."""
    t = torch.arange(length, device=propose_end.device)
    return (t[None, :] < propose_end.long()[:, None]).float()


@register_objective
@dataclass(kw_only=True)
class DualTrackGRPO(Objective):
    """L = L_full + λ · L_schema, two GRPO tracks.  Extra inputs: ``schema_advantages`` ([B] or [B, T]) and
    ``schema_mask`` [B, T] (1 up to the end of Propose)."""

    name: ClassVar[str] = "dual_track_grpo"
    source: ClassVar[str] = "third-party"
    extra_inputs: ClassVar[tuple[str, ...]] = ("schema_advantages", "schema_mask")
    required_inputs: ClassVar[tuple[str, ...]] = ("schema_advantages", "schema_mask")
    supports_token_weight: ClassVar[bool] = True
    lam: float = 0.25
    eps_low: float = 0.2
    eps_high: float = 0.2
    loss_agg: str = "seq-mean-token-mean"
    loss_norm_constant: Optional[float] = None
    kl: str = "k3"
    kl_beta: float = 0.0
    temperature: float = 1.0
    ignore_index: int = -100

    schema_span: str = "schema"
    schema_component: str = "schema"

    def batch_inputs(self, batch, ctx) -> dict:
        """The schema track from the batch: ``schema_mask`` = the sampled tokens inside span ``schema_span``,
        ``schema_advantages`` = the estimator on the verdicts' ``schema_component`` (0 where a sample has none)."""
        if self.schema_span not in batch.spans or self.schema_component not in batch.components:
            raise ValueError(f"dual_track_grpo needs the environment to mark span {self.schema_span!r} and reward "
                             f"component {self.schema_component!r}; the batch has spans {sorted(batch.spans)} and "
                             f"components {sorted(batch.components)} (set objective_args schema_span / "
                             "schema_component)")
        r = torch.nan_to_num(batch.components[self.schema_component], nan=0.0)
        return {"schema_advantages": ctx.advantage_fn(r, batch.group_index).float(),
                "schema_mask": batch.spans[self.schema_span] & batch.mask}

    def __post_init__(self):
        if self.lam < 0:
            raise ValueError(f"DualTrackGRPO.lam must be >= 0; got {self.lam}")
        self.tracks()

    def tracks(self):
        """(full-track objective, schema-track objective): GRPO with these parameters; no KL on the schema track."""
        kw = dict(eps_low=self.eps_low, eps_high=self.eps_high, loss_agg=self.loss_agg,
                  loss_norm_constant=self.loss_norm_constant, temperature=self.temperature,
                  ignore_index=self.ignore_index)
        return GRPO(kl=self.kl, kl_beta=self.kl_beta, **kw), GRPO(kl_beta=0.0, **kw)

    @staticmethod
    def _schema_adv(schema_advantages, schema_mask):
        if schema_advantages is None or schema_mask is None:
            raise ValueError("dual_track_grpo needs schema_advantages ([B] or [B, T]) and schema_mask ([B, T])")
        return expand_advantages(schema_advantages, schema_mask.shape) * schema_mask.float()

    def _combine(self, full, schema):
        (lf, mf), (ls, ms) = full, schema
        loss = lf + self.lam * ls
        m = {"loss": float(loss.detach())}
        m.update({f"full/{k}": v for k, v in mf.items()})
        m.update({f"schema/{k}": v for k, v in ms.items()})
        return loss, m

    def __call__(self, log_prob, old_log_prob, advantages, response_mask, rollout_log_prob=None, ref_log_prob=None,
                 *, schema_advantages: torch.Tensor = None, schema_mask: torch.Tensor = None,
                 entropy: Optional[torch.Tensor] = None, token_weight: Optional[torch.Tensor] = None):
        full_obj, schema_obj = self.tracks()
        schema_adv = self._schema_adv(schema_advantages, schema_mask)
        full = full_obj(log_prob, old_log_prob, advantages, response_mask, rollout_log_prob, ref_log_prob,
                        entropy=entropy, token_weight=token_weight)
        schema = schema_obj(log_prob, old_log_prob, schema_adv, response_mask, rollout_log_prob, None,
                            entropy=entropy, token_weight=token_weight)
        return self._combine(full, schema)

    def fused(self, hidden, lm_head_weight, targets, advantages, old_log_prob=None, response_mask=None,
              rollout_log_prob=None, ref_log_prob=None, *, schema_advantages: torch.Tensor = None,
              schema_mask: torch.Tensor = None, token_weight: Optional[torch.Tensor] = None, backend: str = "auto",
              return_logprobs: bool = False):
        full_obj, schema_obj = self.tracks()
        schema_adv = self._schema_adv(schema_advantages, schema_mask)
        lf, mf, lp = full_obj.fused(hidden, lm_head_weight, targets, advantages, old_log_prob, response_mask,
                                    rollout_log_prob, ref_log_prob, token_weight=token_weight, backend=backend,
                                    return_logprobs=True)
        schema = schema_obj.fused(hidden, lm_head_weight, targets, schema_adv, old_log_prob, response_mask,
                                  rollout_log_prob, None, token_weight=token_weight, backend=backend)
        loss, m = self._combine((lf, mf), schema)
        return (loss, m, lp) if return_logprobs else (loss, m)
