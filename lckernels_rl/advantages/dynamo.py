"""DynaMO token-level advantage modulation: compensate high-confidence correct tokens, damp entropy-unstable ones.

Paper: Fang et al. 2026, *How to Allocate, How to Learn? Dynamic Rollout Allocation and Advantage Modulation for
Policy Optimization* (arXiv 2602.19208); code: github.com/GithubX-F/DynaMO-RL at commit 63e5ec9 ("fix entropy
estimation granularity and padding mask in dp_actor"), ``verl/workers/actor/dp_actor.py``
(``_compute_entropy_estimation`` and the ``entropy_advantage_mode="decay6_linearnorm"`` branch, the mode
``examples/dynamo_trainer/run_qwen2.5-math-7b.sh`` runs).

Equation (``A`` advantage, ``H`` entropy of the policy at the token, ``pi = exp(log pi)`` probability of the sampled
token, ``rho`` importance ratio, all detached)::

    A' = A * beta_comp * beta_stab
    beta_comp = 1 + (mu_max - 1) * (H_max - H) / (H_max - H_min)   if A > 0 else 1
    dH        = -xi * (pi (log pi + H) - mean_seq[pi (log pi + H)]),   xi = 1_unclipped * rho * A
    x         = |dH| / max|dH|
    beta_stab = lambda_min + (1 - lambda_min) / (1 + exp(gamma (x - tau)))

defaults ``lambda_min = 0.6, mu_max = 1.2, gamma = 50, tau = 0.99``.

Source status: **verified** (``dp_actor.py`` read at 63e5ec9): the per-token ``dH`` centred by its mean over the
sequence's valid tokens (their comment: "DynaMO Eq.29", token granularity, shape (bsz, seq_len)), ``H_max`` /
``H_min`` and ``max|dH|`` over the **valid** tokens only (padding masked), ``beta_comp``, ``beta_stab`` and its
constants, and ``1_unclipped = (A > 0 and rho <= 1 + eps_high) or (A < 0 and rho >= 1 - eps_low)``
(:func:`ppo_unclipped_mask`; their script sets eps_low = eps_high = 0.2 and ``_get_adjusted_clip_ratio_high``
raises a high bound of 0.2 to 0.28 unless ``enable_clip_ratio`` is off) -- this is our default,
``entropy_change="centered"``.  The superseded first commit (496c27f) computed one value per sequence,
``|sum_t -eta pi_t^2 (log pi_t + H_t) xi_t|`` (no centring, ``pi`` squared, a constant ``eta`` that cancels in
``x``), broadcast to its tokens, and took ``H_max`` / ``H_min`` over padding too; its estimate is available as
``entropy_change="first_commit"`` (``"released_code"``, its former name, is still accepted) -- with ``H_max`` /
``H_min`` over the valid tokens as everywhere here.  Ours (**inferred**): the released code adds 1e-8 to both
denominators; we set ``beta_comp = 1`` when ``H_max == H_min`` and ``x = 0`` when ``max|dH| == 0`` instead (the
same limits); positions outside ``response_mask`` pass through unchanged.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["dynamo_modulation", "ppo_unclipped_mask"]


def ppo_unclipped_mask(ratio: torch.Tensor, advantages: torch.Tensor, eps_low: float = 0.2,
                       eps_high: float = 0.28) -> torch.Tensor:
    """Tokens whose PPO-clip surrogate still has a gradient (DynaMO's ``1_unclipped``, authors' code).

    ``(A > 0 and rho <= 1 + eps_high) or (A < 0 and rho >= 1 - eps_low)``; ``A == 0`` counts as clipped (``xi = 0``
    either way).
    """
    ratio = torch.as_tensor(ratio)
    advantages = torch.as_tensor(advantages)
    return ((advantages > 0) & (ratio <= 1 + eps_high)) | ((advantages < 0) & (ratio >= 1 - eps_low))


def dynamo_modulation(
    advantages: torch.Tensor,
    entropy: torch.Tensor,
    log_prob: torch.Tensor,
    ratio: torch.Tensor,
    clipped_mask: torch.Tensor | None = None,
    response_mask: torch.Tensor | None = None,
    *,
    mu_max: float = 1.2,
    lambda_min: float = 0.6,
    gamma: float = 50.0,
    tau: float = 0.99,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    entropy_change: Literal["centered", "first_commit", "released_code"] = "centered",
    return_factors: bool = False,
):
    """Modulate per-token advantages as DynaMO does; the result is detached.

    Args:
        advantages: ``[B, T]`` per-token advantages, or ``[B]`` per sequence (broadcast over ``T``).
        entropy: ``[B, T]`` entropy of the current policy at each token.
        log_prob: ``[B, T]`` log-prob of the sampled token under the current policy.
        ratio: ``[B, T]`` importance ratio ``pi_theta / pi_old``.
        clipped_mask: ``[B, T]`` bool, True where the PPO clip removed the token's gradient.  ``None``: computed by
            :func:`ppo_unclipped_mask` with ``eps_low`` / ``eps_high``.
        response_mask: ``[B, T]`` valid tokens (default: all).
        mu_max, lambda_min, gamma, tau: the modulation constants (paper / code defaults).
        entropy_change: ``"centered"`` (default: the released per-token estimate, commit 63e5ec9) or
            ``"first_commit"`` (the superseded per-sequence estimate; alias ``"released_code"``).
        return_factors: also return ``(beta_comp, beta_stab)``.

    Returns:
        ``[B, T]`` modulated advantages (float32, no grad), or ``(advantages, beta_comp, beta_stab)``.
    """
    entropy = torch.as_tensor(entropy).detach().double()
    if entropy.dim() != 2:
        raise ValueError(f"entropy must be [B, T], got {tuple(entropy.shape)}")
    shape = entropy.shape
    adv = torch.as_tensor(advantages).detach().double()
    if adv.dim() == 1 and adv.shape[0] == shape[0]:
        adv = adv[:, None].expand(shape)
    log_prob = torch.as_tensor(log_prob).detach().double()
    ratio = torch.as_tensor(ratio).detach().double()
    for name, t in (("advantages", adv), ("log_prob", log_prob), ("ratio", ratio)):
        if t.shape != shape:
            raise ValueError(f"{name} must be {tuple(shape)} (advantages may also be [B]), got {tuple(t.shape)}")
    mask = (torch.ones(shape, dtype=torch.bool) if response_mask is None
            else torch.as_tensor(response_mask).to(torch.bool))
    if mask.shape != shape:
        raise ValueError(f"response_mask must be {tuple(shape)}, got {tuple(mask.shape)}")
    if clipped_mask is None:
        unclipped = ppo_unclipped_mask(ratio, adv, eps_low, eps_high)
    else:
        clipped_mask = torch.as_tensor(clipped_mask).to(torch.bool)
        if clipped_mask.shape != shape:
            raise ValueError(f"clipped_mask must be {tuple(shape)}, got {tuple(clipped_mask.shape)}")
        unclipped = ~clipped_mask
    if entropy_change not in ("centered", "first_commit", "released_code"):
        raise ValueError("entropy_change must be 'centered' or 'first_commit' (alias 'released_code'), "
                         f"got {entropy_change!r}")
    if not 0.0 <= lambda_min <= 1.0:
        raise ValueError(f"lambda_min must lie in [0, 1], got {lambda_min}")

    ones = torch.ones(shape, dtype=torch.float64)
    if not mask.any():
        out = adv.to(torch.float32).clone()
        return (out, ones.float(), ones.float()) if return_factors else out
    zero = torch.zeros((), dtype=torch.float64)

    # compensation: boost positive advantages on confident (low-entropy) tokens
    h_valid = entropy[mask]
    h_max, h_min = h_valid.max(), h_valid.min()
    span = h_max - h_min
    h_norm = (h_max - entropy) / span if span > 0 else torch.zeros_like(entropy)
    beta_comp = torch.where(adv > 0, 1.0 + (mu_max - 1.0) * h_norm, ones)

    # stabilization: damp the tokens whose first-order entropy change is the largest of the batch
    pi = log_prob.exp()
    xi = torch.where(unclipped & mask, ratio * adv, zero)
    lam = torch.where(mask, pi * (log_prob + entropy), zero)
    if entropy_change == "centered":
        n_valid = mask.sum(dim=1, keepdim=True).clamp_min(1)
        centred = lam - lam.sum(dim=1, keepdim=True) / n_valid
        dh = torch.where(mask, -xi * centred, zero)
    else:
        dh = (-(pi * lam) * xi).sum(dim=1, keepdim=True).expand(shape)
        dh = torch.where(mask, dh, zero)
    mag = dh.abs()
    m = mag[mask].max()
    x = mag / m if m > 0 else torch.zeros_like(mag)
    beta_stab = lambda_min + (1.0 - lambda_min) * torch.sigmoid(-gamma * (x - tau))

    beta_comp = torch.where(mask, beta_comp, ones)
    beta_stab = torch.where(mask, beta_stab, ones)
    out = (adv * beta_comp * beta_stab).to(torch.float32)
    if return_factors:
        return out, beta_comp.to(torch.float32), beta_stab.to(torch.float32)
    return out
