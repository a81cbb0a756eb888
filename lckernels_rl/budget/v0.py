"""V0 allocation: spend the rollout budget by each prompt's success rate predicted *before* rollout.

Paper: Zhang et al. 2026, *V0: A Generalist Value Model for Any Policy at State Zero* (arXiv 2602.03584): "during
GRPO training, V0 predicts success rates prior to rollout, allowing for efficient sampling budget allocation".
Source status: **inferred from the abstract** -- the allocation rule is not stated there.  Our reading, with the
predicted success rate ``p`` of each prompt (from :mod:`lckernels_rl.value` or any value model)::

    objective="mixed" (default):    maximize  sum_i 1 - p_i^n_i - (1 - p_i)^n_i
                                    (expected number of groups that are mixed, i.e. carry a GRPO gradient)
    objective="variance":           minimize  sum_i p_i (1 - p_i) / n_i
                                    (Monte-Carlo variance of the per-prompt means; Neyman: n_i ~ sqrt(p_i(1-p_i)))

both solved exactly by heap-greedy on the marginal gain from ``n_min >= 1`` (the objectives are concave in ``n``),
capped at ``n_max``.  Prompts predicted sure-fail or sure-pass get ``n_min``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ._common import as_prob_array, check_budget, heap_greedy

__all__ = ["v0_allocate"]


def v0_allocate(
    budget: int,
    p_hat=None,
    *,
    prompts=None,
    history=None,
    value_model=None,
    n_min: int = 1,
    n_max: int | None = None,
    objective: Literal["mixed", "variance"] = "mixed",
    seed: int | None = 0,
) -> np.ndarray:
    """``[P]`` int64 rollout counts from predicted success rates.

    Args:
        budget: total rollouts.
        p_hat: ``[P]`` predicted success rates; or pass ``prompts`` + ``history`` (+ ``value_model``, default
            :class:`~lckernels_rl.value.InContextValueModel`) to predict them.
        n_min, n_max: per-prompt bounds (``n_min >= 1``).
        objective: ``"mixed"`` or ``"variance"`` (module docstring).
        seed: tie-breaking order.
    """
    if p_hat is None:
        if prompts is None:
            raise ValueError("pass p_hat= or prompts= (with history=) to predict it")
        if value_model is None:
            from lckernels_rl.value import InContextValueModel
            value_model = InContextValueModel()
        p_hat = value_model.predict(prompts, history or [])
    p = as_prob_array(p_hat, "p_hat")
    check_budget(budget, p.size, n_min, n_max)
    if n_min < 1 and p.size and budget:
        raise ValueError("v0_allocate needs n_min >= 1 (the objectives are concave only from n = 1)")
    if objective == "mixed":
        def value(i, n):
            return 1.0 - p[i] ** n - (1.0 - p[i]) ** n
    elif objective == "variance":
        def value(i, n):
            return -p[i] * (1.0 - p[i]) / n
    else:
        raise ValueError(f"objective must be 'mixed' or 'variance', got {objective!r}")
    counts = np.full(p.size, n_min, dtype=np.int64)
    cap = np.full(p.size, budget if n_max is None else n_max, dtype=np.int64)
    left = heap_greedy(value, counts, cap, int(budget) - n_min * p.size, np.random.default_rng(seed))
    assert left == 0
    return counts
