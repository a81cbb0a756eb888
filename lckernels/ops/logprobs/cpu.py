"""Fast CPU path of ``fused_logprobs``: stream over vocabulary chunks, one GEMM per chunk, fused C++ elementwise.

For each chunk ``[c0, c0 + C)`` of the vocabulary the driver computes the raw logits ``hidden @ weight[c0:c0+C].T`` in
fp32 (MKL/oneDNN via ATen) and hands them to ``lckernels._C`` which, in one fused OpenMP pass per row, updates the
online logsumexp / entropy state (forward) or turns them in place into d loss / d logits (backward).  Then
``grad_hidden += dZ @ W_c`` and ``grad_weight[c0:c0+C] = dZ.T @ hidden`` -- each row of grad_weight is written once,
so no atomics and the result is deterministic.  Peak extra memory is O(N * C) (plus the fp32 copy of hidden and the
fp32 grad_hidden accumulator), never O(N * V).

Rows whose target is ``ignore_index`` are dropped before the GEMMs (cheap on CPU: no device sync to worry about).

When the extension is not built the same driver runs with :class:`TorchChunkOps` (plain ATen, a few more passes).
"""

from __future__ import annotations

import math
import os

import torch

from ... import _ext

DEFAULT_CHUNK_BYTES = 8 << 20  # fp32 logits per vocabulary chunk on CPU; fits the L2/L3 of a laptop-class core pair
MIN_CHUNK = 256
MAX_CHUNK = 8192


