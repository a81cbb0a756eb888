"""Routing: ``moe_route`` (router logits -> top-k weights and expert ids) and the permutation that sorts the routed
(token, slot) pairs by expert for the grouped GEMMs.

``moe_route`` is a handful of small ATen ops (score, top-k, gather); it runs the same on every device and needs no
kernel of its own: on [T, E] logits it is a few microseconds next to the expert GEMMs.

The permutation (:func:`permute`) is a counting sort of the ``S = T * k`` slots by expert: O(S), stable (token order
inside an expert) and deterministic.  On CPU it is the C++ kernel ``lckernels._C.moe_permute`` (one serial pass to
count, one to place); :func:`permute_torch` is the same contract in ATen (a stable sort) for the fallback and for CUDA,
where it needs no host synchronization (sizes stay on the device).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ... import _validate as V

OP_ROUTE = "moe_route"

__all__ = ["moe_route", "Permutation", "permute", "permute_torch"]


def moe_route(router_logits: torch.Tensor, top_k: int, *, score: str = "softmax",
              correction_bias: torch.Tensor | None = None, renormalize: bool = False, scaling: float = 1.0):
    """Top-k expert choice from router logits (Mixtral / Qwen3-MoE / DeepSeek-V3 / LongCat-Flash style routers).

    Args:
        router_logits: ``[T, E]`` (or ``[..., E]``) router logits, any float dtype; scores are computed in fp32.
        top_k: experts per token, ``1 <= top_k <= E``.
        score: ``"softmax"`` (Mixtral, Qwen3-MoE, LongCat-Flash) or ``"sigmoid"`` (DeepSeek-V3 without group limits).
        correction_bias: optional ``[E]`` bias added to the scores for the *choice* only (auxiliary-loss-free load
            balancing, DeepSeek-V3 / LongCat-Flash ``e_score_correction_bias``); the weights use the unbiased scores.
        renormalize: divide the k chosen weights by their sum (Mixtral, Qwen3-MoE ``norm_topk_prob``).
        scaling: multiply the weights by this factor (``routed_scaling_factor``) after renormalization.

    Returns:
        ``(top_k_weights, top_k_index)``: ``[T, k]`` fp32 weights, differentiable w.r.t. ``router_logits``, and
        ``[T, k]`` int64 expert ids (descending score order, ties as :func:`torch.topk`).

    Example::

        >>> import torch, lckernels
        >>> logits = torch.randn(6, 8, requires_grad=True)
        >>> w, idx = lckernels.moe_route(logits, 2, renormalize=True)
        >>> w.shape, idx.shape, bool(torch.allclose(w.sum(-1), torch.ones(6)))
        (torch.Size([6, 2]), torch.Size([6, 2]), True)
    """
    V.check_tensor(OP_ROUTE, "router_logits", router_logits, dtypes=V.FLOAT_DTYPES)
    if router_logits.dim() < 1 or router_logits.shape[-1] == 0:
        raise ValueError(f"{OP_ROUTE}: `router_logits` must be [..., E] with E >= 1; got {tuple(router_logits.shape)}")
    n_exp = router_logits.shape[-1]
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= n_exp:
        raise ValueError(f"{OP_ROUTE}: `top_k` must be an int in [1, {n_exp}] (E = router_logits.shape[-1]); "
                         f"got {top_k!r}")
    if score not in ("softmax", "sigmoid"):
        raise ValueError(f"{OP_ROUTE}: `score` must be 'softmax' or 'sigmoid'; got {score!r}")
    if correction_bias is not None:
        V.check_tensor(OP_ROUTE, "correction_bias", correction_bias, dtypes=V.FLOAT_DTYPES)
        if tuple(correction_bias.shape) != (n_exp,):
            raise ValueError(f"{OP_ROUTE}: `correction_bias` must be [E] = [{n_exp}]; got "
                             f"{tuple(correction_bias.shape)}")
        V.check_same_device(OP_ROUTE, router_logits=router_logits, correction_bias=correction_bias)
    scaling = V.check_float(OP_ROUTE, "scaling", scaling)

    logits = router_logits.float()
    scores = torch.softmax(logits, dim=-1) if score == "softmax" else torch.sigmoid(logits)
    with torch.no_grad():
        choice = scores if correction_bias is None else scores + correction_bias.float()
        top_k_index = torch.topk(choice, top_k, dim=-1, sorted=True).indices
    top_k_weights = scores.gather(-1, top_k_index)
    if renormalize:
        top_k_weights = top_k_weights / top_k_weights.sum(-1, keepdim=True).clamp_min(1e-20)
    if scaling != 1.0:
        top_k_weights = top_k_weights * scaling
    return top_k_weights, top_k_index


class Permutation(NamedTuple):
    """The routed slots sorted by expert.  S = T * k slots (slot s = t * k + j), R routed rows (identity slots are
    not rows), E GEMM experts.

    sorted_slot:  [R] int64, the slot of each row (rows grouped by expert, token order inside an expert)
    sorted_token: [R] int64, the token of each row (= sorted_slot // k)
    row_of_slot:  [S] int64, the row of each slot, -1 for identity-expert slots (the inverse permutation)
    offsets:      [E] int64, cumulative row end of each expert (expert e owns rows [offsets[e-1], offsets[e]))
    """

    sorted_slot: torch.Tensor
    sorted_token: torch.Tensor
    row_of_slot: torch.Tensor
    offsets: torch.Tensor


def permute_torch(top_k_index: torch.Tensor, num_experts: int) -> Permutation:
    """:class:`Permutation` with ATen ops; no host synchronization (on CUDA every size it needs is static: the
    identity slots are sorted to the end and simply never read as rows).

    Returns R = S rows here with the identity slots last; ``offsets[-1]`` is the number of routed rows.
    """
    t, k = top_k_index.shape
    flat = top_k_index.reshape(-1).to(torch.int64)
    routed = flat < num_experts
    # identity slots get key E so a stable sort puts them after every routed row
    key = torch.where(routed, flat, torch.full_like(flat, num_experts))
    _, sorted_slot = torch.sort(key, stable=True)
    counts = torch.bincount(key, minlength=num_experts + 1)[:num_experts]
    offsets = torch.cumsum(counts, 0)
    rows = torch.empty_like(sorted_slot)
    rows.scatter_(0, sorted_slot, torch.arange(flat.numel(), device=flat.device))
    row_of_slot = torch.where(routed, rows, torch.full_like(rows, -1))
    return Permutation(sorted_slot, torch.div(sorted_slot, k, rounding_mode="floor"), row_of_slot, offsets)


def permute(ops, top_k_index: torch.Tensor, num_experts: int, num_identity: int) -> Permutation:
    """:class:`Permutation` from ``ops.moe_permute`` (the C++ counting sort; R = routed slots only) or, when ``ops``
    is ``None``, from :func:`permute_torch`."""
    if top_k_index.device.type != "cpu":
        return permute_torch(top_k_index, num_experts)
    if ops is None:  # ATen fallback on CPU: drop the trailing identity slots (a host read is free here)
        p = permute_torch(top_k_index, num_experts)
        r = int(p.offsets[-1]) if num_experts else 0
        return Permutation(p.sorted_slot[:r], p.sorted_token[:r], p.row_of_slot, p.offsets)
    idx = top_k_index.to(torch.int64).contiguous()
    return Permutation(*ops.moe_permute(idx, num_experts, num_identity))
