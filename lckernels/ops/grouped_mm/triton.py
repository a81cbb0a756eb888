"""Triton kernels of ``grouped_mm`` (also the GEMM building blocks of ``moe_experts``).

Two kernel shapes:

* **Row-tiled grouped GEMM** (:func:`_grouped_mm_kernel`): ``C[r] = A[r] @ B[g]`` for the rows ``r`` of group ``g``.
  Each program owns BLOCK_M rows *of one group* and BLOCK_N columns; group boundaries are block-aligned by a tile
  schedule (:func:`tile_schedule`) computed on the device from ``offsets`` -- a group with ``n`` rows gets
  ``cdiv(n, BLOCK_M)`` tiles, the grid has the static upper bound ``cdiv(M, BLOCK_M) + G`` tiles and the spare ones
  exit at once, so there is no host synchronization and no padded copy of the rows.  ``B`` may be any strided view
  (a transposed weight costs nothing).
* **Ragged-K grouped GEMM** (:func:`_grouped_mm_tn_kernel`), the weight gradient: ``C[g] = A[rows_g].T @ B[rows_g]``,
  one program per (group, output tile) looping over the group's rows, so every ``C[g]`` tile is written exactly once
  (no atomics, deterministic; an empty group writes zeros).  ``A``'s or ``B``'s rows may be gathered through an index
  vector (``GATHER_A`` / ``GATHER_B``), which lets ``moe_experts`` read token rows in place instead of building a
  permuted copy.

Addressing is int64 throughout (row index x stride), so ``M * K`` beyond 2^31 is fine.  Block sizes come from a fixed
list of shipped configs picked by a heuristic (no run-time autotuner); every one is compiled for sm_90 and sm_80 by
tests/test_aot_compile.py and, for 16-bit inputs, must lower ``tl.dot`` to ``wgmma`` on sm_90.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ...backend import interpreter_enabled

# ---------------------------------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------------------------------


@triton.jit
def _tile_rows(tile_row0_ptr, offsets_ptr, pid, g, BLOCK_M: tl.constexpr):
    """The rows of tile ``pid`` (int64) and their mask: the tile starts at a row of group ``g`` and stops at its end."""
    row0 = tl.load(tile_row0_ptr + pid).to(tl.int64)
    row_end = tl.load(offsets_ptr + g).to(tl.int64)
    rows = row0 + tl.arange(0, BLOCK_M).to(tl.int64)
    return rows, rows < row_end


@triton.jit
def _rows_dot(acc, a_ptr, a_rows, row_ok, stride_am, stride_ak, b_ptr, cols, col_ok, stride_bk, stride_bn, K,
              BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """acc += A[a_rows, :K] @ B[:K, cols] over BLOCK_K slices (masked tails; fp32 accumulation)."""
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        k_ok = kk < K
        a = tl.load(a_ptr + a_rows[:, None] * stride_am + kk[None, :] * stride_ak,
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptr + kk[:, None] * stride_bk + cols[None, :] * stride_bn,
                    mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    return acc


@triton.jit
def _grouped_mm_kernel(
    a_ptr, b_ptr, c_ptr, offsets_ptr, tile_group_ptr, tile_row0_ptr,
    G, N, K,
    stride_am, stride_ak, stride_bg, stride_bk, stride_bn, stride_cm,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """C[r, :] = A[r, :] @ B[g] for the BLOCK_M rows of tile program_id(0) (all in group g)."""
    pid = tl.program_id(0)
    g = tl.load(tile_group_ptr + pid)
    if g < G:  # spare tiles of the static grid do nothing
        rows, row_ok = _tile_rows(tile_row0_ptr, offsets_ptr, pid, g, BLOCK_M)
        cols = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
        col_ok = cols < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        acc = _rows_dot(acc, a_ptr, rows, row_ok, stride_am, stride_ak, b_ptr + g.to(tl.int64) * stride_bg, cols,
                        col_ok, stride_bk, stride_bn, K, BLOCK_K, DOT_PRECISION)
        tl.store(c_ptr + rows[:, None] * stride_cm + cols[None, :], acc.to(c_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _grouped_mm_tn_kernel(
    a_ptr, a_idx_ptr, b_ptr, b_idx_ptr, c_ptr, offsets_ptr,
    P, Q,
    stride_am, stride_ap, stride_bm, stride_bq, stride_cg, stride_cp,
    GATHER_A: tl.constexpr, GATHER_B: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_R: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """C[g] = A[rows_g, :P].T @ B[rows_g, :Q] (ragged K = the group's rows); one program per (tile of C[g], g)."""
    pid = tl.program_id(0)
    g = tl.program_id(1)
    n_q = tl.cdiv(Q, BLOCK_Q)
    p = (pid // n_q).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    q = (pid % n_q).to(tl.int64) * BLOCK_Q + tl.arange(0, BLOCK_Q).to(tl.int64)
    p_ok = p < P
    q_ok = q < Q
    end = tl.load(offsets_ptr + g).to(tl.int64)
    start = tl.load(offsets_ptr + g - 1, mask=g > 0, other=0).to(tl.int64)
    acc = tl.zeros((BLOCK_P, BLOCK_Q), tl.float32)
    for r0 in range(start, end, BLOCK_R):
        rr = r0 + tl.arange(0, BLOCK_R).to(tl.int64)
        r_ok = rr < end
        if GATHER_A:
            a_rows = tl.load(a_idx_ptr + rr, mask=r_ok, other=0).to(tl.int64)
        else:
            a_rows = rr
        if GATHER_B:
            b_rows = tl.load(b_idx_ptr + rr, mask=r_ok, other=0).to(tl.int64)
        else:
            b_rows = rr
        a = tl.load(a_ptr + a_rows[None, :] * stride_am + p[:, None] * stride_ap,
                    mask=p_ok[:, None] & r_ok[None, :], other=0.0)  # [BLOCK_P, BLOCK_R] = A[rows, p].T
        b = tl.load(b_ptr + b_rows[:, None] * stride_bm + q[None, :] * stride_bq,
                    mask=r_ok[:, None] & q_ok[None, :], other=0.0)  # [BLOCK_R, BLOCK_Q]
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    tl.store(c_ptr + g.to(tl.int64) * stride_cg + p[:, None] * stride_cp + q[None, :], acc.to(c_ptr.dtype.element_ty),
             mask=p_ok[:, None] & q_ok[None, :])


# ---------------------------------------------------------------------------------------------------------------------
# configs, schedule and launchers
# ---------------------------------------------------------------------------------------------------------------------


class Config(NamedTuple):
    BLOCK_M: int  # rows of a tile (BLOCK_P for the ragged-K kernel)
    BLOCK_N: int  # columns (BLOCK_Q)
    BLOCK_K: int  # reduction slice (BLOCK_R: rows per step of the ragged-K loop)
    num_warps: int
    num_stages: int


# Shipped configs (every one is compiled for sm_90 and sm_80 by tests/test_aot_compile.py).  16-bit inputs use
# 64/128-row tiles (wgmma on sm_90 needs >= 64 rows per warp group); fp32 with exact ("ieee") products uses FMA tiles.
MM_CONFIGS = (
    Config(64, 128, 64, 4, 3),   # 16-bit, the common case (MoE experts with ~100s of rows each)
    Config(128, 128, 64, 8, 3),  # 16-bit, many rows per group
    Config(32, 64, 32, 4, 2),    # fp32 ieee
)
TN_CONFIGS = (
    Config(64, 128, 64, 4, 3),
    Config(128, 128, 64, 8, 3),
    Config(32, 64, 32, 4, 2),
)
INTERPRETER_CONFIG = Config(16, 32, 16, 1, 1)  # tiny tiles: many tiles per group even in small tests; dot needs >= 16


def configs_for(configs, dtype: str, precision: str):
    """The shipped configs that may run for this dtype ("fp32" / "fp16" / "bf16") and fp32 dot precision."""
    if dtype == "fp32" and precision == "ieee":
        return (configs[2],)
    return configs[:2]


def pick_config(configs, rows_per_group: float, dtype: torch.dtype, precision: str) -> Config:
    """Deterministic pick (no autotuner): the 128-row tile only when groups average >= 512 rows."""
    if interpreter_enabled():
        return INTERPRETER_CONFIG
    usable = configs_for(configs, "fp32" if dtype == torch.float32 else "16bit", precision)
    if len(usable) == 1:
        return usable[0]
    return usable[1] if rows_per_group >= 512 else usable[0]


def dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` of tl.dot: fp32 follows PyTorch's TF32 switch (exact "ieee" unless the user allowed TF32);
    16-bit inputs ignore it and always pass "tf32" so the runtime kernel is the variant the AOT test compiles."""
    if dtype == torch.float32 and not (torch.cuda.is_available() and torch.backends.cuda.matmul.allow_tf32):
        return "ieee"
    return "tf32"


class Schedule(NamedTuple):
    """Row tiles of a grouped GEMM, block-aligned per group; built on the device without a host sync."""

    tile_group: torch.Tensor  # [n_tiles] int32: group of each tile; G for the spare tiles at the end
    tile_row0: torch.Tensor   # [n_tiles] int64: first row of each tile
    block_m: int


def tile_schedule(offsets: torch.Tensor, num_rows: int, block_m: int) -> Schedule:
    """Tiles for rows sorted by group (``offsets`` = cumulative ends, int32/int64, on the rows' device).

    A group with ``n`` rows gets ``cdiv(n, block_m)`` tiles starting at its first row, so no tile straddles two
    groups.  The number of tiles, ``cdiv(num_rows, block_m) + G``, is a static upper bound: nothing is read back.
    """
    g = offsets.numel()
    if g == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=offsets.device)
        return Schedule(empty.to(torch.int32), empty, block_m)
    offs = offsets.to(torch.int64)
    starts = torch.cat([offs.new_zeros(1), offs[:-1]])
    counts = (offs - starts).clamp_min(0)
    tiles = (counts + block_m - 1) // block_m
    cum = torch.cumsum(tiles, 0)
    n_tiles = triton.cdiv(num_rows, block_m) + g
    pid = torch.arange(n_tiles, device=offsets.device, dtype=torch.int64)
    tile_group = torch.searchsorted(cum, pid, right=True)  # first group whose cumulative tile count exceeds pid
    gc = tile_group.clamp(max=max(g - 1, 0))
    tile_row0 = starts[gc] + (pid - (cum - tiles)[gc]) * block_m
    return Schedule(tile_group.to(torch.int32), tile_row0, block_m)


def grouped_mm_rows(a: torch.Tensor, b: torch.Tensor, offsets: torch.Tensor, out: torch.Tensor, sched: Schedule,
                    cfg: Config) -> torch.Tensor:
    """out[r] = a[r] @ b[g] for the rows of each group (rows past offsets[-1] are left untouched).  ``b`` is
    [G, K, N] with any strides, so a transposed weight view costs nothing."""
    g, k, n = b.shape
    if sched.tile_group.numel() == 0 or n == 0:
        return out
    sg, sk, sn = b.stride()
    grid = (sched.tile_group.numel(), triton.cdiv(n, cfg.BLOCK_N))
    _grouped_mm_kernel[grid](
        a, b, out, offsets, sched.tile_group, sched.tile_row0,
        g, n, k,
        a.stride(0), a.stride(1), sg, sk, sn, out.stride(0),
        BLOCK_M=cfg.BLOCK_M, BLOCK_N=cfg.BLOCK_N, BLOCK_K=cfg.BLOCK_K, DOT_PRECISION=dot_precision(a.dtype),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out


def grouped_mm_tn(a: torch.Tensor, b: torch.Tensor, offsets: torch.Tensor, out: torch.Tensor, cfg: Config,
                  a_idx: torch.Tensor | None = None, b_idx: torch.Tensor | None = None) -> torch.Tensor:
    """out[g] = a[rows_g].T @ b[rows_g] ([G, P, Q]; rows optionally gathered through a_idx / b_idx)."""
    g, p, q = out.shape
    if g == 0 or p == 0 or q == 0:
        return out
    grid = (triton.cdiv(p, cfg.BLOCK_M) * triton.cdiv(q, cfg.BLOCK_N), g)
    _grouped_mm_tn_kernel[grid](
        a, a_idx if a_idx is not None else offsets, b, b_idx if b_idx is not None else offsets, out, offsets,
        p, q,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1),
        GATHER_A=a_idx is not None, GATHER_B=b_idx is not None,
        BLOCK_P=cfg.BLOCK_M, BLOCK_Q=cfg.BLOCK_N, BLOCK_R=cfg.BLOCK_K, DOT_PRECISION=dot_precision(a.dtype),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out


def grouped_mm_forward_triton(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """x [M, K], w [G, K, N], offsets [G] -> [M, N] in x's dtype; rows past offsets[-1] are 0."""
    m, n, g = x.shape[0], w.shape[2], w.shape[0]
    out = torch.zeros(m, n, device=x.device, dtype=x.dtype)
    cfg = pick_config(MM_CONFIGS, m / max(g, 1), x.dtype, dot_precision(x.dtype))
    return grouped_mm_rows(x, w, offsets, out, tile_schedule(offsets, m, cfg.BLOCK_M), cfg)


def grouped_mm_backward_triton(x, w, offsets, grad_out, need_x: bool, need_w: bool):
    """(d x = grad_out @ w[g].T per group (0 past offsets[-1]), d w[g] = x_g.T @ grad_out_g) in the inputs' dtypes."""
    m, g = x.shape[0], w.shape[0]
    grad_out = grad_out.to(x.dtype)
    gx = gw = None
    if need_x:
        gx = torch.zeros_like(x)
        cfg = pick_config(MM_CONFIGS, m / max(g, 1), x.dtype, dot_precision(x.dtype))
        grouped_mm_rows(grad_out, w.transpose(1, 2), offsets, gx, tile_schedule(offsets, m, cfg.BLOCK_M), cfg)
    if need_w:
        gw = torch.empty_like(w, memory_format=torch.contiguous_format)
        cfg = pick_config(TN_CONFIGS, m / max(g, 1), x.dtype, dot_precision(x.dtype))
        grouped_mm_tn(x, grad_out, offsets, gw, cfg)
    return gx, gw


# ---------------------------------------------------------------------------------------------------------------------
# AOT specs
# ---------------------------------------------------------------------------------------------------------------------

_AOT_VARIANTS = (("fp32", "ieee"), ("fp16", "tf32"), ("bf16", "tf32"))


def _unit(signature: dict, constexprs: dict, *names: str) -> None:
    """Mark stride arguments that are 1 at run time as the constant 1, as Triton's launcher specializes them
    (a unit stride is what lets loads vectorize); the AOT compile then builds the variant that actually runs."""
    for name in names:
        signature[name] = "constexpr"
        constexprs[name] = 1


def aot_specs():
    """Every (kernel, shipped config, dtype, unit-stride variant) launched by this module and by ``moe_experts``,
    compiled by tests/test_aot_compile.py; ``gemm=True`` (wgmma on sm_90) for 16-bit inputs."""
    specs = []
    for dtype, prec in _AOT_VARIANTS:
        for cfg in configs_for(MM_CONFIGS, dtype, prec):
            # B = w[g] ([K, N] row-major, unit stride on N) or a transposed view of it (unit stride on K)
            for unit_b in ("stride_bn", "stride_bk"):
                sig = {"a_ptr": f"*{dtype}", "b_ptr": f"*{dtype}", "c_ptr": f"*{dtype}", "offsets_ptr": "*i64",
                       "tile_group_ptr": "*i32", "tile_row0_ptr": "*i64", "G": "i32", "N": "i32", "K": "i32",
                       "stride_am": "i32", "stride_ak": "i32", "stride_bg": "i32", "stride_bk": "i32",
                       "stride_bn": "i32", "stride_cm": "i32"}
                consts = {"BLOCK_M": cfg.BLOCK_M, "BLOCK_N": cfg.BLOCK_N, "BLOCK_K": cfg.BLOCK_K,
                          "DOT_PRECISION": prec}
                _unit(sig, consts, "stride_ak", unit_b)
                specs.append(dict(
                    name=(f"grouped_mm[{dtype}-{cfg.BLOCK_M}x{cfg.BLOCK_N}x{cfg.BLOCK_K}-w{cfg.num_warps}"
                          f"-B{'n' if unit_b == 'stride_bn' else 'k'}1]"),
                    fn=_grouped_mm_kernel, gemm=prec != "ieee", signature=sig, constexprs=consts,
                    num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                ))
        for cfg in configs_for(TN_CONFIGS, dtype, prec):
            for gather_a, gather_b in ((False, False), (True, False), (False, True)):
                sig = {"a_ptr": f"*{dtype}", "a_idx_ptr": "*i64", "b_ptr": f"*{dtype}", "b_idx_ptr": "*i64",
                       "c_ptr": f"*{dtype}", "offsets_ptr": "*i64", "P": "i32", "Q": "i32",
                       "stride_am": "i32", "stride_ap": "i32", "stride_bm": "i32", "stride_bq": "i32",
                       "stride_cg": "i32", "stride_cp": "i32"}
                consts = {"GATHER_A": gather_a, "GATHER_B": gather_b, "BLOCK_P": cfg.BLOCK_M,
                          "BLOCK_Q": cfg.BLOCK_N, "BLOCK_R": cfg.BLOCK_K, "DOT_PRECISION": prec}
                _unit(sig, consts, "stride_ap", "stride_bq")
                specs.append(dict(
                    name=(f"grouped_mm_tn[{dtype}-{cfg.BLOCK_M}x{cfg.BLOCK_N}x{cfg.BLOCK_K}-w{cfg.num_warps}"
                          f"-ga{int(gather_a)}-gb{int(gather_b)}]"),
                    fn=_grouped_mm_tn_kernel, gemm=prec != "ieee", signature=sig, constexprs=consts,
                    num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                ))
    return specs
