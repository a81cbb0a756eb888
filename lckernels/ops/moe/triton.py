"""Triton kernels of ``moe_experts``: no host synchronization, deterministic, int64 addressing.

Rows are the routing slots sorted by expert (:func:`lckernels.ops.moe.routing.permute_torch`: a stable sort on the
device; identity-expert slots sort last and are never rows of a GEMM).  Every buffer is sized by the static slot count
S = T * k and every grid by static bounds (the row-tile schedule of :func:`lckernels.ops.grouped_mm.triton.tile_schedule`
has ``cdiv(S, BLOCK_M) + E`` tiles, spare ones exit at once), so nothing is read back to the host.

Forward (3 launches after the permutation):

1. :func:`_moe_gate_up_kernel` -- ``[gate | up] = hidden[token(r)] @ gate_up_proj[e].T`` with the token rows gathered
   in the A-operand load (no permuted copy of hidden), two fp32 accumulators per tile (gate columns j and up columns
   I + j), and the SwiGLU in the epilogue: writes ``gate_up`` (saved for backward) and ``act = silu(gate) * up``.
2. :func:`~lckernels.ops.grouped_mm.triton._grouped_mm_kernel` -- ``y = act @ down_proj[e].T``.
3. :func:`_moe_combine_kernel` -- ``out[t] = sum_j w[t, j] * (y[row(t, j)] or hidden[t])``, j in fixed order.

Backward (6 launches):

1. :func:`_moe_down_bwd_kernel` -- ``d_act = grad_out[token(r)] @ down_proj[e]`` with the SwiGLU backward in the
   epilogue: recomputes ``act`` from the saved ``gate_up``, writes ``d_gate_up`` (routing weight applied),
   ``w * act`` (operand of the down_proj weight gradient) and per-column-tile partial sums of ``<d_act, act>``
   (the routing-weight gradient; summed in a fixed order later, no atomics).
2. ragged-K weight gradients (:func:`~lckernels.ops.grouped_mm.triton._grouped_mm_tn_kernel`), each expert's tile
   written once: ``d_down_proj[e] = grad_out[token(rows_e)].T @ (w * act)[rows_e]`` and
   ``d_gate_up_proj[e] = d_gate_up[rows_e].T @ hidden[token(rows_e)]``.
3. ``d_xs = d_gate_up @ gate_up_proj[e]`` (row-tiled grouped GEMM).
4. :func:`_moe_combine_bwd_kernel` -- per token, in fixed order: ``d_hidden[t] = sum_j (d_xs[row] or w * g[t])`` and
   the routing-weight gradients (``<g[t], hidden[t]>`` for identity experts).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...backend import interpreter_enabled
from ..grouped_mm.triton import (TN_CONFIGS, Config, _tile_rows, configs_for, dot_precision, grouped_mm_rows,
                                 grouped_mm_tn, pick_config, tile_schedule)
from .routing import permute_torch

# ---------------------------------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------------------------------


@triton.jit
def _moe_gate_up_kernel(
    x_ptr, tok_ptr, w_ptr, gu_ptr, act_ptr, offsets_ptr, tile_group_ptr, tile_row0_ptr,
    E, I, H,
    stride_x, stride_we, stride_wn, stride_wk, stride_gu, stride_act,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """gate_up[r] = x[tok[r]] @ W[e].T (W = gate_up_proj [E, 2I, H]); act[r] = silu(gate) * up."""
    pid = tl.program_id(0)
    e = tl.load(tile_group_ptr + pid)
    if e < E:
        rows, row_ok = _tile_rows(tile_row0_ptr, offsets_ptr, pid, e, BLOCK_M)
        cols = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
        col_ok = cols < I
        tok = tl.load(tok_ptr + rows, mask=row_ok, other=0).to(tl.int64)
        wb = w_ptr + e.to(tl.int64) * stride_we
        acc_g = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        acc_u = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        for k0 in range(0, H, BLOCK_K):
            kk = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
            k_ok = kk < H
            a = tl.load(x_ptr + tok[:, None] * stride_x + kk[None, :], mask=row_ok[:, None] & k_ok[None, :],
                        other=0.0)
            b_mask = k_ok[:, None] & col_ok[None, :]
            bg = tl.load(wb + kk[:, None] * stride_wk + cols[None, :] * stride_wn, mask=b_mask, other=0.0)
            bu = tl.load(wb + kk[:, None] * stride_wk + (cols[None, :] + I) * stride_wn, mask=b_mask, other=0.0)
            acc_g = tl.dot(a, bg, acc_g, input_precision=DOT_PRECISION)
            acc_u = tl.dot(a, bu, acc_u, input_precision=DOT_PRECISION)
        mask = row_ok[:, None] & col_ok[None, :]
        gu_dst = gu_ptr + rows[:, None] * stride_gu + cols[None, :]
        tl.store(gu_dst, acc_g.to(gu_ptr.dtype.element_ty), mask=mask)
        tl.store(gu_dst + I, acc_u.to(gu_ptr.dtype.element_ty), mask=mask)
        act = acc_g * tl.sigmoid(acc_g) * acc_u
        tl.store(act_ptr + rows[:, None] * stride_act + cols[None, :], act.to(act_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _moe_down_bwd_kernel(
    g_ptr, tok_ptr, w_ptr, gu_ptr, roww_ptr, dgu_ptr, wa_ptr, dwp_ptr, offsets_ptr, tile_group_ptr, tile_row0_ptr,
    E, I, H, NT,
    stride_g, stride_we, stride_wh, stride_wi, stride_gu, stride_dgu, stride_wa,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """d_act = g[tok[r]] @ Wd[e] (Wd = down_proj [E, H, I]) and the SwiGLU backward in the epilogue."""
    pid = tl.program_id(0)
    pid_n = tl.program_id(1)
    e = tl.load(tile_group_ptr + pid)
    if e < E:
        rows, row_ok = _tile_rows(tile_row0_ptr, offsets_ptr, pid, e, BLOCK_M)
        cols = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
        col_ok = cols < I
        tok = tl.load(tok_ptr + rows, mask=row_ok, other=0).to(tl.int64)
        wb = w_ptr + e.to(tl.int64) * stride_we
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        for k0 in range(0, H, BLOCK_K):
            kk = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
            k_ok = kk < H
            a = tl.load(g_ptr + tok[:, None] * stride_g + kk[None, :], mask=row_ok[:, None] & k_ok[None, :],
                        other=0.0)
            b = tl.load(wb + kk[:, None] * stride_wh + cols[None, :] * stride_wi, mask=k_ok[:, None] & col_ok[None, :],
                        other=0.0)
            acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        mask = row_ok[:, None] & col_ok[None, :]
        gu_src = gu_ptr + rows[:, None] * stride_gu + cols[None, :]
        gate = tl.load(gu_src, mask=mask, other=0.0).to(tl.float32)
        up = tl.load(gu_src + I, mask=mask, other=0.0).to(tl.float32)
        w = tl.load(roww_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        s = tl.sigmoid(gate)
        silu = gate * s
        act = silu * up
        # routing-weight gradient <d_act, act>: one partial sum per column tile, summed in order by the combine bwd
        tl.store(dwp_ptr + rows * NT + pid_n, tl.sum(acc * act, 1), mask=row_ok)
        da = acc * w[:, None]
        dgu_dst = dgu_ptr + rows[:, None] * stride_dgu + cols[None, :]
        tl.store(dgu_dst, (da * up * s * (1.0 + gate * (1.0 - s))).to(dgu_ptr.dtype.element_ty), mask=mask)
        tl.store(dgu_dst + I, (da * silu).to(dgu_ptr.dtype.element_ty), mask=mask)
        tl.store(wa_ptr + rows[:, None] * stride_wa + cols[None, :], (act * w[:, None]).to(wa_ptr.dtype.element_ty),
                 mask=mask)


@triton.jit
def _moe_combine_kernel(
    y_ptr, x_ptr, wt_ptr, rows_ptr, out_ptr,
    H, K,
    stride_y, stride_x, stride_out,
    BLOCK_H: tl.constexpr,
):
    """out[t] = sum_j w[t, j] * (row >= 0 ? y[row] : x[t]), j = 0..K-1 in order (fp32 accumulation)."""
    t = tl.program_id(0).to(tl.int64)
    hh = tl.program_id(1).to(tl.int64) * BLOCK_H + tl.arange(0, BLOCK_H).to(tl.int64)
    h_ok = hh < H
    acc = tl.zeros((BLOCK_H,), tl.float32)
    for j in range(0, K):
        r = tl.load(rows_ptr + t * K + j).to(tl.int64) + tl.zeros((BLOCK_H,), tl.int64)  # row, as a vector
        w = tl.load(wt_ptr + t * K + j).to(tl.float32)
        v = tl.load(y_ptr + r * stride_y + hh, mask=h_ok & (r >= 0), other=0.0).to(tl.float32)
        v += tl.load(x_ptr + t * stride_x + hh, mask=h_ok & (r < 0), other=0.0).to(tl.float32)
        acc += w * v
    tl.store(out_ptr + t * stride_out + hh, acc.to(out_ptr.dtype.element_ty), mask=h_ok)


@triton.jit
def _moe_combine_bwd_kernel(
    dxs_ptr, g_ptr, x_ptr, wt_ptr, rows_ptr, dwp_ptr, dx_ptr, dw_ptr,
    H, K, NT,
    stride_dxs, stride_g, stride_x, stride_dx,
    BLOCK_H: tl.constexpr,
):
    """Per token t: d_hidden[t] = sum_j (row >= 0 ? d_xs[row] : w[t, j] * g[t]) and
    d_w[t, j] = row >= 0 ? sum_c dwp[row, c] : <g[t], x[t]>, all in fixed order."""
    t = tl.program_id(0).to(tl.int64)
    dot = tl.zeros((BLOCK_H,), tl.float32)
    for h0 in range(0, H, BLOCK_H):
        hh = h0 + tl.arange(0, BLOCK_H).to(tl.int64)
        h_ok = hh < H
        g = tl.load(g_ptr + t * stride_g + hh, mask=h_ok, other=0.0).to(tl.float32)
        xv = tl.load(x_ptr + t * stride_x + hh, mask=h_ok, other=0.0).to(tl.float32)
        dot += g * xv
        acc = tl.zeros((BLOCK_H,), tl.float32)
        for j in range(0, K):
            r = tl.load(rows_ptr + t * K + j).to(tl.int64) + tl.zeros((BLOCK_H,), tl.int64)  # row, as a vector
            w = tl.load(wt_ptr + t * K + j).to(tl.float32)
            acc += tl.load(dxs_ptr + r * stride_dxs + hh, mask=h_ok & (r >= 0), other=0.0).to(tl.float32)
            acc += tl.where(r < 0, w, 0.0) * g
        tl.store(dx_ptr + t * stride_dx + hh, acc.to(dx_ptr.dtype.element_ty), mask=h_ok)
    gx = tl.sum(dot, 0)
    for j in range(0, K):
        r = tl.load(rows_ptr + t * K + j).to(tl.int64)
        dw = 0.0
        for c in range(0, NT):
            dw += tl.load(dwp_ptr + r * NT + c, mask=r >= 0, other=0.0)
        dw = tl.where(r >= 0, dw, gx)
        tl.store(dw_ptr + t * K + j, dw.to(dw_ptr.dtype.element_ty))


# ---------------------------------------------------------------------------------------------------------------------
# configs and launchers
# ---------------------------------------------------------------------------------------------------------------------

# Row-tiled MoE kernels (gate_up + SwiGLU, down_proj backward with the SwiGLU backward).  Two fp32 accumulators per
# tile in _moe_gate_up_kernel, so BLOCK_N is 64 for the 64-row tile; every config fits sm_80's 163 KiB of shared memory.
MOE_CONFIGS = (
    Config(64, 64, 64, 4, 3),    # 16-bit, the common case (~100s of rows per expert)
    Config(128, 128, 64, 8, 3),  # 16-bit, many rows per expert
    Config(32, 64, 32, 4, 2),    # fp32 ieee
)
INTERPRETER_CONFIG = Config(16, 32, 16, 1, 1)
COMBINE_BLOCK_H = 256
INTERPRETER_COMBINE_BLOCK_H = 32  # several hidden blocks even at the tests' tiny H


def _combine_block():
    return INTERPRETER_COMBINE_BLOCK_H if interpreter_enabled() else COMBINE_BLOCK_H


def _config(rows_per_expert: float, dtype: torch.dtype) -> Config:
    if interpreter_enabled():
        return INTERPRETER_CONFIG
    return pick_config(MOE_CONFIGS, rows_per_expert, dtype, dot_precision(dtype))


def moe_forward_triton(hidden, top_k_index, top_k_weights, gate_up_proj, down_proj):
    """hidden [T, H], top_k_index [T, k] int64, top_k_weights [T, k], gate_up_proj [E, 2I, H], down_proj [E, H, I]
    -> (out [T, H] hidden.dtype, gate_up [S, 2I], permutation, schedule config)."""
    t, h = hidden.shape
    k = top_k_index.shape[1]
    num_experts, two_i, _ = gate_up_proj.shape
    inter = two_i // 2
    s = t * k
    dev, dt = hidden.device, hidden.dtype
    perm = permute_torch(top_k_index, num_experts)
    cfg = _config(s / max(num_experts, 1), dt)
    sched = tile_schedule(perm.offsets, s, cfg.BLOCK_M)
    prec = dot_precision(dt)
    gate_up = torch.empty(s, two_i, device=dev, dtype=dt)
    y = torch.empty(s, h, device=dev, dtype=dt)
    n_tiles = sched.tile_group.numel()
    if n_tiles and inter:
        act = torch.empty(s, inter, device=dev, dtype=dt)
        _moe_gate_up_kernel[(n_tiles, triton.cdiv(inter, cfg.BLOCK_N))](
            hidden, perm.sorted_token, gate_up_proj, gate_up, act, perm.offsets, sched.tile_group, sched.tile_row0,
            num_experts, inter, h,
            hidden.stride(0), gate_up_proj.stride(0), gate_up_proj.stride(1), gate_up_proj.stride(2),
            gate_up.stride(0), act.stride(0),
            BLOCK_M=cfg.BLOCK_M, BLOCK_N=cfg.BLOCK_N, BLOCK_K=cfg.BLOCK_K, DOT_PRECISION=prec,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
        grouped_mm_rows(act, down_proj.transpose(1, 2), perm.offsets, y, sched, cfg)  # a view: no copy
        del act
    elif n_tiles:  # I == 0: every expert outputs 0
        y.zero_()
    out = torch.empty(t, h, device=dev, dtype=dt)
    bh = _combine_block()
    if t and h:
        _moe_combine_kernel[(t, triton.cdiv(h, bh))](
            y, hidden, top_k_weights.float().contiguous(), perm.row_of_slot, out, h, k, y.stride(0), hidden.stride(0), out.stride(0),
            BLOCK_H=bh,
        )
    return out, gate_up, perm, cfg


def moe_backward_triton(hidden, top_k_weights, gate_up_proj, down_proj, perm, gate_up, cfg, grad_out, needs):
    """Gradients (hidden, top_k_weights, gate_up_proj, down_proj) in the inputs' dtypes; None where not needed."""
    need_h, need_w, need_gu, need_d = needs
    t, h = hidden.shape
    k = top_k_weights.shape[1]
    num_experts, two_i, _ = gate_up_proj.shape
    inter = two_i // 2
    s = t * k
    dev, dt = hidden.device, hidden.dtype
    grad_out = grad_out.to(dt).contiguous()
    prec = dot_precision(dt)
    sched = tile_schedule(perm.offsets, s, cfg.BLOCK_M)
    n_tiles = sched.tile_group.numel()
    nt = max(triton.cdiv(inter, cfg.BLOCK_N), 1)
    row_weight = top_k_weights.reshape(-1).float().index_select(0, perm.sorted_slot)
    d_gate_up = torch.empty(s, two_i, device=dev, dtype=dt)
    w_act = torch.empty(s, inter, device=dev, dtype=dt)
    d_row_partial = torch.zeros(s, nt, device=dev, dtype=torch.float32)
    if n_tiles and inter:
        _moe_down_bwd_kernel[(n_tiles, triton.cdiv(inter, cfg.BLOCK_N))](
            grad_out, perm.sorted_token, down_proj, gate_up, row_weight, d_gate_up, w_act, d_row_partial,
            perm.offsets, sched.tile_group, sched.tile_row0,
            num_experts, inter, h, nt,
            grad_out.stride(0), down_proj.stride(0), down_proj.stride(1), down_proj.stride(2), gate_up.stride(0),
            d_gate_up.stride(0), w_act.stride(0),
            BLOCK_M=cfg.BLOCK_M, BLOCK_N=cfg.BLOCK_N, BLOCK_K=cfg.BLOCK_K, DOT_PRECISION=prec,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
    tn_cfg = INTERPRETER_CONFIG if interpreter_enabled() else pick_config(TN_CONFIGS, s / max(num_experts, 1), dt,
                                                                         prec)
    d_down = d_gu_proj = None
    if need_d:
        d_down = torch.empty(down_proj.shape, device=dev, dtype=down_proj.dtype)
        grouped_mm_tn(grad_out, w_act, perm.offsets, d_down, tn_cfg, a_idx=perm.sorted_token)
    if need_gu:
        d_gu_proj = torch.empty(gate_up_proj.shape, device=dev, dtype=gate_up_proj.dtype)
        grouped_mm_tn(d_gate_up, hidden, perm.offsets, d_gu_proj, tn_cfg, b_idx=perm.sorted_token)
    d_xs = torch.empty(s, h, device=dev, dtype=dt)
    if need_h and n_tiles and inter:
        grouped_mm_rows(d_gate_up, gate_up_proj, perm.offsets, d_xs, sched, cfg)
    elif n_tiles:
        d_xs.zero_()
    d_hidden = torch.empty(t, h, device=dev, dtype=dt)
    d_weights = torch.empty(t, k, device=dev, dtype=torch.float32)
    if t:
        _moe_combine_bwd_kernel[(t,)](
            d_xs, grad_out, hidden, top_k_weights.float().contiguous(), perm.row_of_slot, d_row_partial, d_hidden, d_weights,
            h, k, nt,
            d_xs.stride(0), grad_out.stride(0), hidden.stride(0), d_hidden.stride(0),
            BLOCK_H=_combine_block(),
        )
    return (d_hidden if need_h else None), (d_weights.to(top_k_weights.dtype) if need_w else None), d_gu_proj, d_down


# ---------------------------------------------------------------------------------------------------------------------
# AOT specs
# ---------------------------------------------------------------------------------------------------------------------

_AOT_VARIANTS = (("fp32", "ieee"), ("fp16", "tf32"), ("bf16", "tf32"))


def aot_specs():
    """Every MoE-specific (kernel, shipped config, dtype) compiled by tests/test_aot_compile.py (the grouped GEMMs it
    shares with ``grouped_mm`` are listed by that module).  ``gemm=True`` for the 16-bit row-tiled kernels.  The
    weights' unit stride (contiguous gate_up_proj / down_proj) is the constant 1, as Triton specializes it at launch."""
    specs = []
    for dtype, prec in _AOT_VARIANTS:
        for cfg in configs_for(MOE_CONFIGS, dtype, prec):
            tag = f"{dtype}-{cfg.BLOCK_M}x{cfg.BLOCK_N}x{cfg.BLOCK_K}-w{cfg.num_warps}"
            consts = {"BLOCK_M": cfg.BLOCK_M, "BLOCK_N": cfg.BLOCK_N, "BLOCK_K": cfg.BLOCK_K, "DOT_PRECISION": prec}
            specs.append(dict(
                name=f"moe_gate_up[{tag}]", fn=_moe_gate_up_kernel, gemm=prec != "ieee",
                signature={"x_ptr": f"*{dtype}", "tok_ptr": "*i64", "w_ptr": f"*{dtype}", "gu_ptr": f"*{dtype}",
                           "act_ptr": f"*{dtype}", "offsets_ptr": "*i64", "tile_group_ptr": "*i32",
                           "tile_row0_ptr": "*i64", "E": "i32", "I": "i32", "H": "i32", "stride_x": "i32",
                           "stride_we": "i32", "stride_wn": "i32", "stride_wk": "constexpr", "stride_gu": "i32",
                           "stride_act": "i32"},
                constexprs={**consts, "stride_wk": 1}, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            ))
            specs.append(dict(
                name=f"moe_down_bwd[{tag}]", fn=_moe_down_bwd_kernel, gemm=prec != "ieee",
                signature={"g_ptr": f"*{dtype}", "tok_ptr": "*i64", "w_ptr": f"*{dtype}", "gu_ptr": f"*{dtype}",
                           "roww_ptr": "*fp32", "dgu_ptr": f"*{dtype}", "wa_ptr": f"*{dtype}", "dwp_ptr": "*fp32",
                           "offsets_ptr": "*i64", "tile_group_ptr": "*i32", "tile_row0_ptr": "*i64", "E": "i32",
                           "I": "i32", "H": "i32", "NT": "i32", "stride_g": "i32", "stride_we": "i32",
                           "stride_wh": "i32", "stride_wi": "constexpr", "stride_gu": "i32", "stride_dgu": "i32",
                           "stride_wa": "i32"},
                constexprs={**consts, "stride_wi": 1}, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            ))
        specs.append(dict(
            name=f"moe_combine[{dtype}]", fn=_moe_combine_kernel, gemm=False,
            signature={"y_ptr": f"*{dtype}", "x_ptr": f"*{dtype}", "wt_ptr": "*fp32", "rows_ptr": "*i64",
                       "out_ptr": f"*{dtype}", "H": "i32", "K": "i32", "stride_y": "i32", "stride_x": "i32",
                       "stride_out": "i32"},
            constexprs={"BLOCK_H": COMBINE_BLOCK_H}, num_warps=4, num_stages=1,
        ))
        specs.append(dict(
            name=f"moe_combine_bwd[{dtype}]", fn=_moe_combine_bwd_kernel, gemm=False,
            signature={"dxs_ptr": f"*{dtype}", "g_ptr": f"*{dtype}", "x_ptr": f"*{dtype}", "wt_ptr": "*fp32",
                       "rows_ptr": "*i64", "dwp_ptr": "*fp32", "dx_ptr": f"*{dtype}", "dw_ptr": "*fp32",
                       "H": "i32", "K": "i32", "NT": "i32", "stride_dxs": "i32", "stride_g": "i32",
                       "stride_x": "i32", "stride_dx": "i32"},
            constexprs={"BLOCK_H": COMBINE_BLOCK_H}, num_warps=4, num_stages=1,
        ))
    return specs
