"""Triton kernels of ``fused_logprobs``.

Forward: one fused kernel.  Each program owns BLOCK_N rows, walks the vocabulary in BLOCK_V tiles, computes each
logits tile with ``tl.dot`` over BLOCK_D slices of the hidden size (fp32 accumulation) and folds it into an online
logsumexp / entropy state, so the [N, V] logits never exist.  No atomics: the forward is deterministic, so the
on-policy ratio is exactly 1.

Backward: for each vocabulary chunk ``[c0, c0 + C)`` a second fused kernel recomputes the logits tile and writes
``dZ = d loss / d logits`` for the chunk (O(N * C) memory); then two GEMMs (cuBLAS) give
``grad_hidden += dZ @ W_c`` (accumulated in fp32) and ``grad_weight[c0:c0+C] = dZ.T @ hidden`` (each row written
once; deterministic).

Block sizes come from a fixed list of shipped configs (:data:`FWD_CONFIGS`, :data:`BWD_CONFIGS`), picked by a
heuristic rather than a run-time autotuner: the ahead-of-time compile test builds every one of them for sm_90 and
sm_80, and the pick does not vary between runs.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ...backend import interpreter_enabled

# ---------------------------------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------------------------------


@triton.jit
def _logits_tile(h_ptr, w_ptr, rows, cols, row_ok, col_ok, D, stride_h, stride_w,
                 BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """hidden[rows] @ weight[cols].T as a [BLOCK_N, BLOCK_V] fp32 tile, over BLOCK_D slices of D (masked tails)."""
    acc = tl.zeros((BLOCK_N, BLOCK_V), tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        d_ok = dd < D
        a = tl.load(h_ptr + rows[:, None] * stride_h + dd[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        b = tl.load(w_ptr + cols[None, :] * stride_w + dd[:, None], mask=col_ok[None, :] & d_ok[:, None], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    return acc


@triton.jit
def _logprobs_fwd_kernel(
    h_ptr, w_ptr, tgt_ptr, lp_ptr, ent_ptr, lse_ptr, z_ptr,
    N, V, D, stride_h, stride_w, stride_z,
    inv_temperature, ignore_index,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
    STORE_LOGITS: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    tgt = tl.load(tgt_ptr + rows, mask=row_ok, other=ignore_index).to(tl.int64)

    m = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    s = tl.zeros((BLOCK_N,), tl.float32)
    t = tl.zeros((BLOCK_N,), tl.float32)
    zy = tl.zeros((BLOCK_N,), tl.float32)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V).to(tl.int64)
        col_ok = cols < V
        acc = _logits_tile(h_ptr, w_ptr, rows, cols, row_ok, col_ok, D, stride_h, stride_w,
                           BLOCK_N, BLOCK_V, BLOCK_D, DOT_PRECISION)
        z = tl.where(col_ok[None, :], acc * inv_temperature, float("-inf"))
        if STORE_LOGITS:  # fused_policy_loss keeps the chunk's logits / T (fp32) for its d logits pass
            tl.store(z_ptr + rows[:, None] * stride_z + cols[None, :], z, mask=row_ok[:, None] & col_ok[None, :])
        m_new = tl.maximum(m, tl.max(z, 1))
        # padded columns: diff 0 and e 0, so no 0 * inf NaNs are formed even transiently
        diff = tl.where(col_ok[None, :], z - m_new[:, None], 0.0)
        e = tl.where(col_ok[None, :], tl.exp(diff), 0.0)
        alpha = tl.exp(m - m_new)  # 0 on the first tile (m = -inf)
        shift = tl.where(s > 0, m - m_new, 0.0)
        t = alpha * (t + shift * s) + tl.sum(e * diff, 1)
        s = alpha * s + tl.sum(e, 1)
        m = m_new
        zy += tl.sum(tl.where(cols[None, :] == tgt[:, None], z, 0.0), 1)

    log_s = tl.log(s)
    lse = m + log_s
    valid = tgt != ignore_index
    tl.store(lp_ptr + rows, tl.where(valid, zy - lse, 0.0), mask=row_ok)
    tl.store(ent_ptr + rows, tl.where(valid, log_s - t / s, 0.0), mask=row_ok)
    tl.store(lse_ptr + rows, lse, mask=row_ok)


@triton.jit
def _logprobs_bwd_dlogits_kernel(
    h_ptr, w_ptr, tgt_ptr, lse_ptr, ent_ptr, g_ptr, ge_ptr, dz_ptr,
    N, V, D, C, c0, stride_h, stride_w, stride_dz,
    inv_temperature, ignore_index,
    HAS_GE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_v = tl.program_id(1)
    rows = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    local = pid_v.to(tl.int64) * BLOCK_V + tl.arange(0, BLOCK_V)
    cols = c0 + local
    col_ok = (local < C) & (cols < V)

    acc = _logits_tile(h_ptr, w_ptr, rows, cols, row_ok, col_ok, D, stride_h, stride_w,
                       BLOCK_N, BLOCK_V, BLOCK_D, DOT_PRECISION)

    tgt = tl.load(tgt_ptr + rows, mask=row_ok, other=ignore_index).to(tl.int64)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    g = tl.load(g_ptr + rows, mask=row_ok, other=0.0) * inv_temperature
    logp = acc * inv_temperature - lse[:, None]
    p = tl.exp(logp)
    if HAS_GE:
        ent = tl.load(ent_ptr + rows, mask=row_ok, other=0.0)
        ge = tl.load(ge_ptr + rows, mask=row_ok, other=0.0) * inv_temperature
        dz = -p * (g[:, None] + ge[:, None] * (logp + ent[:, None]))
    else:
        dz = -p * g[:, None]
    dz += tl.where(cols[None, :] == tgt[:, None], g[:, None], 0.0)
    dz = tl.where((tgt != ignore_index)[:, None], dz, 0.0)
    tl.store(dz_ptr + rows[:, None] * stride_dz + local[None, :], dz.to(dz_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


# ---------------------------------------------------------------------------------------------------------------------
# configs and launchers
# ---------------------------------------------------------------------------------------------------------------------


class Config(NamedTuple):
    BLOCK_N: int
    BLOCK_V: int
    BLOCK_D: int
    num_warps: int
    num_stages: int


# Shipped configs (every one is compiled for sm_90 and sm_80 by tests/test_aot_compile.py).
FWD_CONFIGS = (
    Config(64, 128, 64, 4, 3),   # 16-bit inputs, the common case
    Config(128, 128, 64, 8, 3),  # 16-bit inputs, many rows
    Config(32, 64, 32, 4, 2),    # fp32 inputs / small problems
)
BWD_CONFIGS = (
    Config(64, 128, 64, 4, 3),
    Config(128, 128, 64, 8, 3),
    Config(32, 64, 32, 4, 2),
)
INTERPRETER_CONFIG = Config(16, 32, 32, 1, 1)  # small tiles keep the NumPy interpreter fast; tl.dot needs >= 16


def configs_for(configs, dtype: str, precision: str):
    """The shipped configs that may run for this input dtype/precision: plain-FMA fp32 ("ieee") uses the small
    tile; tensor-core work (16-bit inputs, or fp32 with TF32) the 64/128-row tiles that map to wgmma on sm_90."""
    if dtype == "fp32" and precision == "ieee":
        return (configs[2],)
    return configs[:2]


def pick_config(configs, n_rows: int, dtype: torch.dtype, precision: str) -> Config:
    if interpreter_enabled():
        return INTERPRETER_CONFIG
    usable = configs_for(configs, "fp32" if dtype == torch.float32 else "16bit", precision)
    if len(usable) == 1:
        return usable[0]
    return usable[1] if n_rows >= 8192 else usable[0]


def _dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` of tl.dot.  fp32 follows PyTorch's own switch so results match torch.matmul's ("ieee"
    unless the user allowed TF32); 16-bit inputs ignore it, and always pass "tf32" so the runtime kernel is the very
    variant the AOT test compiles."""
    if dtype == torch.float32 and not (torch.cuda.is_available() and torch.backends.cuda.matmul.allow_tf32):
        return "ieee"
    return "tf32"


