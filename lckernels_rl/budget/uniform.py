"""Baseline allocators: ``uniform`` (GRPO's fixed group size) and ``dapo_filter`` (DAPO's dynamic sampling).

* ``uniform`` -- every prompt gets ``budget // P`` rollouts; the ``budget % P`` extra ones go to a seeded random
  subset (so the sum is exact).
* ``dapo_filter`` -- DAPO (Yu et al. 2025, arXiv 2503.14476, Sec. 3.2 "dynamic sampling"): groups whose rewards are all
  equal (all-0 / all-1: zero advantage, zero gradient) are dropped and the batch is refilled with informative ones.
  Source status: **verified** against the DAPO recipe in verl (``volcengine/verl`` ``recipe/dapo/dapo_ray_trainer.py``
  at commit 004c888, and its copy in ``chenyuxin1999/Learning-to-Self-Verify`` 1c6f762, both read): over the step's
  *own* rollouts, a group is kept when its reward std > 0 or it has one response; new generation batches are sampled
  until ``train_batch_size`` groups are kept (at most ``max_num_gen_batches``, non-positive: no cap; at the cap verl
  raises), and the first ``train_batch_size`` kept groups are trained.  That filter-and-refill needs the rollouts,
  so it lives in the trainer's rollout source (``lckernels_rl.train.sources.EpisodeSource``, ``rl.dynamic_sampling``,
  the default for this allocator); the allocator then just spreads the budget evenly.  This function keeps the old
  *predictive* mode (``rl.dynamic_sampling: off``; ours, inferred): prompts whose *previous* group was degenerate keep
  ``n_min`` rollouts (0 by default: dropped), the others share the budget evenly up to ``n_max``; whatever they cannot
  absorb refills the dropped prompts evenly.  With no informative prompt left the budget is spread over all prompts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._common import check_budget, spread_evenly

__all__ = ["uniform_allocate", "dapo_filter_allocate", "degenerate_groups"]


def uniform_allocate(budget: int, num_prompts: int, *, n_min: int = 1, n_max: int | None = None,
                     seed: int | None = 0) -> np.ndarray:
    """``[P]`` int64 counts: ``budget // P`` each, the remainder to a seeded random subset.

    Example:
        >>> int(uniform_allocate(10, 4, seed=0).sum())
        10
    """
    if not isinstance(num_prompts, (int, np.integer)) or num_prompts < 0:
        raise ValueError(f"num_prompts must be a non-negative integer, got {num_prompts!r}")
    check_budget(budget, int(num_prompts), n_min, n_max)
    counts = np.zeros(int(num_prompts), dtype=np.int64)
    cap = np.full(counts.size, budget if n_max is None else n_max, dtype=np.int64)
    spread_evenly(int(budget), np.arange(counts.size), counts, cap, np.random.default_rng(seed))
    return counts


def degenerate_groups(rewards: Sequence) -> np.ndarray:
    """``[P]`` bool: True where a prompt's group has >= 2 rewards, all equal (DAPO drops those)."""
    out = []
    for r in rewards:
        a = np.asarray(r, dtype=np.float64).reshape(-1)
        out.append(a.size >= 2 and bool(np.all(a == a[0])))
    return np.asarray(out, dtype=bool)


def dapo_filter_allocate(budget: int, rewards: Sequence | None = None, *, degenerate=None, n_min: int = 0,
                         n_max: int | None = None, seed: int | None = 0) -> np.ndarray:
    """``[P]`` int64 counts that skip prompts whose last group was all-0 / all-1 and refill the budget.

    Args:
        budget: total rollouts.
        rewards: per prompt, the rewards of its previous group (a ``[P, G]`` array or a list of arrays).
        degenerate: ``[P]`` bool instead of ``rewards``.
        n_min, n_max: bounds per prompt (``n_min = 0``: dropped prompts get nothing).
        seed: for the remainders.
    """
    if (rewards is None) == (degenerate is None):
        raise ValueError("pass exactly one of rewards= or degenerate=")
    deg = degenerate_groups(rewards) if rewards is not None else np.asarray(degenerate)
    if deg.ndim != 1:
        raise ValueError(f"degenerate must be 1-D [P], got shape {deg.shape}")
    deg = deg.astype(bool)
    p = deg.size
    check_budget(budget, p, n_min, n_max)
    rng = np.random.default_rng(seed)
    counts = np.full(p, n_min, dtype=np.int64)
    cap = np.full(p, budget if n_max is None else n_max, dtype=np.int64)
    left = int(budget) - n_min * p
    keep = np.flatnonzero(~deg)
    left = spread_evenly(left, keep, counts, cap, rng)
    left = spread_evenly(left, np.flatnonzero(deg), counts, cap, rng)
    assert left == 0
    return counts
