"""Reference of MASPO's soft Gaussian gate (Mass-Adaptive Soft Policy Optimization, arXiv 2602.17550).

The formula follows the authors' code:

    sigma_mass = clamp(sigma_base / p_old^alpha, sigma_base, sigma_high),       p_old = exp(old_logprobs)
    sigma_pos  = sigma_mass * clamp(1 + beta_pos * A, a_low, a_high)
    sigma_neg  = sigma_mass * clamp(1 / (1 - beta_neg * A), a_low, a_high)
    w = exp(-(ratio - 1)^2 / (2 sigma^2))   sigma = sigma_pos where A > 0 and ratio > 1,
                                            sigma = sigma_neg where A < 0 and ratio < 1,
    w = 1 elsewhere (the gate only softens updates that move the ratio further in the advantage's direction).

Low-probability tokens (small p_old) get a wider gate (more trust), confident tokens a narrower one.
"""

from __future__ import annotations

import torch


def soft_gaussian_gate_reference(ratio: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, *,
                                 sigma_base: float = 1.0, alpha: float = 0.3, beta_pos: float = 0.03,
                                 beta_neg: float = 0.03, sigma_high: float = 10.0, a_low: float = 0.1,
                                 a_high: float = 10.0) -> torch.Tensor:
    """Elementwise fp32 gate; inputs broadcast against each other; the result carries no gradient."""
    r = ratio.detach().float()
    a = advantages.detach().float()
    old = old_logprobs.detach().float()
    sigma_mass = (sigma_base * torch.exp(-alpha * old)).clamp(sigma_base, sigma_high)  # sigma_base / p_old^alpha
    s_pos = sigma_mass * (1 + beta_pos * a).clamp(a_low, a_high)
    s_neg = sigma_mass * (1 / (1 - beta_neg * a.clamp(max=0))).clamp(a_low, a_high)
    pos = (a > 0) & (r > 1)
    neg = (a < 0) & (r < 1)
    sigma = torch.where(pos, s_pos, s_neg)
    w = torch.exp(-(r - 1) ** 2 / (2 * sigma * sigma))
    return torch.where(pos | neg, w, torch.ones_like(w))
