"""The token ledger of an episode (:class:`Trajectory`) and what the trainer learns from (:class:`TrainSample`).

A trajectory is a list of :class:`Segment` s in the order their tokens entered the context: the rendered prompt,
then per turn the ids the engine sampled (``trainable``, with the engine's log-probs and the policy version that
sampled them) and the rendered delta of the environment's answer (not trainable).  Sampled ids are stored exactly as
the engine returned them; nothing is decoded and re-encoded, so the trained tokens are the sampled tokens by
construction.

A context rewrite (folding, a summary) never edits a ledger: the episode *forks*.  The closed branch keeps its tokens
and ends with stop reason ``"fork"``; the new branch starts from the rewritten context.  Every branch is its own
:class:`TrainSample` (:meth:`Trajectory.to_samples`), all carrying the episode's final reward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from .types import Message

__all__ = ["Segment", "Trajectory", "TrainSample", "STOP_REASONS", "NOT_SAMPLED"]

# Every episode ends with one of these (AgentLoop docs say when).
STOP_REASONS = ("env_done", "max_turns", "context", "length", "error", "fork")
NOT_SAMPLED = -1  # token_versions entry of a token the policy did not sample


@dataclass
class Segment:
    """A run of tokens from one source.

    Attributes:
        ids: token ids.
        trainable: sampled by the policy (loss mask 1) or not (prompt, tool/user/env delta: loss mask 0).
        logprobs: the engine's log-prob of each id (trainable segments; ``None`` otherwise).
        version: the policy version that sampled them (trainable segments; ``None`` otherwise).
        source: ``"prompt"``, ``"assistant"``, ``"env"`` (a rendered delta), ...
        turn: the assistant turn index the segment belongs to (the prompt: -1; a delta: the turn it answers).
    """

    ids: list[int]
    trainable: bool
    logprobs: Optional[list[float]] = None
    version: Optional[int] = None
    source: str = "prompt"
    turn: int = -1

    def __post_init__(self):
        if self.trainable:
            if self.logprobs is None or len(self.logprobs) != len(self.ids):
                raise ValueError(f"Segment: a trainable segment needs one log-prob per id ({len(self.ids)} ids, "
                                 f"{None if self.logprobs is None else len(self.logprobs)} log-probs)")
            if self.version is None:
                raise ValueError("Segment: a trainable segment needs the policy `version` that sampled it")
        elif self.logprobs is not None:
            raise ValueError("Segment: only trainable segments carry log-probs")


@dataclass
class TrainSample:
    """One sequence for the trainer, every per-token list of the same length.

    Attributes:
        input_ids: the whole context (prompt, sampled turns, deltas).
        loss_mask: 1 exactly on the tokens the policy sampled.
        rollout_logprobs: the engine's log-prob of each sampled token (0.0 elsewhere).
        token_versions: the policy version that sampled each token (``NOT_SAMPLED`` = -1 elsewhere).
        reward: the episode's reward.
        reward_positions: ``(position, reward)`` pairs: where rewards attach (by default the last sampled token
            carries the whole reward).
        reward_components: the verdict's named components (e.g. ``{"outcome": 1.0, "format": 0.1}``).
        spans: named token ranges ``{name: [(start, end), ...]}`` (end exclusive), e.g. a protocol phase.
        group_id: the group (same task) the sample belongs to; set by the rollout source.
        stop_reason: one of :data:`STOP_REASONS`.
        num_turns: assistant turns in this branch.
        meta: anything else (task id, seed, metrics of the episode).
        token_turn: per token, the episode's assistant-turn index of a sampled token (``-1`` elsewhere); ``None``
            when unknown (a sample built by hand).  Per-turn estimators (``hian``) need it.
        turn_rewards: the environment's step rewards summed per assistant turn ``0..K-1`` (K = the last sampled
            turn + 1 of this branch; 0.0 for a turn without one).
    """

    input_ids: list[int]
    loss_mask: list[int]
    rollout_logprobs: list[float]
    token_versions: list[int]
    reward: float = 0.0
    reward_positions: list[tuple[int, float]] = field(default_factory=list)
    reward_components: dict[str, float] = field(default_factory=dict)
    spans: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    group_id: Any = None
    stop_reason: str = "env_done"
    num_turns: int = 0
    meta: dict = field(default_factory=dict)
    token_turn: Optional[list[int]] = None
    turn_rewards: list[float] = field(default_factory=list)

    def __post_init__(self):
        n = len(self.input_ids)
        for name in ("loss_mask", "rollout_logprobs", "token_versions", "token_turn"):
            if getattr(self, name) is not None and len(getattr(self, name)) != n:
                raise ValueError(f"TrainSample: `{name}` has {len(getattr(self, name))} entries for {n} input ids")
        if n == 0:
            raise ValueError("TrainSample: `input_ids` is empty")
        if self.loss_mask and self.loss_mask[0]:
            raise ValueError("TrainSample: the first token cannot be trainable (nothing predicts it)")
        if self.stop_reason not in STOP_REASONS:
            raise ValueError(f"TrainSample: unknown stop_reason {self.stop_reason!r}; valid: {STOP_REASONS}")
        for name, ranges in self.spans.items():
            for s, e in ranges:
                if not 0 <= s <= e <= n:
                    raise ValueError(f"TrainSample: span {name!r} range ({s}, {e}) outside [0, {n}]")

    @property
    def num_sampled(self) -> int:
        return sum(self.loss_mask)

    def sampled_ids(self) -> list[int]:
        return [t for t, m in zip(self.input_ids, self.loss_mask) if m]

    def span_mask(self, name: str) -> list[int]:
        """0/1 per position: inside span ``name`` (all 0 when the sample has no such span)."""
        out = [0] * len(self.input_ids)
        for s, e in self.spans.get(name, ()):
            for i in range(s, e):
                out[i] = 1
        return out


@dataclass
class Trajectory:
    """The ledger of one episode branch plus what the episode produced.

    Attributes:
        segments: the token ledger, in context order.
        messages: the conversation as messages (for the environment's verifier and for logs; the tokens are the
            truth for training).
        stop_reason: why the branch ended (:data:`STOP_REASONS`).
        reward / components: the verdict.
        spans: named token ranges (see :class:`TrainSample`).
        step_rewards: ``(assistant turn, reward)`` of the environment's per-step rewards.
        metrics: counters of the episode (``tool_calls``, ``tool_errors``, ``parse_errors``, ...).
        error: the traceback when ``stop_reason == "error"``.
        forks: earlier branches closed by a context rewrite (each a complete :class:`Trajectory`).
        task / seed: what was run.
    """

    segments: list[Segment] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    stop_reason: str = ""
    reward: float = 0.0
    components: dict[str, float] = field(default_factory=dict)
    spans: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    step_rewards: list[tuple[int, float]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    error: Optional[str] = None
    forks: list["Trajectory"] = field(default_factory=list)
    task: Any = None
    seed: Optional[int] = None

    # ---------------------------------------------------------------- ledger
    def append(self, segment: Segment) -> None:
        if segment.ids:
            self.segments.append(segment)

    def ids(self) -> list[int]:
        return [t for s in self.segments for t in s.ids]

    def __len__(self) -> int:
        return sum(len(s.ids) for s in self.segments)

    @property
    def num_turns(self) -> int:
        return sum(1 for s in self.segments if s.trainable)

    def turn_segments(self) -> list[Segment]:
        """The sampled segments, one per assistant turn, in order."""
        return [s for s in self.segments if s.trainable]

    def turn_offsets(self) -> list[int]:
        """Start position of each sampled segment in the ledger."""
        out, pos = [], 0
        for s in self.segments:
            if s.trainable:
                out.append(pos)
            pos += len(s.ids)
        return out

    # ---------------------------------------------------------------- samples
    def to_sample(self, group_id: Any = None, reward: Optional[float] = None) -> TrainSample:
        """This branch as a :class:`TrainSample` (``reward`` defaults to :attr:`reward`)."""
        ids, mask, lps, vers, turns = [], [], [], [], []
        for s in self.segments:
            ids.extend(s.ids)
            if s.trainable:
                mask.extend([1] * len(s.ids))
                lps.extend(float(x) for x in s.logprobs)
                vers.extend([int(s.version)] * len(s.ids))
                turns.extend([int(s.turn)] * len(s.ids))
            else:
                mask.extend([0] * len(s.ids))
                lps.extend([0.0] * len(s.ids))
                vers.extend([NOT_SAMPLED] * len(s.ids))
                turns.extend([-1] * len(s.ids))
        k = max((t + 1 for t in turns), default=0)
        turn_rewards = [0.0] * k
        for t, rr in self.step_rewards:
            if 0 <= t < k:
                turn_rewards[t] += float(rr)
        r = self.reward if reward is None else float(reward)
        last = max((i for i, m in enumerate(mask) if m), default=None)
        positions = [(last, r)] if last is not None else []
        return TrainSample(input_ids=ids, loss_mask=mask, rollout_logprobs=lps, token_versions=vers, reward=r,
                           reward_positions=positions, reward_components=dict(self.components),
                           spans={k: list(v) for k, v in self.spans.items()}, group_id=group_id,
                           stop_reason=self.stop_reason, num_turns=self.num_turns,
                           meta={"task": self.task, "seed": self.seed, **self.metrics}, token_turn=turns,
                           turn_rewards=turn_rewards)

    def to_samples(self, group_id: Any = None) -> list[TrainSample]:
        """One sample per branch (earlier forks first), each with the episode's final reward."""
        return [f.to_sample(group_id, reward=self.reward) for f in self.forks] + [self.to_sample(group_id)]
