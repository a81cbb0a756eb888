"""``GradNormMonitor``: per-step gradient norms of named parameter groups (thin wrapper over :func:`grad_norms`)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import torch

from .ops.grad_norms import grad_norms, resolve_groups

__all__ = ["GradNormMonitor"]

DEFAULT_GROUPS = {"lm_head": "lm_head", "rest": None}


class GradNormMonitor:
    """Records per-group gradient L2 norms after each backward, in one pass over the gradients.

    Args:
        model: an ``nn.Module`` or an iterable of ``(name, parameter)`` pairs.  For a module, tied weights are seen
            under every name (``named_parameters(remove_duplicate=False)``), so an lm_head tied to the embedding
            still falls in the ``"lm_head"`` group.
        groups: ``{group: spec}`` (default ``{"lm_head": "lm_head", "rest": None}``).  A ``str`` spec is a regular
            expression searched in the parameter name (``"lm_head"`` takes ``lm_head.weight`` and
            ``model.lm_head.weight``; anchor it for exact matches), a list holds exact names, a callable is a
            ``name -> bool`` predicate and ``None`` takes every parameter no other group takes.  Groups are resolved
            once, here; a group that matches no parameter warns (its norm is then always 0).
        backend: passed to :func:`lckernels.grad_norms`.
        max_history: keep only the last ``max_history`` entries of :attr:`history` (None: all).

    Attributes:
        history: list of ``{group: norm}`` dicts (floats), one per :meth:`step`.
        last: the latest ``{group: norm}`` (None before the first step); ``last_sq`` the same, squared.

    Example::

        >>> import torch, lckernels
        >>> model = torch.nn.ModuleDict({"body": torch.nn.Linear(4, 8), "lm_head": torch.nn.Linear(8, 5)})
        >>> monitor = lckernels.GradNormMonitor(model)
        >>> model["lm_head"](model["body"](torch.randn(3, 4))).sum().backward()
        >>> sorted(monitor.step())
        ['lm_head', 'rest']
        >>> len(monitor.history)
        1
    """

    def __init__(self, model, groups: Mapping | None = None, *, backend: str = "auto",
                 max_history: int | None = None):
        groups = dict(DEFAULT_GROUPS if groups is None else groups)
        if isinstance(model, torch.nn.Module):
            named = list(model.named_parameters(remove_duplicate=False))
        else:
            named = list(model)
        self.groups: dict[str, list[torch.Tensor]] = resolve_groups(named, groups)
        empty = [g for g, ps in self.groups.items() if not ps]
        if empty:
            warnings.warn(f"GradNormMonitor: group(s) {empty} match no parameter; their norms will be 0",
                          UserWarning, stacklevel=2)
        if max_history is not None and (isinstance(max_history, bool) or not isinstance(max_history, int)
                                        or max_history < 1):
            raise ValueError(f"GradNormMonitor: `max_history` must be a positive int or None; got {max_history!r}")
        self.backend = backend
        self.max_history = max_history
        self.history: list[dict[str, float]] = []
        self.last: dict[str, float] | None = None
        self.last_sq: dict[str, float] | None = None

    def step(self, precomputed_sq_norms: Mapping[str, float] | None = None) -> dict[str, float]:
        """Norms of the current gradients (call after backward, before ``optimizer.step()``/``zero_grad()``).

        Args:
            precomputed_sq_norms: ``{group: squared norm}`` already known, e.g.
                ``{"lm_head": stats["lm_head_grad_sq_norm"]}`` from :func:`lckernels.fused_policy_loss`; those groups
                are not read again (their norm is the square root).  A value of ``None`` means "not available,
                compute it".  The value must describe the gradient actually in ``.grad``: scale it by ``c**2`` if
                the loss was multiplied by ``c`` before backward, and do not use it with gradient accumulation over
                several micro-batches (the squared norm of a sum is not the sum of squared norms).

        Returns:
            ``{group: norm}`` as floats (one device-to-host sync), also appended to :attr:`history`.
        """
        pre = {}
        for g, v in (precomputed_sq_norms or {}).items():
            if g not in self.groups:
                raise ValueError(f"GradNormMonitor.step: unknown group {g!r} in precomputed_sq_norms; groups are "
                                 f"{list(self.groups)}")
            if v is None:
                continue
            v = float(v)
            if v < 0:
                raise ValueError(f"GradNormMonitor.step: precomputed squared norm of {g!r} must be >= 0; got {v}")
            pre[g] = v
        todo = {g: ps for g, ps in self.groups.items() if g not in pre}
        computed: dict[str, float] = {}
        if todo:
            sq = grad_norms(todo, squared=True, backend=self.backend)
            values = torch.stack(list(sq.values())).tolist()  # one sync for all groups
            computed = dict(zip(sq, values))
        self.last_sq = {g: pre[g] if g in pre else computed[g] for g in self.groups}
        self.last = {g: math.sqrt(v) if v == v and v >= 0 else v for g, v in self.last_sq.items()}
        self.history.append(self.last)
        if self.max_history is not None and len(self.history) > self.max_history:
            del self.history[: len(self.history) - self.max_history]
        return dict(self.last)

    def series(self, group: str) -> list[float]:
        """The recorded norms of one group, oldest first."""
        if group not in self.groups:
            raise ValueError(f"GradNormMonitor: unknown group {group!r}; groups are {list(self.groups)}")
        return [h[group] for h in self.history]

    def __repr__(self) -> str:
        sizes = {g: len(ps) for g, ps in self.groups.items()}
        return f"GradNormMonitor(groups={sizes}, steps={len(self.history)})"
