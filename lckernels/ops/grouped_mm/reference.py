"""Readable fp32 PyTorch reference of ``grouped_mm``: the semantics and the test oracle."""

from __future__ import annotations

import torch


def grouped_mm_reference(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """x [M, K] (rows sorted by group), w [G, K, N], offsets [G] cumulative row ends -> [M, N] in x's dtype.

    Group g owns rows ``[offsets[g-1], offsets[g])`` (``offsets[-1] = 0``) and gets ``x[rows] @ w[g]`` (computed in
    fp32).  Rows at or past ``offsets[G-1]`` belong to no group: their output is 0 and they get no gradient.
    Differentiable through autograd w.r.t. x and w.
    """
    pieces = []
    start = 0
    for g, end in enumerate(offsets.tolist()):
        pieces.append(x[start:end].float() @ w[g].float())
        start = end
    pieces.append(x.new_zeros(x.shape[0] - start, w.shape[2], dtype=torch.float32))
    return torch.cat(pieces).to(x.dtype)
