"""CoBA-RL: capability-oriented value of each prompt and a heap-greedy rollout budget allocation.

Paper: Yao et al. 2026, *CoBA-RL: Capability-Oriented Budget Allocation for Reinforcement Learning in LLMs*
(arXiv 2602.03048); code: github.com/Within-yao/CoBA-RL (``recipe/coba_rl/budget_allocators.py``, ``BetaAllocator``).

Value of giving ``n`` rollouts to a prompt with success rate ``p`` (smoothed to ``[s, 1 - s]``, ``s = 0.01``)::

    V(n, p) = BetaPDF(p; alpha, beta) * S(n, p)
    S(n, p) = 1 - p^n - (1 - p)^n            (probability that the group is mixed, i.e. has a gradient)

allocation: ``n_min`` to every prompt, then each further rollout to the prompt with the largest marginal gain
``V(n + 1) - V(n)`` (a max-heap), until the budget is spent, never above ``n_max``.  ``S`` is concave in ``n`` for
``n >= 1``, so the greedy is the exact optimum of ``sum_i V(n_i, p_i)`` whenever ``n_min >= 1`` (checked against
brute force in the tests).

Failure rate -> Beta shape.  The paper leaves the mapping unpublished; we take the one in the authors' released
code (**verified from code**, every constant configurable)::

    F     = mean of the last `window` steps' global failure rates      (moving average, window 3)
    F~    = sigmoid(10 (F - 0.5)) if F <= 0.5 else F                    (sharpen late training)
    alpha = clip(1 + (S_ab - 2) F~, 1, S_ab - 1),  beta = S_ab - alpha  (S_ab = alpha + beta = 7; their run uses 11)

The mode of the Beta, ``(alpha - 1)/(alpha + beta - 2) = F~``, sits at a success rate equal to the failure rate:
early (failing a lot) the budget goes to easy prompts (exploit), later to hard ones (explore).  A step's global
failure rate is ``1 - mean`` of the prompts' success rates (their code), used when ``failure_rate`` is not given.

Differences from the released code (documented, configurable where it matters): its saturation is
``1 - exp(-n p (1 - p) / tau)`` with ``tau`` adapted to the spread of the success rates -- available as
``saturation="exp"`` (``tau=None``: their adaptive rule, ``tau_min = 3, tau_max = 12, var_max = 1/6``); the issue's
``S(n)`` above is our default.  The released code also pre-routes prompts with ``p < 0.05`` / ``p > 0.99`` and
reserves a fraction of the budget for "exploration" prompts; we keep the single heap the paper describes.  Unseen
prompts (``NaN``) get ``p = 0.5`` (their code).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

from ._common import as_prob_array, check_budget, heap_greedy

__all__ = ["coba_beta_params", "coba_value", "coba_allocate", "CoBAAllocator"]


def coba_beta_params(failure_rates: float | Sequence[float], *, beta_sum: float = 7.0, window: int = 3,
                     transform: bool = True, transform_slope: float = 10.0) -> tuple[float, float]:
    """``(alpha, beta)`` from the global failure rate (a float) or a history of per-step rates (last = newest),
    moving-averaged over the last ``window`` steps."""
    rates = np.atleast_1d(np.asarray(failure_rates, dtype=np.float64))
    if rates.ndim != 1 or rates.size == 0 or np.isnan(rates).any() or (rates < 0).any() or (rates > 1).any():
        raise ValueError("failure_rates must be a non-empty sequence of values in [0, 1]")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if beta_sum <= 2:
        raise ValueError(f"beta_sum must be > 2, got {beta_sum}")
    f = float(rates[-window:].mean())
    if transform and f <= 0.5:
        f = 1.0 / (1.0 + math.exp(-transform_slope * (f - 0.5)))
    alpha = min(max(1.0 + (beta_sum - 2.0) * f, 1.0), beta_sum - 1.0)
    return alpha, beta_sum - alpha


def _beta_pdf(p: np.ndarray, a: float, b: float) -> np.ndarray:
    log_b = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    return np.exp((a - 1) * np.log(p) + (b - 1) * np.log1p(-p) - log_b)


def _adaptive_tau(p: np.ndarray, tau_min=3.0, tau_max=12.0, var_max=1 / 6) -> float:
    v = float(np.clip(p.var() / var_max, 0.0, 1.0)) if p.size else 0.0
    return tau_min + (tau_max - tau_min) * v


def coba_value(p, n, alpha: float, beta: float, *, saturation: Literal["mixed", "exp"] = "mixed",
               tau: float = 6.0, smoothing: float = 0.01) -> np.ndarray:
    """``V(n, p) = BetaPDF(p~; alpha, beta) * S(n, p~)``, ``p~ = clip(p, smoothing, 1 - smoothing)``; ``V(0) = 0``."""
    p = np.clip(np.asarray(p, dtype=np.float64), smoothing, 1 - smoothing)
    n = np.asarray(n, dtype=np.float64)
    if saturation == "mixed":
        s = np.where(n > 0, 1.0 - p ** n - (1.0 - p) ** n, 0.0)
    elif saturation == "exp":
        s = 1.0 - np.exp(-n / tau * p * (1.0 - p))
    else:
        raise ValueError(f"saturation must be 'mixed' or 'exp', got {saturation!r}")
    return _beta_pdf(p, alpha, beta) * s


def coba_allocate(
    budget: int,
    success_rate,
    failure_rate: float | Sequence[float] | None = None,
    *,
    n_min: int = 2,
    n_max: int | None = None,
    beta_sum: float = 7.0,
    window: int = 3,
    transform: bool = True,
    saturation: Literal["mixed", "exp"] = "mixed",
    tau: float | None = None,
    smoothing: float = 0.01,
    unseen_p: float = 0.5,
    seed: int | None = 0,
) -> np.ndarray:
    """``[P]`` int64 rollout counts by CoBA-RL's heap-greedy on the capability-oriented value.

    Args:
        budget: total rollouts; ``n_min * P <= budget <= n_max * P``.
        success_rate: ``[P]`` each prompt's (recent) success rate; ``NaN`` for unseen prompts.
        failure_rate: the global failure rate, or the per-step history to moving-average; default
            ``1 - mean(success_rate)`` over the seen prompts (0.5 when none is seen).
        n_min, n_max: per-prompt bounds (released code: ``n_low = 2``).
        beta_sum, window, transform: the failure-rate -> (alpha, beta) mapping (:func:`coba_beta_params`).
        saturation, tau, smoothing: the value (:func:`coba_value`); ``tau=None`` -> adaptive (``"exp"`` only).
        unseen_p: success rate assumed for ``NaN`` entries.
        seed: tie-breaking order.
    """
    p = as_prob_array(success_rate, "success_rate", allow_nan=True)
    check_budget(budget, p.size, n_min, n_max)
    seen = ~np.isnan(p)
    if failure_rate is None:
        failure_rate = 1.0 - float(p[seen].mean()) if seen.any() else 0.5
    alpha, beta = coba_beta_params(failure_rate, beta_sum=beta_sum, window=window, transform=transform)
    p = np.where(seen, p, unseen_p)
    if saturation == "exp" and tau is None:
        tau = _adaptive_tau(np.clip(p, smoothing, 1 - smoothing))
    if saturation not in ("mixed", "exp"):
        raise ValueError(f"saturation must be 'mixed' or 'exp', got {saturation!r}")
    kw = dict(saturation=saturation, tau=6.0 if tau is None else tau, smoothing=smoothing)

    def value(i: int, n: int) -> float:
        return float(coba_value(p[i], n, alpha, beta, **kw))

    counts = np.full(p.size, n_min, dtype=np.int64)
    cap = np.full(p.size, budget if n_max is None else n_max, dtype=np.int64)
    left = heap_greedy(value, counts, cap, int(budget) - n_min * p.size, np.random.default_rng(seed))
    assert left == 0
    return counts


class CoBAAllocator:
    """Stateful CoBA-RL allocator: keeps the per-step global failure rates for the moving average.

    Example:
        >>> alloc = CoBAAllocator(n_min=2, n_max=16)
        >>> alloc.observe([0.1, 0.2, 0.9])             # one training step's per-prompt success rates
        >>> int(alloc.allocate(24, [0.1, 0.5, 0.9]).sum())
        24
    """

    def __init__(self, *, n_min: int = 2, n_max: int | None = None, beta_sum: float = 7.0, window: int = 3,
                 transform: bool = True, saturation: Literal["mixed", "exp"] = "mixed", tau: float | None = None,
                 smoothing: float = 0.01, unseen_p: float = 0.5):
        self.kw = dict(n_min=n_min, n_max=n_max, beta_sum=beta_sum, window=window, transform=transform,
                       saturation=saturation, tau=tau, smoothing=smoothing, unseen_p=unseen_p)
        self.failure_rates: list[float] = []

    def observe(self, success_rates) -> None:
        """Record one step: the global failure rate is ``1 - mean`` of the prompts' success rates in it."""
        p = as_prob_array(success_rates, "success_rates")
        if p.size:
            self.failure_rates.append(1.0 - float(p.mean()))
            del self.failure_rates[: -max(self.kw["window"], 1)]

    @property
    def beta_params(self) -> tuple[float, float] | None:
        """Current ``(alpha, beta)``; ``None`` before any step (then :meth:`allocate` uses the batch's rates)."""
        if not self.failure_rates:
            return None
        return coba_beta_params(self.failure_rates, beta_sum=self.kw["beta_sum"], window=self.kw["window"],
                                transform=self.kw["transform"])

    def allocate(self, budget: int, success_rate, *, seed: int | None = 0) -> np.ndarray:
        return coba_allocate(budget, success_rate, self.failure_rates or None, seed=seed, **self.kw)