GPU_CHUNK_BYTES = 256 << 20  # dZ chunk budget in the backward on GPU


def _chunk(n_rows: int, vocab: int, elem: int) -> int:
    if interpreter_enabled():
        return max(1, min(vocab, 96))  # several chunks even for tiny test vocabularies
    c = GPU_CHUNK_BYTES // (elem * max(n_rows, 1))
    c = max(1024, c) // 128 * 128
    return max(1, min(vocab, c))


def logprobs_forward_triton(hidden, weight, targets, temperature: float, ignore_index: int, logits_out=None):
    """hidden [N, D], weight [V, D] (same float dtype, unit stride on D), targets [N] -> (lp, ent, lse) fp32 [N].

    ``logits_out`` ([N, V] fp32, unit stride on V), when given, receives logits / temperature.
    """
    n, d = hidden.shape
    v = weight.shape[0]
    lp = torch.empty(n, device=hidden.device, dtype=torch.float32)
    ent = torch.empty(n, device=hidden.device, dtype=torch.float32)
    lse = torch.empty(n, device=hidden.device, dtype=torch.float32)
    if n == 0:
        return lp, ent, lse
    prec = _dot_precision(hidden.dtype)
    cfg = pick_config(FWD_CONFIGS, n, hidden.dtype, prec)
    grid = (triton.cdiv(n, cfg.BLOCK_N),)
    store = logits_out is not None
    _logprobs_fwd_kernel[grid](
        hidden, weight, targets, lp, ent, lse, logits_out if store else lp,
        n, v, d, hidden.stride(0), weight.stride(0), logits_out.stride(0) if store else 0,
        1.0 / temperature, ignore_index,
        BLOCK_N=cfg.BLOCK_N, BLOCK_V=cfg.BLOCK_V, BLOCK_D=cfg.BLOCK_D, DOT_PRECISION=prec, STORE_LOGITS=store,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return lp, ent, lse


def logprobs_backward_triton(hidden, weight, targets, lse, ent, grad_lp, grad_ent, temperature: float,
                             ignore_index: int, need_hidden: bool, need_weight: bool):
    n, d = hidden.shape
    v = weight.shape[0]
    dev = hidden.device
    grad_h32 = torch.zeros(n, d, device=dev, dtype=torch.float32) if need_hidden else None
    grad_w = torch.empty_like(weight) if need_weight else None
    if n == 0 or not (need_hidden or need_weight):
        if grad_w is not None:
            grad_w.zero_()
        return (grad_h32.to(hidden.dtype) if need_hidden else None), grad_w
    g = grad_lp.to(torch.float32).contiguous()
    has_ge = grad_ent is not None
    ge = grad_ent.to(torch.float32).contiguous() if has_ge else g
    prec = _dot_precision(hidden.dtype)
    cfg = pick_config(BWD_CONFIGS, n, hidden.dtype, prec)
    chunk = _chunk(n, v, hidden.element_size())
    dz = torch.empty(n, chunk, device=dev, dtype=hidden.dtype)
    for c0 in range(0, v, chunk):
        c = min(chunk, v - c0)
        dzc = dz[:, :c]
        grid = (triton.cdiv(n, cfg.BLOCK_N), triton.cdiv(c, cfg.BLOCK_V))
        _logprobs_bwd_dlogits_kernel[grid](
            hidden, weight, targets, lse, ent, g, ge, dzc,
            n, v, d, c, c0, hidden.stride(0), weight.stride(0), dzc.stride(0),
            1.0 / temperature, ignore_index,
            HAS_GE=has_ge,
            BLOCK_N=cfg.BLOCK_N, BLOCK_V=cfg.BLOCK_V, BLOCK_D=cfg.BLOCK_D, DOT_PRECISION=prec,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
        wc = weight[c0:c0 + c]
        if need_hidden:
            if hidden.dtype == torch.float32:
                grad_h32.addmm_(dzc, wc)
            else:
                grad_h32.add_(torch.mm(dzc, wc))
        if need_weight:
            torch.mm(dzc.t(), hidden, out=grad_w[c0:c0 + c])
    return (grad_h32.to(hidden.dtype) if need_hidden else None), grad_w


_AOT_VARIANTS = (("fp32", "ieee"), ("fp32", "tf32"), ("fp16", "tf32"), ("bf16", "tf32"))


def aot_specs():
    """Everything tests/test_aot_compile.py compiles: one entry per (kernel, shipped config, dtype, precision).

    ``gemm=True`` marks tensor-core work: on sm_90 its PTX must contain ``wgmma`` (fp32 with ``ieee`` precision
    deliberately uses plain FMA and is exempt).
    """
    specs = []
    for dtype, prec in _AOT_VARIANTS:
        for cfg in configs_for(FWD_CONFIGS, dtype, prec):
            for store in (False, True):
                specs.append(dict(
                    name=(f"logprobs_fwd[{dtype}-{prec}-{cfg.BLOCK_N}x{cfg.BLOCK_V}x{cfg.BLOCK_D}-w{cfg.num_warps}"
                          f"-store{int(store)}]"),
                    fn=_logprobs_fwd_kernel, gemm=prec != "ieee",
                    signature={"h_ptr": f"*{dtype}", "w_ptr": f"*{dtype}", "tgt_ptr": "*i64", "lp_ptr": "*fp32",
                               "ent_ptr": "*fp32", "lse_ptr": "*fp32", "z_ptr": "*fp32", "N": "i32", "V": "i32",
                               "D": "i32", "stride_h": "i32", "stride_w": "i32", "stride_z": "i32",
                               "inv_temperature": "fp32", "ignore_index": "i32"},
                    constexprs={"BLOCK_N": cfg.BLOCK_N, "BLOCK_V": cfg.BLOCK_V, "BLOCK_D": cfg.BLOCK_D,
                                "DOT_PRECISION": prec, "STORE_LOGITS": store},
                    num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                ))
        for cfg in configs_for(BWD_CONFIGS, dtype, prec):
            for has_ge in (False, True):
                specs.append(dict(
                    name=(f"logprobs_bwd_dlogits[{dtype}-{prec}-{cfg.BLOCK_N}x{cfg.BLOCK_V}x{cfg.BLOCK_D}"
                          f"-w{cfg.num_warps}-ge{int(has_ge)}]"),
                    fn=_logprobs_bwd_dlogits_kernel, gemm=prec != "ieee",
                    signature={"h_ptr": f"*{dtype}", "w_ptr": f"*{dtype}", "tgt_ptr": "*i64", "lse_ptr": "*fp32",
                               "ent_ptr": "*fp32", "g_ptr": "*fp32", "ge_ptr": "*fp32", "dz_ptr": f"*{dtype}",
                               "N": "i32", "V": "i32", "D": "i32", "C": "i32", "c0": "i32", "stride_h": "i32",
                               "stride_w": "i32", "stride_dz": "i32", "inv_temperature": "fp32",
                               "ignore_index": "i32"},
                    constexprs={"HAS_GE": has_ge, "BLOCK_N": cfg.BLOCK_N, "BLOCK_V": cfg.BLOCK_V,
                                "BLOCK_D": cfg.BLOCK_D, "DOT_PRECISION": prec},
                    num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                ))
    return specs
