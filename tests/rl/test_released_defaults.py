"""The defaults that follow the authors' released code (issue #16), each checked against hand-computed values or an
independent transcription of the released procedure written here (no helper of the code under test is used).

* HisPO (LongCat-Flash-Prover report s3.3 eq. 9): 1/(G * max|y|) with a constant max length, r_stale clipped.
* CoBA (Within-yao/CoBA-RL ``recipe/coba_rl/budget_allocators.py`` ``BetaAllocator``, aa6b834): exp saturation with
  adaptive tau, pre-routing p < 0.05 / p > 0.99, only 60-80 % of the budget through the heap, weighted fallback.
* DynaMO (GithubX-F/DynaMO-RL, 63e5ec9): priority 4 acc (1 - acc); per-token centred entropy change.
* DGG: the paper's title.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import lckernels_rl.gating.dgg
from lckernels_rl.advantages import dynamo_modulation
from lckernels_rl.budget import CoBAAllocator, allocate, coba_allocate, dynamo_allocate, dynamo_priority
from lckernels_rl.objectives import get_objective


# ------------------------------------------------------------------------------------------------------ HisPO
def _hispo_batch():
    """B = 2, T = 4; row 0 has 4 valid tokens, row 1 has 2 (mean length 3).  pi_theta = 1 (log 0) everywhere;
    old[0, 0] = -0.5 -> r = e^0.5 = 1.6487 (A = +1: clipped to 1.28); old[1, 1] = +0.5 -> r = e^-0.5 = 0.6065
    (A = -0.5: min(0.6065 * -0.5, 0.8 * -0.5) = -0.4, above the cap 3 * -0.5); the rest r = 1.  The engine's
    log-probs equal old (r_dis = 1: every mask passes).  Per-token J = [[1.28, 1, 1, 1], [-0.5, -0.4, -, -]],
    sum 4.28 - 0.9 = 3.38."""
    lp = torch.zeros(2, 4)
    old = torch.zeros(2, 4)
    old[0, 0], old[1, 1] = -0.5, 0.5
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    adv = torch.tensor([1.0, -0.5])
    return lp, old, adv, mask, old.clone()


def test_hispo_default_is_sum_over_G_times_constant_max_len():
    lp, old, adv, mask, roll = _hispo_batch()
    total = 1.28 + 3 * 1.0 + (-0.5) + (-0.4)
    loss, _ = get_objective("hispo", max_response_len=8)(lp, old, adv, mask, roll)
    assert float(loss) == pytest.approx(-total / (2 * 8), rel=1e-6)            # -0.21125
    # max_response_len=None: the padded response width T = 4 of the tensors handed in
    loss, _ = get_objective("hispo")(lp, old, adv, mask, roll)
    assert float(loss) == pytest.approx(-total / (2 * 4), rel=1e-6)            # -0.4225
    # the previous default, token-mean over the 6 valid tokens (2.67x the L = 8 figure here)
    loss, _ = get_objective("hispo", loss_agg="token-mean")(lp, old, adv, mask, roll)
    assert float(loss) == pytest.approx(-total / 6, rel=1e-6)                  # -0.56333


def test_hispo_gradient_follows_the_constant_normaliser():
    lp, old, adv, mask, roll = _hispo_batch()
    lp.requires_grad_()
    loss, _ = get_objective("hispo", max_response_len=8)(lp, old, adv, mask, roll)
    loss.backward()
    # d(-r A)/d log pi = -r A on unclipped tokens, 0 on the clipped (0,0) and (1,1), 0 on padding; / (2 * 8)
    want = torch.tensor([[0.0, -1.0, -1.0, -1.0], [0.5, 0.0, 0.0, 0.0]]) / 16
    torch.testing.assert_close(lp.grad, want)


def test_hispo_default_delta_tok_never_masks_the_low_side():
    """r_dis = pi_old / mu = [e^-3, e^3] (log mean 0: the sequence passes delta_seq).  |e^-3 - 1| = 0.95 < 1 keeps
    the low token, |e^3 - 1| = 19.1 drops the high one: J = [1, 0] -> loss -1 / (1 * 2)."""
    lp = torch.zeros(1, 2)
    old = torch.zeros(1, 2)
    roll = torch.tensor([[3.0, -3.0]])
    adv = torch.tensor([1.0])
    loss, _ = get_objective("hispo", max_response_len=2)(lp, old, adv, None, roll)
    assert float(loss) == pytest.approx(-0.5)
    loss, _ = get_objective("hispo", max_response_len=2, delta_tok=0.5)(lp, old, adv, None, roll)
    assert float(loss) == 0.0                                                   # 0.95 >= 0.5: the low side masked


@pytest.mark.parametrize("bad", [0, -3, float("nan"), float("inf"), "8", True])
def test_hispo_rejects_bad_max_response_len(bad):
    with pytest.raises(ValueError, match="max_response_len"):
        get_objective("hispo", max_response_len=bad)


def test_hispo_max_response_len_wins_over_a_host_loss_norm_constant_and_labels_its_source():
    lp, old, adv, mask, roll = _hispo_batch()
    total = 1.28 + 3 * 1.0 + (-0.5) + (-0.4)
    loss, _ = get_objective("hispo", max_response_len=8, loss_norm_constant=4.0)(lp, old, adv, mask, roll)
    assert float(loss) == pytest.approx(-total / (2 * 8), rel=1e-6)
    loss, _ = get_objective("hispo", loss_norm_constant=5.0)(lp, old, adv, mask, roll)   # the fallback
    assert float(loss) == pytest.approx(-total / (2 * 5), rel=1e-6)
    assert get_objective("hispo").source == "third-party"     # no released code; the report's text was not re-read


# ------------------------------------------------------------------------------------------------------- CoBA
def _beta_pdf(p, a, b):
    return p ** (a - 1) * (1 - p) ** (b - 1) * math.gamma(a + b) / (math.gamma(a) * math.gamma(b))


def _alpha_beta(f, s=7.0):
    """Released mapping: F~ = sigmoid(10 (F - 0.5)) for F <= 0.5; alpha = clip(1 + (S - 2) F~, 1, S - 1)."""
    if f <= 0.5:
        f = 1 / (1 + math.exp(-10 * (f - 0.5)))
    a = min(max(1 + (s - 2) * f, 1.0), s - 1)
    return a, s - a


def _released_beta_allocator(budget, rates, alpha, beta, n_low=2, n_up=32, ratio_max=0.8):
    """A transcription of the released ``BetaAllocator.allocate`` (aa6b834) from its description: n_low each;
    p < 0.05 hard, p > 0.99 easy, else exploration; floor(rest * ratio) through a heap (ties: lowest index) on
    V = (1 - exp(-n p~(1-p~) / tau)) BetaPDF(p~), p~ = clip(p, .01, .99), tau = 3 + 9 clip(var(p~) / 0.1667, 0, 1)
    over the exploration prompts; what is left goes to hard, exploration, easy in turn: sequential
    floor(left * w / sum w), w = 1 - clip(p, 1e-6, 1 - 1e-6) over those below n_up, then one even pass."""
    rates = [0.5 if math.isnan(r) else r for r in rates]
    m = len(rates)
    n = [n_low] * m
    left = budget - n_low * m
    hard = [i for i in range(m) if rates[i] < 0.05]
    easy = [i for i in range(m) if rates[i] > 0.99]
    expl = [i for i in range(m) if 0.05 <= rates[i] <= 0.99]
    k = len(expl)
    ratio = ratio_max if k > m / 2 else (0.6 + (ratio_max - 0.6) * (k / m * 2) if k else 0.6)
    heap_budget = int(left * ratio)
    if k and heap_budget > 0:
        ps = [min(max(rates[i], 0.01), 0.99) for i in expl]
        mean = sum(ps) / k
        var = sum((q - mean) ** 2 for q in ps) / k
        tau = 3 + 9 * min(max(var / 0.1667, 0.0), 1.0)

        def v(q, c):
            return (1 - math.exp(-c / tau * q * (1 - q))) * _beta_pdf(q, alpha, beta)

        placed = 0
        while placed < heap_budget:
            best, gain = None, -math.inf
            for j, i in enumerate(expl):
                if n[i] < n_up:
                    g = v(ps[j], n[i] + 1) - v(ps[j], n[i])
                    if g > gain:
                        best, gain = i, g
            if best is None:
                break
            n[best] += 1
            placed += 1
        left -= placed

    def even(amount, idx):
        room = [i for i in idx if n[i] < n_up]
        if not room:
            return amount
        q, r = divmod(amount, len(room))
        for j, i in enumerate(room):
            add = min(q + (j < r), n_up - n[i])
            n[i] += add
            amount -= add
        return amount

    for idx in (hard, expl, easy):
        if left <= 0 or not idx:
            continue
        room = [i for i in idx if n[i] < n_up]
        if not room:
            continue
        w = {i: 1 - min(max(rates[i], 1e-6), 1 - 1e-6) for i in room}
        tot = sum(w.values())
        for i in room:
            add = min(int(left * w[i] / tot), n_up - n[i])
            n[i] += add
            left -= add
        left = even(left, room)
    return n, left


def test_coba_default_hand_case_pre_routes_and_splits_the_budget():
    """p = [0.01, 0.3, 0.6, 1.0], budget 20, n_min 2: R = 12 above the floor.  Hard: prompt 0 (p < 0.05); easy:
    prompt 3 (p > 0.99); exploration K = 2 = P / 2 -> ratio 0.6 + 0.2 * (2/4 * 2) = 0.8, E = floor(9.6) = 9 units
    through the heap over prompts 1, 2 (found here by brute force over the splits); the other 3 all go to the very
    hard prompt (weighted pass, its weight is the whole), the very easy one keeps n_min."""
    p = [0.01, 0.3, 0.6, 1.0]
    f = 1 - sum(p) / 4                                    # 0.5225 -> no sharpening
    a, b = 1 + 5 * f, 6 - 5 * f
    var = ((0.3 - 0.45) ** 2 + (0.6 - 0.45) ** 2) / 2      # 0.0225
    tau = 3 + 9 * var / 0.1667

    def v(q, c):
        return _beta_pdf(q, a, b) * (1 - math.exp(-c * q * (1 - q) / tau))

    n1 = max(range(2, 12), key=lambda c: v(0.3, c) + v(0.6, 13 - c))
    want = [5, n1, 13 - n1, 2]
    got = coba_allocate(20, p, n_min=2)
    assert got.tolist() == want
    assert got.tolist() == _released_beta_allocator(20, p, a, b)[0]

    # the previous default: one heap over all four on 1 - p^n - (1 - p)^n (brute force over every split)
    def mixed(q, c):
        q = min(max(q, 0.01), 0.99)
        return _beta_pdf(q, a, b) * (1 - q ** c - (1 - q) ** c)

    best = max((c for c in itertools.product(range(2, 15), repeat=4) if sum(c) == 20),
               key=lambda c: sum(mixed(q, k) for q, k in zip(p, c)))
    old = coba_allocate(20, p, n_min=2, routing="single_heap", saturation="mixed")
    assert old.tolist() == list(best)
    assert old.tolist() != want


@pytest.mark.parametrize("seed", range(6))
def test_coba_default_matches_a_transcription_of_the_released_allocator(seed):
    rng = np.random.default_rng(seed)
    m = int(rng.integers(4, 12))
    rates = rng.random(m)
    rates[rng.random(m) < 0.25] = rng.random() * 0.05                  # some very hard
    rates[rng.random(m) < 0.15] = 1.0                                 # some very easy
    if seed % 2:
        rates[0] = np.nan                                             # one unseen prompt (p = 0.5)
    n_up = int(rng.integers(4, 12))
    budget = int(rng.integers(2 * m, n_up * m + 1))
    fails = [float(x) for x in rng.random(3)]
    a, b = _alpha_beta(sum(fails) / 3)
    want, left = _released_beta_allocator(budget, list(rates), a, b, n_low=2, n_up=n_up)
    got = coba_allocate(budget, rates, fails, n_min=2, n_max=n_up, seed=seed)
    assert got.sum() == budget and got.min() >= 2 and got.max() <= n_up
    if left == 0:       # the released code placed everything: identical counts
        assert got.tolist() == want
    else:               # it would return fewer than budget; ours spreads the rest over the prompts with room
        assert (got >= np.array(want)).all()


def test_coba_released_fallback_order_and_first_step():
    # every rate unseen: the released allocator splits evenly, the remainder to the first prompts
    assert coba_allocate(14, [np.nan] * 4).tolist() == [4, 4, 3, 3]
    # no exploration prompt: ratio 0.6 unused, the 6 units above n_min go to the very hard prompts first,
    # weighted by 1 - p: floor(6 * 1 / 1.98) = 3 to prompt 0, floor(3 * .98 / 1.98) = 1 to prompt 1, then the
    # 2 left one each over both; the very easy prompt gets nothing
    assert coba_allocate(12, [0.0, 0.02, 1.0]).tolist() == [6, 4, 2]
    # n_max binds in the released single passes: p = [.01, .03, .03] all very hard, n_max 4, budget 12 (R = 6):
    # weighted 2, floor(4 * .97 / 2.93) = 1, floor(3 * .97 / 2.93) = 0 -> [4, 3, 2], 3 left; even pass over the
    # two with room: 1 + 1 (one more to the first, capped) -> [4, 4, 3] and 1 unit the released code drops
    # (it returns 11 of 12); ours places it on the last prompt with room
    assert _released_beta_allocator(12, [0.01, 0.03, 0.03], 1.0, 6.0, n_up=4) == ([4, 4, 3], 1)
    assert coba_allocate(12, [0.01, 0.03, 0.03], n_min=2, n_max=4).tolist() == [4, 4, 4]
    alloc = CoBAAllocator(n_min=2)
    assert alloc.allocate(12, [0.0, 0.02, 1.0]).tolist() == [6, 4, 2]
    assert CoBAAllocator(n_min=2, routing="single_heap", saturation="mixed").allocate(12, [0.0, 0.02, 1.0]).sum() == 12


@pytest.mark.parametrize("kw,arg", [(dict(routing="one_heap"), "routing"), (dict(saturation="erf"), "saturation"),
                                    (dict(fallback="random"), "fallback"), (dict(tau=0.0), "tau"),
                                    (dict(exploration_budget_ratio=1.5), "exploration_budget_ratio"),
                                    (dict(hard_threshold=0.5, easy_threshold=0.4), "hard_threshold")])
def test_coba_rejects_bad_options(kw, arg):
    with pytest.raises(ValueError, match=arg):
        coba_allocate(8, [0.5, 0.5], **kw)
    with pytest.raises(ValueError, match=arg):
        CoBAAllocator(**kw)


# ----------------------------------------------------------------------------------------------------- DynaMO
def test_dynamo_default_priority_is_released_4acc():
    # acc = 0.5 -> 1, 0.25 -> 0.75, 0.8 -> 0.64, 0.85 mastered -> 0.01, 0.02 -> 0.0784, 0.001 -> floor 0.01, unseen 1
    k = [8, 4, 16, 17, 1, 1, 0]
    g = [16, 16, 20, 20, 50, 1000, 0]
    np.testing.assert_allclose(dynamo_priority(k, g), [1.0, 0.75, 0.64, 0.01, 0.0784, 0.01, 1.0])


def test_dynamo_default_allocation_weighs_unseen_like_acc_half():
    # n_low 8 each, 16 left by priority [1, 1] -> 8 + 8 each
    assert dynamo_allocate(32, successes=[8, 0], counts=[16, 0]).tolist() == [16, 16]
    assert allocate("dynamo", 32, [8, 0], [16, 0]).tolist() == [16, 16]
    # the previous default (unbiased 64/240 = 0.2667 vs 1): 16 * [0.2105, 0.7895] = [3.37, 12.63] -> [3, 13]
    assert dynamo_allocate(32, successes=[8, 0], counts=[16, 0], priority_form="unbiased").tolist() == [11, 21]
    with pytest.raises(ValueError, match="priority_form"):
        dynamo_priority([1], [2], priority_form="biased")


@pytest.mark.parametrize("gamma,tau", [(50.0, 0.99), (5.0, 0.5)], ids=["released_constants", "soft_gate"])
def test_dynamo_modulation_default_is_the_released_per_token_estimate(gamma, tau):
    """Transcription of the released decay6_linearnorm branch (dp_actor.py at 63e5ec9): per-token
    dH = -xi (pi (log pi + H) - mean over the sequence's valid tokens), xi = 1_unclipped r A, x = |dH| mask / max,
    H_min / H_max over valid tokens only, + 1e-8 in both denominators.  The released gate (gamma 50, tau 0.99) is
    ~1 except near the largest |dH|; the soft gate makes every token's x visible."""
    g = torch.Generator().manual_seed(11)
    b, t = 3, 5
    adv = torch.tensor([1.0, -0.7, 0.4])[:, None].expand(b, t)
    ent = torch.rand(b, t, generator=g) * 2
    logp = -torch.rand(b, t, generator=g) * 3
    ratio = 0.6 + 0.8 * torch.rand(b, t, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    ent = torch.where(mask, ent, torch.full_like(ent, 9.0))          # padding entropy must not set H_max
    m = mask.double()
    a, h, lp, r = adv.double(), ent.double(), logp.double(), ratio.double()
    ind = ((a > 0) & (r <= 1.28)).double() + ((a < 0) & (r >= 0.8)).double()
    xi = ind * r * a
    term = lp.exp() * (lp + h)
    e = (term * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp(min=1.0)
    est = (-xi * (term - e)).abs() * m
    x = est / (est.max() + 1e-8)
    decay = 0.6 + 0.4 / (1 + torch.exp(gamma * (x - tau)))
    h_min = (h * m + (1 - m) * h.max()).min()
    h_max = (h * m + (1 - m) * h.min()).max()
    boost = torch.where(a > 0, 1 + 0.2 * (h_max - h) / (h_max - h_min + 1e-8), torch.ones_like(h))
    want = a * decay * boost
    got = dynamo_modulation(adv, ent, logp, ratio, None, mask, gamma=gamma, tau=tau)
    torch.testing.assert_close(got[mask], want[mask].float(), rtol=1e-5, atol=1e-6)
    # the superseded first commit's per-sequence estimate stays available under both names
    first = dynamo_modulation(adv, ent, logp, ratio, None, mask, entropy_change="first_commit")
    torch.testing.assert_close(first, dynamo_modulation(adv, ent, logp, ratio, None, mask,
                                                        entropy_change="released_code"))
    with pytest.raises(ValueError, match="entropy_change"):
        dynamo_modulation(adv, ent, logp, ratio, None, mask, entropy_change="per_batch")


# -------------------------------------------------------------------------------------------------------- DGG
def test_dgg_cites_the_paper_title():
    doc = lckernels_rl.gating.dgg.__doc__
    assert "When to Stop Reusing: Dynamic Gradient Gating for Sample-Efficient RLVR" in doc
    assert "2605.19425" in doc
