"""Noise for agent environments: :class:`NoiseWrapper` (tool noise + user noise) and :class:`NoiseCurriculum`.

Sources: LongCat-Flash-Thinking-2601 (arXiv 2601.16725) §3.3.3 -- real-world noise decomposed into instruction /
user noise and tool noise, injected into RL training on part of the rollouts with a curriculum that raises the noise
level as the policy copes (INFERRED from third-party summaries; the report text was not readable here).
AgentNoiseBench (keven-cyber/agentnoisebench, commit 81c34a50777446818a2fa68158948925a815a426), VERIFIED by reading:

* ``Search-R1/noise_bench/noiser/failure.py``: a failure replaces the step's tool observation with one of
  ``Error 401 Unauthorized`` / ``Error 403 Forbidden`` / ``Error 408 Request Timeout`` / ``Error 429 Too Many
  Requests`` (uniform choice); whether a step is noised is gated by ``start_step``, ``max_times_per_trail`` (-1:
  unbounded), a cooldown ``interval_steps`` since the last noised step, then ``random() <= prob_per_step``.
  Ours mirrors those knobs (``start_step``, ``max_per_episode``, ``interval_steps``, ``level`` = prob per step).
* ``.../noiser/incomplete.py``, ``redundancy.py``, ``error.py``: incomplete / redundant / erroneous results are
  rewritten by an LLM prompt there; ours are rule-based text edits (INFERRED), chosen so every noisy task stays
  solvable: an incomplete result drops a field or entry (call again), an erroneous one perturbs an id into one that
  does not exist (the next call fails with ``no <table> <id>``; call the producer again) or a record's id (mismatch;
  call again), a redundant one adds distractor entries/records whose keys do not match the query (pick the match).
* User noise (``tau2-bench-main/data/tau2/user_simulator/simulation_guidelines_{ambiguity,topic_shift}.md`` there,
  commit d24517ce; file names VERIFIED, realisation INFERRED): ambiguity (a needed slot withheld until asked),
  self-correction (the write's value changes mid-dialogue), topic shift (an unrelated line).  Applied through
  :class:`~lckernels_rl.envs.tool_domains.user_sim.ScriptedUser` when the wrapped env supports ``user_noise``.

A failure is decided *before* the call runs (the call is not executed: a retried write is not a double write);
the other tool noises edit the successful result text.

**Mixed clean/noisy groups.**  The trainer builds one fresh env per episode and resets every episode of a group
with the same seed (``EpisodeSource``), so an episode cannot see its index in the group.  The wrapper counts the
resets of each seed in the process (:class:`EpisodeCounter`, shared): occurrence ``j`` of seed ``s`` is noisy iff
``floor((j+1)f + φ_s) - floor(j f + φ_s) == 1`` (``f = fraction``, ``φ_s`` a phase from ``crc32(s)``), so any ``n``
consecutive episodes of one seed (a group) hold ``floor(nf)`` or ``ceil(nf)`` noisy ones; the noise realisation
is drawn from ``default_rng([s, j, salt])``, so the noisy episodes of a group differ.  ``reset(..., noisy=True)``
overrides the choice.  A cleaner design would pass the rollout index from the trainer (see docs/tool_domains.md).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import threading
import zlib
from typing import Any, Optional, Sequence

import numpy as np

from lckernels_rl.agents.types import Message

from ..tool_env import StepResult, ToolEnv, Verdict
from .domains import NAMES

__all__ = ["NoiseWrapper", "NoiseCurriculum", "EpisodeCounter", "FAILURE_ERRORS", "TOOL_NOISE", "USER_NOISE",
           "failure", "incomplete", "erroneous", "redundant", "get_curriculum", "is_noisy_occurrence",
           "record_outcome", "drain_outcomes"]

FAILURE_ERRORS = ("Error 401 Unauthorized", "Error 403 Forbidden", "Error 408 Request Timeout",
                  "Error 429 Too Many Requests")
TOOL_NOISE = ("failure", "incomplete", "erroneous", "redundant")
USER_NOISE = ("ambiguity", "self_correction", "topic_shift")
_ENTRY = re.compile(r"^([A-Za-z0-9_.-]+):([A-Za-z]+)(\d+)$")
_RECORD = re.compile(r"^([A-Za-z]+)(\d+)((?: [A-Za-z0-9_]+=[A-Za-z0-9_.-]*)+)$")


# ---------------------------------------------------------------------------------------------- text edits
def failure(text: str, rng: np.random.Generator) -> str:
    """An HTTP-style error instead of the result."""
    return FAILURE_ERRORS[int(rng.integers(len(FAILURE_ERRORS)))]


def _far_id(prefix: str, rng) -> str:
    return f"{prefix}{int(rng.integers(10, 100))}"  # generated ids have one digit: a two-digit id never exists


def incomplete(text: str, rng: np.random.Generator) -> str:
    """Drop one field of a record (``o7 status=new eta=20`` -> ``o7 status=new``) or one ``key:id`` entry
    (a lone entry -> ``none``); other text is cut in half."""
    recs = text.split(" | ")
    if all(_RECORD.match(r) for r in recs):
        k = int(rng.integers(len(recs)))
        parts = recs[k].split()
        drop = 1 + int(rng.integers(len(parts) - 1))
        recs[k] = " ".join(p for i, p in enumerate(parts) if i != drop)
        return " | ".join(recs)
    entries = text.split()
    if entries and all(_ENTRY.match(e) for e in entries):
        drop = int(rng.integers(len(entries)))
        rest = [e for i, e in enumerate(entries) if i != drop]
        return " ".join(rest) if rest else "none"
    return text[: len(text) // 2]


def erroneous(text: str, rng: np.random.Generator) -> str:
    """Perturb one value: an entry's id (``ana:c3`` -> ``ana:c47``, an id that does not exist) or a record's id
    (``o7 ...`` -> ``o52 ...``); other text: one digit changed."""
    recs = text.split(" | ")
    if all(_RECORD.match(r) for r in recs):
        k = int(rng.integers(len(recs)))
        m = _RECORD.match(recs[k])
        recs[k] = _far_id(m.group(1), rng) + m.group(3)
        return " | ".join(recs)
    entries = text.split()
    if entries and all(_ENTRY.match(e) for e in entries):
        k = int(rng.integers(len(entries)))
        m = _ENTRY.match(entries[k])
        entries[k] = f"{m.group(1)}:{_far_id(m.group(2), rng)}"
        return " ".join(entries)
    digits = [i for i, ch in enumerate(text) if ch.isdigit()]
    if not digits:
        return text + "?"
    i = digits[int(rng.integers(len(digits)))]
    return text[:i] + str((int(text[i]) + 1 + int(rng.integers(8))) % 10) + text[i + 1:]


def redundant(text: str, rng: np.random.Generator) -> str:
    """Add distractor entries / records whose keys do not match the query (``ana:c3`` -> ``gus:c61 ana:c3``)."""
    recs = text.split(" | ")
    if all(_RECORD.match(r) for r in recs):
        m = _RECORD.match(recs[0])
        fake = _far_id(m.group(1), rng) + m.group(3)
        recs.insert(int(rng.integers(len(recs) + 1)), fake)
        return " | ".join(recs)
    entries = text.split()
    if entries and all(_ENTRY.match(e) for e in entries):
        m = _ENTRY.match(entries[0])
        key = m.group(1)
        if re.fullmatch(r"[A-Za-z]+\d+", key):  # a parent id: another (nonexistent) id of the same table
            fkey = _far_id(re.match(r"[A-Za-z]+", key).group(0), rng)
        else:
            fkey = str(rng.choice([n for n in NAMES if n != key]))
        entries.insert(int(rng.integers(len(entries) + 1)), f"{fkey}:{_far_id(m.group(2), rng)}")
        return " ".join(entries)
    return text + " | (unrelated note)"


def editable(text: str) -> bool:
    """A structured result (``key:id`` entries or ``id field=value`` records) the content noises can edit; other
    results (a write's ``ok``, free text) are left alone so a noisy write acknowledgement never fakes a failure."""
    recs = text.split(" | ")
    entries = text.split()
    return all(_RECORD.match(r) for r in recs) or bool(entries) and all(_ENTRY.match(e) for e in entries)


EDITS = {"failure": failure, "incomplete": incomplete, "erroneous": erroneous, "redundant": redundant}


# ---------------------------------------------------------------------------------------------- episode index
class EpisodeCounter:
    """Thread-safe count of the resets of each seed (the episode's occurrence index ``j``)."""

    def __init__(self):
        self._n: dict = {}
        self._lock = threading.Lock()

    def next(self, seed) -> int:
        with self._lock:
            j = self._n.get(seed, 0)
            self._n[seed] = j + 1
            return j

    def clear(self) -> None:
        with self._lock:
            self._n.clear()


_COUNTER = EpisodeCounter()


def is_noisy_occurrence(seed: int, j: int, fraction: float) -> bool:
    """Occurrence ``j`` of ``seed`` is noisy (the balanced sequence described in the module docstring)."""
    if fraction >= 1.0:
        return True
    if fraction <= 0.0:
        return False
    phi = zlib.crc32(str(seed).encode()) / 2**32
    return math.floor((j + 1) * fraction + phi) - math.floor(j * fraction + phi) == 1


# ---------------------------------------------------------------------------------------------- curriculum
class NoiseCurriculum:
    """Raise the noise level when the policy copes: after at least ``min_episodes`` clean and noisy episodes in the
    window, if ``mean(clean success) - mean(noisy success) < threshold`` the level moves to the next of ``levels``
    and the window restarts (INFERRED rule; the report describes a curriculum over noise difficulty).

    Args:
        levels: increasing noise levels in [0, 1].
        threshold: the clean-minus-noisy success gap under which the level rises.
        window: episodes kept per kind; min_episodes: needed per kind before a decision.
    """

    def __init__(self, levels: Sequence[float] = (0.2, 0.4, 0.6, 0.8, 1.0), threshold: float = 0.1,
                 window: int = 64, min_episodes: int = 16):
        levels = [float(x) for x in levels]
        if not levels or any(not 0.0 <= x <= 1.0 for x in levels) or levels != sorted(levels):
            raise ValueError(f"NoiseCurriculum: `levels` must be increasing values in [0, 1]; got {levels!r}")
        if not (isinstance(window, int) and window >= 1 and isinstance(min_episodes, int)
                and 1 <= min_episodes <= window):
            raise ValueError(f"NoiseCurriculum: need ints 1 <= min_episodes ({min_episodes!r}) <= window "
                             f"({window!r})")
        self.levels, self.threshold, self.window, self.min_episodes = levels, float(threshold), window, min_episodes
        self.stage = 0
        self.clean: list[float] = []
        self.noisy: list[float] = []
        self.history: list[tuple[int, float]] = []  # (stage, gap) at each rise
        self._lock = threading.Lock()

    @property
    def level(self) -> float:
        return self.levels[self.stage]

    def record(self, noisy: bool, success: float) -> None:
        with self._lock:
            buf = self.noisy if noisy else self.clean
            buf.append(float(success))
            del buf[:-self.window]
            if len(self.clean) >= self.min_episodes and len(self.noisy) >= self.min_episodes:
                gap = float(np.mean(self.clean)) - float(np.mean(self.noisy))
                if gap < self.threshold and self.stage + 1 < len(self.levels):
                    self.stage += 1
                    self.history.append((self.stage, gap))
                    self.clean, self.noisy = [], []

    def state_dict(self) -> dict:
        return {"stage": self.stage, "clean": list(self.clean), "noisy": list(self.noisy),
                "history": [list(h) for h in self.history]}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or not isinstance(state.get("stage"), int) \
                or not 0 <= state["stage"] < len(self.levels):
            raise ValueError(f"NoiseCurriculum.load_state_dict: expected {{stage: 0..{len(self.levels) - 1}, "
                             f"clean, noisy}}; got {state!r}")
        with self._lock:
            self.stage = state["stage"]
            self.clean = [float(x) for x in state.get("clean", [])][-self.window:]
            self.noisy = [float(x) for x in state.get("noisy", [])][-self.window:]
            self.history = [(int(a), float(b)) for a, b in state.get("history", [])]


_CURRICULA: dict[str, NoiseCurriculum] = {}


def get_curriculum(name: str = "default", **kwargs) -> NoiseCurriculum:
    """The process-wide curriculum ``name`` (created with ``kwargs`` on first use): the fresh env of every episode
    shares it, so it sees every training episode's outcome without a trainer hook."""
    if name not in _CURRICULA:
        _CURRICULA[name] = NoiseCurriculum(**kwargs)
    return _CURRICULA[name]


_OUTCOMES: dict[str, list[tuple[bool, float]]] = {}
_OUTCOMES_LOCK = threading.Lock()


def record_outcome(channel: str, noisy: bool, reward: float) -> None:
    """Append one verified episode's ``(noisy, reward)`` to the process-wide outcome ``channel``."""
    with _OUTCOMES_LOCK:
        _OUTCOMES.setdefault(channel, []).append((bool(noisy), float(reward)))


def drain_outcomes(channel: str) -> list[tuple[bool, float]]:
    """The outcomes recorded on ``channel`` since the last drain (then emptied): how a trainer callback
    (:class:`~lckernels_rl.envs.tool_domains.callbacks.NoiseCurriculumCallback`) sees the clean / noisy success of
    the rollouts of a step -- the trainer's step metrics carry no clean/noisy split."""
    with _OUTCOMES_LOCK:
        return _OUTCOMES.pop(channel, [])


# ---------------------------------------------------------------------------------------------- wrapper
class NoiseWrapper(ToolEnv):
    """Tool and user noise around a :class:`ToolEnv`.

    Args:
        env: the environment (user noise needs one whose ``reset`` takes ``user_noise``, e.g. ToolDomainEnv).
        level: the per-step probability of a tool noise and the probability of each user noise, in [0, 1]
            (ignored when ``curriculum`` is given).
        types: the noise types to use (subset of TOOL_NOISE + USER_NOISE).
        fraction: the share of episodes that are noisy (mixed clean/noisy groups).
        max_per_episode: tool noises of one type per episode at most (AgentNoiseBench ``max_times_per_trail``).
        interval_steps: tool calls after a noise of a type before that type may fire again.
        start_step: the first tool call (1-based) that may be noised.
        curriculum: ``None`` or ``{"name": ..., levels/threshold/window/min_episodes}`` (see
            :func:`get_curriculum`): the level follows it and each verified episode is recorded.
        salt: mixed into the noise seed.
        counter: the :class:`EpisodeCounter` (default: the process-wide one).
        outcomes: ``None`` or a channel name: each verified episode's ``(noisy, reward)`` is recorded there
            (:func:`record_outcome`; read by :class:`~lckernels_rl.envs.tool_domains.callbacks.NoiseCurriculumCallback`).
    """

    def __init__(self, env: ToolEnv, level: float = 0.5, *, types: Sequence[str] = TOOL_NOISE + USER_NOISE,
                 fraction: float = 1.0, max_per_episode: int = 2, interval_steps: int = 0, start_step: int = 1,
                 curriculum: Optional[dict] = None, salt: int = 0, counter: Optional[EpisodeCounter] = None,
                 outcomes: Optional[str] = None):
        if not isinstance(env, ToolEnv):
            raise TypeError(f"NoiseWrapper: `env` must be a ToolEnv; got {type(env).__name__}")
        for n, v in (("level", level), ("fraction", fraction)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"NoiseWrapper: `{n}` must be a number in [0, 1]; got {v!r}")
        types = tuple(types)
        bad = [t for t in types if t not in TOOL_NOISE + USER_NOISE]
        if bad:
            raise ValueError(f"NoiseWrapper: unknown noise types {bad}; expected a subset of "
                             f"{TOOL_NOISE + USER_NOISE}")
        for n, v, lo in (("max_per_episode", max_per_episode, 0), ("interval_steps", interval_steps, 0),
                         ("start_step", start_step, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"NoiseWrapper: `{n}` must be an int >= {lo}; got {v!r}")
        if curriculum is not None and not isinstance(curriculum, dict):
            raise TypeError(f"NoiseWrapper: `curriculum` must be None or a dict; got {type(curriculum).__name__}")
        if outcomes is not None and (not isinstance(outcomes, str) or not outcomes):
            raise TypeError(f"NoiseWrapper: `outcomes` must be None or a channel name (str); got {outcomes!r}")
        self.outcomes = outcomes
        self.env, self._level, self.types, self.fraction = env, float(level), types, float(fraction)
        self.max_per_episode, self.interval_steps, self.start_step = max_per_episode, interval_steps, start_step
        self.curriculum = None if curriculum is None else get_curriculum(**curriculum)
        self.salt, self.counter = int(salt), counter or _COUNTER
        self.noisy = False
        self.rng = np.random.default_rng(0)
        self.events: list[tuple[int, str]] = []
        self._step_idx = 0
        self._used: dict[str, int] = {}
        self._last: dict[str, int] = {}
        self._steps_of: dict = {}
        self.user_noise: dict = {}

    # delegation
    name = property(lambda self: self.env.name)  # type: ignore[assignment]
    tools = property(lambda self: self.env.tools)  # type: ignore[assignment]
    tool_format = property(lambda self: getattr(self.env, "tool_format", None))  # type: ignore[assignment]
    protocol_tokens = property(lambda self: getattr(self.env, "protocol_tokens", ()))  # type: ignore[assignment]
    alphabet = property(lambda self: getattr(self.env, "alphabet", ""))
    blocking = property(lambda self: getattr(self.env, "blocking", True))  # type: ignore[assignment]

    @property
    def level(self) -> float:
        return self.curriculum.level if self.curriculum is not None else self._level

    def reset(self, seed: Optional[int] = None, task: Any = None, *, noisy: Optional[bool] = None):
        key = seed if seed is not None else -1
        j = self.counter.next(key)
        self.noisy = is_noisy_occurrence(key, j, self.fraction) if noisy is None else bool(noisy)
        self.rng = np.random.default_rng([abs(int(key)), j, self.salt, 0x5EED])
        self.events, self._step_idx, self._used, self._last = [], 0, {}, {}
        self.user_noise = {}
        try:
            supports = "user_noise" in inspect.signature(self.env.reset).parameters
        except (TypeError, ValueError):
            supports = False
        if self.noisy and supports and any(t in self.types for t in USER_NOISE):
            if task is None and hasattr(self.env, "make_task"):
                task = self.env.make_task(0 if seed is None else int(seed))
            self.user_noise = self._user_noise(task)
        if supports:
            msgs, info = self.env.reset(seed, task, user_noise=self.user_noise)
        else:
            msgs, info = self.env.reset(seed, task)
        info = dict(info or {})
        info.update(noisy=self.noisy, occurrence=j, user_noise=dict(self.user_noise))
        return msgs, info

    def _user_noise(self, task) -> dict:
        from .tasks import Task
        from .user_sim import CHATTER
        from .domains import get_domain

        t = Task.from_dict(task)
        lv, rng, out = self.level, self.rng, {}
        if "ambiguity" in self.types and rng.random() < lv:
            out["withhold"] = "value" if t.kind == "write" and rng.random() < 0.5 else "name"
            self.events.append((0, "ambiguity"))
        if "self_correction" in self.types and t.kind == "write" and rng.random() < lv:
            dom = get_domain(t.domain)
            cur = t.db[t.target][next(a for n, a in t.gold if n.startswith("set_"))[t.target]][t.field]
            vals = [v for v in dom.tables[t.target].all_fields[t.field] if v not in (t.value, cur)]
            if vals:
                out["correction"] = str(vals[int(rng.integers(len(vals)))])
                self.events.append((0, "self_correction"))
        if "topic_shift" in self.types and rng.random() < lv:
            out["topic_shift"] = str(CHATTER[int(rng.integers(len(CHATTER)))])
            self.events.append((0, "topic_shift"))
        return out

    def _draw(self) -> Optional[str]:
        self._step_idx += 1
        if self._step_idx < self.start_step:
            return None
        cands = [t for t in TOOL_NOISE if t in self.types and self._used.get(t, 0) < self.max_per_episode
                 and (t not in self._last or self._step_idx - self._last[t] > self.interval_steps)]
        if not cands or self.rng.random() >= self.level:
            return None
        t = cands[int(self.rng.integers(len(cands)))]
        self._used[t] = self._used.get(t, 0) + 1
        self._last[t] = self._step_idx
        self.events.append((self._step_idx, t))
        return t

    def step(self, turn: Message) -> StepResult:
        if not self.noisy or not turn.tool_calls:
            return self.env.step(turn)
        kinds, self._steps_of = {}, {}
        for c in turn.tool_calls:
            kinds[c.id] = self._draw() if c.ok else None
            self._steps_of[c.id] = self._step_idx
        run = [c for c in turn.tool_calls if kinds[c.id] != "failure"]
        res = self.env.step(dataclasses.replace(turn, tool_calls=run)) if run else StepResult()
        by_id = {m.tool_call_id: m for m in res.messages if m.role == "tool"}
        others = [m for m in res.messages if m.role != "tool" or m.tool_call_id not in by_id]
        out = []
        for c in turn.tool_calls:
            k = kinds[c.id]
            if k == "failure":
                out.append(Message("tool", failure("", self.rng), tool_call_id=c.id, name=c.name, is_error=True))
                continue
            m = by_id.get(c.id)
            if m is None:
                continue
            if k is not None:
                if not m.is_error and editable(m.content):
                    m = dataclasses.replace(m, content=EDITS[k](m.content, self.rng))
                else:  # nothing to edit (an error, a write's "ok"): this noise did not happen
                    self._used[k] -= 1
                    self.events.remove((self._steps_of[c.id], k))
                    kinds[c.id] = None
            out.append(m)
        info = dict(res.info or {})
        info["noise"] = [k for k in kinds.values() if k]
        return dataclasses.replace(res, messages=out + others, info=info)

    def answer(self, turn: Message) -> StepResult:
        return self.env.answer(turn)

    def verify(self, trajectory=None) -> Verdict:
        v = self.env.verify(trajectory)
        comps = dict(v.components)
        comps["noisy"] = float(self.noisy)
        info = dict(v.info or {})
        info["noise_events"] = list(self.events)
        if self.curriculum is not None:
            self.curriculum.record(self.noisy, v.reward)
        if self.outcomes is not None:
            record_outcome(self.outcomes, self.noisy, v.reward)
        return dataclasses.replace(v, components=comps, info=info)

    def state(self):
        return self.env.state()

    def state_digest(self) -> str:
        return self.env.state_digest()

    def demonstration(self, messages):
        return self.env.demonstration(messages)

    def tokenizer_corpus(self, n: int = 64) -> list[str]:
        return list(self.env.tokenizer_corpus(n)) + list(FAILURE_ERRORS) + ["none", " | "]

    def close(self) -> None:
        self.env.close()
