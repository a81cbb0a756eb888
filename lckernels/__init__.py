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
from .ops.policy_loss import PolicyLossConfig, PolicyLossOutput, fused_policy_loss, policy_loss_from_logprobs
from .monitor import GradNormMonitor

__version__ = "0.1.0"

__all__ = [
    # ops
    "fused_logprobs", "fused_policy_loss", "policy_loss_from_logprobs", "soft_gaussian_gate",
    "grouped_mm", "moe_route", "moe_experts", "grad_norms",
    # configuration, results, monitoring
    "PolicyLossConfig", "PolicyLossOutput", "GradNormMonitor",
    # dispatch
    "resolve_backend", "BACKENDS", "__version__",
]
