"""Group-relative advantages: GRPO (group mean / group std), Dr. GRPO (group mean only), group mean / batch std.

Papers and equations (one scalar reward ``r_i`` per response, responses grouped by prompt):

* **GRPO** -- Shao et al. 2024, *DeepSeekMath* (arXiv 2402.03300), outcome supervision, Sec. 4.1.2:
  ``A_i = (r_i - mean(r_g)) / (std(r_g) + eps)``.
* **Dr. GRPO** -- Liu et al. 2025, *Understanding R1-Zero-Like Training* (arXiv 2503.20783), Sec. 3.2:
  ``A_i = r_i - mean(r_g)`` (dividing by the group std up-weights too-easy / too-hard prompts).
* **Group mean, batch std** -- REINFORCE++-baseline (Hu et al. 2025, arXiv 2501.03262) and Lite PPO (Liu et al. 2025,
  *Tricks or Traps? Part I*, arXiv 2508.08221): ``A_i = (r_i - mean(r_g)) / (std_batch + eps)``.

Source status: GRPO and Dr. GRPO **verified** against verl's ``compute_grpo_outcome_advantage`` (``torch.std``, i.e.
the unbiased std, and ``eps = 1e-6`` added to it; ``norm_adv_by_std_in_grpo=False`` is Dr. GRPO); the batch-std
variant follows the published equations (not checked against code).  Our choices, all configurable:

* a group with one response gets advantage 0 (``singleton="zero"``: its group mean *is* its reward); verl instead
  sets mean 0 / std 1 so the advantage is the raw reward (``singleton="raw"``);
* the batch std is taken over the group-centred rewards (``batch_std_of="centered"``, REINFORCE++-baseline) or over the
  raw rewards (``"rewards"``); unbiased unless ``unbiased=False``.

All-0 / all-1 groups give 0 (the centred rewards are 0; ``0 / (0 + eps) = 0``).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

__all__ = ["group_ids", "group_relative_advantages", "grpo_advantages", "dr_grpo_advantages",
           "batch_std_advantages"]


def group_ids(index, n: int, device=None) -> torch.Tensor:
    """Map any group labels (LongTensor, numpy array of uids/strings, list) to dense ids ``0..num_groups-1``."""
    if isinstance(index, torch.Tensor):
        if index.dim() != 1 or index.numel() != n:
            raise ValueError(f"index must have shape [{n}], got {tuple(index.shape)}")
        return torch.unique(index, return_inverse=True)[1].to(device)
    arr = index if isinstance(index, np.ndarray) else np.asarray(list(index))
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"index must have shape [{n}], got {arr.shape}")
    inverse = np.unique(arr, return_inverse=True)[1].reshape(-1)
    return torch.as_tensor(inverse, dtype=torch.long, device=device)


def _group_stats(x: torch.Tensor, gid: torch.Tensor, unbiased: bool):
    g = int(gid.max()) + 1 if gid.numel() else 0
    count = torch.zeros(g, dtype=torch.float64, device=x.device).index_add_(0, gid, torch.ones_like(x))
    mean = torch.zeros(g, dtype=torch.float64, device=x.device).index_add_(0, gid, x) / count
    sq = torch.zeros(g, dtype=torch.float64, device=x.device).index_add_(0, gid, (x - mean[gid]) ** 2)
    denom = (count - 1.0) if unbiased else count
    std = torch.where(denom > 0, sq / denom.clamp_min(1.0), torch.zeros_like(sq)).sqrt()
    return count, mean, std


def group_relative_advantages(
    rewards: torch.Tensor,
    index,
    *,
    norm: Literal["group", "none", "batch"] = "group",
    eps: float = 1e-6,
    unbiased: bool = True,
    singleton: Literal["zero", "raw"] = "zero",
    batch_std_of: Literal["centered", "rewards"] = "centered",
) -> torch.Tensor:
    """Group-relative advantages of scalar rewards.

    Args:
        rewards: ``[N]`` one scalar reward per response (sum your token-level rewards first).
        index: ``[N]`` group label of each response (prompt uid): LongTensor, numpy array (strings ok) or list.
        norm: ``"group"`` (GRPO), ``"none"`` (Dr. GRPO) or ``"batch"`` (group mean, batch std).
        eps: added to the std.
        unbiased: Bessel-corrected std (as ``torch.std``; verl/TRL).
        singleton: advantage of a one-response group: ``"zero"`` or ``"raw"`` (verl: the reward itself).
        batch_std_of: for ``norm="batch"``, the std of the group-centred rewards or of the raw rewards.

    Returns:
        ``[N]`` float32 advantages, detached.

    Example:
        >>> group_relative_advantages(torch.tensor([1., 0., 0., 0.]), [0, 0, 0, 0])
        tensor([ 1.5000, -0.5000, -0.5000, -0.5000])
    """
    if norm not in ("group", "none", "batch"):
        raise ValueError(f"norm must be 'group', 'none' or 'batch', got {norm!r}")
    if singleton not in ("zero", "raw"):
        raise ValueError(f"singleton must be 'zero' or 'raw', got {singleton!r}")
    if batch_std_of not in ("centered", "rewards"):
        raise ValueError(f"batch_std_of must be 'centered' or 'rewards', got {batch_std_of!r}")
    rewards = torch.as_tensor(rewards)
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    if rewards.numel() == 0:
        return torch.zeros(0, dtype=torch.float32, device=rewards.device)
    x = rewards.detach().to(torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError("rewards contain NaN or inf")
    gid = group_ids(index, x.numel(), device=x.device)
    count, mean, std = _group_stats(x, gid, unbiased)
    centered = x - mean[gid]
    if norm == "group":
        adv = centered / (std[gid] + eps)
    elif norm == "none":
        adv = centered
    else:
        pool = centered if batch_std_of == "centered" else x
        bstd = pool.std(unbiased=unbiased) if pool.numel() > 1 else pool.new_zeros(())
        adv = centered / (bstd + eps)
    single = count[gid] == 1
    if singleton == "raw":
        adv = torch.where(single, x, adv)
    else:
        adv = torch.where(single, torch.zeros_like(adv), adv)
    return adv.to(torch.float32)


def grpo_advantages(rewards, index, **kw) -> torch.Tensor:
    """GRPO: ``(r - mean_group) / (std_group + eps)``. See :func:`group_relative_advantages`."""
    return group_relative_advantages(rewards, index, norm="group", **kw)


def dr_grpo_advantages(rewards, index, **kw) -> torch.Tensor:
    """Dr. GRPO: ``r - mean_group``. See :func:`group_relative_advantages`."""
    return group_relative_advantages(rewards, index, norm="none", **kw)


def batch_std_advantages(rewards, index, **kw) -> torch.Tensor:
    """Group mean, batch std: ``(r - mean_group) / (std_batch + eps)``. See :func:`group_relative_advantages`."""
    return group_relative_advantages(rewards, index, norm="batch", **kw)
