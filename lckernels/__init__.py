"""lckernels: fused kernels for RL post-training of (MoE) LLMs.

Every op has a readable PyTorch reference, a fast CPU path (C++ in csrc/) and a Triton GPU kernel, chosen by one
dispatch rule (see :mod:`lckernels.backend`).
"""

from .backend import BACKENDS, resolve_backend
from .ops.gating import soft_gaussian_gate
from .ops.grad_norms import grad_norms
from .ops.grouped_mm import grouped_mm
from .ops.logprobs import fused_logprobs
from .ops.moe import moe_experts, moe_route
from .ops.policy_loss import (LOG_RATIO_CLAMP, PolicyLossConfig, PolicyLossOutput, fused_policy_loss, kl_estimate,
                              log_ratio, loss_agg_weights, policy_loss_from_logprobs)
from .monitor import GradNormMonitor

__version__ = "0.1.0"

__all__ = [
    # ops
    "fused_logprobs", "fused_policy_loss", "policy_loss_from_logprobs", "soft_gaussian_gate",
    "grouped_mm", "moe_route", "moe_experts", "grad_norms",
    # the loss's building blocks (one implementation, shared by the kernel and lckernels_rl)
    "loss_agg_weights", "log_ratio", "kl_estimate", "LOG_RATIO_CLAMP",
    # configuration, results, monitoring
    "PolicyLossConfig", "PolicyLossOutput", "GradNormMonitor",
    # dispatch
    "resolve_backend", "BACKENDS", "__version__",
]
