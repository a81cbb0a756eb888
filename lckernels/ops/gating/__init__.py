"""``soft_gaussian_gate``: MASPO's mass-adaptive soft Gaussian trust-region gate, elementwise."""

from __future__ import annotations

import torch

from ... import _ext
from ... import _validate as V
from ...backend import resolve_backend
from .reference import soft_gaussian_gate_reference

OP = "soft_gaussian_gate"

__all__ = ["soft_gaussian_gate", "soft_gaussian_gate_reference"]


def soft_gaussian_gate(ratio: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, *,
                       sigma_base: float = 1.0, alpha: float = 0.3, beta_pos: float = 0.03, beta_neg: float = 0.03,
                       sigma_high: float = 10.0, a_low: float = 0.1, a_high: float = 10.0,
                       backend: str = "auto") -> torch.Tensor:
    """MASPO gate w (arXiv 2602.17550, formula from the authors' code); see :mod:`lckernels.ops.gating.reference`.

    Args:
        ratio: importance ratio pi / pi_old, any shape (e.g. ``[B, T]``).
        old_logprobs: log pi_old, broadcastable to ``ratio``.
        advantages: advantages, broadcastable to ``ratio`` (``[B, 1]`` for per-sequence values).
        sigma_base, alpha, beta_pos, beta_neg, sigma_high, a_low, a_high: the gate's parameters (paper defaults).
        backend: ``"auto"`` | ``"triton"`` | ``"cpu"`` | ``"reference"``.

    Returns:
        fp32 tensor shaped like the broadcast inputs, in (0, 1]; detached (MASPO uses the gate as a stop-gradient
        weight: per-token loss ``-A * w * ratio``).

    Example::

        >>> import torch, lckernels
        >>> r = torch.tensor([1.5, 0.5, 1.5]); old = torch.tensor([-0.1, -0.1, -3.0]); a = torch.tensor([1.0, 1.0, -1.0])
        >>> lckernels.soft_gaussian_gate(r, old, a)   # A > 0, r > 1 gated; the other two untouched
        tensor([0.8950, 1.0000, 1.0000])
    """
    for name, x in (("ratio", ratio), ("old_logprobs", old_logprobs), ("advantages", advantages)):
        V.check_tensor(OP, name, x, dtypes=V.FLOAT_DTYPES)
    params = {}
    for name, value, positive in (("sigma_base", sigma_base, True), ("alpha", alpha, False),
                                  ("beta_pos", beta_pos, False), ("beta_neg", beta_neg, False),
                                  ("sigma_high", sigma_high, True), ("a_low", a_low, True), ("a_high", a_high, True)):
        params[name] = V.check_float(OP, name, value, positive=positive)
        if not positive and params[name] < 0:
            raise ValueError(f"{OP}: `{name}` must be >= 0; got {value}")
    if params["sigma_base"] > params["sigma_high"] or params["a_low"] > params["a_high"]:
        raise ValueError(f"{OP}: need sigma_base <= sigma_high and a_low <= a_high; got {params}")
    device = V.check_same_device(OP, ratio=ratio, old_logprobs=old_logprobs, advantages=advantages)
    try:
        shape = torch.broadcast_shapes(ratio.shape, old_logprobs.shape, advantages.shape)
    except RuntimeError:
        raise ValueError(f"{OP}: `ratio` {tuple(ratio.shape)}, `old_logprobs` {tuple(old_logprobs.shape)} and "
                         f"`advantages` {tuple(advantages.shape)} do not broadcast") from None
    impl = resolve_backend(backend, device, OP)
    if impl == "reference":
        return soft_gaussian_gate_reference(ratio, old_logprobs, advantages, **params)
    r, old, adv = (x.detach().float().expand(shape).contiguous() for x in (ratio, old_logprobs, advantages))
    if impl == "triton":
        from .triton import soft_gaussian_gate_triton

        return soft_gaussian_gate_triton(r, old, adv, params)
    ext = _ext.require(OP) if backend == "cpu" else _ext.load()
    if ext is None:
        _ext.warn_fallback(OP)
        return soft_gaussian_gate_reference(r, old, adv, **params)
    return ext.soft_gaussian_gate(r, old, adv, params["sigma_base"], params["alpha"], params["beta_pos"],
                                  params["beta_neg"], params["sigma_high"], params["a_low"], params["a_high"])
