"""Plain-torch building blocks shared by the oracle tests (nothing here imports lckernels).

Everything works in float64 on [B, T] tensors with an explicit bool ``valid`` mask; masked entries never count.
"""

from __future__ import annotations

import torch

# fused_policy_loss docstring: "Log-ratios are clamped to +-20 before ``exp``."
LOG_CLAMP = 20.0


def cexp(log_x: torch.Tensor) -> torch.Tensor:
    """exp of a log-ratio clamped to +-20 (fused_policy_loss docstring)."""
    return torch.exp(log_x.clamp(-LOG_CLAMP, LOG_CLAMP))


def zero_fill(x, valid):
    """x on valid entries, 0 elsewhere (so NaN/inf padding never reaches autograd)."""
    if x is None:
        return None
    return torch.where(valid, x.double(), torch.zeros((), dtype=torch.float64))


def token_mean(x, valid):
    """sum over valid tokens / number of valid tokens (0 for an empty batch)."""
    n = int(valid.sum())
    return (x * valid).sum() / max(n, 1)


def seq_token_means(x, valid):
    """[B] per-sequence token means, and the bool [B] of sequences that have a valid token."""
    n_i = valid.sum(1)
    has = n_i > 0
    return (x * valid).sum(1) / n_i.clamp_min(1), has


def mean_over(x_i, has):
    """mean of x_i over the sequences flagged in ``has`` (0 when none)."""
    n = int(has.sum())
    return (x_i * has).sum() / max(n, 1)


def maspo_gate(r, old, adv, *, sigma_base, alpha, beta_pos, beta_neg, sigma_high, a_low, a_high):
    """MASPO's soft Gaussian gate, written from lckernels/ops/gating/reference.py's module docstring (the formula
    of the authors' code, also restated in lckernels_rl/objectives/maspo.py):

        sigma_mass = clamp(sigma_base / p_old^alpha, sigma_base, sigma_high),       p_old = exp(old_logprobs)
        sigma_pos  = sigma_mass * clamp(1 + beta_pos * A, a_low, a_high)
        sigma_neg  = sigma_mass * clamp(1 / (1 - beta_neg * A), a_low, a_high)
        w = exp(-(ratio - 1)^2 / (2 sigma^2))   sigma = sigma_pos where A > 0 and ratio > 1,
                                                sigma = sigma_neg where A < 0 and ratio < 1,
        w = 1 elsewhere
    The result is a detached weight (the docstring of soft_gaussian_gate: "detached")."""
    r, old, adv = r.detach().double(), old.detach().double(), adv.detach().double()
    p_old = torch.exp(old)
    sigma_mass = (sigma_base / p_old ** alpha).clamp(sigma_base, sigma_high)
    pos = (adv > 0) & (r > 1)
    neg = (adv < 0) & (r < 1)
    w = torch.ones_like(r)
    sigma_pos = sigma_mass * (1 + beta_pos * adv).clamp(a_low, a_high)
    w = torch.where(pos, torch.exp(-(r - 1) ** 2 / (2 * sigma_pos ** 2)), w)
    # 1 - beta_neg * A > 1 > 0 wherever A < 0, so the division is safe where it is used
    safe = torch.where(neg, 1 - beta_neg * adv, torch.ones_like(adv))
    sigma_neg = sigma_mass * (1 / safe).clamp(a_low, a_high)
    w = torch.where(neg, torch.exp(-(r - 1) ** 2 / (2 * sigma_neg ** 2)), w)
    return w


def centered_noise(g, shape, valid, scale):
    """Gaussian noise whose mean over each row's valid entries is exactly 0 (float64)."""
    n = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    v = valid.double()
    mean = (n * v).sum(1, keepdim=True) / v.sum(1, keepdim=True).clamp_min(1)
    return (n - mean) * v
