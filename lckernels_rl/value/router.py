"""Route each prompt to the cheapest model predicted to succeed on it.

Paper: Zhang et al. 2026, *V0: A Generalist Value Model for Any Policy at State Zero* (arXiv 2602.03584): "during
deployment, it functions as a router, dispatching instructions to the most cost-effective and suitable model".
Source status: **inferred from the abstract**.  Rule (ours): with ``p[i, m]`` the value model's prediction for
prompt ``i`` on model ``m`` (each model profiled by its own history), pick the cheapest model with
``p[i, m] >= threshold``; when none qualifies, the model with the highest ``p[i, m]`` (ties: cheaper, then the
order given).  ``threshold = 0.5`` by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .incontext import History, InContextValueModel, ValueModel

__all__ = ["ModelSpec", "RoutingResult", "route", "CheapestSuccessfulRouter"]


@dataclass
class ModelSpec:
    """A candidate model: its name, cost per prompt (any unit) and (instruction, score) history."""

    name: str
    cost: float
    history: History = field(default_factory=list)


@dataclass
class RoutingResult:
    """``choices``: the chosen model name per prompt; ``index``: ``[P]`` its position in ``models``;
    ``p_hat``: ``[P, M]`` predicted success of every model; ``qualified``: ``[P]`` whether it met the threshold."""

    choices: list
    index: np.ndarray
    p_hat: np.ndarray
    qualified: np.ndarray


def route(prompts: Sequence[str], models: Sequence[ModelSpec], *, value_model: ValueModel | None = None,
          threshold: float = 0.5) -> RoutingResult:
    """Send each prompt to the cheapest model predicted to succeed (module docstring).

    Example:
        >>> small = ModelSpec("small", 1.0, [("add 2 and 3", 1.0), ("prove a hard theorem", 0.0)])
        >>> large = ModelSpec("large", 10.0, [("add 2 and 3", 1.0), ("prove a hard theorem", 1.0)])
        >>> route(["add 2 and 4", "prove a hard theorem"], [small, large]).choices
        ['small', 'large']
    """
    if not models:
        raise ValueError("need at least one model")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    costs = np.asarray([float(m.cost) for m in models])
    if np.isnan(costs).any() or (costs < 0).any():
        raise ValueError("model costs must be >= 0")
    vm = value_model or InContextValueModel()
    p_hat = np.stack([np.asarray(vm.predict(prompts, m.history), dtype=np.float64) for m in models], axis=1) \
        if len(prompts) else np.zeros((0, len(models)))
    order = np.lexsort((np.arange(len(models)), costs))             # by cost, then given order
    idx = np.empty(len(prompts), dtype=np.int64)
    ok = np.zeros(len(prompts), dtype=bool)
    for i in range(len(prompts)):
        good = [m for m in order if p_hat[i, m] >= threshold]
        if good:
            idx[i], ok[i] = good[0], True
        else:
            best = p_hat[i].max()
            idx[i] = next(m for m in order if p_hat[i, m] == best)
    return RoutingResult(choices=[models[m].name for m in idx], index=idx, p_hat=p_hat, qualified=ok)


class CheapestSuccessfulRouter:
    """:func:`route` with the models, value model and threshold bound once."""

    def __init__(self, models: Sequence[ModelSpec], *, value_model: ValueModel | None = None,
                 threshold: float = 0.5):
        self.models, self.value_model, self.threshold = list(models), value_model, threshold

    def __call__(self, prompts: Sequence[str]) -> RoutingResult:
        return route(prompts, self.models, value_model=self.value_model, threshold=self.threshold)
