"""Gradient gating for RL post-training.

* :class:`DynamicGradientGate` -- Dynamic Gradient Gating (arXiv 2605.19425): discard an update and stop reusing
  the rollout batch when the lm_head gradient norm surges (z-score over a sliding window).
* :func:`reuse_rollout_batch` -- the reuse loop: up to K updates on one batch, stopping when the gate fires.
"""

from .dgg import DGGConfig, DynamicGradientGate, GateDecision
from .reuse import ReuseEpoch, ReuseReport, reuse_rollout_batch

__all__ = ["DGGConfig", "DynamicGradientGate", "GateDecision", "ReuseEpoch", "ReuseReport", "reuse_rollout_batch"]
