"""Budget allocators: exact sums, bounds, seeds, hand-computed allocations, edge cases, validation, registry."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

import lckernels_rl.budget
import lckernels_rl.budget.coba
import lckernels_rl.budget.dynamo
import lckernels_rl.budget.uniform
from lckernels_rl.budget import (ALLOCATORS, CoBAAllocator, allocate, coba_allocate, coba_beta_params, coba_value,
                                 dapo_filter_allocate, degenerate_groups, dynamo_allocate, dynamo_priority,
                                 get_allocator, uniform_allocate, v0_allocate, v05_gain, v05_sequential)
from lckernels_rl.value import InContextValueModel

P_RATES = np.array([0.0, 0.1, 0.5, 0.9, 1.0, np.nan])


def _bernoulli_sampler(p, seed=0):
    rng = np.random.default_rng(seed)
    return lambda i, m: (rng.random(m) < p[i]).astype(float)


# One call per allocator on the same 6-prompt pool: (kwargs, n_min, n_max) ------------------------------------
CASES = {
    "uniform": lambda b, lo, hi, s: uniform_allocate(b, 6, n_min=lo, n_max=hi, seed=s),
    "dapo_filter": lambda b, lo, hi, s: dapo_filter_allocate(
        b, [[1, 1], [0, 0], [1, 0], [0], [1, 1, 0], [0.5, 0.5]], n_min=lo, n_max=hi, seed=s),
    "coba": lambda b, lo, hi, s: coba_allocate(b, P_RATES, n_min=lo, n_max=hi, seed=s),
    "dynamo": lambda b, lo, hi, s: dynamo_allocate(b, [0, 3, 8, 15, 16, 0], [16, 16, 16, 16, 16, 0],
                                                   n_low=lo, n_high=hi, seed=s),
    "v0": lambda b, lo, hi, s: v0_allocate(b, np.nan_to_num(P_RATES, nan=0.5), n_min=lo, n_max=hi, seed=s),
    "v05_sequential": lambda b, lo, hi, s: v05_sequential(
        [0.1, 0.2, 0.5, 0.9, 0.9, 0.4], _bernoulli_sampler([0.0, 0.1, 0.5, 0.9, 1.0, 0.3], s), budget=b,
        n_init=lo, n_max=hi, seed=s).counts,
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("budget,n_min,n_max", [(24, 2, 8), (48, 4, 16), (36, 6, 6), (61, 4, 24)])
def test_sum_bounds_and_seed(name, budget, n_min, n_max):
    counts = CASES[name](budget, n_min, n_max, 0)
    assert counts.dtype == np.int64 and counts.shape == (6,)
    assert counts.sum() == budget
    assert counts.min() >= n_min and counts.max() <= n_max
    assert np.array_equal(counts, CASES[name](budget, n_min, n_max, 0))       # same seed, same counts


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("budget", [11, 49, -1])
def test_infeasible_budget_raises(name, budget):
    with pytest.raises(ValueError, match="budget"):
        CASES[name](budget, 2, 8, 0)


@pytest.mark.parametrize("name", ["uniform", "coba", "v0"])
def test_bad_budget_types_and_bounds(name):
    with pytest.raises(ValueError, match="integer"):
        CASES[name](24.0, 2, 8, 0)
    with pytest.raises(ValueError, match="n_max"):
        CASES[name](24, 5, 4, 0)
    with pytest.raises(ValueError, match="n_min"):
        CASES[name](24, -1, 8, 0)


def test_rate_validation():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        coba_allocate(8, [0.5, 1.5])
    with pytest.raises(ValueError, match="1-D"):
        coba_allocate(8, [[0.5, 0.5]])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        v0_allocate(8, [-0.1, 0.5])
    with pytest.raises(ValueError, match="NaN"):
        v0_allocate(8, [np.nan, 0.5])
    with pytest.raises(ValueError, match="successes <= counts"):
        dynamo_allocate(32, [5, 0], [4, 0])
    with pytest.raises(ValueError, match="exactly one"):
        dapo_filter_allocate(8)


# ----------------------------------------------------------------------------------------------- uniform / DAPO
def test_uniform_remainder_is_seeded():
    a = uniform_allocate(10, 4, seed=0)
    assert sorted(a.tolist()) == [2, 2, 3, 3]
    draws = {tuple(uniform_allocate(10, 4, seed=s)) for s in range(20)}
    assert len(draws) > 1                                                # the remainder placement follows the seed
    assert uniform_allocate(0, 0).shape == (0,)
    assert uniform_allocate(16, 4).tolist() == [4, 4, 4, 4]


def test_dapo_filter_hand_computed():
    rewards = [[1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 1, 0], [0, 1, 0, 0]]
    assert degenerate_groups(rewards).tolist() == [True, True, False, False]
    assert degenerate_groups([[1.0], [0.3, 0.3]]).tolist() == [False, True]       # G = 1 is kept (DAPO)
    assert dapo_filter_allocate(16, rewards).tolist() == [0, 0, 8, 8]
    assert dapo_filter_allocate(16, rewards, n_max=6).tolist() == [2, 2, 6, 6]    # overflow refills dropped
    assert dapo_filter_allocate(16, rewards, n_min=2).tolist() == [2, 2, 6, 6]
    assert dapo_filter_allocate(16, [[0, 0], [1, 1], [0, 0], [1, 1]]).tolist() == [4, 4, 4, 4]  # nothing left
    assert dapo_filter_allocate(9, degenerate=[False, True, False]).sum() == 9


# ----------------------------------------------------------------------------------------------- CoBA
def test_coba_beta_params_hand_computed():
    assert coba_beta_params(0.8) == pytest.approx((5.0, 2.0))                     # 1 + 5 * 0.8
    f = 1 / (1 + math.exp(-10 * (0.3 - 0.5)))                                     # late training: sharpened
    assert coba_beta_params(0.3) == pytest.approx((1 + 5 * f, 6 - 5 * f))
    assert coba_beta_params(0.3, transform=False) == pytest.approx((2.5, 4.5))
    assert coba_beta_params([0.9, 0.8, 0.7, 0.6]) == pytest.approx((4.5, 2.5))    # moving average of last 3
    assert coba_beta_params([0.9, 0.6], window=1, beta_sum=11) == pytest.approx((6.4, 4.6))
    assert coba_beta_params(1.0) == pytest.approx((6.0, 1.0))                     # clipped to [1, S - 1]


def test_coba_value_hand_computed():
    a, b = 5.0, 2.0
    pdf = 0.5 ** 4 * 0.5 / (math.gamma(5) * math.gamma(2) / math.gamma(7))
    # default: the released saturation 1 - exp(-n p (1 - p) / tau), tau = 6 unless given
    assert coba_value(0.5, 4, a, b) == pytest.approx(pdf * (1 - math.exp(-4 * 0.25 / 6)))
    assert coba_value(0.5, 4, a, b, tau=2.0) == pytest.approx(pdf * (1 - math.exp(-0.5)))
    assert coba_value(0.5, 0, a, b) == 0.0
    # option: the previous default, P(group is mixed) = 1 - p^n - (1 - p)^n
    assert coba_value(0.5, 3, a, b, saturation="mixed") == pytest.approx(pdf * (1 - 2 * 0.5 ** 3))
    assert coba_value(0.5, 0, a, b, saturation="mixed") == 0.0
    # p = 0 is smoothed to 0.01: tiny but positive value
    assert 0 < coba_value(0.0, 8, 2.0, 5.0) < coba_value(0.3, 8, 2.0, 5.0)


def test_coba_follows_the_failure_rate():
    p = np.array([0.15, 0.85])
    early = coba_allocate(20, p, failure_rate=0.85, n_min=2)     # failing a lot: exploit the easy prompt
    late = coba_allocate(20, p, failure_rate=0.15, n_min=2)      # mostly solved: explore the hard prompt
    assert early[1] > early[0] and late[0] > late[1]


def test_coba_edge_cases():
    assert coba_allocate(12, [np.nan] * 4).tolist() == [3, 3, 3, 3]          # all unseen -> p = 0.5 each
    # all-0: every prompt is "very hard" (p < 0.05), so nothing goes through the heap; the 4 units above n_min go
    # through the released weighted pass in index order: prompt 0 gets floor(4 * w / 4w) = 1, the next ones
    # floor(3 * w / 4w) = 0, then the 3 left are spread one each over the first three -> [2+2, 2+1, 2+1, 2]
    assert coba_allocate(12, [0.0] * 4).tolist() == [4, 3, 3, 2]
    assert coba_allocate(12, [0.0] * 4, routing="single_heap").tolist() == [3, 3, 3, 3]   # identical prompts
    assert coba_allocate(7, [1.0]).tolist() == [7]                          # one prompt takes everything
    alloc = CoBAAllocator(n_min=2, n_max=8)
    assert alloc.beta_params is None
    alloc.observe([0.0, 0.0, 0.5])
    assert alloc.beta_params == pytest.approx(coba_beta_params(5 / 6))
    assert alloc.allocate(16, [0.2, 0.5, 0.8]).sum() == 16


# ----------------------------------------------------------------------------------------------- DynaMO
def test_dynamo_priority_hand_computed():
    k = [8, 16, 0, 1, 0, 13, 14]
    g = [16, 16, 16, 1, 0, 16, 16]
    # default: the released 4 acc (1 - acc); acc = 13/16 < 0.85 is not mastered, 14/16 = 0.875 is
    np.testing.assert_allclose(dynamo_priority(k, g), [1.0, 0.01, 0.01, 0.01, 1.0, 4 * 13 / 16 * 3 / 16, 0.01])
    np.testing.assert_allclose(dynamo_priority(k, g, priority_form="released_code"), dynamo_priority(k, g))
    np.testing.assert_allclose(dynamo_priority(k, g, priority_form="unbiased"),
                               [64 / 240, 0.01, 0.01, 0.01, 1.0, 39 / 240, 0.01])


def test_dynamo_allocate_hand_computed():
    # floor 8 each, 32 left by priority [.267, .01, .01, 1]: the new prompt caps at 24, the rest re-poured
    assert dynamo_allocate(successes=[8, 16, 0, 0], counts=[16, 16, 16, 0]).tolist() == [24, 8, 8, 24]
    # exploration: initial_budget 12 -> the unseen prompt starts at 12, the other at n_low 8, then 12 left by
    # priority [1, 4 * 0.25 * 0.75 = 0.75]: shares [6.857, 5.143] -> floors [6, 5] + largest remainder -> [7, 5]
    got = dynamo_allocate(32, successes=[0, 5], counts=[0, 20], initial_budget=12)
    assert got.tolist() == [19, 13]
    # the previous default (unbiased priority 5*15/380): shares [10.02, 1.98] -> [10, 2]
    got = dynamo_allocate(32, successes=[0, 5], counts=[0, 20], initial_budget=12, priority_form="unbiased")
    assert got.tolist() == [22, 10]
    # budget below the exploration need: n_low first, then the rest toward the exploration targets
    assert dynamo_allocate(30, [0, 0], [0, 0], initial_budget=20).tolist() == [15, 15]
    # uniform history -> uniform allocation; default budget n * P
    assert dynamo_allocate(successes=[4, 4, 4], counts=[8, 8, 8]).tolist() == [16, 16, 16]


# ----------------------------------------------------------------------------------------------- V0
def test_v0_allocate_hand_computed():
    assert v0_allocate(7, [0.5, 0.0, 1.0]).tolist() == [5, 1, 1]                # sure fail / pass: n_min
    assert v0_allocate(16, [0.5, 0.1], objective="variance").tolist() == [10, 6]  # Neyman 5 : 3
    with pytest.raises(ValueError, match="n_min >= 1"):
        v0_allocate(4, [0.5, 0.5], n_min=0)


def test_v0_allocate_with_value_model():
    history = [("add 2 and 3", 1.0), ("add 5 and 7", 0.0), ("prove the Riemann hypothesis", 0.0),
               ("prove Fermat's last theorem", 0.0)]
    prompts = ["add 4 and 9", "prove the Riemann hypothesis"]
    counts = v0_allocate(12, prompts=prompts, history=history, n_min=2)
    p_hat = InContextValueModel().predict(prompts, history)
    assert p_hat[1] < p_hat[0] < 0.5
    assert counts.tolist() == v0_allocate(12, p_hat, n_min=2).tolist()
    # the harder prompt needs more rollouts before its group is likely to hold a success: 1 - p^n - (1-p)^n
    assert counts[1] > counts[0]


# ----------------------------------------------------------------------------------------------- V0.5 sequential
def test_v05_sequential_on_demand_hand_cases():
    always = lambda i, m: np.full(m, [1.0, 0.0][i])  # noqa: E731  (prompt 0 always right, prompt 1 always wrong)
    res = v05_sequential([1.0, 0.7], always, cost=3e-3)
    # prompt 0: prior 1 agrees with 1111 -> baseline 1, expected gain .0024 < cost: stays at n = 4
    # prompt 1: prior .7 vs 0000 -> rejected, baseline 0; gains .0148, .0079, .0069, .0038 > cost, then .0026: n = 8
    assert res.counts.tolist() == [4, 8]
    assert res.baselines.tolist() == [1.0, 0.0] and res.lambdas.tolist() == [1.0, 0.0]
    assert [r.size for r in res.rewards] == res.counts.tolist()
    assert v05_gain(1.0, 1.0, 4) < 3e-3 < v05_gain(0.0, 0.7, 7)
    assert v05_gain(0.0, 0.7, 8) < 3e-3
    capped = v05_sequential([0.5], lambda i, m: np.arange(m) % 2, cost=0.0, n_max=7)
    assert capped.counts.tolist() == [7]                         # cost 0 -> straight to n_max
    none = v05_sequential([0.5], lambda i, m: np.arange(m) % 2, cost=1.0)
    assert none.counts.tolist() == [4]                           # unaffordable -> n_init


def test_v05_sequential_validation():
    with pytest.raises(ValueError, match="rewards in"):
        v05_sequential([0.5], lambda i, m: np.full(m, 2.0))
    with pytest.raises(ValueError, match="n_max"):
        v05_sequential([0.5], lambda i, m: np.zeros(m), n_init=8, n_max=4)
    with pytest.raises(ValueError, match="sample_fn"):
        allocate("v05_sequential", 8, v0=[0.5, 0.5])


# ----------------------------------------------------------------------------------------------- registry
def test_registry():
    assert set(ALLOCATORS) == set(CASES)
    assert get_allocator("coba") is coba_allocate
    assert allocate("dynamo", 48, [1, 2], [4, 4], n_low=8, n_high=40).sum() == 48
    with pytest.raises(ValueError) as e:
        get_allocator("knapsack")
    for name in ALLOCATORS:
        assert name in str(e.value)


@pytest.mark.parametrize("module", [lckernels_rl.budget, lckernels_rl.budget.uniform, lckernels_rl.budget.coba,
                                    lckernels_rl.budget.dynamo], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
