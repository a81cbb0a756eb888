"""``fused_policy_loss``: hidden states -> log-prob -> importance ratio -> clip / soft gate -> loss, with gradients,
in one streaming pass that never builds the N x V logits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from ... import _validate as V
from ...backend import BACKENDS, resolve_backend
from .config import KLS, LOSS_AGGS, PolicyLossConfig
from .math import LOG_RATIO_CLAMP, aggregation_weights, clamped_log_ratio, kl_term, maspo_gate, policy_loss_math
from .reference import policy_loss_reference

OP = "fused_policy_loss"

__all__ = ["fused_policy_loss", "policy_loss_from_logprobs", "PolicyLossConfig", "PolicyLossOutput", "maspo_gate",
           "loss_agg_weights", "log_ratio", "kl_estimate", "LOG_RATIO_CLAMP"]


@dataclass
class PolicyLossOutput:
    """``loss``: scalar, differentiable w.r.t. hidden and weight.  ``logprobs``: [B, T] fp32, detached (0 on masked
    tokens; reuse as the next epoch's ``old_logprobs``).  ``stats``: floats -- clip_frac_low / clip_frac_high,
    gate_mean, masked_frac, nonfinite_frac, entropy_mean, kl_mean, ratio_mean, valid_tokens and
    lm_head_grad_sq_norm (||d loss / d weight||^2 for a unit upstream gradient; NaN on the reference backend and
    when ``weight`` does not require grad)."""

    loss: torch.Tensor
    logprobs: torch.Tensor
    stats: dict = field(default_factory=dict)


class _FusedPolicyLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, kernels, targets, advantages, old, mask, rollout, ref, pg_weight, cfg, need_h,
                need_w, out):
        from .fused import run_fused

        b, t, d = hidden.shape
        h2 = hidden.reshape(b * t, d)
        if h2.stride(-1) != 1:
            h2 = h2.contiguous()
        w = weight if weight.stride(-1) == 1 else weight.contiguous()
        res = run_fused(kernels, h2, w, targets, advantages, old, mask, rollout, ref, cfg, need_h, need_w, pg_weight)
        out["stats"] = res.stats
        gh = res.grad_hidden.reshape(b, t, d) if res.grad_hidden is not None else None
        ctx.save_for_backward(*(x for x in (gh, res.grad_weight) if x is not None))
        ctx.has = (gh is not None, res.grad_weight is not None)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        logprobs = res.logprobs.reshape(b, t)
        ctx.mark_non_differentiable(logprobs)
        return res.loss, logprobs

    @staticmethod
    def backward(ctx, grad_loss, _grad_lp):
        saved = list(ctx.saved_tensors)
        gh = saved.pop(0) if ctx.has[0] else None
        gw = saved.pop(0) if ctx.has[1] else None
        # the usual upstream gradient is exactly 1: hand the saved fp32 gradients over without another V x D copy
        unit = grad_loss.numel() == 1 and bool(grad_loss == 1)
        if gh is not None:
            gh = (gh if unit else gh * grad_loss).to(ctx.dtypes[0])
        if gw is not None:
            gw = (gw if unit else gw * grad_loss).to(ctx.dtypes[1])
        return (gh, gw) + (None,) * 12


def _check_pg_weight(op, pg_weight, shape):
    """pg_weight: float [B, T] (finiteness and >= 0 on valid tokens are checked by the loss math)."""
    if pg_weight is None:
        return
    V.check_tensor(op, "pg_weight", pg_weight, dtypes=V.FLOAT_DTYPES, ndim=2)
    if tuple(pg_weight.shape) != tuple(shape):
        raise ValueError(f"{op}: `pg_weight` must have shape [B, T] = {tuple(shape)}; got {tuple(pg_weight.shape)}")


def _validate(hidden, weight, targets, advantages, old, mask, rollout, ref, cfg, pg_weight=None):
    V.check_tensor(OP, "hidden", hidden, dtypes=V.FLOAT_DTYPES, ndim=3)
    V.check_tensor(OP, "weight", weight, dtypes=V.FLOAT_DTYPES, ndim=2)
    V.check_tensor(OP, "targets", targets, dtypes=V.INDEX_DTYPES, ndim=2)
    if weight.dtype != hidden.dtype:
        raise TypeError(f"{OP}: `weight` dtype {weight.dtype} must match `hidden` dtype {hidden.dtype}; cast one")
    b, t, d = hidden.shape
    if weight.shape[1] != d or weight.shape[0] == 0:
        raise ValueError(f"{OP}: `weight` must be [V, D] with V >= 1 and D = hidden.shape[-1] = {d}; "
                         f"got {tuple(weight.shape)}")
    if tuple(targets.shape) != (b, t):
        raise ValueError(f"{OP}: `targets` must have shape [B, T] = {(b, t)}; got {tuple(targets.shape)}")
    V.check_tensor(OP, "advantages", advantages, dtypes=V.FLOAT_DTYPES, ndim=(1, 2))
    if tuple(advantages.shape) not in ((b,), (b, t)):
        raise ValueError(f"{OP}: `advantages` must be [B] = {(b,)} (per sequence) or [B, T] = {(b, t)} (per token); "
                         f"got {tuple(advantages.shape)}")
    for name, x in (("old_logprobs", old), ("rollout_logprobs", rollout), ("ref_logprobs", ref)):
        if x is not None:
            V.check_tensor(OP, name, x, dtypes=V.FLOAT_DTYPES, ndim=2)
            if tuple(x.shape) != (b, t):
                raise ValueError(f"{OP}: `{name}` must have shape [B, T] = {(b, t)}; got {tuple(x.shape)}")
    if mask is not None:
        V.check_tensor(OP, "mask", mask, dtypes=V.FLOAT_DTYPES + V.INDEX_DTYPES + (torch.bool, torch.uint8, torch.int8),
                       ndim=2)
        if tuple(mask.shape) != (b, t):
            raise ValueError(f"{OP}: `mask` must have shape [B, T] = {(b, t)}; got {tuple(mask.shape)}")
    _check_pg_weight(OP, pg_weight, (b, t))
    V.check_same_device(OP, hidden=hidden, weight=weight, targets=targets, advantages=advantages, old_logprobs=old,
                        mask=mask, rollout_logprobs=rollout, ref_logprobs=ref, pg_weight=pg_weight)
    if cfg.needs_rollout_logprobs and rollout is None:
        raise ValueError(f"{OP}: mode={cfg.mode!r} / rollout_correction={cfg.rollout_correction!r} needs "
                         "`rollout_logprobs` (the inference engine's log-probs)")
    if cfg.kl is not None and ref is None:
        raise ValueError(f"{OP}: kl={cfg.kl!r} needs `ref_logprobs`")
    V.check_targets(OP, targets, weight.shape[0], cfg.ignore_index)


def _config(config) -> PolicyLossConfig:
    if config is None:
        return PolicyLossConfig()
    if not isinstance(config, PolicyLossConfig):
        raise TypeError(f"{OP}: `config` must be a lckernels.PolicyLossConfig; got {type(config).__name__}")
    return config


def fused_policy_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, advantages: torch.Tensor,
                      old_logprobs: Optional[torch.Tensor] = None, *, mask: Optional[torch.Tensor] = None,
                      rollout_logprobs: Optional[torch.Tensor] = None, ref_logprobs: Optional[torch.Tensor] = None,
                      pg_weight: Optional[torch.Tensor] = None, config: Optional[PolicyLossConfig] = None,
                      backend: str = "auto") -> PolicyLossOutput:
    """Policy-gradient loss straight from hidden states and the lm_head weight, gradients included.

    Args:
        hidden: ``[B, T, D]`` hidden states of the response tokens (fp32 / fp16 / bf16).
        weight: ``[V, D]`` lm_head weight, same dtype.
        targets: ``[B, T]`` int64/int32 token ids; ``config.ignore_index`` (default -100) masks a position.
        advantages: ``[B]`` (one per sequence) or ``[B, T]`` (per token).
        old_logprobs: ``[B, T]`` log pi_old from the training engine; ``None`` = on-policy (ratio 1, gradient kept).
        mask: ``[B, T]`` response mask (bool / int / float; nonzero = in the loss).
        rollout_logprobs: ``[B, T]`` the inference engine's log-probs (rollout correction, HisPO).
        ref_logprobs: ``[B, T]`` reference-policy log-probs for the KL penalty.
        pg_weight: ``[B, T]`` float >= 0, a per-token factor on the policy-gradient term (detached; e.g. verl's
            precomputed ``rollout_is_weights``): token t contributes ``pg_weight_t * pg_t`` with the aggregation
            weights unchanged (a weight 0 keeps the token in the denominators, the KL and the entropy terms and the
            stats).  Applied exactly (no clamp) on top of ``config.rollout_correction``.  NaN/inf on valid tokens
            follow ``config.nonfinite``; a negative value is a ``ValueError``.
        config: :class:`lckernels.PolicyLossConfig` (mode, clip ranges, aggregation, corrections, KL, entropy).
        backend: ``"auto"`` | ``"triton"`` | ``"cpu"`` | ``"reference"``.

    Returns:
        :class:`PolicyLossOutput` with ``loss`` (scalar), ``logprobs`` ([B, T], detached) and ``stats``.

    The fused backends compute the gradients w.r.t. ``hidden`` and ``weight`` during the forward, streaming over row
    chunks of the logits (never [B*T, V]); ``loss.backward()`` then only scales them.  Log-ratios are clamped to +-20
    before ``exp``.  NaN/inf in old/rollout/ref log-probs or advantages on valid tokens raise ``ValueError`` unless
    ``config.nonfinite="mask"``.  An all-masked batch gives loss 0 and zero gradients.

    Example::

        >>> import torch, lckernels
        >>> h = torch.randn(2, 6, 16, requires_grad=True); w = torch.randn(50, 16, requires_grad=True)
        >>> y = torch.randint(0, 50, (2, 6)); adv = torch.tensor([1.0, -1.0])
        >>> out = lckernels.fused_policy_loss(h, w, y, adv, config=lckernels.PolicyLossConfig(mode="clip"))
        >>> out.loss.backward()
        >>> out.logprobs.shape, round(out.stats["ratio_mean"], 4)
        (torch.Size([2, 6]), 1.0)
    """
    cfg = _config(config)
    _validate(hidden, weight, targets, advantages, old_logprobs, mask, rollout_logprobs, ref_logprobs, cfg, pg_weight)
    impl = resolve_backend(backend, hidden.device, OP)
    targets = targets.long()
    if impl == "reference":
        loss, lp, stats = policy_loss_reference(hidden, weight, targets, advantages, old_logprobs, mask=mask,
                                                rollout_logprobs=rollout_logprobs, ref_logprobs=ref_logprobs,
                                                pg_weight=pg_weight, config=cfg)
        return PolicyLossOutput(loss, lp, stats)
    if impl == "triton":
        from .triton import TritonKernels

        kernels = TritonKernels(cfg.ignore_index)
    else:
        from .cpu import CpuKernels

        kernels = CpuKernels(backend == "cpu", cfg.ignore_index)
    grad_on = torch.is_grad_enabled()
    need_h = grad_on and hidden.requires_grad
    need_w = grad_on and weight.requires_grad
    box: dict = {}
    loss, lp = _FusedPolicyLoss.apply(hidden, weight, kernels, targets, advantages, old_logprobs, mask,
                                      rollout_logprobs, ref_logprobs, pg_weight, cfg, need_h, need_w, box)
    return PolicyLossOutput(loss, lp, box["stats"])


def policy_loss_from_logprobs(logprobs: torch.Tensor, advantages: torch.Tensor,
                              old_logprobs: Optional[torch.Tensor] = None, *, mask: Optional[torch.Tensor] = None,
                              rollout_logprobs: Optional[torch.Tensor] = None,
                              ref_logprobs: Optional[torch.Tensor] = None, entropy: Optional[torch.Tensor] = None,
                              pg_weight: Optional[torch.Tensor] = None, config: Optional[PolicyLossConfig] = None,
                              backend: str = "auto"):
    """The composable path: the same loss from per-token log-probs (e.g. from :func:`lckernels.fused_logprobs`).

    Args:
        logprobs: ``[B, T]`` log pi of the taken tokens (differentiable).
        advantages, old_logprobs, mask, rollout_logprobs, ref_logprobs, pg_weight: as in :func:`fused_policy_loss`.
        entropy: ``[B, T]`` per-token entropy (needed for ``entropy_coef`` and ``stats["entropy_mean"]``).
        config: :class:`lckernels.PolicyLossConfig` (its ``temperature`` is ignored here: it applies to logits).
        backend: the backend of the one kernel this path calls, MASPO's gate (:func:`lckernels.soft_gaussian_gate`);
            the rest is elementwise PyTorch.

    Returns:
        ``(loss, stats)``.  ``fused_policy_loss`` gives the same loss and gradients.
    """
    cfg = _config(config)
    V.check_tensor("policy_loss_from_logprobs", "logprobs", logprobs, dtypes=V.FLOAT_DTYPES, ndim=2)
    b, t = logprobs.shape
    for name, x in (("old_logprobs", old_logprobs), ("rollout_logprobs", rollout_logprobs),
                    ("ref_logprobs", ref_logprobs), ("entropy", entropy), ("mask", mask)):
        if x is not None and tuple(x.shape) != (b, t):
            raise ValueError(f"policy_loss_from_logprobs: `{name}` must have shape [B, T] = {(b, t)}; "
                             f"got {tuple(x.shape)}")
    _check_pg_weight("policy_loss_from_logprobs", pg_weight, (b, t))
    V.check_tensor("policy_loss_from_logprobs", "advantages", advantages, dtypes=V.FLOAT_DTYPES, ndim=(1, 2))
    if tuple(advantages.shape) not in ((b,), (b, t)):
        raise ValueError(f"policy_loss_from_logprobs: `advantages` must be [B] or [B, T]; got {tuple(advantages.shape)}")
    if cfg.needs_rollout_logprobs and rollout_logprobs is None:
        raise ValueError("policy_loss_from_logprobs: this config needs `rollout_logprobs`")
    if cfg.kl is not None and ref_logprobs is None:
        raise ValueError(f"policy_loss_from_logprobs: kl={cfg.kl!r} needs `ref_logprobs`")
    if backend not in BACKENDS:
        raise ValueError(f"policy_loss_from_logprobs: backend must be one of {', '.join(map(repr, BACKENDS))}; "
                         f"got {backend!r}")
    gate = "reference"
    if cfg.mode == "maspo":  # the only kernel of this path
        gate = resolve_backend(backend, logprobs.device, "policy_loss_from_logprobs")
        if gate == "cpu" and backend == "auto":
            gate = "auto"  # falls back to the reference gate (with a warning) when lckernels._C is not built
    return policy_loss_math(logprobs, advantages, old_logprobs, mask=mask, rollout_logprobs=rollout_logprobs,
                            ref_logprobs=ref_logprobs, entropy=entropy, pg_weight=pg_weight, config=cfg,
                            gate_backend=gate)


def loss_agg_weights(mask: torch.Tensor, loss_agg: str = "token-mean",
                     loss_norm_constant: Optional[float] = None) -> torch.Tensor:
    """The per-token weights of a ``loss_agg`` mode: the one aggregation of the library.

    ``fused_policy_loss`` aggregates every per-token term x (policy gradient, KL, entropy) as ``(weights * x).sum()``
    with these weights; use them for any term the kernel does not compute so it is aggregated exactly like the loss.

    Args:
        mask: ``[B, T]`` (bool / int / float; nonzero = the token counts).
        loss_agg: ``"token-mean"`` (1 / number of valid tokens), ``"seq-mean-token-sum"`` (1 / number of sequences
            with a valid token), ``"seq-mean-token-mean"`` (1 / (that number * the sequence's valid tokens)) or
            ``"seq-mean-token-sum-norm"`` (Dr. GRPO: 1 / (B * loss_norm_constant)), as on
            :class:`lckernels.PolicyLossConfig`.
        loss_norm_constant: the constant of ``"seq-mean-token-sum-norm"`` (> 0; ``None`` = T, the padded length).

    Returns:
        ``[B, T]`` fp32, 0 where ``mask`` is 0 (an all-masked batch gives all zeros).

    Example::

        >>> import torch, lckernels
        >>> m = torch.tensor([[1, 1, 0], [1, 0, 0]])
        >>> lckernels.loss_agg_weights(m, "seq-mean-token-mean")
        tensor([[0.2500, 0.2500, 0.0000],
                [0.5000, 0.0000, 0.0000]])
    """
    op = "loss_agg_weights"
    V.check_tensor(op, "mask", mask, dtypes=V.FLOAT_DTYPES + V.INDEX_DTYPES + (torch.bool, torch.uint8, torch.int8),
                   ndim=2)
    if loss_agg not in LOSS_AGGS:
        raise ValueError(f"{op}: `loss_agg` must be one of {', '.join(map(repr, LOSS_AGGS))}; got {loss_agg!r}")
    if loss_norm_constant is not None:
        c = V.check_float(op, "loss_norm_constant", loss_norm_constant, positive=True)
        loss_norm_constant = c
    return aggregation_weights(mask != 0, loss_agg, loss_norm_constant)


def log_ratio(logprobs: torch.Tensor, other_logprobs: torch.Tensor) -> torch.Tensor:
    """``clamp(logprobs - other_logprobs, -20, 20)``: the log importance ratio exactly as every op of the library
    clamps it before ``exp`` (differentiable inside the band).  Any matching shapes.

    Example::

        >>> import torch, lckernels
        >>> lckernels.log_ratio(torch.tensor([-1.0, 0.0]), torch.tensor([-1.5, -30.0]))
        tensor([ 0.5000, 20.0000])
    """
    for name, x in (("logprobs", logprobs), ("other_logprobs", other_logprobs)):
        V.check_tensor("log_ratio", name, x, dtypes=V.FLOAT_DTYPES)
    return clamped_log_ratio(logprobs, other_logprobs)


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from sampled-token log-probs, as ``PolicyLossConfig.kl``:
    ``"k1"`` = lp - ref, ``"k3"`` = exp(d) - d - 1 with d = clamp(ref - lp, +-20).  Differentiable in both.

    Example::

        >>> import torch, lckernels
        >>> lckernels.kl_estimate(torch.tensor([0.0, 0.0]), torch.tensor([0.0, -1.0]))   # e^-1 - (-1) - 1
        tensor([0.0000, 0.3679])
    """
    for name, x in (("logprobs", logprobs), ("ref_logprobs", ref_logprobs)):
        V.check_tensor("kl_estimate", name, x, dtypes=V.FLOAT_DTYPES)
    if kind not in KLS or kind is None:
        raise ValueError(f"kl_estimate: `kind` must be 'k1' or 'k3'; got {kind!r}")
    return kl_term(logprobs, ref_logprobs, kind)
