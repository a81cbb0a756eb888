"""Comparison helpers for kernel tests."""

from __future__ import annotations

import torch


def max_rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    return ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item() if ref.numel() else 0.0


def assert_close_fp32(out: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-5, name: str = ""):
    """Max-norm relative error within rtol (fp32 kernels vs the fp32 reference)."""
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(out).all(), f"{name}: non-finite values"
    err = max_rel_err(out, ref)
    assert err <= rtol, f"{name}: max relative error {err:.3g} > {rtol:.3g}"


def assert_close_lowp(out: torch.Tensor, ref32: torch.Tensor, same_dtype_torch: torch.Tensor, atol: float,
                      name: str = ""):
    """mamba's rule: |kernel - ref32| <= 2 * |torch in the same low precision - ref32| + atol (max norms)."""
    assert out.shape == ref32.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref32.shape)}"
    assert torch.isfinite(out.float()).all(), f"{name}: non-finite values"
    ref = ref32.detach().double().cpu()
    err_k = (out.detach().double().cpu() - ref).abs().max().item() if ref.numel() else 0.0
    err_t = (same_dtype_torch.detach().double().cpu() - ref).abs().max().item() if ref.numel() else 0.0
    assert err_k <= 2 * err_t + atol, f"{name}: kernel error {err_k:.3g} > 2 x torch error {err_t:.3g} + {atol:.3g}"
