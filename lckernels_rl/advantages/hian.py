"""HIAN -- Horizon-Independent Advantage Normalization (DuCA).

Paper: Yang et al. 2026, *Harmonizing Dense and Sparse Signals in Multi-turn RL: Dual-Horizon Credit Assignment for
Industrial Sales Agents* (arXiv 2603.01481).  Source status: **inferred from the abstract** -- "HIAN separately
normalizes advantages from turn-level and session-level rewards before fusion, ensuring balanced gradient
contributions".  No code or equation was available; our reading (every choice configurable):

* session advantage, per trajectory ``n`` of group ``g`` (GRPO-style, within the group)::

      A_s[n] = (R[n] - mean_g R) / (std_g R + eps)

* turn advantage, per valid turn ``k`` of trajectory ``n``, normalized over **all valid turns of the group pooled**
  (turn positions differ in content across trajectories, so we do not normalize per position)::

      A_t[n, k] = (u[n, k] - mean_{g, valid turns} u) / (std_{g, valid turns} u + eps)

  where ``u`` is the immediate turn reward (``turn_return="immediate"``, default: turn rewards are the dense
  fluency/compliance signals) or its discounted reward-to-go over the following turns (``"reward_to_go"``, ``gamma``);
* fusion per token ``t`` of turn ``k(t)``::

      A[n, t] = w_session * A_s[n] + w_turn * A_t[n, k(t)]

  with ``w_session = w_turn = 1`` by default (equal weight is the point of the method: neither horizon dominates
  after normalization).  Tokens outside any turn (``token_turn = -1``) get the session term only; tokens outside
  ``response_mask`` get 0.  A group with one trajectory (or one valid turn) gives 0 for that term.
"""

from __future__ import annotations

from typing import Literal

import torch

from .group import _group_stats, group_ids, group_relative_advantages

__all__ = ["hian_advantages"]


def hian_advantages(
    session_rewards: torch.Tensor,
    turn_rewards: torch.Tensor,
    token_turn: torch.Tensor,
    index,
    *,
    turn_mask: torch.Tensor | None = None,
    response_mask: torch.Tensor | None = None,
    w_session: float = 1.0,
    w_turn: float = 1.0,
    eps: float = 1e-6,
    unbiased: bool = True,
    turn_return: Literal["immediate", "reward_to_go"] = "immediate",
    gamma: float = 1.0,
) -> torch.Tensor:
    """Per-token fused advantages from separately normalized session- and turn-level rewards.

    Args:
        session_rewards: ``[N]`` one session-level reward per trajectory (e.g. conversion).
        turn_rewards: ``[N, K]`` turn-level rewards (e.g. fluency / compliance of each agent turn).
        token_turn: ``[N, T]`` int, the turn index ``0..K-1`` of each response token, ``-1`` for none.
        index: ``[N]`` group label (prompt / scenario uid) of each trajectory.
        turn_mask: ``[N, K]`` bool, valid turns (default: all).
        response_mask: ``[N, T]`` valid tokens (default: all).
        w_session, w_turn: fusion weights.
        eps, unbiased: std settings, as in :func:`~lckernels_rl.advantages.group_relative_advantages`.
        turn_return: ``"immediate"`` or ``"reward_to_go"`` (discount ``gamma`` over the following valid turns).

    Returns:
        ``[N, T]`` float32 advantages, detached.
    """
    session_rewards = torch.as_tensor(session_rewards)
    turn_rewards = torch.as_tensor(turn_rewards)
    token_turn = torch.as_tensor(token_turn)
    if session_rewards.dim() != 1:
        raise ValueError(f"session_rewards must be [N], got {tuple(session_rewards.shape)}")
    n = session_rewards.shape[0]
    if turn_rewards.dim() != 2 or turn_rewards.shape[0] != n:
        raise ValueError(f"turn_rewards must be [N={n}, K], got {tuple(turn_rewards.shape)}")
    if token_turn.dim() != 2 or token_turn.shape[0] != n:
        raise ValueError(f"token_turn must be [N={n}, T], got {tuple(token_turn.shape)}")
    if token_turn.is_floating_point():
        raise ValueError("token_turn must be an integer tensor")
    k = turn_rewards.shape[1]
    if token_turn.numel() and (token_turn.max() >= k or token_turn.min() < -1):
        raise ValueError(f"token_turn values must lie in [-1, {k - 1}]")
    if turn_return not in ("immediate", "reward_to_go"):
        raise ValueError(f"turn_return must be 'immediate' or 'reward_to_go', got {turn_return!r}")
    tmask = (torch.ones_like(turn_rewards, dtype=torch.bool) if turn_mask is None
             else torch.as_tensor(turn_mask).to(torch.bool))
    if tmask.shape != turn_rewards.shape:
        raise ValueError(f"turn_mask must be {tuple(turn_rewards.shape)}, got {tuple(tmask.shape)}")
    rmask = (torch.ones_like(token_turn, dtype=torch.bool) if response_mask is None
             else torch.as_tensor(response_mask).to(torch.bool))
    if rmask.shape != token_turn.shape:
        raise ValueError(f"response_mask must be {tuple(token_turn.shape)}, got {tuple(rmask.shape)}")

    a_s = group_relative_advantages(session_rewards, index, norm="group", eps=eps, unbiased=unbiased).double()

    r = torch.where(tmask, turn_rewards.detach().double(), torch.zeros((), dtype=torch.float64))
    if turn_return == "reward_to_go":
        u = torch.zeros_like(r)
        acc = torch.zeros(n, dtype=torch.float64)
        for j in range(k - 1, -1, -1):          # discount over valid turns only
            acc = torch.where(tmask[:, j], r[:, j] + gamma * acc, acc)
            u[:, j] = acc
        r = torch.where(tmask, u, torch.zeros_like(u))
    a_t = torch.zeros_like(r)
    if n and k:
        gid = group_ids(index, n)
        flat_gid = gid[:, None].expand(n, k)[tmask]
        vals = r[tmask]
        if vals.numel():
            count, mean, std = _group_stats(vals, flat_gid, unbiased)
            norm = (vals - mean[flat_gid]) / (std[flat_gid] + eps)
            norm = torch.where(count[flat_gid] > 1, norm, torch.zeros_like(norm))
            a_t[tmask] = norm

    turn_term = torch.gather(a_t, 1, token_turn.clamp_min(0).long())
    turn_term = torch.where(token_turn >= 0, turn_term, torch.zeros_like(turn_term))
    out = w_session * a_s[:, None] + w_turn * turn_term
    return torch.where(rmask, out, torch.zeros_like(out)).to(torch.float32)
