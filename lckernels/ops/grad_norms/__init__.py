"""``grad_norms``: per-group L2 norms of gradients in one pass over the gradient memory."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

import torch

from ...backend import resolve_backend
from .reference import grad_norms_reference

OP = "grad_norms"
GRAD_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_PARAMETER = torch.nn.Parameter

__all__ = ["grad_norms", "grad_norms_reference", "resolve_groups"]


# ---------------------------------------------------------------------------------------------------------------------
# group specs
# ---------------------------------------------------------------------------------------------------------------------


def _matcher(group: str, spec) -> Callable[[str], bool] | None:
    """A name predicate for one group spec (``None`` for the catch-all group)."""
    if spec is None:
        return None
    if isinstance(spec, str):
        try:
            pattern = re.compile(spec)
        except re.error as exc:
            raise ValueError(f"{OP}: group {group!r}: {spec!r} is not a valid regular expression ({exc})") from None
        return lambda name: pattern.search(name) is not None
    if isinstance(spec, re.Pattern):
        return lambda name: spec.search(name) is not None
    if isinstance(spec, (list, tuple, set, frozenset)):
        bad = [s for s in spec if not isinstance(s, str)]
        if bad:
            raise TypeError(f"{OP}: group {group!r}: a list spec must hold parameter names (str); got "
                            f"{type(bad[0]).__name__}")
        names = frozenset(spec)
        return lambda name: name in names
    if callable(spec):
        return lambda name: bool(spec(name))
    raise TypeError(f"{OP}: group {group!r}: unknown group spec of type {type(spec).__name__}; use a regex str, a "
                    "list of names, a callable name -> bool, or None (everything no other group takes)")


def resolve_groups(named_tensors: Iterable, groups: Mapping) -> dict[str, list[torch.Tensor]]:
    """Assign ``(name, tensor)`` pairs to groups: ``{group: [tensors]}`` in the order of ``groups``.

    Spec semantics (per group):

    * ``str`` -- a regular expression searched (``re.search``) in the name: ``"lm_head"`` takes ``lm_head.weight``
      and ``model.lm_head.weight``; anchor it (``"^lm_head\\.weight$"``) for an exact match.  A compiled
      ``re.Pattern`` works the same way.
    * ``list`` / ``tuple`` / ``set`` of ``str`` -- exact parameter names.
    * callable ``name -> bool`` -- a predicate.
    * ``None`` -- every tensor that no other group takes (at most one such group).

    A tensor may belong to several groups (e.g. ``{"total": ".*", "lm_head": "lm_head"}``); within one group a
    tensor listed under several names (tied weights) counts once.
    """
    if not isinstance(groups, Mapping) or not groups:
        raise TypeError(f"{OP}: `groups` must be a non-empty dict group name -> spec; got {groups!r}")
    matchers = {}
    for g, spec in groups.items():
        if not isinstance(g, str):
            raise TypeError(f"{OP}: group names must be str; got {type(g).__name__}")
        matchers[g] = _matcher(g, spec)
    rest = [g for g, m in matchers.items() if m is None]
    if len(rest) > 1:
        raise ValueError(f"{OP}: at most one group may be None (the rest); got {rest}")
    out: dict[str, list[torch.Tensor]] = {g: [] for g in groups}
    seen: dict[str, set[int]] = {g: set() for g in groups}
    for i, item in enumerate(named_tensors):
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise TypeError(f"{OP}: with `groups`, the first argument must yield (name, tensor) pairs such as "
                            f"model.named_parameters(); item {i} is {type(item).__name__}")
        name, tensor = item
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{OP}: parameter {name!r} must be a torch.Tensor; got {type(tensor).__name__}")
        hit = False
        for g, m in matchers.items():
            if m is not None and m(name):
                hit = True
                if id(tensor) not in seen[g]:
                    seen[g].add(id(tensor))
                    out[g].append(tensor)
        if not hit and rest and id(tensor) not in seen[rest[0]]:
            seen[rest[0]].add(id(tensor))
            out[rest[0]].append(tensor)
    if rest:  # a tensor with several names (tied weights) that another group took under another name is not "rest"
        taken = {id(t) for g, ts in out.items() if g != rest[0] for t in ts}
        out[rest[0]] = [t for t in out[rest[0]] if id(t) not in taken]
    return out


# ---------------------------------------------------------------------------------------------------------------------
# input normalisation
# ---------------------------------------------------------------------------------------------------------------------


def _gradient_of(group: str, i: int, t) -> torch.Tensor | None:
    """A Parameter (or any tensor that requires grad) contributes its ``.grad``; any other tensor contributes itself
    (so gradients can be passed directly)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{OP}: group {group!r} item {i} must be a torch.Tensor (parameter or gradient); got "
                        f"{type(t).__name__}")
    cls = type(t)
    is_param = cls is _PARAMETER or (cls is not torch.Tensor and isinstance(t, _PARAMETER))  # (fast path: no
    g = t.grad if (is_param or t.requires_grad) else t                                      # metaclass check)
    if g is None:
        return None
    if g.dtype not in GRAD_DTYPES:
        raise TypeError(f"{OP}: group {group!r} item {i}: gradient dtype must be float32/float16/bfloat16/float64; "
                        f"got {g.dtype}")
    if g.is_sparse:
        g = g.coalesce().values()  # duplicates summed first, so the values' norm is the gradient's norm
    return g.detach() if g.requires_grad else g


