"""Reuse one rollout batch for up to K updates, stopping when Dynamic Gradient Gating fires.

The loop, per update r = 1..K on the same batch::

    optimizer.zero_grad()
    loss, g = step_fn(r)                    # your forward + backward; g = ||grad W_lm_head||^2
    decision = gate.observe(g, r)
    if decision.fire:                       # discard this update: clear the gradients and SKIP optimizer.step(),
        gate.apply(params, decision)        # so Adam's moments and step count are untouched
        break                               # -> sample fresh rollouts
    optimizer.step()

One ``step_fn`` call is one optimizer update (one pass of the batch, or whatever your update is); when an epoch is
several mini-batch updates, drive :class:`~lckernels_rl.gating.DynamicGradientGate` yourself per update.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

import lckernels

from .dgg import DynamicGradientGate, GateDecision, _parameters

__all__ = ["ReuseEpoch", "ReuseReport", "reuse_rollout_batch"]

_NO_GATE = GateDecision(fire=False, z=math.nan, reason="no gate", value=math.nan, mean=math.nan, std=math.nan,
                        g=math.nan, reuse_index=0, active=False)


@dataclass
class ReuseEpoch:
    """One pass over the batch: its loss, the lm_head squared gradient norm, the gate's decision, whether the
    optimizer stepped, and any extra metrics ``step_fn`` returned."""

    reuse_index: int
    loss: float
    lm_head_sq_norm: float
    decision: GateDecision
    stepped: bool
    metrics: dict = field(default_factory=dict)


@dataclass
class ReuseReport:
    """What happened to one rollout batch.

    ``epochs``: passes run (``step_fn`` calls); ``updates``: optimizer steps applied (``epochs - 1`` when the gate
    fired, since the fired update is discarded); ``stopped_early``: the gate fired before ``max_reuse``;
    ``reason``: why the loop ended; ``history``: one :class:`ReuseEpoch` per pass.
    """

    epochs: int
    updates: int
    stopped_early: bool
    reason: str
    history: list[ReuseEpoch]

    @property
    def fired(self) -> bool:
        return self.stopped_early


def _scalar(name: str, v) -> float:
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise ValueError(f"reuse_rollout_batch: step_fn's `{name}` must be a scalar; got shape {tuple(v.shape)}")
        return float(v.detach().item())
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"reuse_rollout_batch: step_fn's `{name}` must be a float or a scalar tensor; got "
                        f"{type(v).__name__}")
    return float(v)


def reuse_rollout_batch(step_fn: Callable[[int], object], gate: DynamicGradientGate | None,
                        optimizer: torch.optim.Optimizer, *, max_reuse: int | None = None,
                        lm_head: Iterable[torch.Tensor] | torch.Tensor | None = None, params=None,
                        set_to_none: bool = False, pre_step: Callable[[], None] | None = None) -> ReuseReport:
    """Train up to ``max_reuse`` updates on one rollout batch; stop early when ``gate`` fires.

    Args:
        step_fn: ``step_fn(reuse_index) -> loss`` or ``(loss, lm_head_sq_norm)`` or
            ``(loss, lm_head_sq_norm, metrics_dict)``: runs forward and ``backward()`` for update ``reuse_index``
            (1-based) on the batch.  ``lm_head_sq_norm`` is ``||grad W_lm_head||^2`` (e.g.
            ``stats["lm_head_grad_sq_norm"]`` of ``lckernels.fused_policy_loss``); return ``None`` for it (or a
            bare loss) and pass ``lm_head`` to have it computed with :func:`lckernels.grad_norms`.
        gate: the :class:`DynamicGradientGate` (its window carries over between batches), or ``None``: plain reuse
            (every update steps; ``max_reuse`` is then required).
        optimizer: stepped after every update the gate lets through; ``zero_grad()`` is called before each
            ``step_fn`` call.  It is **not** stepped on a fired update.
        max_reuse: K; default ``gate.config.max_reuse``.
        lm_head: the lm_head parameter(s), when ``step_fn`` does not report the squared norm.
        params: what :meth:`DynamicGradientGate.apply` clears on a fire; default the optimizer's parameters.
        set_to_none: passed to :meth:`DynamicGradientGate.apply`.
        pre_step: called after the gate let an update through and before ``optimizer.step()`` (e.g. gradient
            clipping).

    Returns:
        a :class:`ReuseReport`.
    """
    if gate is not None and not isinstance(gate, DynamicGradientGate):
        raise TypeError(f"reuse_rollout_batch: `gate` must be a DynamicGradientGate or None; got "
                        f"{type(gate).__name__}")
    if gate is None and max_reuse is None:
        raise ValueError("reuse_rollout_batch: without a gate, pass `max_reuse`")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"reuse_rollout_batch: `optimizer` must be a torch.optim.Optimizer; got "
                        f"{type(optimizer).__name__}")
    k = max_reuse if max_reuse is not None else gate.config.max_reuse
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"reuse_rollout_batch: `max_reuse` must be a positive int; got {k!r}")
    head = None
    if lm_head is not None:
        head = [lm_head] if isinstance(lm_head, torch.Tensor) else list(lm_head)
    clear = _parameters(params if params is not None else optimizer)

    history: list[ReuseEpoch] = []
    updates = 0
    for r in range(1, k + 1):
        optimizer.zero_grad(set_to_none=set_to_none)
        out = step_fn(r)
        metrics: dict = {}
        if isinstance(out, tuple):
            if len(out) not in (2, 3):
                raise ValueError("reuse_rollout_batch: step_fn must return loss, (loss, sq_norm) or "
                                 f"(loss, sq_norm, metrics); got a tuple of {len(out)}")
            loss, sq = out[0], out[1]
            if len(out) == 3:
                metrics = dict(out[2])
        else:
            loss, sq = out, None
        if sq is None and gate is None:
            sq = math.nan  # nothing observes it
        if sq is None:
            if head is None:
                raise ValueError("reuse_rollout_batch: step_fn reported no lm_head squared norm; return it or pass "
                                 "`lm_head=` so it can be computed")
            sq = lckernels.grad_norms({"lm_head": head}, squared=True)["lm_head"]
        sq = _scalar("lm_head_sq_norm", sq)
        decision = gate.observe(sq, r) if gate is not None else _NO_GATE
        if decision.fire:
            gate.apply(clear, decision, set_to_none=set_to_none)
        else:
            if pre_step is not None:
                pre_step()
            optimizer.step()
            updates += 1
        history.append(ReuseEpoch(r, _scalar("loss", loss) if loss is not None else math.nan, sq, decision,
                                  not decision.fire, metrics))
        if decision.fire:
            return ReuseReport(r, updates, True, f"gate fired at reuse {r}/{k}: {decision.reason}", history)
    return ReuseReport(k, updates, False, f"max_reuse reached ({k} updates)", history)
