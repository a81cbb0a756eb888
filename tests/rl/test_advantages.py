"""Advantage estimators: hand-computed cases, edge cases (all-0 / all-1 groups, G = 1), validation, registry."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch

import lckernels_rl.advantages.group
import lckernels_rl.advantages.skill1
import lckernels_rl.advantages.v05
from lckernels_rl.advantages import (ESTIMATORS, batch_std_advantages, dr_grpo_advantages, dynamo_modulation,
                                     get_estimator, group_relative_advantages, grpo_advantages, hian_advantages,
                                     ppo_unclipped_mask, skill1_credit, v05_advantages, v05_baseline,
                                     v05_expected_mse)

EPS = 1e-6


# ----------------------------------------------------------------------------------------------- group-relative
def test_grpo_hand_computed():
    # mean 0.25, unbiased std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5
    a = grpo_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), [7, 7, 7, 7])
    torch.testing.assert_close(a, torch.tensor([0.75, -0.25, -0.25, -0.25]) / (0.5 + EPS))


def test_dr_grpo_hand_computed():
    a = dr_grpo_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 3.0, 1.0]), ["a", "a", "a", "a", "b", "b"])
    torch.testing.assert_close(a, torch.tensor([0.75, -0.25, -0.25, -0.25, 1.0, -1.0]))


def test_batch_std_hand_computed():
    r = torch.tensor([1.0, 0.0, 1.0, 1.0])
    idx = np.array(["u0", "u0", "u1", "u1"], dtype=object)
    # centred [0.5, -0.5, 0, 0]: unbiased std sqrt(0.5 / 3)
    torch.testing.assert_close(batch_std_advantages(r, idx),
                               torch.tensor([0.5, -0.5, 0.0, 0.0]) / (math.sqrt(0.5 / 3) + EPS))
    # std of the raw rewards: mean 0.75, unbiased var (3 * 0.0625 + 0.5625) / 3 = 0.25
    torch.testing.assert_close(batch_std_advantages(r, idx, batch_std_of="rewards"),
                               torch.tensor([0.5, -0.5, 0.0, 0.0]) / (0.5 + EPS))


def test_population_std_option():
    a = grpo_advantages(torch.tensor([1.0, 0.0]), [0, 0], unbiased=False)
    torch.testing.assert_close(a, torch.tensor([0.5, -0.5]) / (0.5 + EPS))


@pytest.mark.parametrize("norm", ["group", "none", "batch"])
def test_all_zero_and_all_one_groups_give_zero(norm):
    r = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    a = group_relative_advantages(r, [0, 0, 0, 1, 1, 1, 2, 2], norm=norm)
    assert torch.equal(a[:6], torch.zeros(6))
    assert a[6] > 0 > a[7]


def test_singleton_group():
    r = torch.tensor([1.0, 0.3, 0.0, 1.0])
    idx = [0, 1, 2, 2]
    assert grpo_advantages(r, idx)[1] == 0.0
    assert dr_grpo_advantages(r, idx)[1] == 0.0
    assert grpo_advantages(r, idx, singleton="raw")[1] == pytest.approx(0.3)   # verl's convention
    assert grpo_advantages(torch.tensor([0.7]), [0]).item() == 0.0             # G = 1 batch


def test_index_types_and_permutation_equivariance():
    r = torch.tensor([0.2, 0.9, 0.5, 0.1, 0.7, 0.4])
    ids = [3, 5, 3, 5, 3, 5]
    ref = grpo_advantages(r, ids)
    torch.testing.assert_close(grpo_advantages(r, torch.tensor(ids)), ref)
    torch.testing.assert_close(grpo_advantages(r, np.array(["x" if i == 3 else "y" for i in ids])), ref)
    perm = torch.tensor([4, 1, 0, 5, 2, 3])
    torch.testing.assert_close(grpo_advantages(r[perm], [ids[i] for i in perm]), ref[perm])


def test_group_validation():
    with pytest.raises(ValueError, match="shape"):
        grpo_advantages(torch.tensor([1.0, 0.0]), [0, 0, 0])
    with pytest.raises(ValueError, match="1-D"):
        grpo_advantages(torch.ones(2, 2), [0, 0])
    with pytest.raises(ValueError, match="NaN"):
        grpo_advantages(torch.tensor([1.0, float("nan")]), [0, 0])
    with pytest.raises(ValueError, match="norm"):
        group_relative_advantages(torch.ones(2), [0, 0], norm="max")
    assert grpo_advantages(torch.zeros(0), []).shape == (0,)


# ----------------------------------------------------------------------------------------------- HIAN
def test_hian_hand_computed():
    session = torch.tensor([1.0, 0.0])
    turns = torch.tensor([[0.2, 0.4], [0.0, 9.0]])           # 9.0 is a padded turn
    turn_mask = torch.tensor([[True, True], [True, False]])
    token_turn = torch.tensor([[0, 0, 1, -1], [0, 0, -1, -1]])
    resp = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    a = hian_advantages(session, turns, token_turn, ["g", "g"], turn_mask=turn_mask, response_mask=resp)
    s = 0.5 / (math.sqrt(0.5) + EPS)                      # session: [1, 0] -> +-0.5 / std 0.7071
    # turns pooled in the group: [0.2, 0.4, 0.0]: mean 0.2, unbiased std 0.2 -> [0, 1, -1]
    t1 = 0.2 / (0.2 + EPS)
    expected = torch.tensor([[s, s, s + t1, s], [-s - t1, -s - t1, -s, 0.0]])
    torch.testing.assert_close(a, expected)
    half = hian_advantages(session, turns, token_turn, ["g", "g"], turn_mask=turn_mask, response_mask=resp,
                           w_session=2.0, w_turn=0.5)
    torch.testing.assert_close(half, torch.tensor([[2 * s, 2 * s, 2 * s + 0.5 * t1, 2 * s],
                                                   [-2 * s - 0.5 * t1, -2 * s - 0.5 * t1, -2 * s, 0.0]]))


def test_hian_reward_to_go_and_scale_balance():
    session = torch.tensor([100.0, 0.0, 50.0])              # session rewards far larger than turn rewards
    turns = torch.tensor([[0.01, 0.02], [0.03, 0.0], [0.0, 0.01]])
    token_turn = torch.tensor([[0, 1], [0, 1], [0, 1]])
    a = hian_advantages(session, turns, token_turn, [0, 0, 0], turn_return="reward_to_go", gamma=0.5)
    u = torch.tensor([[0.01 + 0.5 * 0.02, 0.02], [0.03, 0.0], [0.005, 0.01]]).double()
    t = ((u - u.mean()) / (u.std() + EPS))
    s = (session.double() - session.double().mean()) / (session.double().std() + EPS)
    torch.testing.assert_close(a, (s[:, None] + t).float())
    # after HIAN both horizons have unit spread: the turn term is not drowned by the 100x session scale
    assert t.std().item() == pytest.approx(1.0, rel=1e-4) and s.std().item() == pytest.approx(1.0, rel=1e-4)


def test_hian_validation():
    with pytest.raises(ValueError, match="token_turn values"):
        hian_advantages(torch.ones(1), torch.ones(1, 2), torch.tensor([[2]]), [0])
    with pytest.raises(ValueError, match="turn_rewards"):
        hian_advantages(torch.ones(2), torch.ones(1, 2), torch.zeros(2, 1, dtype=torch.long), [0, 0])


# ----------------------------------------------------------------------------------------------- DynaMO
def _case():
    adv = torch.tensor([[1.0, 1.0, -1.0]])
    ent = torch.tensor([[0.5, 1.5, 1.0]])
    logp = torch.tensor([[0.0, -1.5, -1.0]])               # pi (log pi + H) = [0.5, 0, 0]
    ratio = torch.ones(1, 3)
    return adv, ent, logp, ratio


def test_dynamo_hand_computed():
    adv, ent, logp, ratio = _case()
    # beta_comp: H in [0.5, 1.5] -> [1.2, 1.0] for the positive tokens, 1 for the negative one
    # lam = [0.5, 0, 0], centred [1/3, -1/6, -1/6], xi = [1, 1, -1] -> dH = [-1/3, 1/6, -1/6] -> x = [1, .5, .5]
    out, comp, stab = dynamo_modulation(adv, ent, logp, ratio, return_factors=True)
    s1 = 0.6 + 0.4 / (1 + math.exp(50 * (1 - 0.99)))
    s_half = 0.6 + 0.4 / (1 + math.exp(50 * (0.5 - 0.99)))
    torch.testing.assert_close(comp, torch.tensor([[1.2, 1.0, 1.0]]))
    torch.testing.assert_close(stab, torch.tensor([[s1, s_half, s_half]]))
    torch.testing.assert_close(out, torch.tensor([[1.2 * s1, s_half, -s_half]]))
    assert s1 == pytest.approx(0.75101, abs=1e-5)


def test_dynamo_clipped_token_has_no_entropy_change():
    adv, ent, logp, ratio = _case()
    clipped = torch.tensor([[True, False, False]])
    _, _, stab = dynamo_modulation(adv, ent, logp, ratio, clipped, return_factors=True)
    s1 = 0.6 + 0.4 / (1 + math.exp(0.5))
    torch.testing.assert_close(stab, torch.tensor([[1.0, s1, s1]]))


def test_dynamo_matches_loop_reference_with_padding():
    g = torch.Generator().manual_seed(3)
    b, t = 3, 5
    adv = torch.randn(b, generator=g)
    ent = torch.rand(b, t, generator=g) * 3
    logp = -torch.rand(b, t, generator=g) * 4
    ratio = 0.7 + 0.6 * torch.rand(b, t, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    got = dynamo_modulation(adv, ent, logp, ratio, None, mask, eps_low=0.2, eps_high=0.28)
    # independent scalar reference
    valid = [(i, j) for i in range(b) for j in range(t) if mask[i, j]]
    hs = [ent[i, j].item() for i, j in valid]
    hmax, hmin = max(hs), min(hs)
    lam = {(i, j): math.exp(logp[i, j]) * (logp[i, j].item() + ent[i, j].item()) for i, j in valid}
    dh = {}
    for i in range(b):
        cols = [j for j in range(t) if mask[i, j]]
        mean = sum(lam[i, j] for j in cols) / len(cols)
        for j in cols:
            a, r = adv[i].item(), ratio[i, j].item()
            unclipped = (a > 0 and r <= 1.28) or (a < 0 and r >= 0.8)
            dh[i, j] = -(r * a if unclipped else 0.0) * (lam[i, j] - mean)
    m = max(abs(v) for v in dh.values())
    ref = adv[:, None].expand(b, t).clone()
    for i, j in valid:
        a = adv[i].item()
        comp = 1 + 0.2 * (hmax - ent[i, j].item()) / (hmax - hmin) if a > 0 else 1.0
        stab = 0.6 + 0.4 / (1 + math.exp(50 * (abs(dh[i, j]) / m - 0.99)))
        ref[i, j] = a * comp * stab
    torch.testing.assert_close(got, ref)
    assert torch.equal(got[~mask], adv[:, None].expand(b, t)[~mask])     # padding passes through


def test_dynamo_released_code_mode_is_per_sequence():
    g = torch.Generator().manual_seed(5)
    adv = torch.tensor([1.0, -0.5])
    ent, logp = torch.rand(2, 4, generator=g), -torch.rand(2, 4, generator=g)
    ratio = torch.ones(2, 4)
    _, _, stab = dynamo_modulation(adv, ent, logp, ratio, entropy_change="released_code", return_factors=True)
    pi = logp.exp()
    dh = (-(pi ** 2) * (logp + ent) * ratio * adv[:, None]).sum(1).abs()
    x = dh / dh.max()
    torch.testing.assert_close(stab, (0.6 + 0.4 / (1 + torch.exp(50 * (x - 0.99))))[:, None].expand(2, 4))


def test_dynamo_detached_and_degenerate_inputs():
    adv = torch.tensor([[1.0, -2.0]], requires_grad=True)
    out = dynamo_modulation(adv, torch.ones(1, 2), torch.zeros(1, 2), torch.ones(1, 2))
    assert not out.requires_grad
    # constant entropy -> no compensation; lam = pi (log pi + H) = 1 everywhere -> centred 0 -> x = 0 -> stab ~ 1
    torch.testing.assert_close(out, torch.tensor([[1.0, -2.0]]))
    empty = dynamo_modulation(adv, torch.ones(1, 2), torch.zeros(1, 2), torch.ones(1, 2),
                              response_mask=torch.zeros(1, 2))
    torch.testing.assert_close(empty, adv.detach())
    with pytest.raises(ValueError, match="ratio"):
        dynamo_modulation(adv, torch.ones(1, 2), torch.zeros(1, 2), torch.ones(1, 3))


def test_ppo_unclipped_mask():
    ratio = torch.tensor([1.0, 1.3, 0.75, 0.85, 1.0])
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, 0.0])
    assert ppo_unclipped_mask(ratio, adv).tolist() == [True, False, False, True, False]


# ----------------------------------------------------------------------------------------------- V0.5
def test_v05_hand_computed():
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]])
    b, lam = v05_baseline(r, torch.tensor([0.3, 0.2]), return_lambda=True)
    # row 0: rbar .25, SE^2 = .1875/4 = .046875 >= d^2 = .0025 -> keep the prior
    # row 1: rbar .75, d^2 = .3025 -> lam = .046875/.3025
    l1 = 0.046875 / 0.3025
    torch.testing.assert_close(lam, torch.tensor([1.0, l1]))
    torch.testing.assert_close(b, torch.tensor([0.3, l1 * 0.2 + (1 - l1) * 0.75]))
    adv = v05_advantages(r, torch.tensor([0.3, 0.2]))
    torch.testing.assert_close(adv, r - b[:, None])


def test_v05_degenerate_groups_and_g1():
    rewards = torch.tensor([[0.0] * 4, [1.0] * 4, [0.0] * 4, [1.0, 0, 0, 0]])
    b = v05_baseline(rewards, torch.tensor([0.3, 0.6, 0.0, 0.9]),
                     mask=torch.tensor([[1] * 4, [1] * 4, [1] * 4, [1, 0, 0, 0]]))
    # s2 = 0: the test rejects any prior that differs from the group mean
    torch.testing.assert_close(b, torch.tensor([0.0, 1.0, 0.0, 1.0]))
    # ragged groups: padding is ignored
    b2 = v05_baseline(torch.tensor([[1.0, 0.0, 5.0]]), torch.tensor([0.5]), mask=torch.tensor([[1, 1, 0]]))
    assert b2.item() == pytest.approx(0.5)


def test_v05_variance_options_and_validation():
    r = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    b, lam = v05_baseline(r, torch.tensor([0.5]), variance="prior", return_lambda=True)
    # s2 = .25, SE^2 = .0625 >= d^2 = .0625 -> prior kept
    assert lam.item() == 1.0 and b.item() == pytest.approx(0.5)
    b, lam = v05_baseline(r, torch.tensor([0.2]), variance="unbiased", return_lambda=True)
    assert lam.item() == pytest.approx((4 / 3 * 0.1875 / 4) / 0.3025, rel=1e-6)
    with pytest.raises(ValueError, match="at least one"):
        v05_baseline(r, torch.tensor([0.5]), mask=torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        v05_baseline(r * 2, torch.tensor([0.5]))
    with pytest.raises(ValueError, match="v0"):
        v05_baseline(r, torch.tensor([0.5, 0.5]))


def test_v05_expected_mse_hand_and_against_the_estimator():
    # n = 1, p = v0 = .5: k = 0 or 1 gives s2 = 0 -> b = rbar -> error .25 either way
    assert v05_expected_mse(0.5, 0.5, 1) == pytest.approx(0.25)
    assert v05_expected_mse(0.3, 0.7, 0) == pytest.approx(0.16)
    # enumeration == Monte Carlo of v05_baseline
    g = torch.Generator().manual_seed(0)
    p, v0, n = 0.35, 0.5, 4
    r = (torch.rand(200_000, n, generator=g) < p).float()
    mc = ((v05_baseline(r, torch.full((r.shape[0],), v0)).double() - p) ** 2).mean().item()
    assert mc == pytest.approx(float(v05_expected_mse(p, v0, n)), rel=0.02)


# ----------------------------------------------------------------------------------------------- Skill1
def test_skill1_hand_computed():
    out = skill1_credit(torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0, 0, 1]), torch.tensor([0.5, 0.2]))
    # skill 0: .5 -> .525 -> .49875 ; skill 1: .2 -> .24
    torch.testing.assert_close(out.utility, torch.tensor([0.49875, 0.24]))
    torch.testing.assert_close(out.selection, torch.tensor([0.49875, 0.49875, 0.24]))
    torch.testing.assert_close(out.u_hat, torch.tensor([0.5, 0.5, 0.2]))
    torch.testing.assert_close(out.distillation, torch.tensor([0.5, -0.5, 0.8]))


def test_skill1_candidates_and_no_skill():
    rewards, ids, u = torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0, 1, -1]), torch.tensor([0.5, 0.2])
    cands = [[0, 1], [1], [0, 1]]
    mx = skill1_credit(rewards, ids, u, candidates=cands)
    torch.testing.assert_close(mx.distillation, torch.tensor([0.5, -0.2, 0.5]))
    mean = skill1_credit(rewards, ids, u, candidates=cands, u_hat_aggregation="mean")
    torch.testing.assert_close(mean.distillation, torch.tensor([0.65, -0.2, 0.65]))
    assert mx.selection[2] == 0.0
    torch.testing.assert_close(mx.utility, torch.tensor([0.525, 0.19]))
    assert torch.equal(u, torch.tensor([0.5, 0.2]))                        # input not modified
    with pytest.raises(ValueError, match="skill_ids"):
        skill1_credit(rewards, torch.tensor([0, 2, 0]), u)
    with pytest.raises(ValueError, match="alpha"):
        skill1_credit(rewards, ids, u, alpha=0.0)


# ----------------------------------------------------------------------------------------------- registry
def test_registry():
    assert get_estimator("grpo") is grpo_advantages
    assert get_estimator("dynamo_modulation") is dynamo_modulation
    with pytest.raises(ValueError) as e:
        get_estimator("ppo_gae")
    for name in ESTIMATORS:
        assert name in str(e.value)


@pytest.mark.parametrize("module", [lckernels_rl.advantages.group, lckernels_rl.advantages.v05,
                                    lckernels_rl.advantages.skill1], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
