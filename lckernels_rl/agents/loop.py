"""The agent loop: multi-turn tool-using episodes as token-exact trajectories.

Per turn, for every live episode at once (one batched engine call per round, so an episode waiting on its
environment never holds the others back for more than that round):

1. generate from the episode's exact token prefix (the ledger) with at most
   ``min(budget.max_new_tokens, budget.max_context_tokens - len(ledger))`` new tokens;
2. append the sampled ids unchanged, with the engine's log-probs and policy version (loss mask 1);
3. decode them *only* to read the turn: parse tool calls (a malformed call stays in the turn as a parse error, the
   environment answers it with a tool-error message, the loop counts it);
4. step the environment (episodes of a round concurrently); cap every tool output to
   ``budget.max_tool_output_tokens`` *before* it is tokenized;
5. render only the new messages as a delta after the last token (loss mask 0) and go on.

Every episode ends with one stop reason:

=============  ==================================================================================================
``env_done``   the environment terminated or truncated the episode
``max_turns``  ``budget.max_turns`` assistant turns were sampled
``context``    no room left: the prompt, a delta or the next turn would not fit in ``budget.max_context_tokens``
               (a turn cut because the context ran out also ends here)
``length``     a turn hit ``budget.max_new_tokens`` without a stop token (environments with
               ``steps_cut_turns = True``, e.g. text tasks, still see and score that turn; others are not stepped)
``error``      the environment (``reset`` / ``step`` / ``verify``) or a renderer raised; the traceback is logged and
               kept in ``trajectory.error``; the other episodes go on
``fork``       (closed branches only) a context rewrite started a new branch
=============  ==================================================================================================

After the episode the environment's :meth:`~lckernels_rl.envs.ToolEnv.verify` gives the reward (not for ``error``
episodes: reward 0).
"""

from __future__ import annotations

import logging
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from lckernels_rl.rollout.engine import GenerationRequest

from .trajectory import Segment, Trajectory
from .types import Message

__all__ = ["Budget", "AgentLoop", "Episode"]

log = logging.getLogger("lckernels_rl.agents")

TRUNCATION_MARKER = "[truncated]"


