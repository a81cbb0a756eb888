"""A spy for "this op never materializes the [N, V] logits" tests.

Patching ``torch.mm`` sees only calls spelled ``torch.mm``: ``h @ w.T``, ``torch.matmul``, ``torch.addmm``,
``F.linear``, ``Tensor.__matmul__``, an allocation of an [N, V] buffer, or an ATen call made from C++ all slip past
it.  :class:`LargeTensorSpy` is a ``TorchDispatchMode``: it sits below every Python spelling (and below the C++
extension's ``at::`` calls, which go through the same dispatcher), so it sees every ATen op that runs while it is
active -- forward and CPU backward alike -- and records each one whose output has at least ``threshold`` elements.

    with LargeTensorSpy(threshold=n * v) as spy:
        loss = op(...); loss.backward()
    spy.assert_none()        # fails naming the ops and shapes that reached n * v elements
    assert spy.saw_matmul    # the spy was live while the op's GEMMs ran (it cannot pass by watching nothing)

Pick shapes where the op's legitimate outputs stay below ``threshold`` (for example D < N, so that grad_weight
[V, D] has fewer than N * V elements).
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

_MATMUL_OPS = ("mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "addmv", "mv", "dot", "_mm", "_grouped_mm")


class LargeTensorSpy(TorchDispatchMode):
    """Records ``(op name, output shape)`` for every ATen op whose output has ``>= threshold`` elements."""

    def __init__(self, threshold: int):
        super().__init__()
        self.threshold = int(threshold)
        self.hits: list[tuple[str, tuple[int, ...]]] = []
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        self.ops.append(name)
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.numel() >= self.threshold:
                self.hits.append((name, tuple(t.shape)))
        return out

    @property
    def saw_matmul(self) -> bool:
        return any(name in _MATMUL_OPS for name in self.ops)

    def assert_none(self):
        assert not self.hits, (f"{len(self.hits)} op(s) produced a tensor of >= {self.threshold} elements: "
                               f"{self.hits[:8]}")
