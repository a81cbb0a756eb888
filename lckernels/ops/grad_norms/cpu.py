"""Fast CPU path of ``grad_norms``: one ``torch._foreach_norm`` over every distinct gradient, then per-group sums.

``torch._foreach_norm`` reads each gradient once (ATen's vectorised, multi-threaded norm kernel) and returns one norm
per tensor; a tensor listed in several groups is still read once.  fp16/bf16 gradients go through it with
``dtype=torch.float32`` (accumulated and returned in fp32: without it the per-tensor norm would be rounded to 16 bits
and overflow past 65504); fp32 and fp64 ones without (passing ``dtype`` for fp32 only adds overhead).  The per-group
combination is two tiny ops on a [T] vector: ``square`` and an ``index_add_`` (deterministic on CPU).  Squaring a
per-tensor norm costs a couple of ulps of relative error against summing squares directly, far below anything a
monitor can see.

A C++ kernel in ``csrc/`` would only save the per-tensor dispatch (~2 us a tensor): ATen's norm is already
memory-bound on large tensors (see ``python -m benchmarks.run --op grad_norms``).
"""

from __future__ import annotations

import torch

_LOW = (torch.float16, torch.bfloat16)


def per_tensor_norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """fp32 ``[T]`` L2 norms of ``tensors`` (any float dtypes), fp32 accumulation at least."""
    if all(t.dtype == torch.float32 for t in tensors):
        return torch.stack(torch._foreach_norm(tensors, 2))
    out = [None] * len(tensors)
    buckets: dict[torch.dtype, list[int]] = {}
    for i, t in enumerate(tensors):
        buckets.setdefault(t.dtype, []).append(i)
    for dtype, idx in buckets.items():
        ts = [tensors[i] for i in idx]
        norms = torch._foreach_norm(ts, 2, dtype=torch.float32) if dtype in _LOW else torch._foreach_norm(ts, 2)
        for i, n in zip(idx, norms):
            out[i] = n.float()
    return torch.stack(out)


def grad_norms_cpu(tensors: list[torch.Tensor], members: list[list[int]], squared: bool = False,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """tensors: the distinct gradients (any float dtype, one device); members[g]: indices into ``tensors`` of
    group g.  Returns an fp32 ``[G]`` tensor of (squared) L2 norms; empty groups give 0."""
    n_groups = len(members)
    out = torch.zeros(n_groups, dtype=torch.float32, device=device)
    if n_groups == 0 or not tensors:
        return out
    sq = per_tensor_norms(tensors).square_()
    group_of, tensor_of = [], []
    for g, idx in enumerate(members):
        group_of.extend([g] * len(idx))
        tensor_of.extend(idx)
    if group_of:
        out.index_add_(0, torch.tensor(group_of, device=device), sq[torch.tensor(tensor_of, device=device)])
    return out if squared else out.sqrt_()
