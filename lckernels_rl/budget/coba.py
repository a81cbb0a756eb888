"""CoBA-RL: capability-oriented value of each prompt and a heap-greedy rollout budget allocation.

Paper: Yao et al. 2026, *CoBA-RL: Capability-Oriented Budget Allocation for Reinforcement Learning in LLMs*
(arXiv 2602.03048); code: github.com/Within-yao/CoBA-RL, ``recipe/coba_rl/budget_allocators.py``
(``BetaAllocator``, commit aa6b834).  **Verified** (that file read at that commit) for everything marked "released"
below; the defaults reproduce it.

Value of giving ``n`` rollouts to a prompt with success rate ``p`` (smoothed to ``p~ = clip(p, s, 1 - s)``,
``s = 0.01``)::

    V(n, p) = BetaPDF(p~; alpha, beta) * S(n, p~)
    S(n, p) = 1 - exp(-n p (1 - p) / tau)      saturation="exp" (released, default)
    S(n, p) = 1 - p^n - (1 - p)^n              saturation="mixed" (the issue's: P(group is mixed); option)
    tau     = tau_min + (tau_max - tau_min) * clip(Var(p~) / var_max, 0, 1)     (released adaptive tau, tau=None)
              tau_min 3, tau_max 12, var_max 0.1667, Var the population variance over the heap's prompts

Allocation, ``routing="released"`` (default; released ``BetaAllocator.allocate``):

1. all prompts unseen (every rate ``NaN``): ``budget // P`` each, the remainder to the first prompts;
2. ``n_min`` to every prompt; ``R = budget - n_min * P`` left;
3. pre-routing on the raw rate: *very hard* ``p < 0.05``, *very easy* ``p > 0.99``, the rest *exploration*
   (``K`` prompts; unseen ones count as ``p = 0.5``);
4. exploration budget ``E = floor(R * ratio)``, ``ratio = 0.8`` when ``K > P / 2`` else
   ``0.6 + (0.8 - 0.6) * 2K / P`` -- only 60-80 % of ``R`` goes through the heap;
5. heap-greedy over the exploration prompts only (each unit to the largest marginal gain ``V(n + 1) - V(n)``, never
   above ``n_max``), ``tau`` adapted to *their* rates;
6. the rest of ``R`` (at least ``R - E``) goes, in this order, to the very hard, then the exploration, then the very
   easy prompts, each group "weighted": walking the group in index order, prompt ``i`` gets
   ``floor(R_left * w_i / sum w)`` (``R_left`` the budget still unplaced at that moment, so later prompts get
   less than a proportional share), ``w_i = (1 - clip(p_i, 1e-6, 1 - 1e-6))^weight_alpha``, capped at ``n_max``;
   what is left is spread evenly over the group's prompts below ``n_max``, one extra to the first ones.
   ``fallback="uniform"`` (released ``remaining_budget_method`` other than "weighted") skips the weighted pass.

``routing="single_heap"`` (the previous default; the single heap the paper describes): ``n_min`` each, then every
unit of ``R`` through one heap over all prompts.  The previous default is ``routing="single_heap",
saturation="mixed"``.  ``S`` is concave in ``n`` (both forms, ``n >= 1``), so each heap is the exact optimum of
``sum_i V(n_i, p_i)`` over its prompts (brute force in the tests).

Failure rate -> Beta shape (released ``_update_beta_params_sample_based_sliding_window``; every constant
configurable)::

    F     = mean of the last `window` steps' failure rates      (a step's rate: 1 - mean of its prompts' rates)
    F~    = sigmoid(10 (F - 0.5)) if F <= 0.5 else F             (sharpen late training)
    alpha = clip(1 + (S_ab - 2) F~, 1, S_ab - 1),  beta = S_ab - alpha  (S_ab = alpha + beta = 7)

The mode of the Beta, ``(alpha - 1)/(alpha + beta - 2) = F~``, sits at a success rate equal to the failure rate:
early (failing a lot) the budget goes to easy prompts (exploit), later to hard ones (explore).

Ours (**inferred**, documented): ``failure_rate=None`` in the stateless :func:`coba_allocate` uses ``1 - mean`` of
the seen rates (the released allocator starts from ``alpha = S_ab - 2, beta = 2`` before its first step); heap ties
(equal marginal gains) are broken in seeded random order (released: lowest index); the released code can leave
units unplaced when ``n_max`` binds in a single uniform pass -- we then spread them evenly (seeded) over the prompts
still below ``n_max`` so the counts always sum to ``budget``; the released default cap ``n_up = 32`` is not ours
(``n_max=None``: no cap); an infeasible budget (``budget < n_min * P``) is a ``ValueError`` here (the released code
falls back to an even split).  Unseen prompts (``NaN``) get ``p = 0.5`` (released).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

from ._common import as_prob_array, check_budget, heap_greedy, spread_evenly

__all__ = ["coba_beta_params", "coba_value", "coba_allocate", "coba_adaptive_tau", "CoBAAllocator"]

_SATURATIONS = ("exp", "mixed")
_ROUTINGS = ("released", "single_heap")
_FALLBACKS = ("weighted", "uniform")


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


def coba_adaptive_tau(success_rate, *, tau_min: float = 3.0, tau_max: float = 12.0, var_max: float = 0.1667,
                      smoothing: float = 0.01) -> float:
    """The released adaptive ``tau``: ``tau_min + (tau_max - tau_min) * clip(Var(p~) / var_max, 0, 1)``,
    ``p~ = clip(p, smoothing, 1 - smoothing)``, population variance (``tau_min`` for an empty input)."""
    if not var_max > 0:
        raise ValueError(f"var_max must be > 0, got {var_max}")
    if not 0 < tau_min <= tau_max:
        raise ValueError(f"need 0 < tau_min <= tau_max, got tau_min={tau_min}, tau_max={tau_max}")
    p = np.clip(np.asarray(success_rate, dtype=np.float64), smoothing, 1 - smoothing)
    v = float(np.clip(p.var() / var_max, 0.0, 1.0)) if p.size else 0.0
    return tau_min + (tau_max - tau_min) * v


def coba_value(p, n, alpha: float, beta: float, *, saturation: Literal["exp", "mixed"] = "exp",
               tau: float = 6.0, smoothing: float = 0.01) -> np.ndarray:
    """``V(n, p) = BetaPDF(p~; alpha, beta) * S(n, p~)``, ``p~ = clip(p, smoothing, 1 - smoothing)``; ``V(0) = 0``.
    ``saturation="exp"`` (released): ``S = 1 - exp(-n p~ (1 - p~) / tau)``; ``"mixed"``: ``1 - p~^n - (1 - p~)^n``."""
    if saturation not in _SATURATIONS:
        raise ValueError(f"saturation must be 'exp' or 'mixed', got {saturation!r}")
    if saturation == "exp" and not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    p = np.clip(np.asarray(p, dtype=np.float64), smoothing, 1 - smoothing)
    n = np.asarray(n, dtype=np.float64)
    if saturation == "mixed":
        s = np.where(n > 0, 1.0 - p ** n - (1.0 - p) ** n, 0.0)
    else:
        s = 1.0 - np.exp(-n / tau * p * (1.0 - p))
    return _beta_pdf(p, alpha, beta) * s


def _exploration_ratio(k: int, p: int, max_ratio: float, min_ratio: float) -> float:
    """Released step 4: ``max_ratio`` when more than half the prompts explore, else linear from ``min_ratio``."""
    if k == 0:
        return min_ratio
    if k > p / 2:
        return max_ratio
    return min_ratio + (max_ratio - min_ratio) * (k / p * 2)


def _spread_in_order(amount: int, idx, counts: np.ndarray, cap: np.ndarray) -> int:
    """Released ``_allocate_remaining_uniform``: one pass, ``amount // m`` each over the ``m`` prompts below
    ``cap`` and one more to the first ``amount % m``, each capped.  Returns what is left."""
    room = [i for i in idx if counts[i] < cap[i]]
    if not room or amount <= 0:
        return amount
    q, r = divmod(amount, len(room))
    for j, i in enumerate(room):
        add = min(q + (1 if j < r else 0), int(cap[i] - counts[i]))
        counts[i] += add
        amount -= add
    return amount


def _weighted_in_order(amount: int, idx, p: np.ndarray, counts: np.ndarray, cap: np.ndarray,
                       weight_alpha: float) -> int:
    """Released ``_allocate_remaining_weighted``: sequential ``floor(left * w_i / sum w)`` with the running
    ``left``, then one even pass over the prompts still below ``cap``."""
    room = [i for i in idx if counts[i] < cap[i]]
    if not room or amount <= 0:
        return amount
    w = {i: (1.0 - float(np.clip(p[i], 1e-6, 1 - 1e-6))) ** weight_alpha for i in room}
    total = sum(w.values())
    if total == 0:
        return _spread_in_order(amount, idx, counts, cap)
    for i in room:
        add = min(int(amount * w[i] / total), int(cap[i] - counts[i]))
        counts[i] += add
        amount -= add
    return _spread_in_order(amount, room, counts, cap)


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
    saturation: Literal["exp", "mixed"] = "exp",
    tau: float | None = None,
    tau_min: float = 3.0,
    tau_max: float = 12.0,
    var_max: float = 0.1667,
    routing: Literal["released", "single_heap"] = "released",
    hard_threshold: float = 0.05,
    easy_threshold: float = 0.99,
    exploration_budget_ratio: float = 0.8,
    min_exploration_ratio: float = 0.6,
    fallback: Literal["weighted", "uniform"] = "weighted",
    weight_alpha: float = 1.0,
    smoothing: float = 0.01,
    unseen_p: float = 0.5,
    seed: int | None = 0,
) -> np.ndarray:
    """``[P]`` int64 rollout counts by CoBA-RL's allocation (module docstring).

    Args:
        budget: total rollouts; ``n_min * P <= budget <= n_max * P``.
        success_rate: ``[P]`` each prompt's (recent) success rate; ``NaN`` for unseen prompts.
        failure_rate: the global failure rate, or the per-step history to moving-average; default
            ``1 - mean(success_rate)`` over the seen prompts (0.5 when none is seen).
        n_min, n_max: per-prompt bounds (released code: ``n_low = 2``, ``n_up = 32``).
        beta_sum, window, transform: the failure-rate -> (alpha, beta) mapping (:func:`coba_beta_params`).
        saturation, tau, smoothing: the value (:func:`coba_value`); ``tau=None``: adaptive
            (:func:`coba_adaptive_tau` with ``tau_min``, ``tau_max``, ``var_max``; ``"exp"`` only).
        routing: ``"released"`` (pre-routing, partial heap budget, fallback) or ``"single_heap"``.
        hard_threshold, easy_threshold: pre-routing bounds (released: ``p < 0.05`` hard, ``p > 0.99`` easy).
        exploration_budget_ratio, min_exploration_ratio: the share of the budget above ``n_min * P`` that goes
            through the heap (released 0.8 / 0.6).
        fallback, weight_alpha: how the rest is shared (released ``remaining_budget_method="weighted"``,
            ``weight_alpha = 1``).
        unseen_p: success rate assumed for ``NaN`` entries.
        seed: tie-breaking order.
    """
    p = as_prob_array(success_rate, "success_rate", allow_nan=True)
    check_budget(budget, p.size, n_min, n_max)
    if saturation not in _SATURATIONS:
        raise ValueError(f"saturation must be 'exp' or 'mixed', got {saturation!r}")
    if routing not in _ROUTINGS:
        raise ValueError(f"routing must be 'released' or 'single_heap', got {routing!r}")
    if fallback not in _FALLBACKS:
        raise ValueError(f"fallback must be 'weighted' or 'uniform', got {fallback!r}")
    if not 0.0 <= min_exploration_ratio <= exploration_budget_ratio <= 1.0:
        raise ValueError("need 0 <= min_exploration_ratio <= exploration_budget_ratio <= 1, got "
                         f"{min_exploration_ratio} and {exploration_budget_ratio}")
    if not 0.0 <= hard_threshold <= easy_threshold <= 1.0:
        raise ValueError(f"need 0 <= hard_threshold <= easy_threshold <= 1, got {hard_threshold} and {easy_threshold}")
    if tau is not None and not tau > 0:
        raise ValueError(f"tau must be > 0 or None, got {tau}")
    if not 0.0 <= unseen_p <= 1.0:
        raise ValueError(f"unseen_p must lie in [0, 1], got {unseen_p}")
    rng = np.random.default_rng(seed)
    seen = ~np.isnan(p)
    counts = np.full(p.size, n_min, dtype=np.int64)
    cap = np.full(p.size, budget if n_max is None else n_max, dtype=np.int64)
    if routing == "released" and p.size and not seen.any():   # released: nothing known -> even split
        q, r = divmod(int(budget), p.size)
        counts[:] = q
        counts[:r] += 1
        return counts
    if failure_rate is None:
        failure_rate = 1.0 - float(p[seen].mean()) if seen.any() else 0.5
    alpha, beta = coba_beta_params(failure_rate, beta_sum=beta_sum, window=window, transform=transform)
    p = np.where(seen, p, unseen_p)
    left = int(budget) - n_min * p.size

    if routing == "single_heap":
        heap_idx, heap_amount = np.arange(p.size), left
    else:
        hard = np.flatnonzero(p < hard_threshold)
        easy = np.flatnonzero(p > easy_threshold)
        heap_idx = np.flatnonzero((p >= hard_threshold) & (p <= easy_threshold))
        ratio = _exploration_ratio(heap_idx.size, p.size, exploration_budget_ratio, min_exploration_ratio)
        heap_amount = int(left * ratio)

    if heap_idx.size and heap_amount > 0:
        ph = p[heap_idx]
        if saturation == "exp" and tau is None:
            t = coba_adaptive_tau(ph, tau_min=tau_min, tau_max=tau_max, var_max=var_max, smoothing=smoothing)
        else:
            t = 6.0 if tau is None else tau
        kw = dict(saturation=saturation, tau=t, smoothing=smoothing)

        def value(i: int, n: int) -> float:
            return float(coba_value(ph[i], n, alpha, beta, **kw))

        sub = counts[heap_idx].copy()
        unplaced = heap_greedy(value, sub, cap[heap_idx].copy(), heap_amount, rng)
        counts[heap_idx] = sub
        left -= heap_amount - unplaced

    if routing == "released" and left > 0:
        for group in (hard, heap_idx, easy):
            if left <= 0:
                break
            if fallback == "weighted":
                left = _weighted_in_order(left, group.tolist(), p, counts, cap, weight_alpha)
            else:
                left = _spread_in_order(left, group.tolist(), counts, cap)
    if left > 0:   # ours: the released single passes can leave units when n_max binds
        left = spread_evenly(left, np.arange(p.size), counts, cap, rng)
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
                 transform: bool = True, saturation: Literal["exp", "mixed"] = "exp", tau: float | None = None,
                 smoothing: float = 0.01, unseen_p: float = 0.5, **kw):
        self.kw = dict(n_min=n_min, n_max=n_max, beta_sum=beta_sum, window=window, transform=transform,
                       saturation=saturation, tau=tau, smoothing=smoothing, unseen_p=unseen_p, **kw)
        coba_allocate(n_min, [0.5], **self.kw)   # validate every option now, not at the first step
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
