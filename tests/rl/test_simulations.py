"""Seeded simulations of the claims behind the estimators and allocators (each runs in well under a second).

* V0.5: at G = 4 the fused baseline beats the group mean when the prior is good, and is not much worse when it is
  biased.  "Not much worse" is tested at two levels:
    - per prompt, whatever the prior: ``|b - rbar| <= SE`` holds by construction, hence by Minkowski
      ``MSE(b) <= (1 + sqrt((n-1)/n))^2 MSE(rbar) = 3.48 MSE(rbar)`` at n = 4 -- checked exactly (binomial
      enumeration) on a grid of (p, v0);
    - on average over prompts with success rates spread over (0, 1), for *any* constant bias of the prior and for any
      constant (uninformed) prior: at most 1.5x the group mean's MSE.  The exact worst case we computed is 1.43x (a
      bias around +-0.5, i.e. two standard errors of a 4-sample mean, where the pretest is least decisive); 1.5 leaves
      room for the grid, and a naive 50/50 average of prior and mean breaks it (checked, so the bound has teeth).
* DynaMO: at equal budget its allocation lowers the gradient-variance proxy ``sum_i p_i (1 - p_i) / n_i`` (the
  Monte-Carlo variance of the per-prompt mean rewards, the paper's Bernoulli-variance proxy) below uniform's.  Why
  it must: a floor plus priority-proportional extra is a convex combination of the uniform and the
  variance-proportional allocations, which have the same proxy value, and the proxy is strictly convex in ``n``.
* CoBA: the heap-greedy total value equals the brute-force optimum, and the last unit it gave anywhere is worth at
  least as much as the next unit it could give anywhere (the exchange condition).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from lckernels_rl.advantages import v05_baseline, v05_expected_mse
from lckernels_rl.budget import (coba_allocate, coba_beta_params, coba_value, dynamo_allocate, v0_allocate,
                                 v05_sequential)

G = 4


# ----------------------------------------------------------------------------------------------- V0.5
def test_v05_good_prior_beats_group_mean_at_g4():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.05, 0.95, 20_000)
    v0 = np.clip(p + rng.normal(0.0, 0.05, p.size), 0.0, 1.0)           # a good prior: 0.05 noise
    r = (rng.random((p.size, G)) < p[:, None]).astype(np.float64)
    b = v05_baseline(torch.from_numpy(r), torch.from_numpy(v0)).double().numpy()
    mse_v05 = np.mean((b - p) ** 2)
    mse_mean = np.mean((r.mean(1) - p) ** 2)
    assert mse_v05 < 0.8 * mse_mean                                     # measured 0.61
    exact = v05_expected_mse(p, v0, G).mean() / (p * (1 - p) / G).mean()
    assert exact < 0.8 and abs(exact - mse_v05 / mse_mean) < 0.05      # Monte Carlo agrees with enumeration


def test_v05_biased_prior_is_not_much_worse():
    p = np.linspace(0.02, 0.98, 97)
    mse_mean = (p * (1 - p) / G).mean()
    worst = 0.0
    for d in np.linspace(-1.0, 1.0, 41):                                # constant additive bias
        worst = max(worst, v05_expected_mse(p, np.clip(p + d, 0, 1), G).mean() / mse_mean)
    for c in np.linspace(0.0, 1.0, 21):                                 # constant (uninformed) prior
        worst = max(worst, v05_expected_mse(p, np.full_like(p, c), G).mean() / mse_mean)
    assert 1.2 < worst <= 1.5                                           # it does cost something, but little

    # a real biased run through the estimator: bias +0.3 costs at most 1.5x as well
    rng = np.random.default_rng(1)
    ps = rng.uniform(0.05, 0.95, 20_000)
    r = (rng.random((ps.size, G)) < ps[:, None]).astype(np.float64)
    b = v05_baseline(torch.from_numpy(r), torch.from_numpy(np.clip(ps + 0.3, 0, 1))).double().numpy()
    assert np.mean((b - ps) ** 2) <= 1.5 * np.mean((r.mean(1) - ps) ** 2)

    # negative controls, same sweep: no pretest -> the bound fails (so it can fail)
    k = np.arange(G + 1)[:, None]
    pmf = np.array([[math.comb(G, i)] for i in range(G + 1)]) * p ** k * (1 - p) ** (G - k)
    naive_worst = max((pmf * (0.5 * np.clip(p + d, 0, 1) + 0.5 * k / G - p) ** 2).sum(0).mean() / mse_mean
                      for d in np.linspace(-1.0, 1.0, 41))
    trust_worst = max(((np.clip(p + d, 0, 1) - p) ** 2).mean() / mse_mean for d in np.linspace(-1.0, 1.0, 41))
    assert naive_worst > 1.5 and trust_worst > 1.5


def test_v05_worst_case_per_prompt_bound():
    p = np.linspace(0.01, 0.99, 99)[:, None]
    v0 = np.linspace(0.0, 1.0, 101)[None, :]
    for n in (2, 4, 8):
        ratio = v05_expected_mse(p, v0, n) / (p * (1 - p) / n)
        assert ratio.max() <= (1 + np.sqrt((n - 1) / n)) ** 2 + 1e-12


def test_v05_sequential_spends_where_the_prior_is_wrong():
    rng = np.random.default_rng(2)
    n_p = 200
    p = rng.uniform(0.05, 0.95, n_p)
    right = np.clip(p + rng.normal(0, 0.03, n_p), 0, 1)
    wrong = 1.0 - p
    v0 = np.where(np.arange(n_p) < n_p // 2, right, wrong)
    res = v05_sequential(v0, lambda i, m: (rng.random(m) < p[i]).astype(float))
    good, bad = res.counts[: n_p // 2].mean(), res.counts[n_p // 2:].mean()
    assert bad > good + 1.5                                             # measured ~6.8 vs ~9.6
    # the extra rollouts repair the bad prior: its error falls well below that of the fused baseline at n = 4
    err_bad = ((res.baselines - p) ** 2)[n_p // 2:].mean()
    assert err_bad < 0.75 * v05_expected_mse(p[n_p // 2:], wrong[n_p // 2:], G).mean()   # measured 0.45-0.6


# ----------------------------------------------------------------------------------------------- DynaMO
@pytest.mark.parametrize("seed", range(5))
def test_dynamo_lowers_gradient_variance_proxy(seed):
    rng = np.random.default_rng(seed)
    n_p = 256
    # RLVR-like pool: a quarter nearly unsolved, a quarter nearly mastered, half in between
    p = np.concatenate([rng.beta(0.5, 6, n_p // 4), rng.beta(6, 0.5, n_p // 4), rng.uniform(0.1, 0.9, n_p // 2)])
    seen = np.full(n_p, 32)
    k = rng.binomial(seen, p)                                            # two past steps of 16 rollouts
    dyn = dynamo_allocate(successes=k, counts=seen)                      # n = 16, n_low = 8, n_high = 24
    uni = np.full(n_p, 16)
    assert dyn.sum() == uni.sum()
    var = p * (1 - p)
    ratio = (var / dyn).sum() / (var / uni).sum()
    assert ratio < 0.95                                                  # measured 0.88-0.90


def test_variance_proportional_alone_equals_uniform():
    """The reason a floor matters, through ``dynamo_allocate``: without a floor (``n_low = 0``) DynaMO's water-fill is
    the variance-proportional allocation, whose proxy ``sum_i var_i / n_i`` equals uniform's exactly; with the floor
    (``n_low = 8``) the same budget gives a floor + priority-proportional mix, strictly lower.

    Hand derivation.  16 past rollouts each, k = 8, 4, 12 successes: unbiased variances ``k (16 - k) / (16 * 15)``
    = 16/60, 12/60, 12/60 (sum 40/60), none mastered (k/G < 0.85) or under the 0.01 floor.  Budget 40:
      * n_low = 0: 40 * (16, 12, 12) / 40 = (16, 12, 12) exactly; proxy = 3 * (1/60) = 0.05 = (40/60) / (40/3).
      * n_low = 8, n_high = 24: 8 each, the other 16 split 16 * (0.4, 0.3, 0.3) = (6.4, 4.8, 4.8) -> floors (6, 4, 4),
        the 2 left to the largest remainders (0.8, 0.8) -> (14, 13, 13); proxy = (16/60)/14 + 2 (12/60)/13 < 0.05.
    """
    k, seen = np.array([8, 4, 12]), np.full(3, 16)
    var = k * (16 - k) / (16 * 15)
    budget = 40
    uniform_proxy = (var / (budget / 3)).sum()

    prop = dynamo_allocate(budget, successes=k, counts=seen, n_low=0, n_high=budget, priority_form="unbiased")
    assert prop.tolist() == [16, 12, 12]
    assert (var / prop).sum() == pytest.approx(uniform_proxy, rel=1e-12) == pytest.approx(0.05, rel=1e-12)

    floored = dynamo_allocate(budget, successes=k, counts=seen, n_low=8, n_high=24, priority_form="unbiased")
    assert floored.tolist() == [14, 13, 13]
    assert (var / floored).sum() < uniform_proxy - 1e-4                 # 0.04982 vs 0.05


# ----------------------------------------------------------------------------------------------- CoBA
def _brute_force(values: np.ndarray, budget: int, n_min: int) -> float:
    """``values[i, j]`` = value of prompt i at n_min + j rollouts; best total over all allocations."""
    p, width = values.shape
    best = -np.inf
    for combo in itertools.product(range(width), repeat=p):
        if sum(combo) + n_min * p == budget:
            best = max(best, sum(values[i, j] for i, j in enumerate(combo)))
    return best


@pytest.mark.parametrize("saturation", ["mixed", "exp"])
def test_coba_heap_matches_brute_force(saturation):
    rng = np.random.default_rng(3)
    n_min, n_max, n_p = 2, 8, 4
    for _ in range(12):
        rates = rng.uniform(0, 1, n_p)
        rates[rng.integers(n_p)] = rng.choice([0.0, 1.0])                # an all-0 or all-1 prompt
        fail = float(rng.uniform(0.05, 0.95))
        budget = int(rng.integers(n_min * n_p, n_max * n_p + 1))
        alpha, beta = coba_beta_params(fail)
        kw = dict(saturation=saturation, tau=5.0)
        # the heap's optimality: one heap over every prompt (the released default pre-routes p < 0.05 / p > 0.99
        # and sends only part of the budget through the heap, so it does not maximise sum V by design)
        got = coba_allocate(budget, rates, fail, n_min=n_min, n_max=n_max, saturation=saturation, tau=5.0, seed=0,
                            routing="single_heap")
        ns = np.arange(n_min, n_max + 1)
        table = np.stack([coba_value(rates[i], ns, alpha, beta, **kw) for i in range(n_p)])
        total = sum(coba_value(rates[i], got[i], alpha, beta, **kw) for i in range(n_p))
        assert total == pytest.approx(_brute_force(table, budget, n_min), rel=1e-12, abs=1e-12)
        # exchange condition: no unit can move to a place where it is worth more
        last = [coba_value(rates[i], got[i], alpha, beta, **kw) - coba_value(rates[i], got[i] - 1, alpha, beta, **kw)
                for i in range(n_p) if got[i] > n_min]
        nxt = [coba_value(rates[i], got[i] + 1, alpha, beta, **kw) - coba_value(rates[i], got[i], alpha, beta, **kw)
               for i in range(n_p) if got[i] < n_max]
        if last and nxt:
            assert min(last) >= max(nxt) - 1e-12
        uniform_like = np.full(n_p, budget // n_p)
        uniform_like[: budget % n_p] += 1
        assert total >= sum(coba_value(rates[i], uniform_like[i], alpha, beta, **kw) for i in range(n_p)) - 1e-12


@pytest.mark.parametrize("objective", ["mixed", "variance"])
def test_v0_heap_matches_brute_force(objective):
    rng = np.random.default_rng(4)
    for _ in range(8):
        p = rng.uniform(0, 1, 4)
        budget = int(rng.integers(4, 29))
        got = v0_allocate(budget, p, n_min=1, n_max=7, objective=objective)
        ns = np.arange(1, 8)
        if objective == "mixed":
            table = np.stack([1 - pi ** ns - (1 - pi) ** ns for pi in p])
            total = sum(1 - pi ** n - (1 - pi) ** n for pi, n in zip(p, got))
        else:
            table = np.stack([-pi * (1 - pi) / ns for pi in p])
            total = sum(-pi * (1 - pi) / n for pi, n in zip(p, got))
        assert total == pytest.approx(_brute_force(table, budget, 1), rel=1e-12, abs=1e-12)
