"""The single-pass driver shared by the CPU and Triton paths of ``fused_policy_loss``.

Rows (tokens) are processed in chunks of ``rows`` tokens.  For each chunk the backend computes the chunk's logits
[rows, V] once (fp32), the per-row logsumexp / entropy / target log-prob, and keeps the logits; the loss math
(:mod:`.math`, elementwise in the log-probs) is differentiated with autograd on the chunk's small vectors, which gives
d loss / d logprob and d loss / d entropy per row; the backend turns the kept logits into d loss / d logits in place;
then two GEMMs give the chunk's rows of grad_hidden and add its contribution to grad_weight (fp32, chunks in order:
deterministic).  Three GEMMs in all -- the ones the op cannot avoid -- and peak extra memory O(rows * V), never
O(N * V).  The gradients are ready when the forward returns; ``backward`` only scales them by the incoming scalar.

Modes whose token terms need quantities that depend on the *current* log-probs of other tokens (GSPO's sequence
ratio; rollout correction or HisPO without ``old_logprobs``) first run a forward-only pass for the log-probs
(one more GEMM).
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from .config import PolicyLossConfig
from .math import (Prepared, StatSums, base_valid, gspo_kl_coupling, gspo_sequence_log_ratio, loss_from_terms,
                   prepare)

DEFAULT_CHUNK_BYTES = 32 << 20  # fp32 logits per row chunk (CPU): ~260 rows at V = 32k, GEMMs stay efficient


def rows_per_chunk(vocab: int, n_rows: int, budget_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    env = os.environ.get("LCK_ROW_CHUNK")
    if env:
        try:
            value = int(env)
        except ValueError:
            raise ValueError(f"LCK_ROW_CHUNK must be a positive integer; got {env!r}") from None
        if value <= 0:
            raise ValueError(f"LCK_ROW_CHUNK must be a positive integer; got {env!r}")
        return max(1, min(value, max(n_rows, 1)))
    rows = max(16, budget_bytes // (4 * max(vocab, 1)))
    return max(1, min(rows, max(n_rows, 1)))


def _take(x: Optional[torch.Tensor], idx) -> Optional[torch.Tensor]:
    if x is None:
        return None
    flat = x.reshape(-1)
    return flat if idx is None else flat.index_select(0, idx)


def slice_prepared(p: Prepared, idx) -> Prepared:
    return Prepared(_take(p.valid, idx), _take(p.weight, idx), _take(p.pg_weight, idx), _take(p.advantages, idx),
                    _take(p.old, idx), _take(p.ref, idx), p.n_valid, p.masked, p.nonfinite)


class FusedResult:
    __slots__ = ("loss", "logprobs", "stats", "grad_hidden", "grad_weight")


def run_fused(kernels, hidden2d: torch.Tensor, weight: torch.Tensor, targets2d: torch.Tensor,
              advantages: torch.Tensor, old: Optional[torch.Tensor], mask: Optional[torch.Tensor],
              rollout: Optional[torch.Tensor], ref: Optional[torch.Tensor], cfg: PolicyLossConfig,
              need_grad_hidden: bool, need_grad_weight: bool,
              pg_weight: Optional[torch.Tensor] = None) -> FusedResult:
    """hidden2d [N, D] with N = B * T rows in [B, T] order; targets2d [B, T]; the rest [B, T] / [B] (validated).

    ``kernels`` provides ``chunk_bytes`` (logits budget per row chunk), ``compact`` (drop invalid rows first: fine on CPU, a host sync on GPU),
    ``weight_for_gemm(weight)``, ``row_stats(h_chunk, w, y_chunk, inv_t) -> (lp, ent, lse, logits)``,
    ``dlogits_(logits, y_chunk, lse, ent, g_scaled, ge_scaled)`` (in place, returns the tensor for the GEMMs) and
    ``forward_logprobs(hidden2d, weight, targets_flat, temperature) -> lp`` and ``gate_backend`` (the backend of
    MASPO's gate kernel on these rows).
    """
    b, t = targets2d.shape
    n, d = hidden2d.shape
    v = weight.shape[0]
    dev = hidden2d.device
    inv_t = 1.0 / cfg.temperature
    y_flat = targets2d.reshape(-1)

    # Prepass for the modes that need every token's current log-prob before any token's gradient.
    need_prepass = cfg.mode == "gspo" or (old is None and cfg.needs_rollout_logprobs)
    if need_prepass:
        prepass_lp = kernels.forward_logprobs(hidden2d, weight, y_flat, cfg.temperature).reshape(b, t).float()
        if old is None:
            old = prepass_lp
    valid = base_valid(targets2d, mask, (b, t), cfg.ignore_index, dev)
    prep = prepare(valid, advantages, old, rollout, ref, cfg, pg_weight)
    gspo = gspo_sequence_log_ratio(prepass_lp, prep.old, prep.valid) if cfg.mode == "gspo" else None
    kl_c = None
    if gspo is not None and cfg.kl is not None and cfg.kl_beta and cfg.kl_ratio_weighted:
        kl_c = gspo_kl_coupling(prepass_lp, prep, cfg, gspo)  # [B, T] from the prepass: no extra GEMM

    idx = prep.valid.reshape(-1).nonzero().squeeze(1) if kernels.compact else None
    rows_total = n if idx is None else idx.numel()
    logprobs = torch.zeros(n, device=dev, dtype=torch.float32)
    grad_h = torch.zeros(n, d, device=dev, dtype=torch.float32) if need_grad_hidden else None
    grad_w = torch.zeros(v, d, device=dev, dtype=torch.float32) if need_grad_weight else None
    need_grad = need_grad_hidden or need_grad_weight
    w_gemm = kernels.weight_for_gemm(weight)
    stats = StatSums()
    loss = torch.zeros((), device=dev, dtype=torch.float32)
    chunk = rows_per_chunk(v, rows_total, kernels.chunk_bytes)
    for r0 in range(0, rows_total, chunk):
        sel = torch.arange(r0, min(r0 + chunk, rows_total), device=dev)
        rows = sel if idx is None else idx[sel]
        h_c = hidden2d.index_select(0, rows)
        y_c = y_flat.index_select(0, rows)
        lp, ent, lse, logits = kernels.row_stats(h_c, w_gemm, y_c, inv_t)
        p_c = slice_prepared(prep, rows)
        g_c = _take(gspo, rows)
        k_c = _take(kl_c, rows)
        lp_leaf = lp.detach().requires_grad_(need_grad)
        ent_leaf = ent.detach().requires_grad_(need_grad and cfg.entropy_coef != 0)
        with torch.enable_grad():
            lp_masked = torch.where(p_c.valid, lp_leaf, torch.zeros_like(lp_leaf))
            # entropy is nearly free here and feeds stats["entropy_mean"], so it is always passed
            loss_c = loss_from_terms(lp_masked, ent_leaf, p_c, cfg, stats, g_c, k_c, kernels.gate_backend)
        loss = loss + loss_c.detach()
        logprobs.index_copy_(0, rows, torch.where(p_c.valid, lp, torch.zeros_like(lp)))
        if not need_grad or not loss_c.requires_grad:
            del logits
            continue
        leaves = [lp_leaf] + ([ent_leaf] if ent_leaf.requires_grad else [])
        grads = torch.autograd.grad(loss_c, leaves, allow_unused=True)
        g_lp = grads[0] if grads[0] is not None else torch.zeros_like(lp)
        g_ent = grads[1] if len(grads) > 1 and grads[1] is not None else None
        dz = kernels.dlogits_(logits, y_c, lse, ent, g_lp * inv_t, None if g_ent is None else g_ent * inv_t)
        if need_grad_hidden:
            grad_h.index_copy_(0, rows, kernels.mm_fp32(dz, w_gemm))
        if need_grad_weight:
            kernels.addmm_t_(grad_w, dz, h_c)
        del logits, dz  # free this chunk's [rows, V] buffer before the next chunk allocates its own
    res = FusedResult()
    res.loss = loss
    res.logprobs = logprobs
    res.grad_hidden = grad_h
    res.grad_weight = grad_w
    # ||dW||^2 as a dot product: no V x D temporary
    sq = torch.dot(grad_w.view(-1), grad_w.view(-1)) if grad_w is not None else float("nan")
    res.stats = stats.finish(prep, True, cfg.kl is not None, sq)
    return res
