"""``moe_experts``: the routed SwiGLU expert MLPs of a mixture-of-experts layer (plus identity "zero-computation"
experts), forward and backward, with a deterministic combine; ``moe_route``: top-k routing from router logits."""

from __future__ import annotations

import torch

from ... import _validate as V
from ...backend import resolve_backend
from .reference import moe_experts_reference
from .routing import moe_route

OP = "moe_experts"

__all__ = ["moe_experts", "moe_route", "moe_experts_reference"]


def _forward(hidden, top_k_index, top_k_weights, gate_up_proj, down_proj, num_identity, impl, explicit, save):
    """-> (out, gate_up saved for backward, permutation, Triton config, CPU extension)."""
    if impl == "triton":
        from .triton import moe_forward_triton

        out, gate_up, perm, cfg = moe_forward_triton(hidden, top_k_index, top_k_weights, gate_up_proj, down_proj)
        return out, gate_up, perm, cfg, None
    from .cpu import extension, moe_forward_cpu

    ext = extension(explicit)
    out, gate_up, perm = moe_forward_cpu(ext, hidden.float().contiguous(), top_k_index,
                                         top_k_weights.float().contiguous(), gate_up_proj.float(), down_proj.float(),
                                         num_identity, save)
    return out.to(hidden.dtype), gate_up, perm, None, ext


class _MoeExperts(torch.autograd.Function):
    """Shared autograd wrapper: ``impl`` is "cpu" (C++ drivers + MKL GEMMs, fp32) or "triton"."""

    @staticmethod
    def forward(ctx, hidden, top_k_index, top_k_weights, gate_up_proj, down_proj, num_identity, impl, explicit):
        out, gate_up, perm, cfg, ops = _forward(hidden, top_k_index, top_k_weights, gate_up_proj, down_proj,
                                                num_identity, impl, explicit, True)
        ctx.extra = (impl, perm, cfg, ops)
        ctx.save_for_backward(hidden, top_k_weights, gate_up_proj, down_proj, gate_up)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, top_k_weights, gate_up_proj, down_proj, gate_up = ctx.saved_tensors
        impl, perm, cfg, ops = ctx.extra
        n = ctx.needs_input_grad
        needs = (n[0], n[2], n[3], n[4])
        if impl == "triton":
            from .triton import moe_backward_triton

            grads = moe_backward_triton(hidden, top_k_weights, gate_up_proj, down_proj, perm, gate_up, cfg,
                                        grad_out, needs)
        else:
            from .cpu import moe_backward_cpu

            grads = moe_backward_cpu(ops, hidden.float().contiguous(), top_k_weights.float().contiguous(),
                                     gate_up_proj.float(), down_proj.float(), perm, gate_up,
                                     grad_out.float().contiguous(), needs)
            grads = tuple(None if g is None else g.to(ref.dtype)
                          for g, ref in zip(grads, (hidden, top_k_weights, gate_up_proj, down_proj)))
        d_hidden, d_weights, d_gate_up, d_down = grads
        return d_hidden, None, d_weights, d_gate_up, d_down, None, None, None


def check_expert_index(op: str, top_k_index: torch.Tensor, num_total: int) -> None:
    """Every expert id must lie in [0, num_total).  CPU: ValueError naming the first bad id.  CUDA: a device-side
    assert (``torch._assert_async``), so the check costs no host synchronization."""
    if top_k_index.numel() == 0:
        return
    bad = (top_k_index < 0) | (top_k_index >= num_total)
    if top_k_index.device.type == "cpu":
        if bool(bad.any()):
            first = top_k_index[bad].flatten()[0].item()
            raise ValueError(f"{op}: `top_k_index` must lie in [0, {num_total}) (E GEMM experts + "
                             f"num_identity_experts); found {first} at {int(bad.sum())} position(s)")
    else:
        torch._assert_async(~bad.any(), f"{op}: `top_k_index` out of range [0, {num_total})")


