"""DynaMO rollout allocation: water-fill the budget by each prompt's Bernoulli-variance priority.

Paper: Fang et al. 2026, *How to Allocate, How to Learn? Dynamic Rollout Allocation and Advantage Modulation for
Policy Optimization* (arXiv 2602.19208); code: github.com/GithubX-F/DynaMO-RL at commit 63e5ec9
(``recipe/dynamo/rl_dataset.py`` ``update_rank`` / ``update_prompt_stats``,
``recipe/dynamo/dynamo_ray_trainer.py`` ``get_rollout_n_per_prompt``,
``examples/dynamo_trainer/run_qwen2.5-math-7b.sh``).

Priority of a prompt from its cumulative history (``k`` successes in ``G`` rollouts over all past steps,
``acc = k / G``)::

    priority = 4 acc (1 - acc)               priority_form="released_code" (default; released update_rank)
    priority = k (G - k) / (G (G - 1))       priority_form="unbiased" (the issue's unbiased Bernoulli variance)
    priority = 0.01                          when acc >= 0.85 (mastered), and as a floor
    priority = 1.0                           when G = 0 (unseen)

The two forms order prompts alike; the released one peaks at 1 (the unseen priority) while the unbiased one peaks
near 1/4, so under the released scale an unseen prompt weighs like an ``acc = 0.5`` prompt, under the unbiased one
about four times more.  The released ``acc`` counts the rollouts whose reward beat the *batch* mean
(``advantage_positive_count``); with 0/1 rewards that is the success count whenever the batch mean lies in
(0, 1), which we assume (pass that count as ``successes`` to follow the released code exactly).

Allocation of ``budget = n * P`` (default ``n = 16``):

1. *fill to the initial budget*: a prompt seen fewer than ``initial_budget`` times gets ``initial_budget - seen``
   (exploration of new prompts);
2. every prompt is topped up to ``n_low`` (8);
3. the rest is water-filled in proportion to the priority, capped at ``n_high`` (24), capacity freed by capped
   prompts re-poured over the others; integer rounding by largest remainder.

Source status: the priority (``4 acc (1 - acc)``, the 0.85 mastery threshold, the 0.01 floor, the unseen priority
1.0), steps 1-3 and the defaults ``n = 16, n_low = 8, n_high = 24`` (the example script's ``n_resp_per_prompt``,
``rollout.n_low``, ``rollout.n_high``) are **verified** (the files above read at 63e5ec9).  The released trainer
recomputes the priorities once per epoch (``update_rank`` after the loop over batches) while the counts grow every
step; callers of this function choose when to refresh ``successes`` / ``counts`` (the library's trainer: every
step).  The released
``get_rollout_n_per_prompt`` raises ``initial_budget`` to ``max(n_low, initial_budget)``, so with the defaults
step 1 is subsumed by step 2; we keep the parameter (default ``n_low``).  Ours (**inferred**): when the budget
cannot cover step 1 for every new prompt we first give everyone ``n_low`` and share the rest in proportion to the
outstanding exploration need (the released code scales step 1 down instead, which can leave prompts under
``n_low``); ``n_low`` is always honoured here; rounding ties in seeded order.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ._common import check_budget, waterfill

__all__ = ["dynamo_priority", "dynamo_allocate"]


def dynamo_priority(successes, counts, *, mastery_threshold: float = 0.85, min_priority: float = 0.01,
                    unseen_priority: float = 1.0,
                    priority_form: Literal["released_code", "unbiased"] = "released_code") -> np.ndarray:
    """``[P]`` priorities from cumulative successes ``k`` and rollout counts ``G`` (module docstring)."""
    k = np.asarray(successes, dtype=np.float64)
    g = np.asarray(counts, dtype=np.float64)
    if k.ndim != 1 or g.shape != k.shape:
        raise ValueError(f"successes and counts must both be [P], got {k.shape} and {g.shape}")
    if (g < 0).any() or (k < 0).any() or (k > g).any() or np.isnan(k).any() or np.isnan(g).any():
        raise ValueError("need 0 <= successes <= counts")
    acc = np.divide(k, g, out=np.zeros_like(k), where=g > 0)
    if priority_form == "unbiased":
        pri = np.divide(k * (g - k), g * (g - 1), out=np.zeros_like(k), where=g > 1)
    elif priority_form == "released_code":
        pri = 4.0 * acc * (1.0 - acc)
    else:
        raise ValueError(f"priority_form must be 'unbiased' or 'released_code', got {priority_form!r}")
    pri = np.maximum(pri, min_priority)
    pri = np.where(acc >= mastery_threshold, min_priority, pri)
    return np.where(g == 0, unseen_priority, pri)


def dynamo_allocate(
    budget: int | None = None,
    successes=None,
    counts=None,
    *,
    n: int = 16,
    n_low: int = 8,
    n_high: int = 24,
    initial_budget: int | None = None,
    mastery_threshold: float = 0.85,
    min_priority: float = 0.01,
    unseen_priority: float = 1.0,
    priority_form: Literal["released_code", "unbiased"] = "released_code",
    seed: int | None = 0,
) -> np.ndarray:
    """``[P]`` int64 rollout counts by DynaMO's water-level allocation.

    Args:
        budget: total rollouts (default ``n * P``); ``n_low * P <= budget <= n_high * P``.
        successes, counts: ``[P]`` cumulative successes and rollouts of each prompt over past steps.
        n, n_low, n_high: mean, floor and cap per prompt.
        initial_budget: exploration target for rarely seen prompts (default ``n_low``).
        mastery_threshold, min_priority, unseen_priority, priority_form: see :func:`dynamo_priority`.
        seed: tie-breaking of the rounding.

    Example:
        >>> dynamo_allocate(successes=[8, 16, 0, 0], counts=[16, 16, 16, 0]).tolist()   # mixed, mastered, hard, new
        [24, 8, 8, 24]
    """
    if successes is None or counts is None:
        raise ValueError("successes= and counts= are required")
    pri = dynamo_priority(successes, counts, mastery_threshold=mastery_threshold, min_priority=min_priority,
                          unseen_priority=unseen_priority, priority_form=priority_form)
    seen = np.asarray(counts, dtype=np.int64)
    p = pri.size
    if budget is None:
        budget = n * p
    check_budget(budget, p, n_low, n_high)
    rng = np.random.default_rng(seed)
    init = n_low if initial_budget is None else max(int(initial_budget), n_low)
    target = np.clip(init - seen, 0, n_high)
    base = np.maximum(target, n_low).astype(np.int64)
    cap = np.full(p, n_high, dtype=np.int64)
    if base.sum() <= budget:
        out = base
        left = waterfill(int(budget - base.sum()), pri, out, cap, rng)
    else:
        out = np.full(p, n_low, dtype=np.int64)
        left = waterfill(int(budget - out.sum()), (target - n_low).clip(0).astype(np.float64), out, base, rng)
    assert left == 0
    return out
