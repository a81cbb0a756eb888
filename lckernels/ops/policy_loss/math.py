"""The policy-loss math on per-token tensors, shared by every path.

``prepare`` turns the inputs that do not depend on the current policy (advantages, masks, old / rollout / ref
log-probs) into per-token weights; ``token_terms`` is elementwise in the current log-probs, so the fused paths can
apply it chunk by chunk and differentiate it with autograd on small [rows] vectors; ``policy_loss_from_logprobs``
is the composable path (``fused_logprobs`` then this) and, with full logits, the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..gating.reference import soft_gaussian_gate_reference as maspo_gate
from .config import LOSS_AGGS, PolicyLossConfig

LOG_RATIO_CLAMP = 20.0
STAT_KEYS = ("clip_frac_low", "clip_frac_high", "gate_mean", "masked_frac", "nonfinite_frac", "entropy_mean",
             "kl_mean", "ratio_mean", "valid_tokens", "lm_head_grad_sq_norm")


def clamped_log_ratio(logprobs: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """log(pi / pi_other) clamped to +-LOG_RATIO_CLAMP (differentiable inside the band), as every ratio of the op."""
    return (logprobs - other).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def clamped_exp(log_ratio: torch.Tensor) -> torch.Tensor:
    return torch.exp(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))


def aggregation_weights(valid: torch.Tensor, loss_agg: str, loss_norm_constant: Optional[float] = None
                        ) -> torch.Tensor:
    """valid [B, T] bool -> [B, T] fp32 weights of ``PolicyLossConfig.loss_agg`` (0 on invalid tokens): the
    aggregated loss of per-token terms x is ``(weights * x).sum()``.  The single implementation of the
    aggregations (public as :func:`lckernels.loss_agg_weights`)."""
    vf = valid.float()
    b, t = vf.shape
    n_valid = int(valid.sum())
    per_seq = vf.sum(1)
    n_seq = int((per_seq > 0).sum())
    if loss_agg == "token-mean":
        return vf / max(n_valid, 1)
    if loss_agg == "seq-mean-token-sum":
        return vf / max(n_seq, 1)
    if loss_agg == "seq-mean-token-mean":
        return vf / (per_seq.clamp_min(1)[:, None] * max(n_seq, 1))
    if loss_agg == "seq-mean-token-sum-norm":  # Dr. GRPO: constant denominator
        return vf / (b * (loss_norm_constant if loss_norm_constant is not None else t))
    raise ValueError(f"loss_agg must be one of {', '.join(map(repr, LOSS_AGGS))}; got {loss_agg!r}")


@dataclass
class Prepared:
    """Per-token quantities that do not depend on the current log-probs, all [B, T] fp32 (or bool)."""

    valid: torch.Tensor            # bool: counts in the aggregation and the stats
    weight: torch.Tensor           # aggregation weight of each token (0 where invalid); sums KL / entropy terms
    pg_weight: torch.Tensor        # weight of the pg term: weight * caller's pg_weight * rollout-correction * keep
    advantages: torch.Tensor
    old: Optional[torch.Tensor]    # None: on-policy (old = current log-probs, detached)
    ref: Optional[torch.Tensor]
    n_valid: int
    masked: int                    # valid tokens removed from the pg term by rollout correction / HisPO masks
    nonfinite: int                 # tokens dropped because an input was NaN/inf (nonfinite="mask")


def _check_finite(name: str, x: Optional[torch.Tensor], valid: torch.Tensor, policy: str):
    if x is None:
        return valid, 0
    bad = valid & ~torch.isfinite(x)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return valid, 0
    if policy == "error":
        raise ValueError(f"fused_policy_loss: `{name}` has {n_bad} NaN/inf value(s) on valid tokens; fix the "
                         "inputs, mask those tokens, or pass PolicyLossConfig(nonfinite='mask') to drop them")
    return valid & ~bad, n_bad


def _zero_invalid(x: Optional[torch.Tensor], valid: torch.Tensor) -> Optional[torch.Tensor]:
    if x is None:
        return None
    return torch.where(valid, x.float(), torch.zeros((), dtype=torch.float32, device=x.device))


def base_valid(targets: Optional[torch.Tensor], mask: Optional[torch.Tensor], shape, ignore_index: int,
               device) -> torch.Tensor:
    """Tokens that belong to the loss: target != ignore_index and mask != 0 (either may be None)."""
    valid = torch.ones(shape, dtype=torch.bool, device=device)
    if targets is not None:
        valid = valid & (targets != ignore_index)
    if mask is not None:
        valid = valid & mask.bool()
    return valid


def prepare(valid: torch.Tensor, advantages: torch.Tensor, old: Optional[torch.Tensor],
            rollout: Optional[torch.Tensor], ref: Optional[torch.Tensor], cfg: PolicyLossConfig,
            token_pg_weight: Optional[torch.Tensor] = None) -> Prepared:
    """valid [B, T] bool (see :func:`base_valid`); advantages [B] or [B, T]; old / rollout / ref [B, T] or None;
    ``token_pg_weight`` [B, T] or None: the caller's detached factor (>= 0) on each token's policy-gradient term.

    ``old`` must be given when the config needs it before the forward (rollout correction, HisPO); the fused path
    computes it with a forward-only pass when the caller passes None.
    """
    b, t = valid.shape
    adv = advantages.float()
    if adv.dim() == 1:
        adv = adv[:, None].expand(b, t)
    nonfinite = 0
    pw = None if token_pg_weight is None else token_pg_weight.detach()
    for name, x in (("advantages", adv), ("old_logprobs", old), ("rollout_logprobs", rollout),
                    ("ref_logprobs", ref), ("pg_weight", pw)):
        valid, n_bad = _check_finite(name, x, valid, cfg.nonfinite)
        nonfinite += n_bad
    adv, old, rollout, ref, pw = (_zero_invalid(x, valid) for x in (adv, old, rollout, ref, pw))
    if pw is not None:
        n_neg = int((pw < 0).sum())
        if n_neg:
            raise ValueError(f"fused_policy_loss: `pg_weight` must be >= 0 on valid tokens; got {n_neg} negative "
                             "value(s) (a sign belongs in the advantages)")
    vf = valid.float()
    n_valid = int(valid.sum())
    per_seq = vf.sum(1)
    weight = aggregation_weights(valid, cfg.loss_agg, cfg.loss_norm_constant)

    keep = valid.clone()
    pg_weight = weight if pw is None else weight * pw
    if cfg.needs_rollout_logprobs:
        if old is None or rollout is None:
            raise ValueError(f"fused_policy_loss: mode={cfg.mode!r} / rollout_correction={cfg.rollout_correction!r} "
                             "needs `rollout_logprobs` (and old log-probs)")
        log_w = (old - rollout).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP) * vf  # log(pi_old / mu) per token
        rc = cfg.rollout_correction
        if rc is not None:
            high = cfg.rc_threshold
            low = cfg.rc_threshold_low if cfg.rc_threshold_low is not None else 1.0 / high
            if rc.startswith("token"):
                w_tok = torch.exp(log_w)
                if rc == "token_truncate":
                    pg_weight = pg_weight * w_tok.clamp(max=high)
                else:
                    keep = keep & (w_tok >= low) & (w_tok <= high)
            else:
                w_seq = clamped_exp(log_w.sum(1))[:, None].expand(b, t)
                if rc == "sequence_truncate":
                    pg_weight = pg_weight * w_seq.clamp(max=high)
                else:
                    keep = keep & (w_seq >= low) & (w_seq <= high)
        if cfg.mode == "hispo":
            seq_ratio = torch.exp(log_w.sum(1) / per_seq.clamp_min(1))  # geometric-mean train/infer ratio
            seq_ok = (seq_ratio - 1).abs() < cfg.hispo_delta_seq
            tok_ok = (torch.exp(log_w) - 1).abs() < cfg.hispo_delta_tok
            keep = keep & seq_ok[:, None] & tok_ok
    masked = int((valid & ~keep).sum())
    pg_weight = pg_weight * keep.float()
    return Prepared(valid, weight, pg_weight, adv, old, ref, n_valid, masked, nonfinite)


def token_terms(lp: torch.Tensor, old: Optional[torch.Tensor], adv: torch.Tensor, cfg: PolicyLossConfig,
                gspo_log_s: Optional[torch.Tensor] = None, gate_backend: str = "reference"):
    """Per-token policy-gradient term (elementwise in ``lp``) and the indicators the stats need.

    Returns ``(pg, clip_low, clip_high, gate, ratio)``; ``gate`` is the detached soft weight of sapo/maspo (1
    elsewhere); ``ratio`` the detached importance ratio.  ``gspo_log_s`` (detached, per token) is the sequence's mean
    log-ratio for mode "gspo".  ``gate_backend``: the backend of MASPO's gate kernel
    (:func:`lckernels.soft_gaussian_gate`: C++ on "cpu", Triton on "triton"; "reference" = plain torch).
    """
    old_eff = lp.detach() if old is None else old
    log_r = (lp - old_eff).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    mode = cfg.mode
    if mode == "gspo":
        if gspo_log_s is None:
            raise ValueError("token_terms: mode 'gspo' needs the sequence log-ratio")
        log_r = gspo_log_s.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP) + lp - lp.detach()
    r = torch.exp(log_r)
    rd = r.detach()
    one = torch.ones_like(rd)
    if mode in ("clip", "dual_clip", "gspo", "hispo"):
        if mode == "hispo":
            lo, hi = 1 - cfg.hispo_eps_neg_low, 1 + cfg.hispo_eps_pos_high
        else:
            lo, hi = 1 - cfg.eps_low, 1 + cfg.eps_high
        pg = torch.maximum(-adv * r, -adv * r.clamp(lo, hi))
        if mode in ("dual_clip", "hispo"):
            c = cfg.clip_c if mode == "dual_clip" else cfg.hispo_eps_neg_high
            pg = torch.where(adv < 0, torch.minimum(pg, -adv * c), pg)
        return pg, (rd < lo) & (adv < 0), (rd > hi) & (adv > 0), one, rd
    if mode == "cispo":
        lo, hi = 1 - cfg.cispo_eps_low, 1 + cfg.cispo_eps_high
        w = rd.clamp(lo, hi)
        return -adv * w * lp, rd < lo, rd > hi, one, rd
    if mode == "sapo":
        tau = torch.where(adv > 0, torch.full_like(rd, cfg.tau_pos), torch.full_like(rd, cfg.tau_neg))
        sig = torch.sigmoid(tau * (r - 1))
        pg = -adv * sig * (4 / tau)
        sd = sig.detach()
        gate = 4 * sd * (1 - sd)  # d(gate)/dr: the weight the soft gate puts on the policy gradient at this ratio
        return pg, torch.zeros_like(rd, dtype=torch.bool), torch.zeros_like(rd, dtype=torch.bool), gate, rd
    # maspo: the library's own gate kernel (elementwise over these rows; detached)
    gate_kw = dict(sigma_base=cfg.maspo_sigma_base, alpha=cfg.maspo_alpha,
                   beta_pos=cfg.maspo_beta_pos, beta_neg=cfg.maspo_beta_neg, sigma_high=cfg.maspo_sigma_high,
                   a_low=cfg.maspo_a_low, a_high=cfg.maspo_a_high)
    if gate_backend == "reference":
        w = maspo_gate(rd, old_eff.detach(), adv, **gate_kw)
    else:
        from ..gating import soft_gaussian_gate

        w = soft_gaussian_gate(rd, old_eff.detach(), adv, backend=gate_backend, **gate_kw)
    return -adv * w * r, torch.zeros_like(rd, dtype=torch.bool), torch.zeros_like(rd, dtype=torch.bool), w, rd


def kl_term(lp: torch.Tensor, ref: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate: k1 = lp - ref, k3 = exp(d) - d - 1 with d = clamp(ref - lp, +-20)."""
    if kind == "k1":
        return lp - ref
    d = (ref - lp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.exp(d) - d - 1


def kl_ratio(lp: torch.Tensor, old: Optional[torch.Tensor], gspo_log_s: Optional[torch.Tensor] = None
             ) -> torch.Tensor:
    """The weight of a token's KL under ``kl_ratio_weighted``: r = exp(clamp(lp - old, +-20)), differentiable in
    ``lp`` (on-policy, old = None: 1 with gradient).  For GSPO (``gspo_log_s`` given) the sequence ratio
    sg(s) = exp(clamp(mean log-ratio, +-20)) as a value; its gradient through the other tokens of the sequence is the
    separate coupling term of :func:`gspo_kl_coupling`."""
    if gspo_log_s is not None:
        return clamped_exp(gspo_log_s)
    return clamped_exp(lp - (lp.detach() if old is None else old))


def gspo_kl_coupling(lp_all: torch.Tensor, prep: Prepared, cfg: PolicyLossConfig,
                     gspo_log_s: torch.Tensor) -> torch.Tensor:
    """GSPO with ``kl_ratio_weighted``: the sequence's KL term is s_b * K_b, K_b = sum_t weight_t KL_t, and
    d s_b / d lp_j = s_b / n_b for each of its n_b valid tokens (0 where the mean log-ratio is clamped).  Returns the
    detached per-token coefficient c = s_b K_b / n_b [B, T]; ``c * (lp - sg(lp))`` (value 0) carries that gradient
    token by token, so the chunked paths need no cross-token autograd.  ``lp_all``: every token's current log-prob."""
    vf = prep.valid.float()
    lp = torch.where(prep.valid, lp_all.detach().float(), torch.zeros((), device=lp_all.device))
    kl = torch.where(prep.valid, kl_term(lp, prep.ref, cfg.kl), torch.zeros((), device=lp_all.device))
    k_seq = (prep.weight * kl).sum(1, keepdim=True)
    s_log = gspo_log_s[:, :1]
    inside = (s_log.abs() <= LOG_RATIO_CLAMP).float()
    c = clamped_exp(s_log) * k_seq * inside / vf.sum(1, keepdim=True).clamp_min(1)
    return (c * vf).expand_as(lp)


class StatSums:
    """Running sums of the per-token diagnostics over valid tokens (chunk-friendly).  Sums stay tensors until
    :meth:`finish`, so the GPU path syncs with the host once, not once per chunk."""

    NAMES = ("clip_low", "clip_high", "gate", "ratio", "entropy", "kl")

    def __init__(self):
        self.sums = {k: 0.0 for k in self.NAMES}

    def _acc(self, key, x, valid):
        self.sums[key] = self.sums[key] + torch.where(valid, x.detach().float(), torch.zeros((), device=x.device)).sum()

    def add(self, valid, clip_low, clip_high, gate, ratio, entropy=None, kl=None):
        self._acc("clip_low", clip_low, valid)
        self._acc("clip_high", clip_high, valid)
        self._acc("gate", gate, valid)
        self._acc("ratio", ratio, valid)
        if entropy is not None:
            self._acc("entropy", entropy, valid)
        if kl is not None:
            self._acc("kl", kl, valid)

    def finish(self, prep: "Prepared", has_entropy: bool, has_kl: bool, lm_head_sq=float("nan")) -> dict:
        n = max(prep.n_valid, 1)
        total = prep.n_valid + prep.nonfinite
        nan = float("nan")
        sums = {k: float(v) for k, v in self.sums.items()}
        return {
            "clip_frac_low": sums["clip_low"] / n,
            "clip_frac_high": sums["clip_high"] / n,
            "gate_mean": sums["gate"] / n if prep.n_valid else nan,
            "masked_frac": prep.masked / n,
            "nonfinite_frac": prep.nonfinite / max(total, 1),
            "entropy_mean": sums["entropy"] / n if has_entropy else nan,
            "kl_mean": sums["kl"] / n if has_kl else nan,
            "ratio_mean": sums["ratio"] / n if prep.n_valid else nan,
            "valid_tokens": float(prep.n_valid),
            "lm_head_grad_sq_norm": float(lm_head_sq),
        }


def gspo_sequence_log_ratio(lp: torch.Tensor, old: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[B, T] -> [B, T]: each token gets its sequence's mean log(pi / pi_old) over valid tokens (detached)."""
    vf = valid.float()
    d = (lp.detach().float() - old) * vf
    s = d.sum(1) / vf.sum(1).clamp_min(1)
    return s[:, None].expand_as(lp)


def loss_from_terms(lp, ent, prep: Prepared, cfg: PolicyLossConfig, stats: StatSums, gspo_log_s=None,
                    gspo_kl_c=None, gate_backend: str = "reference"):
    """Scalar loss contribution of these tokens (any matching shapes), accumulating stats.  ``gspo_kl_c``: this
    tokens' slice of :func:`gspo_kl_coupling` (GSPO with ``kl_ratio_weighted``)."""
    pg, lo, hi, gate, ratio = token_terms(lp, prep.old, prep.advantages, cfg, gspo_log_s, gate_backend)
    loss = (prep.pg_weight * pg).sum()
    kl = None
    if cfg.kl is not None:
        kl = kl_term(lp, prep.ref, cfg.kl)
        if cfg.kl_beta and cfg.kl_ratio_weighted:
            loss = loss + cfg.kl_beta * (prep.weight * kl * kl_ratio(lp, prep.old, gspo_log_s)).sum()
            if gspo_kl_c is not None:  # value 0; the gradient of the sequence ratio through every token
                loss = loss + cfg.kl_beta * (gspo_kl_c * (lp - lp.detach())).sum()
        elif cfg.kl_beta:
            loss = loss + cfg.kl_beta * (prep.weight * kl).sum()
    if ent is not None and cfg.entropy_coef:
        loss = loss - cfg.entropy_coef * (prep.weight * ent).sum()
    stats.add(prep.valid, lo, hi, gate, ratio, ent, kl)
    return loss


def policy_loss_math(logprobs: torch.Tensor, advantages: torch.Tensor, old_logprobs: Optional[torch.Tensor] = None,
                     *, mask: Optional[torch.Tensor] = None, targets: Optional[torch.Tensor] = None,
                     rollout_logprobs: Optional[torch.Tensor] = None, ref_logprobs: Optional[torch.Tensor] = None,
                     entropy: Optional[torch.Tensor] = None, pg_weight: Optional[torch.Tensor] = None,
                     config: Optional[PolicyLossConfig] = None, gate_backend: str = "reference",
                     return_valid: bool = False):
    """The loss math on [B, T] tensors (no validation: see :func:`lckernels.policy_loss_from_logprobs`).

    Returns ``(loss, stats)``, or ``(loss, stats, valid)`` with ``return_valid`` (the [B, T] bool of tokens in the
    loss after ``nonfinite="mask"``: where the returned log-probs are nonzero)."""
    cfg = config or PolicyLossConfig()
    old = old_logprobs
    if old is None and (cfg.needs_rollout_logprobs or cfg.mode == "gspo"):
        old = logprobs.detach().float()
    valid = base_valid(targets, mask, logprobs.shape, cfg.ignore_index, logprobs.device)
    prep = prepare(valid, advantages, old, rollout_logprobs, ref_logprobs, cfg, pg_weight)
    gspo = gspo_sequence_log_ratio(logprobs, prep.old, prep.valid) if cfg.mode == "gspo" else None
    lp = torch.where(prep.valid, logprobs.float(), torch.zeros_like(logprobs, dtype=torch.float32))
    kl_c = None
    if gspo is not None and cfg.kl is not None and cfg.kl_beta and cfg.kl_ratio_weighted:
        kl_c = gspo_kl_coupling(lp, prep, cfg, gspo)
    stats = StatSums()
    loss = loss_from_terms(lp, entropy, prep, cfg, stats, gspo, kl_c, gate_backend)
    out = stats.finish(prep, entropy is not None, cfg.kl is not None)
    return (loss, out, prep.valid) if return_valid else (loss, out)