@dataclass
class Budget:
    """Limits of one episode (all in tokens except ``max_turns``)."""

    max_turns: int = 8
    max_context_tokens: int = 2048
    max_new_tokens: int = 256
    max_tool_output_tokens: int = 256

    def __post_init__(self):
        for name in ("max_turns", "max_context_tokens", "max_new_tokens", "max_tool_output_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"Budget: `{name}` must be a positive int; got {v!r}")


@dataclass
class Episode:
    """One episode to run: its own environment instance, the task (``None``: generated from ``seed``), the seed."""

    env: Any
    task: Any = None
    seed: Optional[int] = None


@dataclass
class _State:
    ep: Episode
    index: int
    traj: Trajectory
    tools: list = field(default_factory=list)
    turn: int = 0
    done: bool = False
    last_turn: Optional[Message] = None
    cut: Optional[str] = None  # the turn was cut ("length" / "context") but the env still sees it


class AgentLoop:
    """Run episodes of :class:`~lckernels_rl.envs.ToolEnv` s with a token engine.

    Args:
        engine: an :class:`~lckernels_rl.rollout.engine.Engine` (ids in, ids + log-probs + version out).
        renderer: an :class:`~lckernels_rl.agents.renderer.Renderer` (its ``tokenizer`` decodes turns and caps tool
            outputs).
        parser: a tool-call parser (name or instance, :func:`~lckernels_rl.agents.parsers.get_parser`); ``None``:
            turns are plain text (single-turn / text environments).
        budget: the episode limits.
        temperature: sampling temperature.
        context_policy: ``policy(messages, num_tokens, budget) -> list[Message] | None`` called after every step;
            a list rewrites the context (the episode forks), e.g. folding or summarizing a long history.
        max_env_workers: threads stepping blocking environments (``env.blocking``) concurrently (1: in order).
        tools_in_prompt: render the environment's tool schemas into the prompt (``False`` for tiny models whose
            context cannot hold them and which learn the one tool from demonstrations).
    """

    def __init__(self, engine, renderer, parser=None, budget: Optional[Budget] = None, *, temperature: float = 1.0,
                 context_policy: Optional[Callable] = None, max_env_workers: int = 8, tools_in_prompt: bool = True):
        if parser is not None and isinstance(parser, str):
            from .parsers import get_parser

            parser = get_parser(parser)
        if not temperature > 0:
            raise ValueError(f"AgentLoop: `temperature` must be > 0; got {temperature!r}")
        self.engine, self.renderer, self.parser = engine, renderer, parser
        self.budget = budget if budget is not None else Budget()
        if not isinstance(self.budget, Budget):
            raise TypeError(f"AgentLoop: `budget` must be a Budget; got {type(self.budget).__name__}")
        self.temperature = float(temperature)
        self.context_policy = context_policy
        self.max_env_workers = max(1, int(max_env_workers))
        self.tools_in_prompt = bool(tools_in_prompt)
        self.tokenizer = renderer.tokenizer
        self._marker_ids = self._encode(TRUNCATION_MARKER)

    # ---------------------------------------------------------------- public
    def run(self, env, task=None, seed: Optional[int] = None) -> Trajectory:
        """One episode -> its :class:`Trajectory` (closed branches in ``trajectory.forks``)."""
        return self.run_batch([Episode(env, task, seed)])[0]

    def run_batch(self, episodes: Sequence[Episode]) -> list[Trajectory]:
        """Many episodes in lock-step rounds (one engine call per round); trajectories in input order."""
        episodes = [e if isinstance(e, Episode) else Episode(*e) for e in episodes]
        if len({id(e.env) for e in episodes}) != len(episodes):
            raise ValueError("AgentLoop.run_batch: every episode needs its own environment instance")
        states = [_State(e, i, Trajectory(task=e.task, seed=e.seed, metrics=_zero_metrics()))
                  for i, e in enumerate(episodes)]
        self._parallel(self._reset, states)
        while True:
            live = [s for s in states if not s.done]
            if not live:
                break
            asking = []
            for s in live:
                left = self.budget.max_context_tokens - len(s.traj)
                if left <= 0:
                    self._end(s, "context")
                    continue
                asking.append((s, min(self.budget.max_new_tokens, left)))
            if not asking:
                continue
            reqs = [GenerationRequest(s.traj.ids(), n, self.temperature, key=(s.index, s.turn),
                                      messages=tuple(s.traj.messages)) for s, n in asking]
            gens = self.engine.generate(reqs)
            if len(gens) != len(reqs):
                raise RuntimeError(f"engine returned {len(gens)} generations for {len(reqs)} requests")
            stepping = []
            for (s, n), g in zip(asking, gens):
                if self._take_turn(s, n, g):
                    stepping.append(s)
            self._parallel(self._step, stepping)
        self._parallel(self._finish, states)
        return [s.traj for s in states]

    # ---------------------------------------------------------------- stages
    def _parallel(self, fn, states) -> None:
        """``fn`` on every state: in threads for environments that block (``env.blocking``, default True), in
        order for the others."""
        blocking = [bool(getattr(s.ep.env, "blocking", True)) for s in states]
        threaded = [s for s, b in zip(states, blocking) if b]
        if self.max_env_workers == 1 or len(threaded) <= 1:
            threaded, blocking = [], [False] * len(states)
        for s, b in zip(states, blocking):
            if not b:
                fn(s)
        if threaded:
            with ThreadPoolExecutor(min(self.max_env_workers, len(threaded))) as pool:
                list(pool.map(fn, threaded))

    def _reset(self, s: _State) -> None:
        try:
            messages, info = s.ep.env.reset(seed=s.ep.seed, task=s.ep.task)
            s.tools = list(getattr(s.ep.env, "tools", ()) or ())
            s.traj.messages = list(messages)
            s.traj.metrics["reset_info"] = info
            ids = self.renderer.prompt(s.traj.messages, tools=self._specs(s) or None)
        except Exception:
            self._fail(s, "reset")
            return
        s.traj.append(Segment(list(ids), False, source="prompt", turn=-1))
        if len(ids) >= self.budget.max_context_tokens:
            self._end(s, "context")

    def _specs(self, s: _State) -> list:
        return [t.spec for t in s.tools if hasattr(t, "spec")] if self.tools_in_prompt else []

    def _take_turn(self, s: _State, budget_tokens: int, g) -> bool:
        """Append the sampled turn; True when the environment should be stepped."""
        if not g.ids:
            raise RuntimeError("engine returned an empty generation")
        s.traj.append(Segment(list(g.ids), True, logprobs=list(g.logprobs), version=int(g.version),
                              source="assistant", turn=s.turn))
        s.turn += 1
        s.traj.metrics["turns"] += 1
        stop_ids = set(self.renderer.stop_token_ids)
        body = g.ids[:-1] if g.finish_reason == "stop" and g.ids[-1] in stop_ids else g.ids
        text = self.tokenizer.decode(body, skip_special_tokens=True)
        msg = Message("assistant", text)
        if self.parser is not None:
            parsed = self.parser.parse(text, turn=s.turn - 1)
            msg = Message("assistant", text, tool_calls=list(parsed.calls))
            s.traj.metrics["tool_calls"] += len(parsed.calls)
            s.traj.metrics["parse_errors"] += sum(1 for c in parsed.calls if not c.ok)
        s.traj.messages.append(msg)
        s.last_turn = msg
        if g.finish_reason == "length":
            reason = "length" if budget_tokens >= self.budget.max_new_tokens else "context"
            if getattr(s.ep.env, "steps_cut_turns", False):  # text tasks score a cut response (as verl / TRL do)
                s.cut = reason
                return True
            self._end(s, reason)
            return False
        return True

    def _step(self, s: _State) -> None:
        try:
            res = s.ep.env.step(s.last_turn)
        except Exception:
            self._fail(s, "step")
            return
        if res.reward:
            s.traj.step_rewards.append((s.turn - 1, float(res.reward)))
        new = [self._cap(m) for m in res.messages]
        s.traj.metrics["tool_errors"] += sum(1 for m in new if m.role == "tool" and m.is_error)
        s.traj.messages.extend(new)
        if s.cut is not None:
            self._end(s, s.cut)
            return
        if res.terminated or res.truncated:
            s.traj.metrics["env_info"] = res.info
            self._end(s, "env_done")
            return
        if s.turn >= self.budget.max_turns:
            self._end(s, "max_turns")
            return
        rewrite = res.rewrite
        if rewrite is None and self.context_policy is not None:
            rewrite = self.context_policy(list(s.traj.messages), len(s.traj), self.budget)
        try:
            if rewrite is not None:
                self._fork(s, list(rewrite))
                return
            delta = self.renderer.delta(new)
        except Exception:
            self._fail(s, "render")
            return
        if len(s.traj) + len(delta) >= self.budget.max_context_tokens:
            self._end(s, "context")
            return
        s.traj.append(Segment(list(delta), False, source="env", turn=s.turn - 1))

    def _fork(self, s: _State, messages: list[Message]) -> None:
        old = s.traj
        ids = self.renderer.prompt(messages, tools=self._specs(s) or None)
        branch = Trajectory(segments=old.segments, messages=old.messages, stop_reason="fork",
                            step_rewards=old.step_rewards, metrics=dict(old.metrics), task=old.task, seed=old.seed)
        s.traj = Trajectory(segments=[Segment(list(ids), False, source="prompt", turn=s.turn - 1)],
                            messages=messages, forks=[*old.forks, branch], task=old.task, seed=old.seed,
                            step_rewards=list(old.step_rewards), metrics=dict(old.metrics))
        s.traj.metrics["forks"] = s.traj.metrics.get("forks", 0) + 1
        if len(ids) >= self.budget.max_context_tokens:
            self._end(s, "context")

    def _cap(self, m: Message) -> Message:
        """Tool outputs longer than the budget are cut (by tokens, on the text) before they are rendered."""
        if m.role != "tool":
            return m
        cap = self.budget.max_tool_output_tokens
        ids = self._encode(m.content)
        if len(ids) <= cap:
            return m
        marker = TRUNCATION_MARKER if len(self._marker_ids) < cap else ""  # no room for the marker: cut only
        keep = cap - (len(self._marker_ids) if marker else 0)
        text = ""
        while keep > 0:  # decoding a cut multi-byte character can re-encode longer: shrink until it fits
            text = self.tokenizer.decode(ids[:keep], skip_special_tokens=True).rstrip("\ufffd") + marker
            if len(self._encode(text)) <= cap:
                break
            keep -= 1
        else:
            text = marker if len(self._marker_ids) <= cap else ""
        return Message("tool", text, tool_call_id=m.tool_call_id, name=m.name, is_error=m.is_error)

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _end(self, s: _State, reason: str) -> None:
        s.done = True
        s.traj.stop_reason = reason

    def _fail(self, s: _State, where: str) -> None:
        tb = traceback.format_exc()
        log.error("episode %d (seed %s) failed in env %s:\n%s", s.index, s.ep.seed, where, tb)
        s.traj.error = tb
        s.traj.metrics["error_where"] = where
        self._end(s, "error")

    def _finish(self, s: _State) -> None:
        t = s.traj
        m = t.metrics
        m["context_tokens"] = len(t)
        if t.stop_reason == "error":
            t.reward, t.components = 0.0, {}
            return
        try:
            verdict = s.ep.env.verify(t)
            spans = self._token_spans(t, verdict.spans)  # a bad span is the environment's error, not the run's
        except Exception:
            self._fail(s, "verify")
            t.reward, t.components = 0.0, {}
            return
        t.reward = float(verdict.reward)
        t.components = {k: float(v) for k, v in verdict.components.items()}
        t.spans = spans

    def _token_spans(self, t: Trajectory, spans: dict) -> dict[str, list[tuple[int, int]]]:
        """(turn, char_start, char_end) of the decoded turn text -> token ranges of the ledger: every token whose
        decoded characters overlap the range (``char_end=None``: from the first such token to the end of the turn,
        its stop token included)."""
        if not spans:
            return {}
        turns, offsets = t.turn_segments(), t.turn_offsets()
        ends_of: dict[int, list[int]] = {}  # per turn: decoded length after each token
        out: dict[str, list[tuple[int, int]]] = {}
        for name, ranges in spans.items():
            for turn, cs, ce in ranges:
                if not 0 <= turn < len(turns):
                    raise ValueError(f"verdict span {name!r}: turn {turn} out of range ({len(turns)} turns)")
                ids, base = turns[turn].ids, offsets[turn]
                if turn not in ends_of:
                    ends_of[turn] = [len(self.tokenizer.decode(ids[:k + 1], skip_special_tokens=True))
                                     for k in range(len(ids))]
                ends = ends_of[turn]
                starts = [0] + ends[:-1]
                toks = [k for k in range(len(ids)) if ends[k] > cs and (ce is None or starts[k] < ce)]
                if ce is None:
                    out.setdefault(name, []).append((base + (toks[0] if toks else len(ids)), base + len(ids)))
                elif toks:
                    out.setdefault(name, []).append((base + toks[0], base + toks[-1] + 1))
        return out


def _zero_metrics() -> dict:
    return {"turns": 0, "tool_calls": 0, "parse_errors": 0, "tool_errors": 0}