class _Collected(NamedTuple):
    names: list[str]                 # group names, in order
    distinct: list[torch.Tensor]     # the distinct gradients that count
    members: list[list[int]]         # members[g]: indices into `distinct` of group g (no duplicates)
    device: torch.device             # where the result lives


def _normalise(params, groups) -> _Collected:
    """Validate the input and collect the gradients: see :class:`_Collected`."""
    if isinstance(params, torch.Tensor):
        raise TypeError(f"{OP}: pass an iterable of parameters, (name, parameter) pairs or a dict group -> tensors; "
                        "got a single tensor (wrap it: [tensor])")
    if isinstance(params, torch.nn.Module):
        raise TypeError(f"{OP}: pass model.named_parameters() (with `groups`) or model.parameters(), not the module")
    if isinstance(params, Mapping):
        if groups is not None:
            raise TypeError(f"{OP}: `groups` must be None when the first argument is already a dict group -> tensors")
        grouped = {}
        for g, ts in params.items():
            if not isinstance(g, str):
                raise TypeError(f"{OP}: group names must be str; got {type(g).__name__}")
            if isinstance(ts, torch.Tensor):
                ts = [ts]
            elif not isinstance(ts, Iterable):
                raise TypeError(f"{OP}: group {g!r} must map to an iterable of tensors; got {type(ts).__name__}")
            grouped[g] = list(ts)
    elif groups is not None:
        if not isinstance(params, Iterable):
            raise TypeError(f"{OP}: the first argument must be an iterable of (name, tensor) pairs; got "
                            f"{type(params).__name__}")
        grouped = resolve_groups(params, groups)
    else:
        if not isinstance(params, Iterable):
            raise TypeError(f"{OP}: the first argument must be an iterable of tensors; got {type(params).__name__}")
        items = list(params)
        if items and all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) for x in items):
            items = [t for _, t in items]  # named_parameters() without groups: one group
        grouped = {"total": items}

    # one pass: each tensor's gradient is looked up once (a tensor in several groups is one distinct entry, read
    # once by the kernels); members[g] are indices into `distinct`, deduplicated within the group (tied weights)
    device = first_name = fallback = None
    slot: dict[int, int] = {}          # id(tensor) -> index into `distinct`, or -1 when it has no gradient
    distinct: list[torch.Tensor] = []
    members: list[list[int]] = []
    for g, ts in grouped.items():
        idx: list[int] = []
        seen: set[int] = set()
        for i, t in enumerate(ts):
            k = slot.get(id(t))
            if k is None:
                grad = _gradient_of(g, i, t)
                if fallback is None:
                    fallback = t.device
                if grad is None:
                    k = -1
                else:
                    if device is None:
                        device, first_name = grad.device, f"group {g!r} item {i}"
                    elif grad.device != device:
                        raise ValueError(f"{OP}: all gradients must be on one device; {first_name} is on {device} "
                                         f"but group {g!r} item {i} is on {grad.device}")
                    k = len(distinct)
                    distinct.append(grad)
                slot[id(t)] = k
            if k >= 0 and k not in seen:
                seen.add(k)
                idx.append(k)
        members.append(idx)
    if device is None:
        device = fallback if fallback is not None else torch.device("cpu")
    return _Collected(list(grouped), distinct, members, device)


