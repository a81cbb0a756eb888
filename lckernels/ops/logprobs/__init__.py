"""``fused_logprobs``: per-token log-probability (and entropy) of the target under ``softmax(hidden @ weight.T / T)``,
streamed over vocabulary tiles so the [N, V] logits are never built."""

from __future__ import annotations

import torch

from ... import _validate as V
from ...backend import resolve_backend
from .reference import logprobs_reference

OP = "fused_logprobs"

__all__ = ["fused_logprobs", "logprobs_reference"]


class _FusedLogprobs(torch.autograd.Function):
    """Shared autograd wrapper: ``impl`` is "cpu" (C++ chunk kernels or their ATen fallback) or "triton"."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, ignore_index, impl, explicit):
        if impl == "triton":
            from .triton import logprobs_forward_triton

            lp, ent, lse = logprobs_forward_triton(hidden, weight, targets, temperature, ignore_index)
            ops = None
        else:
            from .cpu import chunk_ops, logprobs_forward_cpu

            ops = chunk_ops(explicit)
            lp, ent, lse = logprobs_forward_cpu(ops, hidden, weight, targets, temperature, ignore_index)
        ctx.save_for_backward(hidden, weight, targets, lse, ent)
        ctx.cfg = (temperature, ignore_index, impl, ops)
        ctx.mark_non_differentiable(lse)
        return lp, ent, lse

    @staticmethod
    def backward(ctx, grad_lp, grad_ent, _grad_lse):
        hidden, weight, targets, lse, ent = ctx.saved_tensors
        temperature, ignore_index, impl, ops = ctx.cfg
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if grad_lp is None:
            grad_lp = torch.zeros_like(lse)
        if impl == "triton":
            from .triton import logprobs_backward_triton

            gh, gw = logprobs_backward_triton(hidden, weight, targets, lse, ent, grad_lp, grad_ent, temperature,
                                              ignore_index, need_h, need_w)
        else:
            from .cpu import logprobs_backward_cpu

            gh, gw = logprobs_backward_cpu(ops, hidden, weight, targets, lse, ent, grad_lp, grad_ent, temperature,
                                           ignore_index, need_h, need_w)
        return gh, gw, None, None, None, None, None


def _validate(hidden, weight, targets, temperature, ignore_index):
    V.check_tensor(OP, "hidden", hidden, dtypes=V.FLOAT_DTYPES, ndim=(2, 3))
    V.check_tensor(OP, "weight", weight, dtypes=V.FLOAT_DTYPES, ndim=2)
    V.check_tensor(OP, "targets", targets, dtypes=V.INDEX_DTYPES)
    if weight.dtype != hidden.dtype:
        raise TypeError(f"{OP}: `weight` dtype {weight.dtype} must match `hidden` dtype {hidden.dtype}; cast one")
    if weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"{OP}: `weight` must be [V, D] with D = hidden.shape[-1] = {hidden.shape[-1]}; "
                         f"got weight {tuple(weight.shape)}")
    if weight.shape[0] == 0:
        raise ValueError(f"{OP}: `weight` must have at least one vocabulary row; got {tuple(weight.shape)}")
    if tuple(targets.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(f"{OP}: `targets` must have shape {tuple(hidden.shape[:-1])} (hidden.shape[:-1]); "
                         f"got {tuple(targets.shape)}")
    V.check_same_device(OP, hidden=hidden, weight=weight, targets=targets)
    temperature = V.check_float(OP, "temperature", temperature, positive=True)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"{OP}: `ignore_index` must be an int; got {type(ignore_index).__name__}")
    V.check_targets(OP, targets, weight.shape[0], ignore_index)
    return temperature


def fused_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, temperature: float = 1.0,
                   return_entropy: bool = False, ignore_index: int = -100, backend: str = "auto"):
    """Log-probability of each target token (and the entropy of each position) without building the logits.

    Args:
        hidden: ``[N, D]`` or ``[B, T, D]`` hidden states (fp32 / fp16 / bf16).
        weight: ``[V, D]`` lm_head weight, same dtype as ``hidden``.
        targets: ``[N]`` or ``[B, T]`` int64/int32 token ids in ``[0, V)``; ``ignore_index`` marks masked positions.
        temperature: logits are ``hidden @ weight.T / temperature`` (> 0).
        return_entropy: also return the entropy ``-sum_v p log p`` of each position.
        ignore_index: target id that masks a position: its outputs are 0 and it gets no gradient.
        backend: ``"auto"`` | ``"triton"`` | ``"cpu"`` | ``"reference"`` (see :mod:`lckernels.backend`).

    Returns:
        ``logprobs`` shaped like ``targets``, fp32, differentiable w.r.t. ``hidden`` and ``weight``; with
        ``return_entropy=True`` a tuple ``(logprobs, entropy)``, both fp32 and differentiable.

    Numerics: logits, logsumexp and entropy accumulate in fp32 whatever the input dtype; the forward is
    deterministic (no atomics), so calling it twice on the same inputs gives bit-identical log-probs.

    Example::

        >>> import torch, lckernels
        >>> h = torch.randn(2, 5, 16, requires_grad=True); w = torch.randn(100, 16, requires_grad=True)
        >>> y = torch.randint(0, 100, (2, 5))
        >>> lp, ent = lckernels.fused_logprobs(h, w, y, return_entropy=True)
        >>> lp.shape, ent.shape
        (torch.Size([2, 5]), torch.Size([2, 5]))
        >>> lp.sum().backward()
    """
    temperature = _validate(hidden, weight, targets, temperature, ignore_index)
    impl = resolve_backend(backend, hidden.device, OP)
    if impl == "reference":
        out = logprobs_reference(hidden, weight, targets, temperature, True, ignore_index)
        return out if return_entropy else out[0]
    lead = hidden.shape[:-1]
    h2 = hidden.reshape(-1, hidden.shape[-1])
    if h2.stride(-1) != 1:
        h2 = h2.contiguous()
    w = weight if weight.stride(-1) == 1 else weight.contiguous()
    y = targets.reshape(-1).to(torch.int64).contiguous()
    lp, ent, _ = _FusedLogprobs.apply(h2, w, y, temperature, ignore_index, impl, backend == "cpu")
    lp = lp.reshape(lead)
    if return_entropy:
        return lp, ent.reshape(lead)
    return lp
