"""Skill1 credit assignment: the low-frequency trend of the task outcome credits skill selection, the high-frequency
variation credits skill distillation.

Paper: Shi et al. 2026, *Skill1: Unified Evolution of Skill-Augmented Agents via Reinforcement Learning*
(arXiv 2605.06130); code: github.com/AlphaLab-USTC/Skill1.  Equations (``R`` task outcome of an episode, ``u`` the
utility of the skill it selected)::

    u <- (1 - alpha) u + alpha R        (EMA, alpha = 0.05)      -> credits selection (low-frequency trend)
    d  = R - u_hat                       (first difference)       -> credits distillation (high-frequency variation)

Source status: the two signals are from the abstract; ``alpha = 0.05``, ``distill_reward_type=first_order_diff`` and
``u_hat_aggregation=max`` are **verified from the authors' launch script** (``train_alfworld.sh``); the code that
consumes them is not public in our sources, so the following are **inferred** (configurable):

* ``u_hat`` -- the library baseline the new skill must beat -- is the *pre-update* utility of the skills the episode
  retrieved, aggregated by ``max`` (default) or ``mean``; without ``candidates`` it is the selected skill's utility;
* several episodes that select the same skill in one batch update its EMA in episode order (an online update);
* the selection credit of an episode is the selected skill's utility *after* the batch update;
* a skill never seen starts at ``init_utility`` (0.0).

The weights the paper puts on these credits in the loss (``lambda_distill = lambda_rerank = 0.3`` in the script)
belong to the objective, not here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["Skill1Credit", "skill1_credit"]


@dataclass
class Skill1Credit:
    """``utility``: ``[S]`` updated skill utilities; ``selection``: ``[B]`` selection credit (trend);
    ``distillation``: ``[B]`` distillation credit ``R - u_hat``; ``u_hat``: ``[B]`` the baseline used."""

    utility: torch.Tensor
    selection: torch.Tensor
    distillation: torch.Tensor
    u_hat: torch.Tensor


def skill1_credit(
    rewards: torch.Tensor,
    skill_ids: torch.Tensor,
    utility: torch.Tensor,
    *,
    alpha: float = 0.05,
    candidates: Sequence[Sequence[int]] | None = None,
    u_hat_aggregation: Literal["max", "mean"] = "max",
) -> Skill1Credit:
    """Update the skill utilities with a batch of outcomes and return both credits.

    Args:
        rewards: ``[B]`` task outcome ``R`` of each episode.
        skill_ids: ``[B]`` int, the skill each episode selected (``-1``: none -- no EMA update, selection credit 0).
        utility: ``[S]`` current utilities ``u`` (not modified; a copy is returned).  Grow it (with your initial
            utility) when skills are added to the library.
        alpha: EMA rate.
        candidates: per episode, the retrieved skill ids ``u_hat`` aggregates over (default: the selected one).
        u_hat_aggregation: ``"max"`` (authors' script) or ``"mean"``.

    Example:
        >>> out = skill1_credit(torch.tensor([1.0]), torch.tensor([0]), torch.tensor([0.5]))
        >>> round(out.utility.item(), 3), round(out.distillation.item(), 3)
        (0.525, 0.5)
    """
    rewards = torch.as_tensor(rewards).detach().double()
    skill_ids = torch.as_tensor(skill_ids)
    u = torch.as_tensor(utility).detach().double().clone()
    if rewards.dim() != 1 or skill_ids.shape != rewards.shape:
        raise ValueError(f"rewards and skill_ids must both be [B], got {tuple(rewards.shape)} and "
                         f"{tuple(skill_ids.shape)}")
    if skill_ids.is_floating_point():
        raise ValueError("skill_ids must be integers")
    if u.dim() != 1:
        raise ValueError(f"utility must be [S], got {tuple(u.shape)}")
    if skill_ids.numel() and (skill_ids.max() >= u.numel() or skill_ids.min() < -1):
        raise ValueError(f"skill_ids must lie in [-1, {u.numel() - 1}]")
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must lie in (0, 1], got {alpha}")
    if u_hat_aggregation not in ("max", "mean"):
        raise ValueError(f"u_hat_aggregation must be 'max' or 'mean', got {u_hat_aggregation!r}")
    if candidates is not None and len(candidates) != rewards.numel():
        raise ValueError(f"candidates must have one entry per episode ({rewards.numel()}), got {len(candidates)}")
    b = rewards.numel()
    u_before = u.clone()
    u_hat = torch.zeros(b, dtype=torch.float64)
    for i in range(b):
        ids = list(candidates[i]) if candidates is not None else ([int(skill_ids[i])] if skill_ids[i] >= 0 else [])
        if any(j < 0 or j >= u.numel() for j in ids):
            raise ValueError(f"candidate ids of episode {i} out of range")
        if ids:
            vals = u_before[ids]
            u_hat[i] = vals.max() if u_hat_aggregation == "max" else vals.mean()
    for i in range(b):
        s = int(skill_ids[i])
        if s >= 0:
            u[s] = (1 - alpha) * u[s] + alpha * rewards[i]
    picked = u[skill_ids.clamp_min(0).long()] if u.numel() else torch.zeros_like(rewards)
    selection = torch.where(skill_ids >= 0, picked, torch.zeros_like(rewards))
    return Skill1Credit(utility=u.float(), selection=selection.float(), distillation=(rewards - u_hat).float(),
                        u_hat=u_hat.float())