def _validate(hidden, top_k_index, top_k_weights, gate_up_proj, down_proj, num_identity_experts, activation):
    V.check_tensor(OP, "hidden", hidden, dtypes=V.FLOAT_DTYPES, ndim=2)
    V.check_tensor(OP, "top_k_index", top_k_index, dtypes=V.INDEX_DTYPES, ndim=2)
    V.check_tensor(OP, "top_k_weights", top_k_weights, dtypes=V.FLOAT_DTYPES, ndim=2)
    V.check_tensor(OP, "gate_up_proj", gate_up_proj, dtypes=V.FLOAT_DTYPES, ndim=3)
    V.check_tensor(OP, "down_proj", down_proj, dtypes=V.FLOAT_DTYPES, ndim=3)
    if activation != "silu":
        raise ValueError(f"{OP}: only activation='silu' (SwiGLU experts) is implemented; got {activation!r}")
    if isinstance(num_identity_experts, bool) or not isinstance(num_identity_experts, int) or num_identity_experts < 0:
        raise ValueError(f"{OP}: `num_identity_experts` must be an int >= 0; got {num_identity_experts!r}")
    for name, wt in (("gate_up_proj", gate_up_proj), ("down_proj", down_proj)):
        if wt.dtype != hidden.dtype:
            raise TypeError(f"{OP}: `{name}` dtype {wt.dtype} must match `hidden` dtype {hidden.dtype}; cast one")
    t, h = hidden.shape
    e, two_i, h_gu = gate_up_proj.shape
    if e == 0:
        raise ValueError(f"{OP}: `gate_up_proj` must hold at least one expert; got {tuple(gate_up_proj.shape)}")
    if two_i % 2 or h_gu != h:
        raise ValueError(f"{OP}: `gate_up_proj` must be [E, 2I, H] with H = hidden.shape[1] = {h} and an even "
                         f"second dim; got {tuple(gate_up_proj.shape)}")
    if tuple(down_proj.shape) != (e, h, two_i // 2):
        if down_proj.shape[0] != e:
            raise ValueError(f"{OP}: mismatched expert counts: `gate_up_proj` has E = {e} experts but `down_proj` "
                             f"has {down_proj.shape[0]}")
        raise ValueError(f"{OP}: `down_proj` must be [E, H, I] = [{e}, {h}, {two_i // 2}] to match `gate_up_proj` "
                         f"{tuple(gate_up_proj.shape)}; got {tuple(down_proj.shape)}")
    if top_k_index.shape[0] != t or tuple(top_k_weights.shape) != tuple(top_k_index.shape):
        raise ValueError(f"{OP}: `top_k_index` and `top_k_weights` must both be [T, k] with T = hidden.shape[0] = "
                         f"{t}; got {tuple(top_k_index.shape)} and {tuple(top_k_weights.shape)}")
    if top_k_index.shape[1] == 0:
        raise ValueError(f"{OP}: top_k must be >= 1; got `top_k_index` of shape {tuple(top_k_index.shape)}")
    V.check_same_device(OP, hidden=hidden, top_k_index=top_k_index, top_k_weights=top_k_weights,
                        gate_up_proj=gate_up_proj, down_proj=down_proj)
    check_expert_index(OP, top_k_index, e + num_identity_experts)


def moe_experts(hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor,
                gate_up_proj: torch.Tensor, down_proj: torch.Tensor, *, num_identity_experts: int = 0,
                activation: str = "silu", backend: str = "auto") -> torch.Tensor:
    """The routed experts of a MoE layer: ``out[t] = sum_j top_k_weights[t, j] * expert_{top_k_index[t, j]}(hidden[t])``.

    GEMM expert ``e < E``: ``down_proj[e] @ (silu(gate) * up)`` with ``[gate; up] = gate_up_proj[e] @ x`` (SwiGLU, the
    HF transformers v5 experts layout).  Identity expert ``E <= e < E + num_identity_experts`` (LongCat-Flash's
    "zero-computation" experts): returns the token itself, so it contributes ``weight * hidden[t]`` and costs no GEMM.

    Args:
        hidden: ``[T, H]`` token states (fp32 / fp16 / bf16).
        top_k_index: ``[T, k]`` int64/int32 expert ids in ``[0, E + num_identity_experts)``.
        top_k_weights: ``[T, k]`` routing weights (any float dtype, e.g. fp32 from the router).
        gate_up_proj: ``[E, 2I, H]``, same dtype as ``hidden``: rows ``[0, I)`` gate, ``[I, 2I)`` up.
        down_proj: ``[E, H, I]``, same dtype as ``hidden``.
        num_identity_experts: Z, the number of identity experts after the E GEMM experts.
        activation: ``"silu"`` (SwiGLU); the only one implemented.
        backend: ``"auto"`` | ``"triton"`` | ``"cpu"`` | ``"reference"`` (see :mod:`lckernels.backend`).

    Returns:
        ``[T, H]`` in ``hidden``'s dtype, differentiable w.r.t. ``hidden``, ``top_k_weights``, ``gate_up_proj`` and
        ``down_proj`` (gradients come back in their dtypes).

    Numerics: GEMMs accumulate in fp32 (the CPU path computes in fp32 throughout).  The combine sums each token's k
    slots in a fixed order (no atomics, no ``index_add`` over duplicate indices) and each expert's weight gradient is
    one ragged-K GEMM written once, so forward and backward are deterministic.  The SwiGLU activation is recomputed in
    the backward from the saved ``[gate | up]`` instead of being stored.  The Triton path never synchronizes with the
    host (expert ids are range-checked by a device-side assert on CUDA).

    Example::

        >>> import torch, lckernels
        >>> T, H, I, E, k = 6, 16, 8, 4, 2
        >>> hidden = torch.randn(T, H, requires_grad=True)
        >>> gate_up = (torch.randn(E, 2 * I, H) / 4).requires_grad_()
        >>> down = (torch.randn(E, H, I) / 3).requires_grad_()
        >>> weights, index = lckernels.moe_route(torch.randn(T, E + 1), k, renormalize=True)
        >>> out = lckernels.moe_experts(hidden, index, weights, gate_up, down, num_identity_experts=1)
        >>> out.shape
        torch.Size([6, 16])
        >>> out.sum().backward()
    """
    _validate(hidden, top_k_index, top_k_weights, gate_up_proj, down_proj, num_identity_experts, activation)
    impl = resolve_backend(backend, hidden.device, OP)
    if impl == "reference":
        return moe_experts_reference(hidden, top_k_index, top_k_weights, gate_up_proj, down_proj,
                                     num_identity_experts)
    idx = top_k_index.to(torch.int64).contiguous()
    if impl == "triton":
        hidden = hidden if hidden.stride(-1) == 1 else hidden.contiguous()
        gate_up_proj = gate_up_proj if gate_up_proj.stride(-1) == 1 else gate_up_proj.contiguous()
        down_proj = down_proj if down_proj.stride(-1) == 1 else down_proj.contiguous()
        top_k_weights = top_k_weights.contiguous()
    explicit = backend == "cpu"
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in (hidden, top_k_weights, gate_up_proj,
                                                                        down_proj))):
        # inference / rollouts: nothing is saved for a backward (the CPU path keeps gate_up per work item only)
        return _forward(hidden, idx, top_k_weights, gate_up_proj, down_proj, num_identity_experts, impl, explicit,
                        False)[0]
    return _MoeExperts.apply(hidden, idx, top_k_weights, gate_up_proj, down_proj, num_identity_experts, impl,
                             explicit)
