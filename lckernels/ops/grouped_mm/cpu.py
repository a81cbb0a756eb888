"""Fast CPU path of ``grouped_mm``: the C++ drivers ``lckernels._C.grouped_mm_rows`` / ``grouped_mm_tn``.

Each runs one OpenMP region over work items -- a block of one group's rows for ``out[rows_g] = x[rows_g] @ w[g]``
and ``grad_x``, one group (or a column block of it when there are few groups) for the ragged-K weight gradient
``grad_w[g] = x[rows_g].T @ grad_out[rows_g]`` -- with a single-threaded MKL SGEMM per item.  A Python loop of
``torch.mm(out=slice)`` per group (the ATen fallback below) forks and joins every thread once per GEMM instead.
``torch._grouped_mm`` on CPU (torch 2.13) is such a loop of per-group matmuls as well.  Forward + backward, fp32,
2 threads, 16384 rows over 64 groups, K = N = 512 (median of 7): this driver 185 ms, the Python loop 207 ms,
``torch._grouped_mm`` 204 ms.

On CPU reading the group boundaries costs nothing (no device to synchronize with).  Everything is computed in fp32:
16-bit inputs are upcast first and the results cast back by the caller.
"""

from __future__ import annotations

import torch

from ... import _ext

OP = "grouped_mm"
BLOCK_ROWS = 256  # rows per work item: one MKL SGEMM block


def extension(explicit: bool):
    """lckernels._C for the drivers; for ``auto`` without it, None and a one-time warning (ATen loop fallback)."""
    if explicit:
        ext = _ext.require(OP)
        if not hasattr(ext, "grouped_mm_rows"):
            raise RuntimeError(f"{OP}: backend='cpu' needs lckernels._C rebuilt with csrc/grouped_mm; "
                               f"{_ext.REBUILD_HINT}")
        return ext
    ext = _ext.load()
    if ext is None or not hasattr(ext, "grouped_mm_rows"):
        _ext.warn_fallback(OP)
        return None
    return ext


def bounds_of(offsets: torch.Tensor) -> list[tuple[int, int, int]]:
    """``[(group, start, end), ...]`` for the non-empty groups (host ints)."""
    out, start = [], 0
    for g, end in enumerate(offsets.tolist()):
        if end > start:
            out.append((g, start, end))
        start = max(start, end)
    return out


def mm_rows(ext, a: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out[rows_g] = a[rows_g] @ w[g] (``w`` [G, K, N], any strides); rows past offsets[-1] are set to 0."""
    if ext is not None:
        ext.grouped_mm_rows(a, w, offsets, out, BLOCK_ROWS)
    else:
        for g, s, e in bounds_of(offsets):
            torch.mm(a[s:e], w[g], out=out[s:e])
    end = int(offsets[-1]) if offsets.numel() else 0
    out[end:].zero_()
    return out


def mm_tn(ext, a: torch.Tensor, b: torch.Tensor, offsets: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out[g] = a[rows_g].T @ b[rows_g] ([G, P, Q]); groups without rows get zeros; each out[g] written once."""
    if ext is not None:
        ext.grouped_mm_tn(a, b, offsets, out)
        return out
    out.zero_()
    for g, s, e in bounds_of(offsets):
        torch.mm(a[s:e].t(), b[s:e], out=out[g])
    return out


def grouped_mm_forward_cpu(ext, x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """x [M, K], w [G, K, N], offsets [G] int64 -> [M, N] fp32 (rows past offsets[-1] are 0)."""
    out = torch.empty(x.shape[0], w.shape[2], dtype=torch.float32)
    return mm_rows(ext, x.float(), w.float(), offsets, out)


def grouped_mm_backward_cpu(ext, x, w, offsets, grad_out, need_x: bool, need_w: bool):
    """(grad_x fp32 [M, K], grad_w fp32 [G, K, N]) of ``grouped_mm``; None where not needed."""
    x32, w32, g32 = x.float(), w.float(), grad_out.float()
    gx = gw = None
    if need_x:
        gx = mm_rows(ext, g32, w32.transpose(1, 2), offsets, torch.empty(x.shape, dtype=torch.float32))
    if need_w:
        gw = mm_tn(ext, x32, g32.contiguous(), offsets, torch.empty(w.shape, dtype=torch.float32))
    return gx, gw
