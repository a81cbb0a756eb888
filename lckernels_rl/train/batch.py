"""Pack :class:`~lckernels_rl.agents.TrainSample` s into the tensors the objectives take.

A sample is a whole context (prompt, sampled turns, environment deltas); only its sampled tokens are trained.  The
batch keeps the full sequences for the policy forward (right-padded, positions counted over real tokens) and a
compact [B, R] view of the trained tokens: row ``b`` lists sample ``b``'s sampled tokens left-aligned (R = the most
sampled tokens of any sample), and ``gather[b, j]`` is the position of the hidden state that predicts the ``j``-th
of them (its position - 1).  So the lm_head and the loss run on sampled tokens only, never on prompt or tool tokens,
and sequence-level aggregations (``seq-mean-token-mean``, GSPO's sequence ratio) still see one row per sample.

``mask`` is 1 exactly where a sampled token sits; advantages are per sample ([B], broadcast over its sampled tokens
by the objectives) unless an estimator gives them per token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from lckernels_rl.agents.trajectory import NOT_SAMPLED, TrainSample

__all__ = ["RLBatch", "pack_samples"]


@dataclass
class RLBatch:
    """Tensors of one batch of samples (B samples, L context positions, R trained positions).

    Attributes:
        input_ids / attention_mask / position_ids: [B, L] (right padding).
        gather: [B, R] long, the hidden-state row predicting each trained token (0 on padding).
        positions: [B, R] long, the position of each trained token in its sequence (-1 on padding).
        targets: [B, R] the sampled ids (0 on padding); mask: [B, R] bool.
        rollout_logprobs: [B, R] fp32, the engine's log-probs; token_versions: [B, R] long (-1 on padding).
        rewards: [B] fp32; group_index: [B] long (samples of one group share it, numbered from 0).
        components: ``{name: [B] fp32}`` of the verdicts' components (NaN where a sample lacks one).
        spans: ``{name: [B, R] bool}`` over the trained tokens.
        samples: the packed samples.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    gather: torch.Tensor
    positions: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    rollout_logprobs: torch.Tensor
    token_versions: torch.Tensor
    rewards: torch.Tensor
    group_index: torch.Tensor
    components: dict[str, torch.Tensor] = field(default_factory=dict)
    spans: dict[str, torch.Tensor] = field(default_factory=dict)
    samples: list[TrainSample] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.mask.sum())

    def hidden(self, model) -> torch.Tensor:
        """Final hidden states [B, R, D] of ``model`` (a ``*ForCausalLM``) at the rows predicting the trained
        tokens."""
        out = model.model(input_ids=self.input_ids, attention_mask=self.attention_mask,
                          position_ids=self.position_ids, use_cache=False)
        h = out.last_hidden_state
        return torch.gather(h, 1, self.gather[..., None].expand(-1, -1, h.shape[-1]))


def pack_samples(samples: Sequence[TrainSample], pad_id: int) -> RLBatch:
    """Pack ``samples`` (see the module docstring).  Group ids are renumbered 0.. in order of first appearance."""
    if not samples:
        raise ValueError("pack_samples: no samples")
    b = len(samples)
    lens = [len(s.input_ids) for s in samples]
    trained = [[p for p, m in enumerate(s.loss_mask) if m] for s in samples]
    L, R = max(lens), max(max((len(t) for t in trained), default=0), 1)
    ids = torch.full((b, L), int(pad_id), dtype=torch.long)
    attn = torch.zeros((b, L), dtype=torch.long)
    gather = torch.zeros((b, R), dtype=torch.long)
    positions = torch.full((b, R), -1, dtype=torch.long)
    targets = torch.zeros((b, R), dtype=torch.long)
    mask = torch.zeros((b, R), dtype=torch.bool)
    rlp = torch.zeros((b, R), dtype=torch.float32)
    vers = torch.full((b, R), NOT_SAMPLED, dtype=torch.long)
    names = sorted({k for s in samples for k in s.spans})
    spans = {k: torch.zeros((b, R), dtype=torch.bool) for k in names}
    comp_names = sorted({k for s in samples for k in s.reward_components})
    comps = {k: torch.full((b,), float("nan")) for k in comp_names}
    groups: dict[Any, int] = {}
    gidx = torch.zeros(b, dtype=torch.long)
    for i, (s, tr) in enumerate(zip(samples, trained)):
        ids[i, :lens[i]] = torch.tensor(s.input_ids, dtype=torch.long)
        attn[i, :lens[i]] = 1
        if tr:
            n = len(tr)
            pos = torch.tensor(tr, dtype=torch.long)
            positions[i, :n] = pos
            gather[i, :n] = pos - 1
            targets[i, :n] = ids[i, pos]
            mask[i, :n] = True
            rlp[i, :n] = torch.tensor([s.rollout_logprobs[p] for p in tr], dtype=torch.float32)
            vers[i, :n] = torch.tensor([s.token_versions[p] for p in tr], dtype=torch.long)
            for k in names:
                inside = s.span_mask(k)
                spans[k][i, :n] = torch.tensor([bool(inside[p]) for p in tr])
        for k, v in s.reward_components.items():
            comps[k][i] = float(v)
        key = s.group_id if s.group_id is not None else ("__sample__", i)
        gidx[i] = groups.setdefault(key, len(groups))
    pos_ids = (attn.cumsum(1) - 1).clamp_min(0)
    rewards = torch.tensor([float(s.reward) for s in samples], dtype=torch.float32)
    return RLBatch(ids, attn, pos_ids, gather, positions, targets, mask, rlp, vers, rewards, gidx, comps, spans,
                   list(samples))