# ---------------------------------------------------------------------------------------------------------------------
# public function
# ---------------------------------------------------------------------------------------------------------------------


def grad_norms(params, groups: Mapping | None = None, *, norm_type: float = 2.0, squared: bool = False,
               backend: str = "auto") -> dict[str, torch.Tensor]:
    """Per-group L2 norms of gradients, every gradient read once.

    Args:
        params: one of

            * an iterable of ``(name, tensor)`` pairs (``model.named_parameters()``) with ``groups``;
            * a dict ``{group: iterable of tensors}`` (``groups`` must be None);
            * an iterable of tensors (``model.parameters()``), giving one group ``"total"``.

            A ``Parameter`` (or any tensor with ``requires_grad``) contributes its ``.grad`` and is skipped when
            that is None; any other tensor is taken to *be* a gradient.  Gradients may mix fp32/fp16/bf16/fp64
            (sparse gradients count their coalesced values) but must all be on one device.
        groups: ``{group: spec}`` for the named form; see :func:`resolve_groups` (regex str searched in the name,
            list of exact names, callable ``name -> bool``, or None = every tensor no other group takes).
        norm_type: only ``2.0`` is supported.
        squared: return squared norms (``sum of g**2``; the Dynamic Gradient Gating statistic) instead of norms.
        backend: ``"auto"`` | ``"triton"`` | ``"cpu"`` | ``"reference"`` (see :mod:`lckernels.backend`); ``cpu`` is
            one ``torch._foreach_norm``, ``triton`` a multi-tensor kernel (two launches for any number of tensors).

    Returns:
        ``{group: fp32 0-d tensor}`` on the gradients' device, in the order of the groups -- tensors, not floats, so
        on a GPU nothing waits for the result until you read it (``float(v)``).  An empty group (or one whose
        parameters have no gradient) gives 0.  Squares accumulate in fp32; NaN/inf gradients give NaN/inf norms.

    Example::

        >>> import torch, lckernels
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3))
        >>> model(torch.randn(2, 4)).sum().backward()
        >>> norms = lckernels.grad_norms(model.named_parameters(), groups={"head": r"^1\\.", "rest": None})
        >>> sorted(norms), norms["head"].dtype, norms["head"].shape
        (['head', 'rest'], torch.float32, torch.Size([]))
    """
    if isinstance(norm_type, bool) or not isinstance(norm_type, (int, float)) or float(norm_type) != 2.0:
        raise ValueError(f"{OP}: only norm_type=2.0 is supported; got {norm_type!r}")
    if not isinstance(squared, bool):
        raise TypeError(f"{OP}: `squared` must be a bool; got {type(squared).__name__}")
    col = _normalise(params, groups)
    impl = resolve_backend(backend, col.device, OP)
    with torch.no_grad():
        if impl == "reference":
            grouped = {g: [col.distinct[k] for k in idx] for g, idx in zip(col.names, col.members)}
            return grad_norms_reference(grouped, squared, col.device)
        if impl == "triton":
            from .triton import grad_norms_triton

            vec = grad_norms_triton(col.distinct, col.members, squared, col.device)
        else:
            from .cpu import grad_norms_cpu

            vec = grad_norms_cpu(col.distinct, col.members, squared, col.device)
    return {g: vec[i] for i, g in enumerate(col.names)}
