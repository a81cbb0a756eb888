"""Fast CPU path of ``moe_experts``: C++ permutation and drivers (csrc/moe/moe.cpp), MKL SGEMMs per expert block.

With R routed rows (the slots whose expert is a GEMM expert) sorted by expert:

Forward
  1. ``moe_permute`` (C++ counting sort, O(T*k)): sorted_slot / sorted_token / row_of_slot / offsets.
  2. ``moe_experts_fwd`` (C++), one OpenMP region over row blocks of the experts: gather the block's token rows,
     ``gate_up = xs @ gate_up_proj[e].T`` (MKL reads the [2I, H] weight as a transposed operand: no copy),
     ``act = silu(gate) * up``, ``y = act @ down_proj[e].T``; then the combine
     ``out[t] = sum_j w[t, j] * (y[row(t, j)] or hidden[t] for an identity expert)`` in fixed j order (no atomics,
     no ``index_add`` over duplicate indices: bit-reproducible).

  Saved for backward: ``gate_up`` [R, 2I] and the permutation only; ``act`` is recomputed in the backward and the
  token rows are gathered again (cheaper than keeping [R, H] alive).

Backward (g = grad_out), ``moe_experts_bwd`` (C++):
  1. per row block: ``d_act = g[tokens] @ down_proj[e]`` -- the routing weight is applied *after* this GEMM, so a
     routed slot's weight gradient is ``<d_act, act>`` and the expert output ``y`` never has to be kept; the SwiGLU
     backward (act recomputed from ``gate_up``) writes ``d_gate_up`` and, in place of ``d_act``, ``w * act``;
     ``d_xs = d_gate_up @ gate_up_proj[e]``.
  2. per (expert, block of H): ragged-K weight gradients, each block written once:
     ``d_down_proj[e] = g[tokens_e].T @ (w * act)_e``, ``d_gate_up_proj[e] = d_gate_up_e.T @ hidden[tokens_e]``.
  3. combine backward per token in fixed order: ``d_hidden[t] = sum_j (d_xs[row] or w * g[t])`` and the routing-weight
     gradients (``<g[t], hidden[t]>`` for identity slots).

Why C++ drivers rather than a Python loop of ``torch.mm(out=slice)`` per expert (the first version, kept below as
the ATen fallback): inside one OpenMP region per phase every GEMM is a single-threaded MKL call on an expert-sized
block, so there is no fork/join per GEMM and the gathered rows stay in cache.  Measured forward + backward at T=2048,
H=512, I=256, E=64, top-8, fp32, 2 threads (median of 7): 282 ms for the drivers vs 394 ms for the Python loop.
``torch._grouped_mm`` on CPU (torch 2.13) is itself a loop of per-group matmuls and measured no faster than that loop
(204 vs 207 ms on the gate_up GEMM's forward + backward; the grouped_mm driver: 185 ms), so it is not used.

Everything runs in fp32 (16-bit inputs are upcast; gradients are cast back to the inputs' dtypes by the caller).
``backend="auto"`` without the extension falls back to :func:`moe_forward_aten` / :func:`moe_backward_aten`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ... import _ext
from ..grouped_mm.cpu import bounds_of
from .routing import Permutation, permute

OP = "moe_experts"
BLOCK_ROWS = 256  # rows per work item of the C++ drivers: one MKL SGEMM block per expert at typical loads


def extension(explicit: bool):
    """lckernels._C; for ``auto`` without it (or built without the moe kernels), None and a one-time warning."""
    if explicit:
        ext = _ext.require(OP)
        if not hasattr(ext, "moe_experts_fwd"):
            raise RuntimeError(f"{OP}: backend='cpu' needs lckernels._C rebuilt with csrc/moe; {_ext.REBUILD_HINT}")
        return ext
    ext = _ext.load()
    if ext is None or not hasattr(ext, "moe_experts_fwd"):
        _ext.warn_fallback(OP)
        return None
    return ext


def moe_forward_cpu(ext, hidden, top_k_index, top_k_weights, gate_up_proj, down_proj, num_identity: int,
                    save: bool = True):
    """hidden / top_k_weights fp32 contiguous, weights fp32 (any strides), top_k_index int64 -> (out [T, H],
    gate_up [R, 2I] -- empty when ``save`` is False and the extension runs --, permutation)."""
    perm = permute(ext, top_k_index, gate_up_proj.shape[0], num_identity)
    if ext is None:
        out, gate_up = moe_forward_aten(hidden, top_k_weights, gate_up_proj, down_proj, perm)
    else:
        out, gate_up = ext.moe_experts_fwd(hidden, top_k_weights, gate_up_proj, down_proj, perm.sorted_token,
                                           perm.row_of_slot, perm.offsets, BLOCK_ROWS, save)
    return out, gate_up, perm


def moe_backward_cpu(ext, hidden, top_k_weights, gate_up_proj, down_proj, perm: Permutation, gate_up, grad_out,
                     needs):
    """Gradients (hidden, top_k_weights, gate_up_proj, down_proj), fp32, None where ``needs`` says not needed."""
    need_h, need_w, need_gu, need_d = needs
    if ext is None:
        return moe_backward_aten(hidden, top_k_weights, gate_up_proj, down_proj, perm, gate_up, grad_out, needs)
    dh, dw, dgu, dd = ext.moe_experts_bwd(grad_out, hidden, top_k_weights, gate_up_proj, down_proj, perm.sorted_slot,
                                          perm.sorted_token, perm.row_of_slot, perm.offsets, gate_up, need_h,
                                          need_gu, need_d, BLOCK_ROWS)
    return (dh if need_h else None), (dw if need_w else None), (dgu if need_gu else None), (dd if need_d else None)


# ---------------------------------------------------------------------------------------------------------------------
# ATen fallback (no extension): the same algorithm as a Python loop over experts
# ---------------------------------------------------------------------------------------------------------------------


def _swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    inter = gate_up.shape[1] // 2
    return F.silu(gate_up[:, :inter]).mul_(gate_up[:, inter:])


def _combine(y, x, weights, row_of_slot):
    t, k = weights.shape
    rows = row_of_slot.view(t, k)
    y_pad = torch.cat([y, y.new_zeros(1, x.shape[1])])  # row -1 (identity slot) reads the zero row
    return torch.einsum("tk,tkh->th", weights, y_pad[rows]) + (weights * (rows < 0)).sum(1, keepdim=True) * x


def moe_forward_aten(hidden, top_k_weights, gate_up_proj, down_proj, perm: Permutation):
    rows = perm.sorted_token.numel()
    gate_up = torch.empty(rows, gate_up_proj.shape[1])
    y = torch.empty(rows, hidden.shape[1])
    for e, s, t in bounds_of(perm.offsets):
        xs = hidden.index_select(0, perm.sorted_token[s:t])
        torch.mm(xs, gate_up_proj[e].t(), out=gate_up[s:t])
        torch.mm(_swiglu(gate_up[s:t]), down_proj[e].t(), out=y[s:t])
    return _combine(y, hidden, top_k_weights, perm.row_of_slot), gate_up


def moe_backward_aten(hidden, top_k_weights, gate_up_proj, down_proj, perm: Permutation, gate_up, grad_out, needs):
    need_h, need_w, need_gu, need_d = needs
    num_experts, two_i, h = gate_up_proj.shape
    inter = two_i // 2
    rows = perm.sorted_token.numel()
    d_gate_up_proj = torch.zeros(num_experts, two_i, h) if need_gu else None
    d_down_proj = torch.zeros(num_experts, h, inter) if need_d else None
    d_xs = torch.zeros(rows, h)
    d_row_weight = torch.empty(rows)
    row_weight = top_k_weights.reshape(-1).index_select(0, perm.sorted_slot)
    for e, s, t in bounds_of(perm.offsets):
        token = perm.sorted_token[s:t]
        g_rows = grad_out.index_select(0, token)
        d_act = g_rows @ down_proj[e]
        gate, up = gate_up[s:t, :inter], gate_up[s:t, inter:]
        sig = torch.sigmoid(gate)
        silu = gate * sig
        act = silu * up
        d_row_weight[s:t] = (d_act * act).sum(1)
        da = d_act * row_weight[s:t, None]
        d_gate_up = torch.cat([da * up * sig * (1 + gate * (1 - sig)), da * silu], dim=1)
        if need_d:
            torch.mm(g_rows.t(), act * row_weight[s:t, None], out=d_down_proj[e])
        if need_gu:
            torch.mm(d_gate_up.t(), hidden.index_select(0, token), out=d_gate_up_proj[e])
        if need_h:
            torch.mm(d_gate_up, gate_up_proj[e], out=d_xs[s:t])
    t_, k = top_k_weights.shape
    slots = perm.row_of_slot.view(t_, k)
    ident = slots < 0
    d_pad = torch.cat([d_xs, d_xs.new_zeros(1, h)])
    d_hidden = d_pad[slots].sum(1) + (top_k_weights * ident).sum(1, keepdim=True) * grad_out
    dw_pad = torch.cat([d_row_weight, d_row_weight.new_zeros(1)])
    d_weights = torch.where(ident, (grad_out * hidden).sum(1, keepdim=True), dw_pad[slots])
    return (d_hidden if need_h else None), (d_weights if need_w else None), d_gate_up_proj, d_down_proj
