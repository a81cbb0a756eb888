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
from .config import PolicyLossConfig

LOG_RATIO_CLAMP = 20.0
STAT_KEYS = ("clip_frac_low", "clip_frac_high", "gate_mean", "masked_frac", "nonfinite_frac", "entropy_mean",
             "kl_mean", "ratio_mean", "valid_tokens", "lm_head_grad_sq_norm")


def clamped_exp(log_ratio: torch.Tensor) -> torch.Tensor:
    return torch.exp(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))


@dataclass
class Prepared:
    """Per-token quantities that do not depend on the current log-probs, all [B, T] fp32 (or bool)."""

    valid: torch.Tensor            # bool: counts in the aggregation and the stats
    weight: torch.Tensor           # aggregation weight of each token (0 where invalid); sums KL / entropy terms
    pg_weight: torch.Tensor        # weight of the policy-gradient term: weight * rollout-correction weight * keep
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
            rollout: Optional[torch.Tensor], ref: Optional[torch.Tensor], cfg: PolicyLossConfig) -> Prepared:
    """valid [B, T] bool (see :func:`base_valid`); advantages [B] or [B, T]; old / rollout / ref [B, T] or None.

    ``old`` must be given when the config needs it before the forward (rollout correction, HisPO); the fused path
    computes it with a forward-only pass when the caller passes None.
    """
    b, t = valid.shape
    adv = advantages.float()
    if adv.dim() == 1:
        adv = adv[:, None].expand(b, t)
    nonfinite = 0
    for name, x in (("advantages", adv), ("old_logprobs", old), ("rollout_logprobs", rollout),
                    ("ref_logprobs", ref)):
        valid, n_bad = _check_finite(name, x, valid, cfg.nonfinite)
        nonfinite += n_bad
    adv, old, rollout, ref = (_zero_invalid(x, valid) for x in (adv, old, rollout, ref))
    vf = valid.float()
    n_valid = int(valid.sum())
    per_seq = vf.sum(1)
    n_seq = int((per_seq > 0).sum())
    if cfg.loss_agg == "token-mean":
        weight = vf / max(n_valid, 1)
    elif cfg.loss_agg == "seq-mean-token-sum":
        weight = vf / max(n_seq, 1)
    elif cfg.loss_agg == "seq-mean-token-mean":
        weight = vf / (per_seq.clamp_min(1)[:, None] * max(n_seq, 1))
    else:  # seq-mean-token-sum-norm (Dr. GRPO): constant denominator
        weight = vf / (b * (cfg.loss_norm_constant if cfg.loss_norm_constant is not None else t))

    keep = valid.clone()
    pg_weight = weight.clone()
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
                gspo_log_s: Optional[torch.Tensor] = None):
    """Per-token policy-gradient term (elementwise in ``lp``) and the indicators the stats need.

    Returns ``(pg, clip_low, clip_high, gate, ratio)``; ``gate`` is the detached soft weight of sapo/maspo (1
    elsewhere); ``ratio`` the detached importance ratio.  ``gspo_log_s`` (detached, per token) is the sequence's mean
    log-ratio for mode "gspo".
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
    # maspo
    w = maspo_gate(rd, old_eff.detach(), adv, sigma_base=cfg.maspo_sigma_base, alpha=cfg.maspo_alpha,
                   beta_pos=cfg.maspo_beta_pos, beta_neg=cfg.maspo_beta_neg, sigma_high=cfg.maspo_sigma_high,
                   a_low=cfg.maspo_a_low, a_high=cfg.maspo_a_high)
    return -adv * w * r, torch.zeros_like(rd, dtype=torch.bool), torch.zeros_like(rd, dtype=torch.bool), w, rd


def kl_term(lp: torch.Tensor, ref: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "k1":
        return lp - ref
    d = (ref - lp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.exp(d) - d - 1


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


def loss_from_terms(lp, ent, prep: Prepared, cfg: PolicyLossConfig, stats: StatSums, gspo_log_s=None):
    """Scalar loss contribution of these tokens (any matching shapes), accumulating stats."""
    pg, lo, hi, gate, ratio = token_terms(lp, prep.old, prep.advantages, cfg, gspo_log_s)
    loss = (prep.pg_weight * pg).sum()
    kl = None
    if cfg.kl is not None:
        kl = kl_term(lp, prep.ref, cfg.kl)
        if cfg.kl_beta:
            loss = loss + cfg.kl_beta * (prep.weight * kl).sum()
    if ent is not None and cfg.entropy_coef:
        loss = loss - cfg.entropy_coef * (prep.weight * ent).sum()
    stats.add(prep.valid, lo, hi, gate, ratio, ent, kl)
    return loss


def policy_loss_math(logprobs: torch.Tensor, advantages: torch.Tensor, old_logprobs: Optional[torch.Tensor] = None,
                     *, mask: Optional[torch.Tensor] = None, targets: Optional[torch.Tensor] = None,
                     rollout_logprobs: Optional[torch.Tensor] = None, ref_logprobs: Optional[torch.Tensor] = None,
                     entropy: Optional[torch.Tensor] = None, config: Optional[PolicyLossConfig] = None):
    """The loss math on [B, T] tensors (no validation: see :func:`lckernels.policy_loss_from_logprobs`)."""
    cfg = config or PolicyLossConfig()
    old = old_logprobs
    if old is None and (cfg.needs_rollout_logprobs or cfg.mode == "gspo"):
        old = logprobs.detach().float()
    valid = base_valid(targets, mask, logprobs.shape, cfg.ignore_index, logprobs.device)
    prep = prepare(valid, advantages, old, rollout_logprobs, ref_logprobs, cfg)
    gspo = gspo_sequence_log_ratio(logprobs, prep.old, prep.valid) if cfg.mode == "gspo" else None
    lp = torch.where(prep.valid, logprobs.float(), torch.zeros_like(logprobs, dtype=torch.float32))
    stats = StatSums()
    loss = loss_from_terms(lp, entropy, prep, cfg, stats, gspo)
    return loss, stats.finish(prep, entropy is not None, cfg.kl is not None)
