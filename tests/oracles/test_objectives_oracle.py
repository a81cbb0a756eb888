"""An independent oracle for the per-token path of the RL objectives (``lckernels_rl.objectives``).

Each objective's loss is restated in plain float64 torch from the formula in *its module docstring* (the paper's
equation plus the module's "Mapping" line for the aggregation), with the *documented* default parameters written
here as literals (never read from the objective), and compared with ``get_objective(name, **params)(log_prob,
old_log_prob, advantages, response_mask, ...)`` on the loss and on d loss / d log_prob, off-policy and on-policy
(``old_log_prob=None``: "on-policy (ratio 1 with its gradient)", objectives/base.py).  The shared options of
:class:`lckernels_rl.objectives.PolicyObjective` (``kl`` / ``kl_beta``, ``kl_ratio_weighted``, ``entropy_coef``,
``token_weight``) follow the attribute docs of that class.

Nothing here imports lckernels.ops.policy_loss; the objectives are reached through ``get_objective`` only.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import pytest
import torch

from lckernels_rl.objectives import get_objective
from tests.oracles.plain import cexp, centered_noise, maspo_gate, mean_over, seq_token_means, token_mean

B, T = 4, 6
SEEDS = (0, 1, 2)
NAN = float("nan")

# mean_t log(pi / pi_old) per sequence; 3.5e-4 puts sequence 2 inside GSPO's default band (1 - 3e-4, 1 + 4e-4)
SHIFT = torch.tensor([0.3, -0.3, 3.5e-4, 0.2], dtype=torch.float64)
LOG_W_SEQ = torch.tensor([[1.2, -1.0, -0.3, 0.5], [0.9, -0.5, -0.1, 0.4], [-0.2, 1.5, -1.4, -0.6]],
                         dtype=torch.float64)                           # sum_t log(pi_old / mu) per sequence
SEQ_ADV = torch.tensor([1.0, -0.8, 0.6, -1.2], dtype=torch.float64)


@dataclasses.dataclass
class X:
    """One batch of per-token inputs (float64 for the oracle; the objective gets float32 copies)."""

    lp: torch.Tensor
    old: Optional[torch.Tensor]
    adv: torch.Tensor
    mask: torch.Tensor
    rollout: torch.Tensor
    ref: torch.Tensor
    entropy: torch.Tensor
    token_weight: torch.Tensor

    @property
    def valid(self):
        return self.mask != 0

    @property
    def A(self):
        return self.adv[:, None].expand(B, T) if self.adv.dim() == 1 else self.adv


def make(seed: int, on_policy: bool, seq_adv: Optional[bool] = None) -> X:
    seq_adv = bool(seed % 2) if seq_adv is None else seq_adv
    g = torch.Generator().manual_seed(100 + seed)
    lp = -(torch.rand(B, T, generator=g, dtype=torch.float64) * 2.5 + 0.05)
    mask = torch.ones(B, T, dtype=torch.float64)
    mask[0, 4:] = 0
    mask[1, :3] = 0
    if seed % 2 == 0:
        mask[3] = 0            # a sequence without valid tokens (G vs B in the aggregations)
    else:
        mask[3, :1] = 0
    valid = mask != 0
    n_i = valid.sum(1, keepdim=True).clamp_min(1)
    old = lp - (SHIFT[:, None] + centered_noise(g, (B, T), valid, 0.5))
    old[0, 1] = lp[0, 1] - 2.0  # one ratio e^2 = 7.4: beyond CISPO's default cap 1 + 4
    behaviour = lp if on_policy else old
    rollout = behaviour - (LOG_W_SEQ[seed % 3][:, None] / n_i + centered_noise(g, (B, T), valid, 0.5))
    ref = lp + 0.4 * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = (SEQ_ADV * (0.5 + torch.rand(B, generator=g, dtype=torch.float64)) if seq_adv
           else torch.randn(B, T, generator=g, dtype=torch.float64))
    entropy = torch.rand(B, T, generator=g, dtype=torch.float64) * 2
    token_weight = torch.rand(B, T, generator=g, dtype=torch.float64) * 2
    token_weight[2, 3] = 0.0
    old[1, 0] = NAN            # outside the mask: never looked at
    return X(lp, None if on_policy else old, adv, mask, rollout, ref, entropy, token_weight)


# ================================================================================================ shared pieces

def zf(x, valid):
    return torch.where(valid, x, torch.zeros((), dtype=x.dtype))


def ratio(x: X, lp):
    """r_it = pi_theta / pi_theta_old; old_log_prob=None: ratio 1 with its gradient (objectives/base.py)."""
    old = lp.detach() if x.old is None else zf(x.old, x.valid)
    return cexp(lp - old)


def clipped_surrogate(r, A, eps_low, eps_high):
    """min(r A, clip(r, 1 - eps_low, 1 + eps_high) A) (the PPO surrogate of GRPO / DAPO / Dr. GRPO)."""
    return torch.minimum(r * A, r.clamp(1 - eps_low, 1 + eps_high) * A)


def per_seq_mean_of_token_means(v, valid):   # 1/G sum_i 1/|o_i| sum_t
    means, has = seq_token_means(v, valid)
    return mean_over(means, has)


def tokens_over_all(v, valid):               # 1/sum_i |o_i| sum_i sum_t
    return token_mean(v, valid)


def k3(lp, ref):
    """GRPO eq. (4): pi_ref/pi_theta - log(pi_ref/pi_theta) - 1."""
    d = (ref - lp).clamp(-20, 20)
    return torch.exp(d) - d - 1


# ================================================================================================ the objectives
# Each returns the *loss* (= -J) for lp (float64, differentiable) and the batch x; ``tw`` is token_weight (None = 1).

def loss_grpo(x, lp, eps_low=0.2, eps_high=0.2, kl_beta=0.0, tw=None, kl_ratio_weighted=False):
    """grpo.py: J = E[1/G sum_i 1/|o_i| sum_t {min(r A, clip(r, 1 - eps, 1 + eps) A) - beta D_KL}], D_KL the k3
    estimator; "eps = 0.2 on both sides; beta = 0 by default"."""
    valid, A = x.valid, zf(x.A, x.valid)
    r = ratio(x, lp)
    surr = clipped_surrogate(r, A, eps_low, eps_high) * (1 if tw is None else tw)
    kl = k3(lp, zf(x.ref, valid)) if kl_beta else 0.0
    if kl_ratio_weighted:     # base.py: "multiply each token's KL by the importance ratio r (differentiable)"
        kl = kl * r
    return -per_seq_mean_of_token_means(surr - kl_beta * kl, valid)


def loss_dapo(x, lp, eps_low=0.2, eps_high=0.28, tw=None):
    """dapo.py eq. (8): J = E[1/sum_i |o_i| sum_i sum_t min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)],
    eps_low = 0.2, eps_high = 0.28, no KL term."""
    valid, A = x.valid, zf(x.A, x.valid)
    surr = clipped_surrogate(ratio(x, lp), A, eps_low, eps_high) * (1 if tw is None else tw)
    return -tokens_over_all(surr, valid)


def loss_dr_grpo(x, lp, eps=0.2, loss_norm_constant=None):
    """dr_grpo.py: J = E[1/G sum_i sum_t min(r A, clip(r, 1 - eps, 1 + eps) A)] implemented as "sum over all valid
    tokens / (B * loss_norm_constant); loss_norm_constant=None means T, the padded length".  (The docstring gives no
    eps value: 0.2 is the class default.)"""
    valid, A = x.valid, zf(x.A, x.valid)
    surr = clipped_surrogate(ratio(x, lp), A, eps, eps)
    c = T if loss_norm_constant is None else loss_norm_constant
    return -(surr * valid).sum() / (B * c)


def gspo_seq_ratio(x, lp):
    """s_i = (pi_theta(y_i|x) / pi_theta_old(y_i|x))^(1/|y_i|) = exp(1/|y_i| sum_t log r_it) (differentiable)."""
    old = lp.detach() if x.old is None else zf(x.old, x.valid)
    mean_log_r, has = seq_token_means(lp - old, x.valid)
    return cexp(mean_log_r), has


def loss_gspo(x, lp, eps_low=3e-4, eps_high=4e-4, kl_beta=0.0, kl_ratio_weighted=False, tw=None):
    """gspo.py eqs. (5)-(7): J = E[1/G sum_i min(s_i A_i, clip(s_i, 1 - eps_low, 1 + eps_high) A_i)] for a
    per-sequence advantage; for per-token advantages the GSPO-token variant s_it = sg[s_i] pi(y_it) / sg[pi(y_it)]
    in 1/G sum_i 1/|y_i| sum_t min(s_it A_it, clip(s_it) A_it).  eps_low = 3e-4, eps_high = 4e-4 (the paper's)."""
    valid = x.valid
    s, has = gspo_seq_ratio(x, lp)
    if x.adv.dim() == 1 and tw is None:
        J = mean_over(torch.minimum(s * x.adv, s.clamp(1 - eps_low, 1 + eps_high) * x.adv), has)
    else:
        A = zf(x.A, valid)
        s_t = s.detach()[:, None] * torch.exp(lp - lp.detach())
        surr = torch.minimum(s_t * A, s_t.clamp(1 - eps_low, 1 + eps_high) * A) * (1 if tw is None else tw)
        J = per_seq_mean_of_token_means(surr, valid)
    loss = -J
    if kl_beta:
        kl = k3(lp, zf(x.ref, valid))
        if kl_ratio_weighted:  # base.py: "for GSPO the sequence ratio" (differentiable)
            kl = kl * s[:, None]
        loss = loss + kl_beta * per_seq_mean_of_token_means(kl, valid)
    return loss


def loss_cispo(x, lp, eps_low=1.0, eps_high=4.0, tw=None):
    """cispo.py eqs. (4)-(5): J = E[1/sum_i |o_i| sum_i sum_t sg(r_hat) A log pi], r_hat = clip(r, 1 - eps_low,
    1 + eps_high); defaults eps_low = 1.0 (no lower bound), eps_high = 4.0."""
    valid, A = x.valid, zf(x.A, x.valid)
    r_hat = ratio(x, lp).detach().clamp(1 - eps_low, 1 + eps_high)
    return -tokens_over_all(r_hat * A * lp * (1 if tw is None else tw), valid)


def loss_sapo(x, lp, tau_pos=1.0, tau_neg=1.05, tw=None):
    """sapo.py: J = E[1/G sum_i 1/|o_i| sum_t f(r) A], f(r) = sigma(tau (r - 1)) 4 / tau, tau = tau_pos if A > 0 else
    tau_neg; defaults 1.0 / 1.05."""
    valid, A = x.valid, zf(x.A, x.valid)
    r = ratio(x, lp)
    tau = torch.where(A > 0, torch.tensor(tau_pos, dtype=torch.float64), torch.tensor(tau_neg, dtype=torch.float64))
    f = torch.sigmoid(tau * (r - 1)) * 4 / tau
    return -per_seq_mean_of_token_means(f * A * (1 if tw is None else tw), valid)


def loss_maspo(x, lp, sigma_base=1.0, alpha=0.3, beta_pos=0.03, beta_neg=0.03, sigma_high=10.0, a_low=0.1,
               a_high=10.0, tw=None):
    """maspo.py: L_it = -A sg(w_it) r_it with the mass-adaptive Gaussian gate (defaults sigma_base 1, alpha 0.3,
    beta+- 0.03, sigma_high 10, a in [0.1, 10]); aggregation "token-mean"."""
    valid, A = x.valid, zf(x.A, x.valid)
    r = ratio(x, lp)
    old = lp.detach() if x.old is None else zf(x.old, valid)
    w = maspo_gate(r, old, A, sigma_base=sigma_base, alpha=alpha, beta_pos=beta_pos, beta_neg=beta_neg,
                   sigma_high=sigma_high, a_low=a_low, a_high=a_high)
    return tokens_over_all(-A * w * r * (1 if tw is None else tw), valid)


def loss_lcft_tis(x, lp, eps_neg_low=0.2, eps_pos_high=0.28, eps_neg_high=3.0, tis_cap=2.0, t_max=None):
    """lcft_tis.py eq. (4): J = E[1/(G T_max) sum_i sum_t min(r(mu), C) max(min(r A, clip(r, 1 - eps_neglow,
    1 + eps_poshigh) A), eps_neghigh A)], the outer max only where A < 0 ("Inferred"), r(mu) = pi_train / pi_infer =
    old_log_prob vs rollout_log_prob, detached; defaults 0.2 / 0.28 / 3.0 / C = 2.0, t_max None = T."""
    valid, A = x.valid, zf(x.A, x.valid)
    r = ratio(x, lp)
    psi = clipped_surrogate(r, A, eps_neg_low, eps_pos_high)
    psi = torch.where(A < 0, torch.maximum(psi, eps_neg_high * A), psi)
    pi_train = lp.detach() if x.old is None else zf(x.old, valid)
    r_mu = cexp(pi_train - zf(x.rollout, valid))
    tm = T if t_max is None else t_max
    return -(r_mu.clamp(max=tis_cap) * psi * valid).sum() / (B * tm)


def loss_hispo(x, lp, delta_seq=0.1, delta_tok=1.0, eps_neg_low=0.2, eps_pos_high=0.28, eps_neg_high=3.0,
               max_response_len=None, token_mean=False):
    """hispo.py: r_dis_t = pi_old_train / mu_infer; H_t = 1[|exp(mean_t log r_dis) - 1| < delta_seq] *
    1[|r_dis_t - 1| < delta_tok]; L_t = -H_t min(r A, clip(r, 1 - eps_neg_low, 1 + eps_pos_high) A), capped at
    -eps_neg_high A for A < 0; "1/(G max|y|)": sum / (B * max_response_len), None = T (token_mean: the old
    "token-mean"); defaults 0.1 / 1.0 / 0.2 / 0.28 / 3.0."""
    valid, A = x.valid, zf(x.A, x.valid)
    r = ratio(x, lp)
    pi_old = lp.detach() if x.old is None else zf(x.old, valid)
    log_dis = zf(pi_old - zf(x.rollout, valid), valid)
    mean_log_dis, _ = seq_token_means(log_dis, valid)
    H = ((torch.exp(mean_log_dis) - 1).abs() < delta_seq)[:, None] & ((torch.exp(log_dis) - 1).abs() < delta_tok)
    J = clipped_surrogate(r, A, eps_neg_low, eps_pos_high)
    J = torch.where(A < 0, torch.maximum(J, eps_neg_high * A), J)
    if token_mean:
        return tokens_over_all(-H.double() * J, valid)
    return -(H.double() * J * valid).sum() / (B * (T if max_response_len is None else max_response_len))


ORACLES = {"grpo": loss_grpo, "dapo": loss_dapo, "dr_grpo": loss_dr_grpo, "gspo": loss_gspo, "cispo": loss_cispo,
           "sapo": loss_sapo, "maspo": loss_maspo, "lcft_tis": loss_lcft_tis, "hispo": loss_hispo}

# (objective name, get_objective params, oracle params, options)
#   options: "ref" (pass ref_log_prob), "entropy", "token_weight", "rollout", "seq_adv" / "token_adv"
CASES = {
    "grpo": ("grpo", {}, {}, ()),
    "grpo+paper_kl": ("grpo", dict(kl_beta=0.04), dict(kl_beta=0.04), ("ref",)),
    "grpo+eps+token_weight": ("grpo", dict(eps_low=0.1, eps_high=0.3), dict(eps_low=0.1, eps_high=0.3),
                              ("token_weight",)),
    "grpo+ratio_weighted_kl": ("grpo", dict(kl_beta=0.1, kl_ratio_weighted=True),
                               dict(kl_beta=0.1, kl_ratio_weighted=True), ("ref",)),
    "dapo": ("dapo", {}, {}, ()),
    "dapo+token_weight": ("dapo", {}, {}, ("token_weight",)),
    "dapo+entropy+k1": ("dapo", dict(entropy_coef=0.01, kl="k1", kl_beta=0.05), {}, ("entropy", "ref", "k1")),
    "dr_grpo": ("dr_grpo", {}, {}, ()),
    "dr_grpo+constant": ("dr_grpo", dict(loss_norm_constant=9.0), dict(loss_norm_constant=9.0), ()),
    "gspo": ("gspo", {}, {}, ("seq_adv",)),
    "gspo+eps": ("gspo", dict(eps_low=0.05, eps_high=0.08), dict(eps_low=0.05, eps_high=0.08), ("seq_adv",)),
    "gspo_token": ("gspo", dict(eps_low=0.05, eps_high=0.08), dict(eps_low=0.05, eps_high=0.08), ("token_adv",)),
    "gspo+ratio_weighted_kl": ("gspo", dict(eps_low=0.05, eps_high=0.08, kl_beta=0.1, kl_ratio_weighted=True),
                               dict(eps_low=0.05, eps_high=0.08, kl_beta=0.1, kl_ratio_weighted=True),
                               ("seq_adv", "ref")),
    "cispo": ("cispo", {}, {}, ()),
    "cispo+eps": ("cispo", dict(eps_low=0.2, eps_high=0.1), dict(eps_low=0.2, eps_high=0.1), ()),
    "cispo+token_weight": ("cispo", dict(eps_low=0.2, eps_high=0.1), dict(eps_low=0.2, eps_high=0.1),
                           ("token_weight",)),
    "sapo": ("sapo", {}, {}, ()),
    "sapo+taus": ("sapo", dict(tau_pos=0.5, tau_neg=2.0), dict(tau_pos=0.5, tau_neg=2.0), ()),
    "sapo+token_weight": ("sapo", {}, {}, ("token_weight",)),
    "maspo": ("maspo", {}, {}, ()),
    "maspo+params": ("maspo", dict(sigma_base=0.3, sigma_high=0.6, alpha=1.0, beta_pos=2.0, beta_neg=1.5, a_low=0.5,
                                   a_high=1.5),
                     dict(sigma_base=0.3, sigma_high=0.6, alpha=1.0, beta_pos=2.0, beta_neg=1.5, a_low=0.5,
                          a_high=1.5), ()),
    "maspo+token_weight": ("maspo", dict(beta_pos=0.5, beta_neg=0.1), dict(beta_pos=0.5, beta_neg=0.1),
                           ("token_weight",)),
    "lcft_tis": ("lcft_tis", {}, {}, ("rollout",)),
    "lcft_tis+params": ("lcft_tis", dict(tis_cap=1.3, t_max=9.0, eps_neg_high=1.5, eps_neg_low=0.1, eps_pos_high=0.2),
                        dict(tis_cap=1.3, t_max=9.0, eps_neg_high=1.5, eps_neg_low=0.1, eps_pos_high=0.2),
                        ("rollout",)),
    "hispo": ("hispo", {}, {}, ("rollout",)),
    "hispo+params": ("hispo", dict(delta_seq=0.2, delta_tok=0.5, eps_neg_low=0.1, eps_pos_high=0.15, eps_neg_high=1.3),
                     dict(delta_seq=0.2, delta_tok=0.5, eps_neg_low=0.1, eps_pos_high=0.15, eps_neg_high=1.3),
                     ("rollout",)),
    "hispo+max_len": ("hispo", dict(max_response_len=11), dict(max_response_len=11), ("rollout",)),
    "hispo+token_mean": ("hispo", dict(loss_agg="token-mean"), dict(token_mean=True), ("rollout",)),
}


def oracle_loss(case, x: X):
    name, _, oparams, opts = CASES[case]
    lp = x.lp.clone().requires_grad_(True)
    kw = dict(oparams)
    if "token_weight" in opts:
        kw["tw"] = x.token_weight
    if "k1" in opts:    # dapo + the shared options (base.py): "kl ... added to the loss with kl_beta" in the same
        # aggregation; "entropy_coef: subtracts entropy_coef x aggregated entropy"; dapo aggregates by token-mean
        loss = ORACLES[name](x, lp, **kw)
        loss = loss + 0.05 * tokens_over_all(lp - zf(x.ref, x.valid), x.valid)   # k1 = log pi - log pi_ref
        loss = loss - 0.01 * tokens_over_all(x.entropy, x.valid)
    else:
        loss = ORACLES[name](x, lp, **kw)
    loss.backward()
    return loss.detach(), lp.grad


def objective_loss(case, x: X):
    name, params, _, opts = CASES[case]
    obj = get_objective(name, **params)
    lp = x.lp.float().clone().requires_grad_(True)
    f = lambda t: None if t is None else t.float()  # noqa: E731
    kw = {}
    if "ref" in opts:
        kw["ref_log_prob"] = f(x.ref)
    if "rollout" in opts:
        kw["rollout_log_prob"] = f(x.rollout)
    if "entropy" in opts:
        kw["entropy"] = f(x.entropy)
    if "token_weight" in opts:
        kw["token_weight"] = f(x.token_weight)
    loss, metrics = obj(lp, f(x.old), f(x.adv), f(x.mask), **kw)
    loss.backward()
    assert metrics["loss"] == pytest.approx(loss.item(), rel=1e-6, abs=1e-7)
    return loss.detach(), lp.grad


def _x(case, seed, on_policy):
    opts = CASES[case][3]
    seq_adv = True if "seq_adv" in opts else False if "token_adv" in opts else None
    return make(seed, on_policy, seq_adv)


@pytest.mark.parametrize("policy", ["off-policy", "on-policy"])
@pytest.mark.parametrize("case", list(CASES))
def test_objective_matches_paper_formula(case, policy):
    for seed in SEEDS:
        x = _x(case, seed, policy == "on-policy")
        want_loss, want_grad = oracle_loss(case, x)
        got_loss, got_grad = objective_loss(case, x)
        assert got_loss.item() == pytest.approx(want_loss.item(), rel=1e-5, abs=1e-6), (case, seed)
        err = (got_grad.double() - want_grad).abs().max().item()
        assert err <= 1e-7 + 2e-5 * want_grad.abs().max().item(), (case, seed, err, got_grad, want_grad)


def test_inputs_exercise_the_clip_branches():
    """The shared inputs reach both clip sides, CISPO's default cap, the LCFT/HisPO branches and a GSPO sequence
    inside its 3e-4 / 4e-4 band (else agreeing with the oracle proves little)."""
    lo = hi = cispo_cap = dual = tis = gspo_in = gspo_out = hispo_keep = hispo_drop = 0
    for seed in SEEDS:
        x = make(seed, on_policy=False)
        v, A = x.valid, zf(x.A, x.valid)
        r = ratio(x, x.lp)
        lo += int((v & (r < 0.8) & (A < 0)).sum())
        hi += int((v & (r > 1.28) & (A > 0)).sum())
        cispo_cap += int((v & (r > 5)).sum())
        dual += int((v & (A < 0) & (r > 3)).sum())
        tis += int((v & (cexp(zf(x.old, v) - zf(x.rollout, v)) > 2)).sum())
        s, has = gspo_seq_ratio(make(seed, False, True), x.lp)
        gspo_in += int((has & (s - 1 > 3e-4) & (s - 1 < 4e-4)).sum())  # only eps_high=4e-4 keeps it
        gspo_out += int((has & ((s - 1).abs() > 4e-4)).sum())
        log_dis = zf(zf(x.old, v) - zf(x.rollout, v), v)
        m, _ = seq_token_means(log_dis, v)
        ok = (torch.exp(m) - 1).abs() < 0.1
        hispo_keep += int((has & ok).sum())
        hispo_drop += int((has & ~ok).sum())
    assert lo and hi and cispo_cap and dual and tis and gspo_in and gspo_out and hispo_keep and hispo_drop, \
        (lo, hi, cispo_cap, dual, tis, gspo_in, gspo_out, hispo_keep, hispo_drop)


# ================================================================================================ hand-computed

def test_hand_gspo_sequence_form_equals_token_form():
    """gspo.py: "for a per-sequence advantage this is exactly 1/G sum_i of the sequence objective".  One sequence of
    3 tokens with log-ratios (0.02, -0.01, 0.02): s = e^0.01 = 1.0100502 (inside eps 0.05); A = 2: loss -2 s =
    -2.0201003; d loss / d lp_t = -2 s / 3 = -0.6733668 on each token."""
    lp = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    old = lp.detach() - torch.tensor([[0.02, -0.01, 0.02]])
    loss, _ = get_objective("gspo", eps_low=0.05, eps_high=0.05)(lp, old, torch.tensor([2.0]), None)
    loss.backward()
    assert loss.item() == pytest.approx(-2.0201003, rel=1e-6)
    torch.testing.assert_close(lp.grad, torch.full((1, 3), -0.6733668), rtol=1e-5, atol=1e-7)


def test_hand_cispo_default_cap_is_five():
    """cispo.py: "our default eps_high=4.0 (weights capped at 5 ...)": r = e^2 = 7.39 -> 5; A = 1, lp = -1:
    loss -5 * 1 * (-1) = 5, d loss / d lp = -5."""
    lp = torch.tensor([[-1.0]], requires_grad=True)
    loss, _ = get_objective("cispo")(lp, torch.tensor([[-3.0]]), torch.tensor([1.0]), None)
    loss.backward()
    assert loss.item() == pytest.approx(5.0) and lp.grad.item() == pytest.approx(-5.0)


def test_hand_sapo_negative_temperature():
    """sapo.py: tau = tau_neg = 1.05 for A < 0.  r = e^0.5 = 1.6487213, A = -1: f = sigmoid(1.05 * 0.6487213) * 4 / 1.05
    = sigmoid(0.6811574) * 3.8095238 = 0.6639970 * 3.8095238 = 2.5295122; loss -f A = 2.5295122;
    d loss / d lp = -A f'(r) r = 4 sig (1 - sig) r = 4 * 0.6639970 * 0.3360030 * 1.6487213 = 1.4713518."""
    lp = torch.tensor([[-1.0]], requires_grad=True)
    loss, _ = get_objective("sapo")(lp, torch.tensor([[-1.5]]), torch.tensor([-1.0]), None)
    loss.backward()
    assert loss.item() == pytest.approx(2.5295122, rel=1e-5)
    assert lp.grad.item() == pytest.approx(1.4713518, rel=1e-5)
