"""Triton kernel of MASPO's soft Gaussian gate: one elementwise pass over flattened fp32 inputs."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...backend import interpreter_enabled


@triton.jit
def _soft_gaussian_gate_kernel(
    r_ptr, old_ptr, adv_ptr, out_ptr, n,
    sigma_base, alpha, beta_pos, beta_neg, sigma_high, a_low, a_high,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    r = tl.load(r_ptr + offs, mask=ok, other=1.0)
    old = tl.load(old_ptr + offs, mask=ok, other=0.0)
    a = tl.load(adv_ptr + offs, mask=ok, other=0.0)
    mass = tl.minimum(tl.maximum(sigma_base * tl.exp(-alpha * old), sigma_base), sigma_high)
    s_pos = mass * tl.minimum(tl.maximum(1.0 + beta_pos * a, a_low), a_high)
    s_neg = mass * tl.minimum(tl.maximum(1.0 / (1.0 - beta_neg * tl.minimum(a, 0.0)), a_low), a_high)
    pos = (a > 0.0) & (r > 1.0)
    neg = (a < 0.0) & (r < 1.0)
    s = tl.where(pos, s_pos, s_neg)
    d = r - 1.0
    w = tl.where(pos | neg, tl.exp(-d * d / (2.0 * s * s)), 1.0)
    tl.store(out_ptr + offs, w, mask=ok)


BLOCK = 1024
NUM_WARPS = 4


def soft_gaussian_gate_triton(r, old, adv, params: dict) -> torch.Tensor:
    """r, old, adv: contiguous fp32 tensors of one shape -> gate, same shape."""
    out = torch.empty_like(r)
    n = r.numel()
    if n == 0:
        return out
    block = 128 if interpreter_enabled() else BLOCK
    _soft_gaussian_gate_kernel[(triton.cdiv(n, block),)](
        r, old, adv, out, n,
        params["sigma_base"], params["alpha"], params["beta_pos"], params["beta_neg"], params["sigma_high"],
        params["a_low"], params["a_high"], BLOCK=block, num_warps=NUM_WARPS,
    )
    return out


def aot_specs():
    return [dict(
        name="soft_gaussian_gate", fn=_soft_gaussian_gate_kernel, gemm=False,
        signature={"r_ptr": "*fp32", "old_ptr": "*fp32", "adv_ptr": "*fp32", "out_ptr": "*fp32", "n": "i32",
                   "sigma_base": "fp32", "alpha": "fp32", "beta_pos": "fp32", "beta_neg": "fp32",
                   "sigma_high": "fp32", "a_low": "fp32", "a_high": "fp32"},
        constexprs={"BLOCK": BLOCK}, num_warps=NUM_WARPS, num_stages=1,
    )]
