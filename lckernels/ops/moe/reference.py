"""Readable fp32 PyTorch reference of ``moe_experts``: the semantics and the test oracle.

A plain loop over the experts, as in HF transformers' "eager" experts; differentiable through autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def moe_experts_reference(hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor,
                          gate_up_proj: torch.Tensor, down_proj: torch.Tensor,
                          num_identity_experts: int = 0) -> torch.Tensor:
    """hidden [T, H], top_k_index [T, k], top_k_weights [T, k], gate_up_proj [E, 2I, H], down_proj [E, H, I]
    -> [T, H] in hidden's dtype (computed in fp32).

    out[t] = sum_j top_k_weights[t, j] * expert_{top_k_index[t, j]}(hidden[t]) with
    expert_e(x) = down_proj[e] @ (silu(gate) * up), [gate; up] = gate_up_proj[e] @ x      for e <  E,
    expert_e(x) = x   (an identity, "zero-computation" expert)                             for E <= e < E + Z.
    """
    num_experts = gate_up_proj.shape[0]
    inter = gate_up_proj.shape[1] // 2
    x = hidden.float()
    w = top_k_weights.float()
    out = torch.zeros_like(x)
    for e in range(num_experts + num_identity_experts):
        token, slot = torch.where(top_k_index == e)
        if token.numel() == 0:
            continue
        h = x[token]
        if e < num_experts:
            gate_up = h @ gate_up_proj[e].float().t()
            act = F.silu(gate_up[:, :inter]) * gate_up[:, inter:]
            y = act @ down_proj[e].float().t()
        else:
            y = h
        out = out.index_add(0, token, y * w[token, slot, None])
    return out.to(hidden.dtype)
