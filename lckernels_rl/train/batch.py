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
        token_turn: [B, R] long, the assistant-turn index of each trained token (-1 on padding and for samples
            without turn indices); turn_rewards: [B, K] fp32 step rewards per turn (0 beyond a sample's turns);
            turn_mask: [B, K] bool, the turns a sample has trained tokens in (K = the most turns of any sample, >= 1).
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
    token_turn: torch.Tensor | None = None
    turn_rewards: torch.Tensor | None = None
    turn_mask: torch.Tensor | None = None

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
    lens = [len(s.input_ids) for s in samples]
    trained = [[p for p, m in enumerate(s.loss_mask) if m] for s in samples]
    L, R = max(lens), max(max((len(t) for t in trained), default=0), 1)

    ids = torch.tensor([list(s.input_ids) + [int(pad_id)] * (L - n) for s, n in zip(samples, lens)],
                       dtype=torch.long)
    attn = torch.tensor([[1] * n + [0] * (L - n) for n in lens], dtype=torch.long)
    positions = torch.tensor([tr + [-1] * (R - len(tr)) for tr in trained], dtype=torch.long)
    mask = positions >= 0
    gather = (positions - 1).clamp_min(0)
    targets = torch.where(mask, torch.gather(ids, 1, positions.clamp_min(0)), torch.zeros((), dtype=torch.long))
    rlp = torch.tensor([[s.rollout_logprobs[p] for p in tr] + [0.0] * (R - len(tr))
                        for s, tr in zip(samples, trained)], dtype=torch.float32)
    vers = torch.tensor([[s.token_versions[p] for p in tr] + [NOT_SAMPLED] * (R - len(tr))
                         for s, tr in zip(samples, trained)], dtype=torch.long)
    names = sorted({k for s in samples for k in s.spans})
    spans = {}
    for k in names:
        inside = [s.span_mask(k) for s in samples]
        spans[k] = torch.tensor([[bool(m[p]) for p in tr] + [False] * (R - len(tr))
                                 for m, tr in zip(inside, trained)], dtype=torch.bool)
    comp_names = sorted({k for s in samples for k in s.reward_components})
    comps = {k: torch.tensor([float(s.reward_components.get(k, float("nan"))) for s in samples]) for k in comp_names}
    groups: dict[Any, int] = {}
    gidx = torch.tensor([groups.setdefault(s.group_id if s.group_id is not None else ("__sample__", i), len(groups))
                         for i, s in enumerate(samples)], dtype=torch.long)
    pos_ids = (attn.cumsum(1) - 1).clamp_min(0)
    rewards = torch.tensor([float(s.reward) for s in samples], dtype=torch.float32)
    turn = torch.tensor([([s.token_turn[p] for p in tr] if s.token_turn is not None else [-1] * len(tr))
                         + [-1] * (R - len(tr)) for s, tr in zip(samples, trained)], dtype=torch.long)
    K = max(1, int(turn.max()) + 1, *(len(s.turn_rewards) for s in samples))
    turn_rewards = torch.tensor([list(map(float, s.turn_rewards)) + [0.0] * (K - len(s.turn_rewards))
                                 for s in samples], dtype=torch.float32)
    turn_mask = torch.zeros(len(samples), K, dtype=torch.bool)
    rows, cols = torch.nonzero(turn >= 0, as_tuple=True)
    turn_mask[rows, turn[rows, cols]] = True
    return RLBatch(ids, attn, pos_ids, gather, positions, targets, mask, rlp, vers, rewards, gidx, comps, spans,
                   list(samples), turn, turn_rewards, turn_mask)
