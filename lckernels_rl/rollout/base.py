"""The rollout-engine interface: prompts in, sampled responses and the engine's own log-probs out.

A backend implements :class:`RolloutBackend`:

* ``generate(prompt_ids, counts, *, max_new_tokens, temperature) -> Rollouts`` -- ``counts[i]`` samples of prompt
  ``i`` (token-id lists, no padding), each response ending at the first EOS (kept) or after ``max_new_tokens``;
* ``sync_weights(model)`` -- make the engine sample from ``model``'s current parameters (after every update), in
  memory, without writing a checkpoint;
* ``close()``.

The log-probs are the ones the engine computed while sampling (temperature applied, no top-k/top-p), so with an
inference engine that differs numerically from the trainer (vLLM) they carry the real train/inference mismatch the
rollout corrections (``rollout_log_prob``) and HisPO's masks act on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import torch

__all__ = ["Rollouts", "RolloutBackend", "check_generate_args", "left_pad"]


@dataclass
class Rollouts:
    """One batch of samples, flat in prompt order (all samples of prompt 0, then prompt 1, ...).

    Attributes:
        prompt_index: per sample, the index of its prompt in the ``prompt_ids`` passed to ``generate``.
        prompt_ids: per sample, the prompt's token ids.
        response_ids: per sample, the sampled token ids (EOS included when it was sampled).
        logprobs: per sample, the engine's log-prob of each sampled token (same length as ``response_ids``).
        finished: per sample, whether the response ended with EOS (False: cut at ``max_new_tokens``).
    """

    prompt_index: list[int] = field(default_factory=list)
    prompt_ids: list[list[int]] = field(default_factory=list)
    response_ids: list[list[int]] = field(default_factory=list)
    logprobs: list[list[float]] = field(default_factory=list)
    finished: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.response_ids)

    def num_response_tokens(self) -> int:
        return sum(len(r) for r in self.response_ids)


class RolloutBackend(Protocol):
    def generate(self, prompt_ids: Sequence[Sequence[int]], counts: Sequence[int], *, max_new_tokens: int,
                 temperature: float = 1.0) -> Rollouts: ...

    def sync_weights(self, model) -> None: ...

    def close(self) -> None: ...


def check_generate_args(prompt_ids, counts, max_new_tokens, temperature) -> list[int]:
    """Validate ``generate``'s arguments (shared by the backends); returns ``counts`` as a list of ints."""
    if len(prompt_ids) == 0:
        raise ValueError("generate: `prompt_ids` is empty")
    counts = [int(c) for c in counts]
    if len(counts) != len(prompt_ids):
        raise ValueError(f"generate: `counts` must have one entry per prompt ({len(prompt_ids)}); got {len(counts)}")
    if any(c < 0 for c in counts):
        raise ValueError(f"generate: `counts` must be >= 0; got {counts}")
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("generate: every prompt needs at least one token")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"generate: `max_new_tokens` must be a positive int; got {max_new_tokens!r}")
    if not (temperature > 0):
        raise ValueError(f"generate: `temperature` must be > 0; got {temperature!r}")
    return counts


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``input_ids`` [B, W] and ``attention_mask`` [B, W] (int64): every prompt ends at column W - 1,
    so generated tokens start at column W for all rows."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
        mask[r, width - len(p):] = 1
    return ids, mask