def vocab_chunk_size(n_rows: int, vocab: int, budget_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Columns of logits per chunk: ``LCK_VOCAB_CHUNK`` if set, else as many as fit ``budget_bytes`` of fp32 for
    ``n_rows`` rows, clamped to [256, 8192] and rounded to a multiple of 64 (GEMM-friendly)."""
    env = os.environ.get("LCK_VOCAB_CHUNK")
    if env:
        try:
            chunk = int(env)
        except ValueError:
            raise ValueError(f"LCK_VOCAB_CHUNK must be a positive integer; got {env!r}") from None
        if chunk <= 0:
            raise ValueError(f"LCK_VOCAB_CHUNK must be a positive integer; got {env!r}")
        return min(chunk, max(vocab, 1))
    chunk = budget_bytes // (4 * max(n_rows, 1))
    chunk = max(MIN_CHUNK, min(MAX_CHUNK, chunk)) // 64 * 64
    return max(1, min(chunk, vocab))


class TorchChunkOps:
    """The chunk kernels written with ATen ops (fallback when lckernels._C is missing). Same contract as _C."""

    @staticmethod
    def logprobs_fwd_chunk(z, targets, c0, inv_t, m, s, t, zy):
        z.mul_(inv_t)
        mc = z.max(dim=1).values
        d = z - mc[:, None]
        e = d.exp()
        sc = e.sum(1)
        tc = (e * d).sum(1)
        local = targets - c0
        hit = (local >= 0) & (local < z.shape[1])
        if bool(hit.any()):
            rows = hit.nonzero().squeeze(1)
            zy[rows] = z[rows, local[rows]]
        fresh = s == 0
        mn = torch.maximum(m, mc)
        ao = torch.where(fresh, torch.zeros_like(m), (m - mn).exp())
        ac = (mc - mn).exp()
        t_old = torch.where(fresh, torch.zeros_like(t), t + (m - mn) * s)
        t.copy_(ao * t_old + ac * (tc + (mc - mn) * sc))
        s.copy_(torch.where(fresh, torch.zeros_like(s), ao * s) + ac * sc)
        m.copy_(mn)

    @staticmethod
    def logprobs_bwd_chunk(z, targets, c0, inv_t, lse, ent, g, ge, ignore_index):
        logp = z.mul_(inv_t).sub_(lse[:, None])
        p = logp.exp()
        coef = (g * inv_t)[:, None]
        if ge.numel():
            coef = coef + (ge * inv_t)[:, None] * (logp + ent[:, None])
        dz = logp.copy_(-p * coef)
        local = targets - c0
        hit = (local >= 0) & (local < z.shape[1]) & (targets != ignore_index)
        if bool(hit.any()):
            rows = hit.nonzero().squeeze(1)
            dz[rows, local[rows]] += g[rows] * inv_t
        dz[targets == ignore_index] = 0


def chunk_ops(explicit: bool):
    """The C++ chunk kernels; for ``auto`` without the extension, the ATen fallback (with a one-time warning)."""
    if explicit:
        return _ext.require("fused_logprobs")
    ext = _ext.load()
    if ext is None:
        _ext.warn_fallback("fused_logprobs")
        return TorchChunkOps
    return ext


def _compact(hidden: torch.Tensor, targets: torch.Tensor, ignore_index: int):
    valid = targets != ignore_index
    if bool(valid.all()):
        return None, hidden, targets
    rows = valid.nonzero().squeeze(1)
    return rows, hidden.index_select(0, rows), targets.index_select(0, rows)


def logprobs_forward_cpu(ops, hidden, weight, targets, temperature, ignore_index):
    """hidden [N, D], weight [V, D], targets [N] int64 -> (logprobs, entropy, lse) fp32 [N]; ignored rows are 0."""
    n, v = hidden.shape[0], weight.shape[0]
    logprobs = torch.zeros(n, dtype=torch.float32)
    entropy = torch.zeros(n, dtype=torch.float32)
    lse = torch.zeros(n, dtype=torch.float32)
    rows, h, y = _compact(hidden, targets, ignore_index)
    k = h.shape[0]
    if k == 0:
        return logprobs, entropy, lse
    h32 = h.to(torch.float32).contiguous()
    y = y.contiguous()
    m = torch.full((k,), -math.inf)
    s = torch.zeros(k)
    t = torch.zeros(k)
    zy = torch.zeros(k)
    inv_t = 1.0 / temperature
    chunk = vocab_chunk_size(k, v)
    for c0 in range(0, v, chunk):
        w = weight[c0:c0 + chunk].to(torch.float32)
        z = torch.mm(h32, w.t())
        ops.logprobs_fwd_chunk(z, y, c0, inv_t, m, s, t, zy)
    log_s = s.log()
    out_lse = m + log_s
    out_lp = zy - out_lse
    out_ent = log_s - t / s
    if rows is None:
        return out_lp, out_ent, out_lse
    logprobs[rows] = out_lp
    entropy[rows] = out_ent
    lse[rows] = out_lse
    return logprobs, entropy, lse


def logprobs_backward_cpu(ops, hidden, weight, targets, lse, entropy, grad_lp, grad_ent, temperature, ignore_index,
                          need_hidden: bool, need_weight: bool):
    """Gradients of sum(grad_lp * logprobs + grad_ent * entropy) w.r.t. hidden and weight (in their dtypes)."""
    n, v = hidden.shape[0], weight.shape[0]
    grad_hidden = torch.zeros_like(hidden) if need_hidden else None
    grad_weight = torch.zeros_like(weight) if need_weight else None
    rows, h, y = _compact(hidden, targets, ignore_index)
    k = h.shape[0]
    if k == 0 or not (need_hidden or need_weight):
        return grad_hidden, grad_weight
    if rows is not None:
        lse, entropy, grad_lp = lse[rows], entropy[rows], grad_lp[rows]
        grad_ent = grad_ent[rows] if grad_ent is not None else None
    h32 = h.to(torch.float32).contiguous()
    y = y.contiguous()
    g = grad_lp.to(torch.float32).contiguous()
    ge = grad_ent.to(torch.float32).contiguous() if grad_ent is not None else torch.empty(0)
    lse = lse.contiguous()
    entropy = entropy.contiguous()
    gh32 = torch.zeros(k, hidden.shape[1]) if need_hidden else None
    inv_t = 1.0 / temperature
    chunk = vocab_chunk_size(k, v)
    for c0 in range(0, v, chunk):
        w = weight[c0:c0 + chunk].to(torch.float32)
        z = torch.mm(h32, w.t())
        ops.logprobs_bwd_chunk(z, y, c0, inv_t, lse, entropy, g, ge, ignore_index)
        if need_hidden:
            gh32.addmm_(z, w)
        if need_weight:
            if grad_weight.dtype == torch.float32:
                torch.mm(z.t(), h32, out=grad_weight[c0:c0 + chunk])
            else:
                grad_weight[c0:c0 + chunk].copy_(torch.mm(z.t(), h32))
    if need_hidden:
        if rows is None:
            grad_hidden.copy_(gh32)
        else:
            grad_hidden.index_copy_(0, rows, gh32.to(hidden.dtype))
    return grad_hidden, grad_weight
