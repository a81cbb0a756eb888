"""Readable reference of ``fused_policy_loss``: full fp32 logits, log_softmax, then the loss math. The oracle."""

from __future__ import annotations

import torch

from ..logprobs.reference import logprobs_reference
from .config import PolicyLossConfig
from .math import policy_loss_math


def policy_loss_reference(hidden, weight, targets, advantages, old_logprobs=None, *, mask=None,
                          rollout_logprobs=None, ref_logprobs=None, pg_weight=None, config: PolicyLossConfig):
    """hidden [B, T, D], weight [V, D], targets [B, T] -> (loss, logprobs [B, T] detached, stats).

    Builds the [B*T, V] logits (memory O(N V)); gradients flow through plain autograd.  ``lm_head_grad_sq_norm`` is
    NaN here (it would need a second backward); the fused paths report it.  The returned log-probs are 0 wherever
    the token is not in the loss (mask, ignore_index, or dropped by ``nonfinite="mask"``), as on the fused paths.
    """
    b, t, d = hidden.shape
    lp, ent = logprobs_reference(hidden.reshape(b * t, d), weight, targets.reshape(-1), config.temperature, True,
                                 config.ignore_index)
    lp, ent = lp.reshape(b, t), ent.reshape(b, t)
    loss, stats, valid = policy_loss_math(lp, advantages, old_logprobs, mask=mask, targets=targets,
                                          rollout_logprobs=rollout_logprobs, ref_logprobs=ref_logprobs, entropy=ent,
                                          pg_weight=pg_weight, config=config, return_valid=True)
    lp_out = torch.where(valid, lp.detach(), torch.zeros_like(lp.detach()))
    return loss, lp_out, stats
