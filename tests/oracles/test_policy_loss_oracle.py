"""An independent oracle for :func:`lckernels.fused_policy_loss`.

``lckernels/ops/policy_loss/reference.py`` (the op's "reference" backend) runs the very helpers of ``math.py`` that
the CPU and Triton paths run, so comparing backends never checks the formulas themselves.  This file restates every
formula from the *public docstrings* -- :class:`lckernels.PolicyLossConfig`, :func:`lckernels.fused_policy_loss`,
:class:`lckernels.PolicyLossOutput`, :func:`lckernels.fused_logprobs` and the MASPO gate's module docstring -- in
plain float64 torch, from the explicit logits ``hidden @ weight.T / temperature``, and compares loss, returned
log-probs, d loss / d hidden, d loss / d weight (autograd through the oracle vs the op's own backward) and every
returned statistic, for every option of ``PolicyLossConfig``, on ``backend="reference"`` and ``backend="cpu"``.
Hand-computed cases (numbers derived in the comments) pin the KL estimators, the entropy bonus, the four rollout
corrections, ``rc_threshold_low``, ``loss_norm_constant``, the aggregations, the +-20 log-ratio clamp, the per-token
``pg_weight`` input and the ratio-weighted KL (``kl_ratio_weighted``, token and GSPO sequence ratio), and the public
building blocks ``lckernels.loss_agg_weights`` / ``log_ratio`` / ``kl_estimate``.

Nothing from ``lckernels.ops.policy_loss`` is imported: only the public ``lckernels`` API (and ``lckernels._ext`` to
detect the C extension, as tests/ops/test_policy_loss.py does).

Where the public docs are silent the oracle follows the code's behaviour and says so ("[code]"):

* the diagnostics' exact definitions (clip_frac_* count tokens whose clip bound is active, i.e. ratio below the
  lower bound with A < 0 / above the upper bound with A > 0 for the clip family, ratio outside the band for cispo;
  gate_mean is d f / d r = 4 sigma (1 - sigma) for sapo and w for maspo; ratio_mean is the sequence ratio for gspo);
* tokens "dropped" by ``token_mask`` / ``sequence_mask`` / HisPO leave only the policy-gradient term: they still
  count in the aggregation's denominators and in the KL / entropy terms (``masked_frac`` counts them);
* with ``old_logprobs=None`` the rollout-correction weights use the current (detached) log-probs as pi_old.

``pg_weight`` follows the ``fused_policy_loss`` docstring ("token t contributes pg_weight_t * pg_t with the
aggregation weights unchanged", "on top of config.rollout_correction", NaN/inf "follow config.nonfinite"); the
ratio-weighted KL follows the ``kl`` paragraph of the ``PolicyLossConfig`` docstring (differentiable r, the sequence
ratio for gspo: here by plain autograd over the whole float64 batch).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import pytest
import torch

import lckernels
from lckernels import PolicyLossConfig, _ext
from tests.oracles.plain import cexp, centered_noise, maspo_gate, mean_over, seq_token_means, token_mean, zero_fill

HAS_EXT = _ext.available()
CPU = pytest.param("cpu", marks=pytest.mark.skipif(not HAS_EXT, reason="lckernels._C is not built (make build)"))
BACKENDS = ["reference", CPU]

B, T, D, V = 4, 6, 8, 16
SEEDS = (0, 1, 2)  # odd seeds use per-sequence advantages [B], even ones per-token [B, T]
NAN = float("nan")


# ================================================================================================ the oracle

def aggregate(x: torch.Tensor, valid: torch.Tensor, cfg) -> torch.Tensor:
    """PolicyLossConfig docstring, ``loss_agg`` paragraph ("masked tokens never count")."""
    if cfg.loss_agg == "token-mean":
        # "sum over tokens / number of valid tokens"
        return token_mean(x, valid)
    if cfg.loss_agg == "seq-mean-token-sum":
        # "mean over sequences with a valid token of the per-sequence token sum"
        return mean_over((x * valid).sum(1), valid.any(1))
    if cfg.loss_agg == "seq-mean-token-mean":
        # "mean over such sequences of per-sequence token means"
        means, has = seq_token_means(x, valid)
        return mean_over(means, has)
    assert cfg.loss_agg == "seq-mean-token-sum-norm"
    # "(Dr. GRPO: sum over all tokens / (B * loss_norm_constant), a constant denominator; loss_norm_constant=None
    # means T, the padded length)"
    b, t = valid.shape
    c = cfg.loss_norm_constant if cfg.loss_norm_constant is not None else t
    return (x * valid).sum() / (b * c)


@dataclasses.dataclass
class OracleOut:
    loss: torch.Tensor
    logprobs: torch.Tensor        # [B, T] float64
    grad_hidden: torch.Tensor
    grad_weight: torch.Tensor
    stats: dict
    branches: dict                # how many tokens / sequences took each branch (for the coverage test)


def oracle(hidden, weight, targets, advantages, old=None, *, mask=None, rollout=None, ref=None, pg_weight=None,
           cfg) -> OracleOut:
    b, t, _ = hidden.shape
    hid = hidden.detach().double().requires_grad_(True)
    wt = weight.detach().double().requires_grad_(True)

    # fused_logprobs docstring: "logits are hidden @ weight.T / temperature"; the log-prob of the target under
    # softmax(logits); entropy "-sum_v p log p".  PolicyLossConfig.temperature is that temperature.
    logits = hid @ wt.t() / cfg.temperature
    logp = torch.log_softmax(logits, -1)
    # fused_policy_loss docstring: "config.ignore_index (default -100) masks a position"; "mask: nonzero = in the loss"
    in_loss = targets != cfg.ignore_index
    if mask is not None:
        in_loss = in_loss & (mask != 0)
    safe_y = torch.where(targets != cfg.ignore_index, targets, torch.zeros_like(targets)).long()
    lp_all = logp.gather(-1, safe_y[..., None]).squeeze(-1)
    ent_all = -(logp.exp() * logp).sum(-1)

    # advantages: "[B] (one per sequence) or [B, T] (per token)"
    adv = advantages.double()
    if adv.dim() == 1:
        adv = adv[:, None].expand(b, t)
    # PolicyLossConfig docstring, ``nonfinite``: NaN/inf in old/rollout/ref/advantages "on valid tokens": "error" or
    # "mask" (drop those tokens, counted in stats["nonfinite_frac"])
    bad = torch.zeros(b, t, dtype=torch.bool)
    for x in (adv, old, rollout, ref, pg_weight):   # pg_weight: "NaN/inf on valid tokens follow config.nonfinite"
        if x is not None:
            bad |= in_loss & ~torch.isfinite(x)
    n_bad = int(bad.sum())
    assert n_bad == 0 or cfg.nonfinite == "mask", "the op must raise here (tested separately)"
    valid = in_loss & ~bad
    adv, old, rollout, ref, pg_weight = (zero_fill(x, valid) for x in (adv, old, rollout, ref, pg_weight))
    lp = torch.where(valid, lp_all, torch.zeros((), dtype=torch.float64))
    ent = torch.where(valid, ent_all, torch.zeros((), dtype=torch.float64))
    n_valid = int(valid.sum())

    # fused_policy_loss docstring: "old_logprobs ... None = on-policy (ratio 1, gradient kept)"
    pi_old = lp.detach() if old is None else old

    # ------------------------------------------------------------------ importance ratio
    if cfg.mode == "gspo":
        # "sequence-level ratio s = exp(mean_t(log pi - log pi_old)) ...; per-token form s_t = sg(s) * pi_t / sg(pi_t)"
        mean_log_r, _ = seq_token_means((lp - pi_old).detach(), valid)
        r = cexp(mean_log_r)[:, None] * torch.exp(lp - lp.detach())
    else:
        # "r = exp(clamp(log pi - log pi_old, +-20))"
        r = cexp(lp - pi_old)
    rd = r.detach()

    # ------------------------------------------------------------------ rollout correction / HisPO masks
    factor = torch.ones(b, t, dtype=torch.float64)     # multiplies the policy-gradient term
    keep = valid.clone()                                 # tokens whose policy-gradient term survives
    br = {}
    rc = cfg.rollout_correction
    if rc is not None or cfg.mode == "hispo":
        # "weights w = pi_old / mu from old_logprobs and rollout_logprobs, log-ratios clamped to +-20"
        log_w = (pi_old - rollout).clamp(-20, 20) * valid
        w_tok = torch.exp(log_w)
        high = cfg.rc_threshold
        # "rc_threshold_low=None means 1 / rc_threshold"
        low = cfg.rc_threshold_low if cfg.rc_threshold_low is not None else 1.0 / high
        w_seq = cexp(log_w.sum(1))[:, None].expand(b, t)  # "prod_t w_t" over the sequence's valid tokens
        has = valid.any(1)
        if rc == "token_truncate":      # "multiplies each token's term by min(w_t, rc_threshold) (TIS)"
            factor = w_tok.clamp(max=high)
            br["truncated"] = int((valid & (w_tok > high)).sum())
            br["untouched"] = int((valid & (w_tok <= high)).sum())
        elif rc == "token_mask":        # "drops tokens with w_t outside [rc_threshold_low, rc_threshold]"
            keep = keep & (w_tok >= low) & (w_tok <= high)
            br["dropped_low"] = int((valid & (w_tok < low)).sum())
            br["dropped_high"] = int((valid & (w_tok > high)).sum())
            br["kept"] = int((valid & keep).sum())
            br["between_1/high_and_low"] = int((valid & ((w_tok - low) * (w_tok - 1 / high) < 0)).sum())
        elif rc == "sequence_truncate":  # "multiplies by min(prod_t w_t, rc_threshold)"
            factor = w_seq.clamp(max=high)
            br["truncated"] = int((has & (w_seq[:, 0] > high)).sum())
            br["untouched"] = int((has & (w_seq[:, 0] <= high)).sum())
        elif rc == "sequence_mask":     # "drops sequences whose prod_t w_t is outside [rc_threshold_low, rc_threshold]"
            keep = keep & (w_seq >= low) & (w_seq <= high)
            ws = w_seq[:, 0]
            br["dropped_low"] = int((has & (ws < low)).sum())
            br["dropped_high"] = int((has & (ws > high)).sum())
            br["kept"] = int((has & (ws >= low) & (ws <= high)).sum())
            br["between_1/high_and_low"] = int((has & ((ws - low) * (ws - 1 / high) < 0)).sum())
        if cfg.mode == "hispo":
            # "tokens kept by the hierarchical mask H = 1[|exp(mean_t log r_dis) - 1| < hispo_delta_seq] *
            # 1[|r_dis_t - 1| < hispo_delta_tok], r_dis = pi_old_train / mu_infer"
            mean_log_dis, _ = seq_token_means(log_w, valid)
            seq_ok = (torch.exp(mean_log_dis) - 1).abs() < cfg.hispo_delta_seq
            tok_ok = (w_tok - 1).abs() < cfg.hispo_delta_tok
            keep = keep & seq_ok[:, None] & tok_ok
            br["hispo_seq_dropped"] = int((has & ~seq_ok).sum())
            br["hispo_seq_kept"] = int((has & seq_ok).sum())
            br["hispo_tok_dropped_in_kept_seq"] = int((valid & seq_ok[:, None] & ~tok_ok).sum())

    # ------------------------------------------------------------------ policy-gradient term (the loss, i.e. -J)
    A = adv
    one = torch.ones_like(rd)
    mode = cfg.mode
    if mode in ("clip", "dual_clip", "gspo", "hispo"):
        if mode == "hispo":   # "triplet clip min(r A, clip(r, 1 - eps_neg_low, 1 + eps_pos_high) A)"
            lo, hi = 1 - cfg.hispo_eps_neg_low, 1 + cfg.hispo_eps_pos_high
        else:                 # "max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))" = -min(r A, clip(r) A)
            lo, hi = 1 - cfg.eps_low, 1 + cfg.eps_high
        objective = torch.minimum(r * A, r.clamp(lo, hi) * A)
        if mode in ("dual_clip", "hispo"):
            # dual_clip: "for A < 0 capped at -A * clip_c"; hispo: "for A < 0 at most -A * eps_neg_high in the loss"
            c = cfg.clip_c if mode == "dual_clip" else cfg.hispo_eps_neg_high
            capped = (A < 0) & (objective < c * A)
            objective = torch.where(A < 0, torch.maximum(objective, c * A), objective)
            br["dual_capped"] = int((valid & capped).sum())
        pg = -objective
        clip_low, clip_high, gate = (rd < lo) & (A < 0), (rd > hi) & (A > 0), one   # [code] definitions
        br["clip_low"], br["clip_high"] = int((valid & clip_low).sum()), int((valid & clip_high).sum())
        br["unclipped"] = int((valid & (rd >= lo) & (rd <= hi)).sum())
    elif mode == "cispo":
        # "-sg(clip(r, 1 - cispo_eps_low, 1 + cispo_eps_high)) * A * log pi"
        lo, hi = 1 - cfg.cispo_eps_low, 1 + cfg.cispo_eps_high
        pg = -(rd.clamp(lo, hi) * A * lp)
        clip_low, clip_high, gate = rd < lo, rd > hi, one   # [code]: the weight's band, whatever the sign of A
        br["clip_low"], br["clip_high"] = int((valid & clip_low).sum()), int((valid & clip_high).sum())
    elif mode == "sapo":
        # "soft gate -A * sigmoid(tau (r - 1)) * 4 / tau, tau = tau_pos for A > 0 else tau_neg"
        tau = torch.where(A > 0, torch.full_like(rd, cfg.tau_pos), torch.full_like(rd, cfg.tau_neg))
        sig = torch.sigmoid(tau * (r - 1))
        pg = -A * sig * 4 / tau
        sd = sig.detach()
        clip_low = clip_high = torch.zeros_like(valid)
        gate = 4 * sd * (1 - sd)  # [code] d f / d r of f(r) = 4/tau sigmoid(tau (r - 1))
        br["pos"], br["neg"] = int((valid & (A > 0)).sum()), int((valid & (A < 0)).sum())
    else:
        assert mode == "maspo"
        # "-A * sg(w) * r with the mass-adaptive Gaussian gate w (see lckernels.soft_gaussian_gate)"
        gw = maspo_gate(rd, pi_old, A, sigma_base=cfg.maspo_sigma_base, alpha=cfg.maspo_alpha,
                        beta_pos=cfg.maspo_beta_pos, beta_neg=cfg.maspo_beta_neg, sigma_high=cfg.maspo_sigma_high,
                        a_low=cfg.maspo_a_low, a_high=cfg.maspo_a_high)
        pg = -A * gw * r
        clip_low = clip_high = torch.zeros_like(valid)
        gate = gw
        br["gated_pos"] = int((valid & (gw < 1) & (A > 0)).sum())
        br["gated_neg"] = int((valid & (gw < 1) & (A < 0)).sum())
        br["ungated"] = int((valid & (gw == 1)).sum())

    if pg_weight is not None:
        # fused_policy_loss docstring: "token t contributes pg_weight_t * pg_t with the aggregation weights unchanged
        # (a weight 0 keeps the token in the denominators ...)"; "Applied exactly (no clamp) on top of
        # config.rollout_correction"
        factor = factor * pg_weight
        br["pg_weight_zero"] = int((valid & (pg_weight == 0)).sum())
        br["pg_weight_above_1"] = int((valid & (pg_weight > 1)).sum())
    loss = aggregate(pg * factor * keep, valid, cfg)
    kl = None
    if cfg.kl is not None:
        # "kl: "k1" (log pi - log pi_ref) or "k3" (exp(ref - lp) - (ref - lp) - 1), added as kl_beta times the same
        # aggregation" (log-ratio clamped to +-20 like every other)
        if cfg.kl == "k1":
            kl = lp - ref
        else:
            d = (ref - lp).clamp(-20, 20)
            kl = torch.exp(d) - d - 1
        kl_in_loss = kl
        if cfg.kl_ratio_weighted:
            # "multiplies each token's KL in the loss by the importance ratio r = exp(clamp(log pi - log pi_old,
            # +-20)), differentiable (not detached; on-policy r = 1 with its gradient)"; "for mode "gspo" r is the
            # sequence ratio s = exp(clamp(mean_t(log pi - log pi_old), +-20)), differentiable through every token"
            if mode == "gspo":
                mean_lr, _ = seq_token_means(lp - pi_old, valid)    # not detached: autograd couples the tokens
                r_kl = cexp(mean_lr)[:, None].expand(b, t)
            else:
                r_kl = cexp(lp - pi_old)
            kl_in_loss = kl * r_kl
        loss = loss + cfg.kl_beta * aggregate(kl_in_loss, valid, cfg)
    # "entropy_coef subtracts coef * aggregated entropy"
    loss = loss - cfg.entropy_coef * aggregate(ent, valid, cfg)
    loss.backward()

    def mean_valid(x):
        return float((x.detach().double() * valid).sum() / max(n_valid, 1))

    stats = {
        "clip_frac_low": mean_valid(clip_low),
        "clip_frac_high": mean_valid(clip_high),
        "gate_mean": mean_valid(gate) if n_valid else NAN,
        "masked_frac": int((valid & ~keep).sum()) / max(n_valid, 1),
        "nonfinite_frac": n_bad / max(n_valid + n_bad, 1),
        "entropy_mean": mean_valid(ent),
        "kl_mean": mean_valid(kl.detach()) if kl is not None else NAN,   # "stays the unweighted KL"
        "ratio_mean": mean_valid(rd) if n_valid else NAN,
        "valid_tokens": float(n_valid),
        # PolicyLossOutput: "||d loss / d weight||^2 for a unit upstream gradient"
        "lm_head_grad_sq_norm": float(wt.grad.square().sum()),
    }
    # PolicyLossOutput: "logprobs: [B, T] fp32, detached (0 on masked tokens ...)" -- a token dropped by
    # nonfinite="mask" is masked too [code: every backend]
    out_lp = torch.where(valid, lp_all.detach(), torch.zeros((), dtype=torch.float64))
    return OracleOut(loss.detach(), out_lp, hid.grad, wt.grad, stats, br)


# ================================================================================================ inputs

# lp - old per sequence (mean over its valid tokens): seq 0 clips high, seq 1 clips low (with A of the matching sign)
SHIFT = torch.tensor([0.3, -0.3, 0.01, 0.2], dtype=torch.float64)
# sum_t log(pi_old / mu) per sequence (one row per seed % 3), i.e. prod_t w_t =
#   seed 0: e^1.2 = 3.3 (> 2), e^-1 = 0.37 (< 1/2, > 0.3), e^-0.3 = 0.74 (inside [0.5, 2], below 0.8)
#   seed 1: e^0.9 = 2.46 (> 2), e^-0.5 = 0.61 (in [0.5, 0.8)), e^-0.1 = 0.90 (inside [0.8, 2])
#   seed 2: e^-0.2 = 0.82 (inside [0.8, 2]), e^1.5 = 4.5 (> 2), e^-1.4 = 0.25 (< 0.3)
# sequence 3 has no valid token
LOG_W_SEQ = torch.tensor([[1.2, -1.0, -0.3, 0.5], [0.9, -0.5, -0.1, 0.5], [-0.2, 1.5, -1.4, 0.5]],
                         dtype=torch.float64)
SEQ_ADV = torch.tensor([1.0, -0.8, 0.6, -1.2], dtype=torch.float64)


@dataclasses.dataclass
class Problem:
    hidden: torch.Tensor
    weight: torch.Tensor
    targets: torch.Tensor
    adv: torch.Tensor
    old: Optional[torch.Tensor]
    mask: torch.Tensor
    rollout: torch.Tensor
    ref: torch.Tensor
    pg_weight: Optional[torch.Tensor] = None

    def kwargs(self):
        return dict(mask=self.mask, rollout_logprobs=self.rollout, ref_logprobs=self.ref, pg_weight=self.pg_weight)


def make_problem(seed: int, *, on_policy: bool, cfg: PolicyLossConfig, seq_adv: Optional[bool] = None,
                 pg_weight: bool = False) -> Problem:
    seq_adv = bool(seed % 2) if seq_adv is None else seq_adv
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, T, D, generator=g)
    w = torch.randn(V, D, generator=g) * 0.6
    y = torch.randint(0, V, (B, T), generator=g)
    y[0, 4:] = cfg.ignore_index                      # padding marked through ignore_index
    mask = torch.ones(B, T)
    mask[1, :3] = 0                                  # ... and through the mask
    mask[3] = 0                                      # a sequence without any valid token
    valid = (y != cfg.ignore_index) & (mask != 0)    # valid lengths 4, 3, 6, 0
    with torch.no_grad():
        logits = h.double() @ w.double().t() / cfg.temperature
        cur = torch.log_softmax(logits, -1).gather(-1, y.clamp_min(0)[..., None]).squeeze(-1)
    n_i = valid.sum(1, keepdim=True).clamp_min(1)
    old = cur - (SHIFT[:, None] + centered_noise(g, (B, T), valid, 0.5))
    behaviour = cur if on_policy else old            # pi_old as the op will see it
    rollout = behaviour - (LOG_W_SEQ[seed % 3][:, None] / n_i + centered_noise(g, (B, T), valid, 0.5))
    ref = cur + 0.4 * torch.randn(B, T, generator=g, dtype=torch.float64)
    if seq_adv:
        adv = SEQ_ADV * (0.5 + torch.rand(B, generator=g, dtype=torch.float64))
    else:
        adv = torch.randn(B, T, generator=g, dtype=torch.float64)
    # NaN / inf on positions outside the loss: the docs only look at "valid tokens", so these must be ignored even
    # with nonfinite="error"
    old[1, 0] = NAN
    rollout[0, 5] = math.inf
    ref[3, 2] = NAN
    if seq_adv:
        adv[3] = NAN
    else:
        adv[3, 4] = NAN
    # pg_weight in [0, 2): some exact zeros and some > 1 on valid tokens, NaN / inf on positions outside the loss
    pgw = torch.rand(B, T, generator=g, dtype=torch.float64) * 2
    pgw[0, 1] = pgw[2, 4] = 0.0
    pgw[0, 5] = NAN
    pgw[1, 1] = math.inf
    if cfg.nonfinite == "mask":                      # and some on valid tokens, to be dropped
        old[2, 1] = NAN
        rollout[1, 4] = math.inf
        ref[0, 0] = -math.inf
        pgw[2, 2] = NAN
        if not seq_adv:
            adv[2, 5] = NAN
    return Problem(h, w, y, adv.float(), None if on_policy else old.float(), mask, rollout.float(), ref.float(),
                   pgw.float() if pg_weight else None)


# ================================================================================================ comparison

def assert_close(got: torch.Tensor, want: torch.Tensor, name: str, rtol: float = 2e-5, atol: float = 1e-7):
    """max |got - want| <= atol + rtol * max |want| (fp32 op vs float64 oracle)."""
    got, want = got.detach().double(), want.detach().double()
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert torch.isfinite(got).all(), f"{name}: non-finite values {got}"
    err = (got - want).abs().max().item() if want.numel() else 0.0
    scale = want.abs().max().item() if want.numel() else 0.0
    assert err <= atol + rtol * scale, f"{name}: max abs error {err:.3g} (scale {scale:.3g})\ngot  {got}\nwant {want}"


def run_op(p: Problem, cfg, backend):
    h = p.hidden.clone().requires_grad_(True)
    w = p.weight.clone().requires_grad_(True)
    out = lckernels.fused_policy_loss(h, w, p.targets, p.adv, p.old, config=cfg, backend=backend, **p.kwargs())
    out.loss.backward()
    return out, h.grad, w.grad


def run_oracle(p: Problem, cfg):
    return oracle(p.hidden, p.weight, p.targets, p.adv, p.old, mask=p.mask, rollout=p.rollout, ref=p.ref,
                  pg_weight=p.pg_weight, cfg=cfg)


def compare(out, gh, gw, orc: OracleOut, backend: str):
    assert out.loss.dim() == 0
    assert_close(out.loss, orc.loss, "loss", rtol=1e-5, atol=1e-6)
    assert_close(out.logprobs, orc.logprobs, "logprobs", rtol=1e-5, atol=1e-6)
    assert out.logprobs.dtype == torch.float32 and not out.logprobs.requires_grad
    assert_close(gh, orc.grad_hidden, "grad_hidden")
    assert_close(gw, orc.grad_weight, "grad_weight")
    assert set(out.stats) == set(orc.stats), sorted(set(out.stats) ^ set(orc.stats))
    for k, want in orc.stats.items():
        got = out.stats[k]
        if k == "lm_head_grad_sq_norm" and backend == "reference":
            want = NAN  # PolicyLossOutput: "NaN on the reference backend"
        if math.isnan(want):
            assert math.isnan(got), f"stats[{k!r}] = {got}, want NaN"
        else:
            assert got == pytest.approx(want, rel=1e-4 if k == "lm_head_grad_sq_norm" else 1e-5, abs=1e-6), \
                f"stats[{k!r}] = {got}, want {want}"


# ================================================================================================ every option

CASES = {
    # ``mode`` (PolicyLossConfig docstring, "Policy-gradient term")
    "clip": dict(),
    "clip_asym": dict(eps_low=0.1, eps_high=0.28),
    "dual_clip": dict(mode="dual_clip", clip_c=1.5),
    "dual_clip_default_c": dict(mode="dual_clip", eps_high=0.28),
    "gspo": dict(mode="gspo", eps_low=0.05, eps_high=0.08, loss_agg="seq-mean-token-mean"),
    "gspo_token_mean": dict(mode="gspo", eps_low=0.05, eps_high=0.08),
    "cispo": dict(mode="cispo", cispo_eps_low=0.3, cispo_eps_high=0.2),
    "cispo_default": dict(mode="cispo"),
    "sapo": dict(mode="sapo"),
    "sapo_taus": dict(mode="sapo", tau_pos=0.5, tau_neg=2.0),
    "maspo": dict(mode="maspo"),
    "maspo_clamps": dict(mode="maspo", maspo_sigma_base=0.3, maspo_sigma_high=0.6, maspo_alpha=1.0,
                         maspo_beta_pos=2.0, maspo_beta_neg=1.5, maspo_a_low=0.5, maspo_a_high=1.5),
    "hispo": dict(mode="hispo", hispo_delta_tok=0.5),
    "hispo_params": dict(mode="hispo", hispo_delta_seq=0.2, hispo_delta_tok=0.4, hispo_eps_neg_low=0.1,
                         hispo_eps_pos_high=0.15, hispo_eps_neg_high=1.3),
    # ``loss_agg``
    "seq_mean_token_sum": dict(loss_agg="seq-mean-token-sum"),
    "seq_mean_token_mean": dict(loss_agg="seq-mean-token-mean"),
    "seq_mean_token_sum_norm": dict(loss_agg="seq-mean-token-sum-norm"),
    "loss_norm_constant": dict(loss_agg="seq-mean-token-sum-norm", loss_norm_constant=9.0),
    # ``rollout_correction``
    "token_truncate": dict(rollout_correction="token_truncate", rc_threshold=1.5),
    "token_mask": dict(rollout_correction="token_mask"),
    "token_mask_low_0.8": dict(rollout_correction="token_mask", rc_threshold_low=0.8),
    "token_mask_low_0.3": dict(rollout_correction="token_mask", rc_threshold=1.6, rc_threshold_low=0.3),
    "sequence_truncate": dict(rollout_correction="sequence_truncate"),
    "sequence_mask": dict(rollout_correction="sequence_mask"),
    "sequence_mask_low_0.8": dict(rollout_correction="sequence_mask", rc_threshold_low=0.8),
    "sequence_mask_low_0.3": dict(rollout_correction="sequence_mask", rc_threshold_low=0.3),
    # ``kl``, ``entropy_coef``, ``temperature``, ``ignore_index``, ``nonfinite``
    "k1": dict(kl="k1", kl_beta=0.3),
    "k3": dict(kl="k3", kl_beta=0.3),
    "k3_beta_0": dict(kl="k3"),
    "entropy": dict(entropy_coef=0.05),
    "temperature": dict(temperature=0.7, entropy_coef=0.05),
    "ignore_index": dict(ignore_index=-1),
    "nonfinite_mask": dict(nonfinite="mask", kl="k3", kl_beta=0.2, rollout_correction="token_truncate"),
    # combinations
    "dual+seq_mask+k3+entropy": dict(mode="dual_clip", clip_c=1.5, rollout_correction="sequence_mask",
                                     rc_threshold_low=0.3, kl="k3", kl_beta=0.2, entropy_coef=0.03, temperature=1.3,
                                     loss_agg="seq-mean-token-sum"),
    "sapo+tis+k1": dict(mode="sapo", rollout_correction="token_truncate", kl="k1", kl_beta=0.1,
                        loss_agg="seq-mean-token-sum-norm", loss_norm_constant=7.0),
    "gspo+token_mask+k3+nonfinite": dict(mode="gspo", eps_low=0.05, eps_high=0.08, rollout_correction="token_mask",
                                         kl="k3", kl_beta=0.2, loss_agg="seq-mean-token-mean", nonfinite="mask"),
    "cispo+seq_truncate+entropy": dict(mode="cispo", cispo_eps_low=0.3, cispo_eps_high=0.2,
                                       rollout_correction="sequence_truncate", rc_threshold=1.5, entropy_coef=0.05,
                                       loss_agg="seq-mean-token-sum"),
    "maspo+token_mask+k1": dict(mode="maspo", maspo_beta_pos=0.5, maspo_beta_neg=0.2,
                                rollout_correction="token_mask", rc_threshold_low=0.3, kl="k1", kl_beta=0.2,
                                ignore_index=-7, loss_agg="seq-mean-token-mean"),
    "hispo+k3+entropy+sum_norm": dict(mode="hispo", hispo_delta_seq=0.2, hispo_delta_tok=0.6, kl="k3", kl_beta=0.2,
                                      entropy_coef=0.05, loss_agg="seq-mean-token-sum-norm", nonfinite="mask"),
    # ``kl_ratio_weighted`` (PolicyLossConfig docstring, ``kl`` paragraph)
    "kl_ratio_k3": dict(kl="k3", kl_beta=0.3, kl_ratio_weighted=True),
    "kl_ratio_k1+dual_clip+seq_sum": dict(mode="dual_clip", clip_c=1.5, kl="k1", kl_beta=0.3, kl_ratio_weighted=True,
                                          loss_agg="seq-mean-token-sum"),
    "kl_ratio_beta_0": dict(kl="k3", kl_ratio_weighted=True),
    "kl_ratio+gspo": dict(mode="gspo", eps_low=0.05, eps_high=0.08, kl="k3", kl_beta=0.3, kl_ratio_weighted=True,
                          loss_agg="seq-mean-token-mean"),
    "kl_ratio+gspo+sum_norm+entropy": dict(mode="gspo", eps_low=0.05, eps_high=0.08, kl="k1", kl_beta=0.2,
                                           kl_ratio_weighted=True, loss_agg="seq-mean-token-sum-norm",
                                           entropy_coef=0.05),
    "kl_ratio+hispo+nonfinite": dict(mode="hispo", hispo_delta_seq=0.2, hispo_delta_tok=0.6, kl="k3", kl_beta=0.2,
                                     kl_ratio_weighted=True, nonfinite="mask"),
    # the ``pg_weight`` input (fused_policy_loss docstring): these cases pass it (PG_WEIGHT_CASES)
    "pg_weight": dict(),
    "pg_weight+sapo+seq_mean": dict(mode="sapo", loss_agg="seq-mean-token-mean"),
    "pg_weight+maspo+tis": dict(mode="maspo", maspo_beta_pos=0.5, maspo_beta_neg=0.2,
                                rollout_correction="token_truncate", rc_threshold=1.5),
    "pg_weight+cispo+seq_mask": dict(mode="cispo", rollout_correction="sequence_mask", rc_threshold_low=0.3),
    "pg_weight+gspo+kl_ratio+nonfinite": dict(mode="gspo", eps_low=0.05, eps_high=0.08, kl="k3", kl_beta=0.2,
                                              kl_ratio_weighted=True, nonfinite="mask",
                                              loss_agg="seq-mean-token-mean"),
}
PG_WEIGHT_CASES = {name for name in CASES if name.startswith("pg_weight")}


def problem_for(name, seed, on_policy, cfg):
    return make_problem(seed, on_policy=on_policy, cfg=cfg, pg_weight=name in PG_WEIGHT_CASES)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("policy", ["off-policy", "on-policy"])
@pytest.mark.parametrize("name", list(CASES))
def test_matches_oracle(name, policy, backend):
    cfg = PolicyLossConfig(**CASES[name])
    for seed in SEEDS:
        p = problem_for(name, seed, policy == "on-policy", cfg)
        out, gh, gw = run_op(p, cfg, backend)
        compare(out, gh, gw, run_oracle(p, cfg), backend)


def _branches(name):
    cfg = PolicyLossConfig(**CASES[name])
    total: dict = {}
    for policy in (False, True):
        for seed in SEEDS:
            br = run_oracle(problem_for(name, seed, policy, cfg), cfg).branches
            for k, v in br.items():
                total[(k, policy)] = total.get((k, policy), 0) + v
    return total


def test_cases_exercise_their_branches():
    """The shared inputs really take every branch of each option (else agreeing with the oracle proves little)."""
    for name, kw in CASES.items():
        br = _branches(name)
        mode = kw.get("mode", "clip")
        offp = {k: v for (k, pol), v in br.items() if not pol}
        allp = {}
        for (k, _), v in br.items():
            allp[k] = allp.get(k, 0) + v
        if mode in ("clip", "dual_clip", "gspo", "hispo", "cispo"):
            if not kw.get("rollout_correction") and mode != "hispo" and name != "cispo_default":
                assert offp["clip_low"] > 0 and offp["clip_high"] > 0, (name, offp)
        if mode in ("dual_clip", "hispo") and "clip_c" in kw or name == "hispo_params":
            assert offp["dual_capped"] > 0, (name, offp)
        if mode == "maspo":
            assert offp["gated_pos"] > 0 and offp["gated_neg"] > 0 and offp["ungated"] > 0, (name, offp)
        if mode == "sapo":
            assert offp["pos"] > 0 and offp["neg"] > 0
        if mode == "hispo":
            assert allp["hispo_seq_dropped"] > 0 and allp["hispo_seq_kept"] > 0, (name, allp)
            assert allp["hispo_tok_dropped_in_kept_seq"] > 0, (name, allp)
        if name in PG_WEIGHT_CASES:
            assert allp["pg_weight_zero"] > 0 and allp["pg_weight_above_1"] > 0, (name, allp)
        rc = kw.get("rollout_correction")
        for pol in (False, True):
            sub = {k: v for (k, p), v in br.items() if p == pol}
            if rc in ("token_truncate", "sequence_truncate"):
                assert sub["truncated"] > 0 and sub["untouched"] > 0, (name, pol, sub)
            if rc in ("token_mask", "sequence_mask"):
                assert sub["dropped_high"] > 0 and sub["kept"] > 0, (name, pol, sub)
                if kw.get("rc_threshold_low", 1.0) >= 1 / kw.get("rc_threshold", 2.0):  # else few fall below it
                    assert sub["dropped_low"] > 0, (name, pol, sub)
                if "rc_threshold_low" in kw:  # a token / sequence that only the explicit lower bound classifies
                    assert sub["between_1/high_and_low"] > 0, (name, pol, sub)


# ================================================================================================ documented defaults

# Values documented for PolicyLossConfig's defaults: "rc_threshold_low=None means 1 / rc_threshold" (config
# docstring); "loss_norm_constant=None means T" (config docstring); MASPO "defaults from the authors' code"
# sigma_base 1, alpha 0.3, beta+- 0.03, sigma_high 10, a in [0.1, 10] (lckernels_rl/objectives/maspo.py: "as recorded
# on lckernels.PolicyLossConfig"); HisPO delta_seq 0.1, delta_tok 1.0, eps_neg_low 0.2, eps_pos_high 0.28,
# eps_neg_high 3.0 (lckernels_rl/objectives/hispo.py: "the kernel's defaults"); SAPO tau_pos 1.0, tau_neg 1.05
# (lckernels_rl/objectives/sapo.py, "as implemented identically in verl's sapo and TRL").
DOCUMENTED_DEFAULTS = {
    "sapo": dict(tau_pos=1.0, tau_neg=1.05),
    "maspo": dict(maspo_sigma_base=1.0, maspo_alpha=0.3, maspo_beta_pos=0.03, maspo_beta_neg=0.03,
                  maspo_sigma_high=10.0, maspo_a_low=0.1, maspo_a_high=10.0),
    "hispo": dict(hispo_delta_seq=0.1, hispo_delta_tok=1.0, hispo_eps_neg_low=0.2, hispo_eps_pos_high=0.28,
                  hispo_eps_neg_high=3.0),
}


class _Documented:
    """The config as the oracle reads it, with the documented default values pinned (not the dataclass's)."""

    def __init__(self, cfg, **pinned):
        self._cfg, self._pinned = cfg, pinned

    def __getattr__(self, name):
        return self._pinned[name] if name in self._pinned else getattr(self._cfg, name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["sapo", "maspo", "hispo", "token_mask", "sequence_mask", "sum_norm"])
def test_documented_defaults(name, backend):
    if name in DOCUMENTED_DEFAULTS:
        cfg = PolicyLossConfig(mode=name)
        pinned = DOCUMENTED_DEFAULTS[name]
    elif name == "sum_norm":
        cfg = PolicyLossConfig(loss_agg="seq-mean-token-sum-norm")
        pinned = dict(loss_norm_constant=T)
    else:
        cfg = PolicyLossConfig(rollout_correction=name, rc_threshold=1.6)
        pinned = dict(rc_threshold_low=1 / 1.6)
    for seed in SEEDS:
        p = make_problem(seed, on_policy=False, cfg=cfg)
        out, gh, gw = run_op(p, cfg, backend)
        compare(out, gh, gw, run_oracle(p, _Documented(cfg, **pinned)), backend)


# ================================================================================================ edge cases

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tensor", ["advantages", "old_logprobs", "rollout_logprobs", "ref_logprobs", "pg_weight"])
def test_nonfinite_error_names_the_tensor(tensor, backend):
    """nonfinite="error" (the default): "a ValueError naming the tensor" for NaN/inf on a valid token."""
    cfg = PolicyLossConfig(rollout_correction="token_mask", kl="k1", kl_beta=0.1)
    p = make_problem(0, on_policy=False, cfg=cfg, pg_weight=True)
    p = dataclasses.replace(p, adv=p.adv.clone(), old=p.old.clone(), rollout=p.rollout.clone(), ref=p.ref.clone(),
                            pg_weight=p.pg_weight.clone())
    x = {"advantages": p.adv, "old_logprobs": p.old, "rollout_logprobs": p.rollout, "ref_logprobs": p.ref,
         "pg_weight": p.pg_weight}[tensor]
    x[2, 3] = NAN if tensor != "rollout_logprobs" else -math.inf
    with pytest.raises(ValueError, match=tensor):
        run_op(p, cfg, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_masked_batch(backend):
    """fused_policy_loss docstring: "An all-masked batch gives loss 0 and zero gradients."."""
    cfg = PolicyLossConfig(kl="k3", kl_beta=0.1, entropy_coef=0.1, rollout_correction="sequence_mask")
    p = make_problem(0, on_policy=False, cfg=cfg)
    p = dataclasses.replace(p, mask=torch.zeros(B, T))
    out, gh, gw = run_op(p, cfg, backend)
    assert out.loss.item() == 0.0 and (gh == 0).all() and (gw == 0).all() and (out.logprobs == 0).all()
    assert out.stats["valid_tokens"] == 0


@pytest.mark.skipif(not HAS_EXT, reason="lckernels._C is not built")
def test_nonfinite_dropped_token_logprobs_agree_across_backends():
    """A token dropped by nonfinite='mask' (mask = 1) returns log-prob 0 on every backend."""
    cfg = PolicyLossConfig(nonfinite="mask")
    p = make_problem(0, on_policy=False, cfg=cfg, pg_weight=True)
    a = run_op(p, cfg, "reference")[0].logprobs
    b = run_op(p, cfg, "cpu")[0].logprobs
    assert torch.equal(a == 0, b == 0)
    for i, j in ((2, 1), (1, 4), (0, 0), (2, 2)):   # old / rollout / ref / pg_weight NaN-inf on valid tokens
        assert a[i, j] == 0 and b[i, j] == 0


# ================================================================================================ hand-computed
#
# With weight = I (V = D) the hidden states *are* the logits.  Logits [0, 0] give p = (1/2, 1/2): log-prob of the
# target -ln 2 and d lp / d logits = onehot - p = (1/2, -1/2) for target 0.  Logits [ln 3, 0] give p = (3/4, 1/4).

LN2 = math.log(2.0)


def hand(logits, targets, adv, old=None, *, cfg, backend, mask=None, rollout=None, ref=None, pg_weight=None):
    logits = torch.as_tensor(logits, dtype=torch.float32)
    h = logits.clone().requires_grad_(True)
    w = torch.eye(logits.shape[-1], requires_grad=True)
    f = lambda x: None if x is None else torch.as_tensor(x, dtype=torch.float32)  # noqa: E731
    out = lckernels.fused_policy_loss(h, w, torch.as_tensor(targets), f(adv), f(old), mask=f(mask),
                                      rollout_logprobs=f(rollout), ref_logprobs=f(ref), pg_weight=f(pg_weight),
                                      config=cfg, backend=backend)
    out.loss.backward()
    return out, h.grad


def approx(x, **kw):
    return pytest.approx(x, rel=kw.pop("rel", 1e-5), abs=kw.pop("abs", 1e-6))


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_kl_k1_k3(backend):
    """Two tokens with lp = -ln 2 (logits 0, target 0); ref = lp + d, d = (-1, +0.5); A = 0 (no policy term),
    on-policy, token-mean, kl_beta = 0.5.
    k1 = lp - ref = -d = (1, -0.5): mean 0.25, loss 0.5 * 0.25 = 0.125; d loss / d lp_t = 0.5 / 2 = 0.25 on both
    tokens, so d loss / d logits = 0.25 * (1/2, -1/2) = (0.125, -0.125).
    k3 = e^d - d - 1 = (e^-1 = 0.3678794, e^0.5 - 1.5 = 0.1487213): mean 0.2583004, loss 0.1291502;
    d k3 / d lp = 1 - e^d = (0.6321206, -0.6487213), times 0.25 -> (0.1580301, -0.1621803), times (1/2, -1/2)."""
    logits = torch.zeros(1, 2, 2)
    ref = [[-LN2 - 1.0, -LN2 + 0.5]]
    out, g = hand(logits, [[0, 0]], [0.0], cfg=PolicyLossConfig(kl="k1", kl_beta=0.5), backend=backend, ref=ref)
    assert out.loss.item() == approx(0.125) and out.stats["kl_mean"] == approx(0.25)
    torch.testing.assert_close(g, torch.tensor([[[0.125, -0.125], [0.125, -0.125]]]), rtol=1e-5, atol=1e-6)
    out, g = hand(logits, [[0, 0]], [0.0], cfg=PolicyLossConfig(kl="k3", kl_beta=0.5), backend=backend, ref=ref)
    assert out.loss.item() == approx(0.1291502) and out.stats["kl_mean"] == approx(0.2583004)
    torch.testing.assert_close(g, torch.tensor([[[0.0790151, -0.0790151], [-0.0810902, 0.0810902]]]), rtol=1e-5,
                               atol=1e-6)
    # kl_beta = 0: the KL is reported but not in the loss
    out, g = hand(logits, [[0, 0]], [0.0], cfg=PolicyLossConfig(kl="k3"), backend=backend, ref=ref)
    assert out.loss.item() == 0.0 and out.stats["kl_mean"] == approx(0.2583004) and (g == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_entropy_bonus(backend):
    """Token 0: logits (ln 3, 0) -> p = (3/4, 1/4), H0 = -(3/4 ln 3/4 + 1/4 ln 1/4) = 0.5623351; token 1: logits
    (0, 0) -> H1 = ln 2 = 0.6931472.  A = 0, entropy_coef = 0.1, token-mean: loss = -0.1 (H0 + H1) / 2 = -0.0627741
    (a bonus: more entropy, lower loss).  dH/dz_j = -p_j (ln p_j + H): token 0 (-0.2059898, +0.2059898), token 1 (0, 0)
    (the uniform distribution is the maximum); d loss / dz = -0.05 dH/dz = (0.0102995, -0.0102995) and (0, 0): a
    descent step lowers the winning logit, i.e. raises the entropy.  With temperature 2 and logits (2 ln 3, 0) the
    loss is the same and the gradient w.r.t. hidden halves (d z / d hidden = 1/2)."""
    cfg = PolicyLossConfig(entropy_coef=0.1)
    out, g = hand([[[math.log(3), 0.0], [0.0, 0.0]]], [[0, 1]], [0.0], cfg=cfg, backend=backend)
    assert out.loss.item() == approx(-0.0627741) and out.stats["entropy_mean"] == approx(0.6277412)
    assert out.logprobs[0].tolist() == approx([math.log(0.75), -LN2])
    torch.testing.assert_close(g, torch.tensor([[[0.0102995, -0.0102995], [0.0, 0.0]]]), rtol=1e-4, atol=1e-7)
    cfg = PolicyLossConfig(entropy_coef=0.1, temperature=2.0)
    out, g = hand([[[2 * math.log(3), 0.0], [0.0, 0.0]]], [[0, 1]], [0.0], cfg=cfg, backend=backend)
    assert out.loss.item() == approx(-0.0627741)
    torch.testing.assert_close(g, torch.tensor([[[0.00514975, -0.00514975], [0.0, 0.0]]]), rtol=1e-4, atol=1e-7)


def _rc(cfg, w_rows, backend):
    """Tokens with lp = -ln 2 (logits 0), old = lp (ratio 1), A = 1, rollout = old - ln w: the policy term of a token
    is -1 times its correction; token-mean over all tokens."""
    w = torch.tensor(w_rows, dtype=torch.float64)
    b, t = w.shape
    old = torch.full((b, t), -LN2, dtype=torch.float64)
    out, g = hand(torch.zeros(b, t, 2), torch.zeros(b, t, dtype=torch.long), torch.ones(b), old.float(),
                  rollout=(old - w.log()).float(), cfg=cfg, backend=backend)
    return out, g[..., 0] * 2  # d loss / d lp_t = (d loss / d z_0) / (1/2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_rollout_corrections(backend):
    """w = pi_old / mu per token; rc_threshold = 2, so rc_threshold_low defaults to 1/2.
    token_truncate, w = (3, 0.8, 0.4): factors min(w, 2) = (2, 0.8, 0.4): loss -3.2/3 = -1.0666667, d/d lp = -factor/3.
    token_mask,     w = (3, 0.8, 0.4): only 0.8 lies in [0.5, 2]: loss -1/3 (the denominator stays 3), masked 2/3.
      rc_threshold_low = 0.3: 0.8 and 0.4 kept: loss -2/3, masked 1/3.
    sequence_truncate, rows w = (3, 0.8, 0.4) [prod 0.96] and (2, 1.5, 1) [prod 3 -> 2]: loss -(0.96*3 + 2*3)/6 = -1.48.
    sequence_mask, rows prod 0.96 (kept), 3 (> 2: dropped), (0.5, 0.5, 0.8) prod 0.2 (< 0.5: dropped): loss -3/9,
      masked 6/9; rc_threshold_low = 0.1: the third row is kept too: loss -6/9, masked 3/9."""
    out, g = _rc(PolicyLossConfig(rollout_correction="token_truncate"), [[3.0, 0.8, 0.4]], backend)
    assert out.loss.item() == approx(-3.2 / 3) and out.stats["masked_frac"] == 0
    torch.testing.assert_close(g, -torch.tensor([[2.0, 0.8, 0.4]]) / 3, rtol=1e-5, atol=1e-6)

    out, g = _rc(PolicyLossConfig(rollout_correction="token_mask"), [[3.0, 0.8, 0.4]], backend)
    assert out.loss.item() == approx(-1 / 3) and out.stats["masked_frac"] == approx(2 / 3)
    torch.testing.assert_close(g, -torch.tensor([[0.0, 1.0, 0.0]]) / 3, rtol=1e-5, atol=1e-6)
    out, g = _rc(PolicyLossConfig(rollout_correction="token_mask", rc_threshold_low=0.3), [[3.0, 0.8, 0.4]], backend)
    assert out.loss.item() == approx(-2 / 3) and out.stats["masked_frac"] == approx(1 / 3)
    torch.testing.assert_close(g, -torch.tensor([[0.0, 1.0, 1.0]]) / 3, rtol=1e-5, atol=1e-6)

    out, g = _rc(PolicyLossConfig(rollout_correction="sequence_truncate"), [[3.0, 0.8, 0.4], [2.0, 1.5, 1.0]], backend)
    assert out.loss.item() == approx(-1.48)
    torch.testing.assert_close(g, -torch.tensor([[0.96] * 3, [2.0] * 3]) / 6, rtol=1e-5, atol=1e-6)

    rows = [[3.0, 0.8, 0.4], [2.0, 1.5, 1.0], [0.5, 0.5, 0.8]]
    out, g = _rc(PolicyLossConfig(rollout_correction="sequence_mask"), rows, backend)
    assert out.loss.item() == approx(-3 / 9) and out.stats["masked_frac"] == approx(6 / 9)
    torch.testing.assert_close(g, -torch.tensor([[1.0] * 3, [0.0] * 3, [0.0] * 3]) / 9, rtol=1e-5, atol=1e-6)
    out, g = _rc(PolicyLossConfig(rollout_correction="sequence_mask", rc_threshold_low=0.1), rows, backend)
    assert out.loss.item() == approx(-6 / 9) and out.stats["masked_frac"] == approx(3 / 9)
    torch.testing.assert_close(g, -torch.tensor([[1.0] * 3, [0.0] * 3, [1.0] * 3]) / 9, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_aggregations_and_loss_norm_constant(backend):
    """B = 3, T = 3, on-policy (ratio 1: the policy term of a token is -A), A = (2, 1, 5) per sequence, valid
    tokens 1, 3 and 0 (the third sequence is empty).  Token sums: -2, -3, 0.
    token-mean: -(2 + 3) / 4 = -1.25;  seq-mean-token-sum: -(2 + 3) / 2 = -2.5 (2 sequences have a valid token);
    seq-mean-token-mean: -(2/1 + 3/3) / 2 = -1.5;  seq-mean-token-sum-norm: -5 / (B T = 9) = -0.5555556;
    loss_norm_constant = 10: -5 / (3 * 10) = -0.1666667, d loss / d lp = -A / 30."""
    mask = [[1, 0, 0], [1, 1, 1], [0, 0, 0]]
    want = {"token-mean": -1.25, "seq-mean-token-sum": -2.5, "seq-mean-token-mean": -1.5,
            "seq-mean-token-sum-norm": -5 / 9}
    for agg, val in want.items():
        out, _ = hand(torch.zeros(3, 3, 2), torch.zeros(3, 3, dtype=torch.long), [2.0, 1.0, 5.0], mask=mask,
                      cfg=PolicyLossConfig(loss_agg=agg), backend=backend)
        assert out.loss.item() == approx(val), agg
    out, g = hand(torch.zeros(3, 3, 2), torch.zeros(3, 3, dtype=torch.long), [2.0, 1.0, 5.0], mask=mask,
                  cfg=PolicyLossConfig(loss_agg="seq-mean-token-sum-norm", loss_norm_constant=10.0), backend=backend)
    assert out.loss.item() == approx(-5 / 30)
    want_g = -torch.tensor([[2.0, 0, 0], [1, 1, 1], [0, 0, 0]]) / 30 * 0.5
    torch.testing.assert_close(g[..., 0], want_g, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_nonfinite_mask_and_ignore_index(backend):
    """Three tokens, lp = -ln 2, on-policy, A = (1, 2, 4).  nonfinite='mask' with old = (lp, NaN, lp): the middle
    token is dropped: loss -(1 + 4)/2 = -2.5, nonfinite_frac 1/3, valid_tokens 2.  The same numbers with the middle
    target = ignore_index = -1 (and its log-prob reported as 0)."""
    z, y, adv = torch.zeros(1, 3, 2), [[0, 0, 0]], [[1.0, 2.0, 4.0]]
    out, _ = hand(z, y, adv, [[-LN2, NAN, -LN2]], cfg=PolicyLossConfig(nonfinite="mask"), backend=backend)
    assert out.loss.item() == approx(-2.5) and out.stats["nonfinite_frac"] == approx(1 / 3)
    assert out.stats["valid_tokens"] == 2
    out, _ = hand(z, [[0, -1, 0]], adv, cfg=PolicyLossConfig(ignore_index=-1), backend=backend)
    assert out.loss.item() == approx(-2.5) and out.stats["valid_tokens"] == 2
    assert out.logprobs.tolist() == [approx([-LN2, 0.0, -LN2])]


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_log_ratio_clamp(backend):
    """One token, lp = -ln 2, A = -1, clip mode: the unclipped -A r = r wins.  lp - old = 3: loss e^3 = 20.085537,
    d loss / d lp = e^3; lp - old = 25: "clamped to +-20 before exp": loss e^20 = 4.851652e8, no gradient."""
    out, g = hand(torch.zeros(1, 1, 2), [[0]], [-1.0], [[-LN2 - 3.0]], cfg=PolicyLossConfig(), backend=backend)
    assert out.loss.item() == approx(math.exp(3)) and g[0, 0, 0].item() == approx(math.exp(3) / 2, rel=1e-4)
    out, g = hand(torch.zeros(1, 1, 2), [[0]], [-1.0], [[-LN2 - 25.0]], cfg=PolicyLossConfig(), backend=backend)
    assert out.loss.item() == approx(math.exp(20), rel=1e-4) and (g == 0).all()


TRITON = pytest.param("triton", marks=pytest.mark.interpreter)


@pytest.mark.parametrize("backend", BACKENDS + [TRITON])
def test_hand_pg_weight(backend):
    """fused_policy_loss docstring, ``pg_weight``: "token t contributes pg_weight_t * pg_t with the aggregation
    weights unchanged (a weight 0 keeps the token in the denominators ...)"; "on top of config.rollout_correction".
    (a) Three tokens, lp = -ln 2, on-policy (the policy term is -A), A = 1, token-mean, pg_weight = (0.5, 3, 0):
        loss = -(0.5 + 3 + 0) / 3 = -1.1666667 (the weight-0 token still divides), d loss / d lp = -(0.5, 3, 0) / 3,
        valid_tokens 3.
    (b) One token, lp - old = 0.5: r = e^0.5 = 1.6487 > 1.2 with A = 1, so the clipped -1.2 wins (no gradient);
        pg_weight 2: loss -2.4, gradient 0, clip_frac_high 1.
    (c) token_truncate, w = pi_old / mu = 3 -> min(3, 2) = 2, times pg_weight 0.25: factor 0.5; on-policy, A = 1:
        loss -0.5, d loss / d lp = -0.5."""
    z = torch.zeros(1, 3, 2)
    out, g = hand(z, [[0, 0, 0]], [1.0], cfg=PolicyLossConfig(), backend=backend, pg_weight=[[0.5, 3.0, 0.0]])
    assert out.loss.item() == approx(-3.5 / 3) and out.stats["valid_tokens"] == 3
    torch.testing.assert_close(g[..., 0] * 2, -torch.tensor([[0.5, 3.0, 0.0]]) / 3, rtol=1e-5, atol=1e-6)
    out, g = hand(torch.zeros(1, 1, 2), [[0]], [1.0], [[-LN2 - 0.5]], cfg=PolicyLossConfig(), backend=backend,
                  pg_weight=[[2.0]])
    assert out.loss.item() == approx(-2.4) and (g == 0).all() and out.stats["clip_frac_high"] == 1.0
    out, g = hand(torch.zeros(1, 1, 2), [[0]], [1.0], [[-LN2]], rollout=[[-LN2 - math.log(3.0)]],
                  cfg=PolicyLossConfig(rollout_correction="token_truncate"), backend=backend, pg_weight=[[0.25]])
    assert out.loss.item() == approx(-0.5) and g[0, 0, 0].item() == approx(-0.25)


@pytest.mark.parametrize("backend", BACKENDS + [TRITON])
def test_hand_ratio_weighted_kl(backend):
    """PolicyLossConfig docstring, ``kl_ratio_weighted``: KL times r = exp(clamp(lp - old)), differentiable.
    One token, lp = -ln 2 (logits 0, target 0), A = 0 (no policy term), kl k3, kl_beta 0.5, ref = lp + 1 (d = 1):
    k3 = e - 2 = 0.7182818, d k3 / d lp = 1 - e = -1.7182818.
    * off-policy, old = lp - ln 1.5 (r = 1.5): loss 0.5 * 1.5 * 0.7182818 = 0.5387114;
      d loss / d lp = 0.5 * (r k3' + k3 r) = 0.5 * 1.5 * (-1.7182818 + 0.7182818) = -0.75, so d/dz = (-0.375, 0.375).
    * unweighted (kl_ratio_weighted False): loss 0.3591409, d loss / d lp = 0.5 * -1.7182818 = -0.8591409.
    * on-policy (old None): r = 1 *with* gradient: loss 0.3591409, d loss / d lp = 0.5 * (k3' + k3) = -0.5.
    kl_mean reports the unweighted 0.7182818 in every case."""
    z, y, ref = torch.zeros(1, 1, 2), [[0]], [[-LN2 + 1.0]]
    cfg = PolicyLossConfig(kl="k3", kl_beta=0.5, kl_ratio_weighted=True)
    out, g = hand(z, y, [0.0], [[-LN2 - math.log(1.5)]], cfg=cfg, backend=backend, ref=ref)
    assert out.loss.item() == approx(0.5387114) and out.stats["kl_mean"] == approx(0.7182818)
    torch.testing.assert_close(g, torch.tensor([[[-0.375, 0.375]]]), rtol=1e-5, atol=1e-6)
    out, g = hand(z, y, [0.0], [[-LN2 - math.log(1.5)]], cfg=dataclasses.replace(cfg, kl_ratio_weighted=False),
                  backend=backend, ref=ref)
    assert out.loss.item() == approx(0.3591409) and g[0, 0, 0].item() == approx(-0.8591409 / 2)
    out, g = hand(z, y, [0.0], cfg=cfg, backend=backend, ref=ref)
    assert out.loss.item() == approx(0.3591409) and g[0, 0, 0].item() == approx(-0.25)
    assert out.stats["kl_mean"] == approx(0.7182818)


@pytest.mark.parametrize("backend", BACKENDS + [TRITON])
def test_hand_ratio_weighted_kl_gspo_sequence_ratio(backend):
    """For mode "gspo" the KL weight is the sequence ratio s = exp(mean_t(lp - old)), differentiable through every
    token.  One sequence of two tokens, lp = -ln 2 each, lp - old = (0.2, 0.4): s = e^0.3 = 1.3498588; A = 0; k3 with
    ref - lp = (0, 1): KL = (0, e - 2 = 0.7182818); token-mean (weights 1/2), kl_beta 1:
    loss = s * (0 + 0.7182818) / 2 = 0.4847895.
    d loss / d lp_j = s * (1/2) * k3'_j + (sum_t (1/2) KL_t) * s / 2 (d s / d lp_j = s / n, n = 2):
    j = 0: 0 + 0.3591409 * 0.6749294 = 0.2423948;  j = 1: 0.6749294 * (1 - e) + 0.2423948 = -0.9173242.
    (A token-ratio weighting would give j = 1: 0.5 e^0.4 (1 - e + e - 2) = -0.7459123.)"""
    cfg = PolicyLossConfig(mode="gspo", kl="k3", kl_beta=1.0, kl_ratio_weighted=True)
    out, g = hand(torch.zeros(1, 2, 2), [[0, 0]], [0.0], [[-LN2 - 0.2, -LN2 - 0.4]], cfg=cfg, backend=backend,
                  ref=[[-LN2, -LN2 + 1.0]])
    assert out.loss.item() == approx(0.4847895)
    torch.testing.assert_close(g[..., 0] * 2, torch.tensor([[0.2423948, -0.9173242]]), rtol=1e-5, atol=1e-6)


def test_hand_public_building_blocks():
    """lckernels.loss_agg_weights (the aggregation of PolicyLossConfig.loss_agg), log_ratio (+-20 clamp) and
    kl_estimate (k1 / k3), from their docstrings.  Mask rows with 2, 1 and 0 valid tokens:
    token-mean 1/3 per valid token; seq-mean-token-sum 1/2 (two non-empty sequences); seq-mean-token-mean
    1/(2 * 2) = 0.25 on row 0 and 1/(1 * 2) = 0.5 on row 1; seq-mean-token-sum-norm 1/(B T) = 1/9, with
    loss_norm_constant 4: 1/(3 * 4) = 1/12."""
    m = torch.tensor([[1, 1, 0], [0, 1, 0], [0, 0, 0]])
    vf = m.float()
    want = {"token-mean": vf / 3, "seq-mean-token-sum": vf / 2,
            "seq-mean-token-mean": torch.tensor([[0.25, 0.25, 0], [0, 0.5, 0], [0, 0, 0]]),
            "seq-mean-token-sum-norm": vf / 9}
    for agg, w in want.items():
        got = lckernels.loss_agg_weights(m, agg)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, w, rtol=1e-6, atol=0, msg=agg)
    torch.testing.assert_close(lckernels.loss_agg_weights(m.bool(), "seq-mean-token-sum-norm", 4.0), vf / 12)
    assert (lckernels.loss_agg_weights(torch.zeros(2, 3), "seq-mean-token-mean") == 0).all()
    with pytest.raises(ValueError, match="loss_agg"):
        lckernels.loss_agg_weights(m, "token-sum")
    with pytest.raises(ValueError, match="`mask` must be 2-D"):
        lckernels.loss_agg_weights(m[0])
    with pytest.raises(ValueError, match="loss_norm_constant"):
        lckernels.loss_agg_weights(m, "seq-mean-token-sum-norm", 0.0)
    # log_ratio: lp - other, clamped to +-20; gradient 1 inside the band, 0 where clamped
    lp = torch.tensor([-1.0, 0.0, 0.0], requires_grad=True)
    r = lckernels.log_ratio(lp, torch.tensor([-1.5, -30.0, 30.0]))
    assert r.tolist() == approx([0.5, 20.0, -20.0])
    r.sum().backward()
    assert lp.grad.tolist() == [1.0, 0.0, 0.0]
    # kl_estimate: k1 = lp - ref; k3 = e^d - d - 1, d = clamp(ref - lp): d = 1 -> e - 2; d = -25 -> e^-20 + 19
    lp, ref = torch.tensor([0.0, 0.0, 25.0]), torch.tensor([0.0, 1.0, 0.0])
    assert lckernels.kl_estimate(lp, ref, "k1").tolist() == approx([0.0, -1.0, 25.0])
    assert lckernels.kl_estimate(lp, ref).tolist() == approx([0.0, math.e - 2, math.exp(-20) + 19])
    with pytest.raises(ValueError, match="kind"):
        lckernels.kl_estimate(lp, ref, "k2")
