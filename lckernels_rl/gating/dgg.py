"""Dynamic Gradient Gating (DGG): stop reusing a rollout batch when the lm_head gradient norm surges.

Paper: Miao et al. 2026, *When to Stop Reusing: Dynamic Gradient Gating for Sample-Efficient RLVR*
(arXiv 2605.19425; "Disproportionate Weight Divergence" (DWD) is the phenomenon it names, not its title).  What each
detail here rests on:

* **Paper abstract** (read on arxiv.org/abs/2605.19425) -- reusing a rollout batch for several updates amplifies
  policy shift and degrades RLVR; the degradation is synchronised with a sharp surge of the lm_head weight change
  while intermediate layers stay stable (DWD), and the lm_head gradient norm lower-bounds the policy divergence, so
  DGG monitors that norm in real time and intercepts harmful gradients before they reach the optimizer; up to
  2.93x sample efficiency.
* **Third-party notes of the paper (not verified against the authors' code)** -- after backward take
  ``g_t = ||grad W_lm_head||^2`` and its increment ``dg_t = g_t - g_{t-1}``; keep a sliding-window mean and std of
  recent steps; the gate is active once the window is full and the reuse index is > 1; when the z-score exceeds
  ``tau`` zero every gradient before the optimizer step "so Adam's moments are not touched" and stop reusing the
  batch (sample fresh rollouts).  Defaults: max reuse ``K = 4``, ``tau = 0.5`` (0.1-0.5 recommended); the window is
  configurable; whether the statistic is ``g`` or ``dg`` is a configuration choice.
* **Our inference / choices** (documented so they can be changed):

  - ``z = (x - mean(W)) / (std(W) + eps)`` where ``W`` holds the statistic of the *previous* steps (the current
    value is compared with the window, then admitted); ``std`` is the population std (ddof = 0).
  - Default ``window = 8``: two rollout batches at the default ``K = 4``, so the baseline spans more than one batch
    and its std (relative error ~1/sqrt(2 * 8) = 25%) is usable, while still following the slow drift of gradient
    norms during training.
  - The window slides **across batches** (``reset_window_per_batch=False``): the notes speak of recent steps, and a
    per-batch window of ``window`` entries could never fill when ``window >= K``.  The first update on every batch
    (reuse index 1, never gated) always enters the window, so the baseline keeps tracking the on-policy norm.
  - A value that fires the gate does **not** enter the window (``admit_fired=False``): it is the outlier being
    detected, and its update is discarded; admitting it would inflate the std and blunt the next detection.
  - ``dg`` is taken against the previous observed ``g`` whatever the batch; the first observation has no ``dg``
    and never fires.
  - A non-finite ``g`` (NaN/inf gradients) always fires, whatever the window or reuse index: there is no update
    worth applying.
  - Zeroing gradients is *not* enough to leave Adam untouched: ``torch.optim.Adam(W)`` with zero (not None)
    gradients still decays both moments, increments its step and moves the weights by ``m_hat / sqrt(v_hat)``;
    SGD with momentum or weight decay moves them too.  The faithful implementation therefore **skips**
    ``optimizer.step()`` when the gate fires (see :func:`lckernels_rl.gating.reuse_rollout_batch`); :meth:`apply`
    only clears the gradients (``zero_()`` by default, or ``set_to_none=True``, which makes every ``torch.optim``
    optimizer skip the parameters).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["DGGConfig", "GateDecision", "DynamicGradientGate"]

STATISTICS = ("g", "delta_g")


@dataclass(frozen=True)
class DGGConfig:
    """Configuration of :class:`DynamicGradientGate` (source of each default in the module docstring).

    Attributes:
        max_reuse: K, the most updates taken on one rollout batch (third-party notes: 4).
        tau: z-score threshold; the gate fires when ``z > tau`` (notes: 0.5; 0.1-0.5 recommended).
        window: number of past values of the statistic in the sliding window (ours: 8).
        statistic: ``"g"`` (the lm_head squared gradient norm) or ``"delta_g"`` (its increment since the previous
            observation).
        min_reuse_index: the gate is active only from this reuse index on (1-based; notes: active when > 1, i.e. 2).
        eps: added to the std so a flat window does not divide by zero.
        reset_window_per_batch: clear the window (and the previous g) whenever reuse index 1 is observed.
        admit_fired: let a value that fired the gate enter the window.
    """

    max_reuse: int = 4
    tau: float = 0.5
    window: int = 8
    statistic: Literal["g", "delta_g"] = "g"
    min_reuse_index: int = 2
    eps: float = 1e-8
    reset_window_per_batch: bool = False
    admit_fired: bool = False

    def __post_init__(self):
        for name in ("max_reuse", "window", "min_reuse_index"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"DGGConfig: `{name}` must be a positive int; got {v!r}")
        if self.window < 2:
            raise ValueError(f"DGGConfig: `window` must be >= 2 (a std needs two values); got {self.window}")
        for name in ("tau", "eps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"DGGConfig: `{name}` must be a finite float; got {v!r}")
        if self.eps <= 0:
            raise ValueError(f"DGGConfig: `eps` must be > 0; got {self.eps}")
        if self.statistic not in STATISTICS:
            raise ValueError(f"DGGConfig: `statistic` must be one of {STATISTICS}; got {self.statistic!r}")
        if self.reset_window_per_batch:
            # per batch at most max_reuse - 1 earlier values (one fewer for delta_g) precede the last update
            room = self.max_reuse - 1 - (self.statistic == "delta_g")
            if self.window > room:
                raise ValueError(f"DGGConfig: with reset_window_per_batch the window ({self.window}) must hold at most "
                                 f"{room} values or it never fills within one batch of max_reuse={self.max_reuse}")


@dataclass(frozen=True)
class GateDecision:
    """What :meth:`DynamicGradientGate.observe` concluded for one update.

    ``fire`` -- discard this update and stop reusing the batch (sample fresh rollouts).  ``z`` -- the z-score (NaN
    while the window is not full or there is no statistic yet).  ``reason`` -- a readable explanation.  ``value`` --
    the statistic (g or delta g; NaN when there is none), ``mean``/``std`` -- the window's, ``g`` -- the squared norm
    observed, ``reuse_index`` -- as given, ``active`` -- whether the gate could fire at this step.
    """

    fire: bool
    z: float
    reason: str
    value: float
    mean: float
    std: float
    g: float
    reuse_index: int
    active: bool

    @property
    def stop_reuse(self) -> bool:
        return self.fire


def _as_float(name: str, v) -> float:
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise ValueError(f"DynamicGradientGate: `{name}` must be a scalar; got shape {tuple(v.shape)}")
        return float(v.item())
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"DynamicGradientGate: `{name}` must be a float or a 1-element tensor; got "
                        f"{type(v).__name__}")
    return float(v)


class DynamicGradientGate:
    """Sliding-window z-score gate on the lm_head squared gradient norm (see the module docstring for sources).

    Usage, after ``loss.backward()`` on the r-th update (r = 1, 2, ... on the same rollout batch)::

        decision = gate.observe(lm_head_sq_norm, reuse_index=r)
        if decision.fire:
            gate.apply(model, decision)   # clear the gradients ...
            # ... and do NOT call optimizer.step(); sample fresh rollouts
        else:
            optimizer.step()

    :func:`lckernels_rl.gating.reuse_rollout_batch` runs exactly this loop.

    Example::

        >>> gate = DynamicGradientGate(DGGConfig(window=4, tau=0.5))
        >>> for g in [1.0, 1.1, 0.9, 1.0]:            # fill the window on first updates (reuse index 1)
        ...     _ = gate.observe(g, reuse_index=1)
        >>> d = gate.observe(3.0, reuse_index=2)        # a surge on the second pass over a batch
        >>> d.fire, round(d.z, 2)
        (True, 28.28)
    """

    def __init__(self, config: DGGConfig | None = None, **overrides):
        if config is None:
            config = DGGConfig(**overrides)
        elif overrides:
            raise TypeError("DynamicGradientGate: pass either a DGGConfig or keyword overrides, not both")
        if not isinstance(config, DGGConfig):
            raise TypeError(f"DynamicGradientGate: `config` must be a DGGConfig; got {type(config).__name__}")
        self.config = config
        self._window: deque[float] = deque(maxlen=config.window)
        self._prev_g: float | None = None
        self.fired = 0       # number of times the gate fired
        self.observed = 0    # number of observations

    # ------------------------------------------------------------------------------------------------------ state
    @property
    def window_values(self) -> tuple[float, ...]:
        """The statistic values currently in the window, oldest first."""
        return tuple(self._window)

    @property
    def window_full(self) -> bool:
        return len(self._window) == self.config.window

    def reset(self) -> None:
        """Forget the window and the previous g (e.g. after a learning-rate change)."""
        self._window.clear()
        self._prev_g = None

    # ---------------------------------------------------------------------------------------------------- observe
    def observe(self, sq_norm, reuse_index: int) -> GateDecision:
        """Feed ``g = ||grad W_lm_head||^2`` of the update about to be applied; decide whether to discard it.

        Args:
            sq_norm: the lm_head gradient's squared L2 norm (float or 1-element tensor), e.g. from
                ``lckernels.grad_norms(..., squared=True)`` or ``stats["lm_head_grad_sq_norm"]`` of
                ``lckernels.fused_policy_loss``.
            reuse_index: 1 for the first update on a fresh rollout batch, 2 for the second, ...
        """
        cfg = self.config
        g = _as_float("sq_norm", sq_norm)
        if isinstance(reuse_index, bool) or not isinstance(reuse_index, int) or reuse_index < 1:
            raise ValueError(f"DynamicGradientGate: `reuse_index` must be an int >= 1; got {reuse_index!r}")
        if cfg.reset_window_per_batch and reuse_index == 1:
            self.reset()
        self.observed += 1
        nan = float("nan")
        if not math.isfinite(g):
            self.fired += 1
            return GateDecision(True, nan, f"non-finite lm_head gradient norm (g={g}): update discarded", nan, nan,
                                nan, g, reuse_index, True)
        if g < 0:
            raise ValueError(f"DynamicGradientGate: `sq_norm` is a squared norm and must be >= 0; got {g}")

        if cfg.statistic == "g":
            x: float | None = g
        else:
            x = None if self._prev_g is None else g - self._prev_g
        self._prev_g = g

        full = self.window_full
        active = full and reuse_index >= cfg.min_reuse_index and x is not None
        mean = std = z = nan
        if full and x is not None:
            vals = self._window
            mean = math.fsum(vals) / len(vals)
            std = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / len(vals))
            z = (x - mean) / (std + cfg.eps)
        fire = active and z > cfg.tau

        stat = "g" if cfg.statistic == "g" else "delta_g"
        if x is None:
            reason = "no previous g yet (delta_g needs two observations)"
        elif not full:
            reason = f"window not full ({len(self._window)}/{cfg.window})"
        elif reuse_index < cfg.min_reuse_index:
            reason = f"reuse index {reuse_index} < {cfg.min_reuse_index}: gate inactive (z={z:.3g})"
        elif fire:
            reason = (f"{stat} surge at reuse {reuse_index}: z={z:.3g} > tau={cfg.tau:g} "
                      f"({stat}={x:.4g}, window mean={mean:.4g}, std={std:.4g}); stop reusing this batch")
        else:
            reason = f"z={z:.3g} <= tau={cfg.tau:g}"

        if x is not None and (not fire or cfg.admit_fired):
            self._window.append(x)
        if fire:
            self.fired += 1
        return GateDecision(bool(fire), z, reason, nan if x is None else x, mean, std, g, reuse_index, bool(active))

    # ------------------------------------------------------------------------------------------------------ apply
    @staticmethod
    def apply(params, decision: GateDecision, *, set_to_none: bool = False) -> bool:
        """Clear every gradient when ``decision.fire``; returns ``decision.fire``.

        ``params``: an ``nn.Module``, an optimizer, or an iterable of parameters.  With ``set_to_none=False`` (the
        default) each existing ``.grad`` is ``zero_()``-ed in place (buffers stay allocated, as gradient-accumulation
        and DDP hooks expect); an optimizer step on zero gradients is a no-op only for plain SGD without momentum
        and weight decay -- Adam/AdamW would still update their moments, step count and weights, so **skip**
        ``optimizer.step()`` after a fire.  ``set_to_none=True`` sets ``.grad = None`` instead, which every
        ``torch.optim`` optimizer skips entirely (moments untouched) even if ``step()`` is called.
        """
        if not isinstance(decision, GateDecision):
            raise TypeError(f"DynamicGradientGate.apply: `decision` must be a GateDecision; got "
                            f"{type(decision).__name__}")
        if not decision.fire:
            return False
        for p in _parameters(params):
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.zero_()
        return True

    def __repr__(self) -> str:
        return (f"DynamicGradientGate({self.config}, window={len(self._window)}/{self.config.window}, "
                f"fired={self.fired}/{self.observed})")


def _parameters(params) -> Iterable[torch.Tensor]:
    if isinstance(params, torch.nn.Module):
        return list(params.parameters())
    if isinstance(params, torch.optim.Optimizer):
        return [p for group in params.param_groups for p in group["params"]]
    if isinstance(params, torch.Tensor):
        return [params]
    out = list(params)
    for i, p in enumerate(out):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"DynamicGradientGate.apply: params item {i} must be a tensor; got {type(p).__name__}")
    return out
