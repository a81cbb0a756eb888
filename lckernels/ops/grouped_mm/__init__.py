"""``grouped_mm``: one matrix product per group of consecutive rows, ``out[rows_g] = x[rows_g] @ w[g]`` -- the GEMM of
mixture-of-experts layers (rows sorted by expert), differentiable in ``x`` and ``w``."""

from __future__ import annotations

import torch

from ... import _validate as V
from ...backend import resolve_backend
from .reference import grouped_mm_reference

OP = "grouped_mm"

__all__ = ["grouped_mm", "grouped_mm_reference"]


class _GroupedMM(torch.autograd.Function):
    """Shared autograd wrapper: ``impl`` is "cpu" (C++ drivers, fp32) or "triton"."""

    @staticmethod
    def forward(ctx, x, w, offsets, impl, explicit):
        ext = None
        if impl == "triton":
            from .triton import grouped_mm_forward_triton

            out = grouped_mm_forward_triton(x, w, offsets)
        else:
            from .cpu import extension, grouped_mm_forward_cpu

            ext = extension(explicit)
            out = grouped_mm_forward_cpu(ext, x, w, offsets).to(x.dtype)
        ctx.save_for_backward(x, w, offsets)
        ctx.impl = (impl, ext)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, w, offsets = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        impl, ext = ctx.impl
        if impl == "triton":
            from .triton import grouped_mm_backward_triton

            gx, gw = grouped_mm_backward_triton(x, w, offsets, grad_out, need_x, need_w)
        else:
            from .cpu import grouped_mm_backward_cpu

            gx, gw = grouped_mm_backward_cpu(ext, x, w, offsets, grad_out, need_x, need_w)
            gx = gx.to(x.dtype) if gx is not None else None
            gw = gw.to(w.dtype) if gw is not None else None
        return gx, gw, None, None, None


def check_offsets(op: str, offsets: torch.Tensor, num_rows: int) -> None:
    """offsets must be non-decreasing in [0, num_rows].  On CPU a ValueError; on CUDA a device-side assert
    (``torch._assert_async``) so the check costs no host synchronization."""
    if offsets.numel() == 0:
        return
    prev = torch.cat([offsets.new_zeros(1), offsets[:-1]])
    bad = (offsets < prev) | (offsets > num_rows)
    if offsets.device.type == "cpu":
        if bool(bad.any()):
            raise ValueError(f"{op}: `offsets` must be non-decreasing cumulative row ends in [0, {num_rows}] "
                             f"(num rows); got {offsets.tolist()}")
    else:
        torch._assert_async(~bad.any(), f"{op}: `offsets` must be non-decreasing cumulative row ends in [0, M]")


def _validate(x, w, offsets):
    V.check_tensor(OP, "x", x, dtypes=V.FLOAT_DTYPES, ndim=2)
    V.check_tensor(OP, "w", w, dtypes=V.FLOAT_DTYPES, ndim=3)
    V.check_tensor(OP, "offsets", offsets, dtypes=V.INDEX_DTYPES, ndim=1)
    if w.dtype != x.dtype:
        raise TypeError(f"{OP}: `w` dtype {w.dtype} must match `x` dtype {x.dtype}; cast one")
    if w.shape[1] != x.shape[1]:
        raise ValueError(f"{OP}: `w` must be [G, K, N] with K = x.shape[1] = {x.shape[1]}; got {tuple(w.shape)}")
    if offsets.shape[0] != w.shape[0]:
        raise ValueError(f"{OP}: `offsets` must have one entry per group, G = w.shape[0] = {w.shape[0]}; "
                         f"got {offsets.shape[0]}")
    V.check_same_device(OP, x=x, w=w, offsets=offsets)
    check_offsets(OP, offsets, x.shape[0])


def grouped_mm(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """Grouped matrix product over rows sorted by group: ``out[rows_g] = x[rows_g] @ w[g]``.

    Args:
        x: ``[M, K]`` rows sorted by group (fp32 / fp16 / bf16).
        w: ``[G, K, N]`` one matrix per group, same dtype as ``x`` (any strides: ``W.transpose(1, 2)`` of an
            ``[G, N, K]`` weight is free).
        offsets: ``[G]`` int32/int64 cumulative row ends: group g owns rows ``[offsets[g-1], offsets[g])``
            (``offsets[-1] = 0``); non-decreasing, at most M.  Empty groups are fine.  Rows at or past
            ``offsets[G-1]`` belong to no group: their output is 0 and they get no gradient.
        backend: ``"auto"`` | ``"triton"`` | ``"cpu"`` | ``"reference"`` (see :mod:`lckernels.backend`).

    Returns:
        ``[M, N]`` in ``x``'s dtype, differentiable w.r.t. ``x`` and ``w``.

    Numerics: products accumulate in fp32 (the CPU path computes in fp32 throughout).  The weight gradient of each
    group is one ragged-K GEMM written once -- deterministic, no atomics.  On CUDA ``offsets`` are checked by a
    device-side assert (no host sync) and the Triton path never reads sizes back to the host.

    Example::

        >>> import torch, lckernels
        >>> x = torch.randn(10, 8, requires_grad=True); w = torch.randn(3, 8, 4, requires_grad=True)
        >>> offsets = torch.tensor([4, 4, 10], dtype=torch.int32)   # group 1 is empty
        >>> y = lckernels.grouped_mm(x, w, offsets)
        >>> y.shape, bool(torch.allclose(y[4:], x[4:] @ w[2], atol=1e-5))
        (torch.Size([10, 4]), True)
        >>> y.sum().backward()
    """
    _validate(x, w, offsets)
    impl = resolve_backend(backend, x.device, OP)
    if impl == "reference":
        return grouped_mm_reference(x, w, offsets)
    return _GroupedMM.apply(x, w, offsets.to(torch.int64).contiguous(), impl, backend == "cpu")
