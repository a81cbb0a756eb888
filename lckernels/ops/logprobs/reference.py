"""Readable fp32 PyTorch reference of ``fused_logprobs``: the semantics and the test oracle.

It materializes the full [N, V] logits, so it is only for tests and small problems.
"""

from __future__ import annotations

import torch


def logprobs_reference(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                       return_entropy: bool = False, ignore_index: int = -100):
    """hidden [N, D], weight [V, D], targets [N] -> logprobs [N] fp32 (and entropy [N] fp32).

    logits = hidden @ weight.T / temperature (in fp32); logprob_i = log_softmax(logits_i)[targets_i];
    entropy_i = -sum_v p_iv log p_iv.  Positions whose target equals ``ignore_index`` give 0 for both and get no
    gradient.  Differentiable through autograd w.r.t. hidden and weight (gradients come back in their dtypes).
    """
    logits = hidden.float() @ weight.float().t()
    logits = logits / temperature
    logp = torch.log_softmax(logits, dim=-1)
    valid = targets != ignore_index
    safe = torch.where(valid, targets, torch.zeros_like(targets)).long()
    out = logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    out = torch.where(valid, out, torch.zeros_like(out))
    if not return_entropy:
        return out
    ent = -(logp.exp() * logp).sum(-1)
    ent = torch.where(valid, ent, torch.zeros_like(ent))
    return out, ent
