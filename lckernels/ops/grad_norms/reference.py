"""Readable fp32 PyTorch reference of ``grad_norms``: the semantics and the test oracle.

One Python loop over the tensors of each group; every tensor is upcast to fp32 before it is squared, so fp16/bf16
gradients accumulate in fp32 exactly as the fast paths do.
"""

from __future__ import annotations

import torch


def grad_norms_reference(grouped: dict[str, list[torch.Tensor]], squared: bool = False,
                         device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """``{group: [gradient tensors]}`` -> ``{group: fp32 0-d tensor}``.

    ``norm_g = sqrt(sum_{t in g} sum_i t_i ** 2)`` computed in fp32 (``squared=True`` returns ``norm_g ** 2``
    without the square root).  An empty group gives 0 on ``device``.  NaN/inf in a gradient propagate to its group.
    """
    out = {}
    for name, grads in grouped.items():
        sq = torch.zeros((), dtype=torch.float32, device=device)
        for g in grads:
            sq = sq + g.detach().to(torch.float32).square().sum()
        out[name] = sq if squared else sq.sqrt()
    return out
