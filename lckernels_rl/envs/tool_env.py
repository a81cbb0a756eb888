"""The multi-turn environment protocol of the agent layer, and adapters for text environments.

A :class:`ToolEnv` speaks messages (:class:`~lckernels_rl.agents.Message`):

* ``reset(seed, task=None) -> (messages, info)`` -- the opening conversation (system / user messages) of a task;
  ``task`` is generated from ``seed`` when not given (data is generated, never downloaded);
* ``step(turn) -> StepResult`` -- ``turn`` is the assistant message with its parsed tool calls; the default runs the
  calls (concurrently when :attr:`ToolEnv.concurrent_tools`) and answers each with a tool message, and hands a turn
  without calls to :meth:`ToolEnv.answer` (the final answer: the episode ends);
* ``verify(trajectory) -> Verdict`` -- the reward and its named components once the episode ended (default: the
  sum of the step rewards);
* ``tools`` -- :class:`~lckernels_rl.agents.tools.Tool` objects (OpenAI schemas via ``tool_specs``);
* ``state_digest()`` -- a canonical hash of the environment state (state-based verification compares digests).

Gymnasium / GEM style text environments (``reset(seed) -> (obs, info)``, ``step(text) -> (obs, reward, terminated,
truncated, info)``, observations and actions are strings) plug in through :class:`TextEnvAdapter`; the library's
single-turn tasks (arithmetic) run through it as one-turn episodes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional, Sequence

from lckernels_rl.agents.types import Message

__all__ = ["StepResult", "Verdict", "ToolEnv", "TextEnvAdapter"]


@dataclass
class StepResult:
    """What the environment answers to one assistant turn.

    Attributes:
        messages: new tool / user messages (rendered as a delta after the sampled turn; loss mask 0).
        reward: this step's reward (summed by the default :meth:`ToolEnv.verify`).
        terminated: the task is over (answered, failed for good).
        truncated: the environment cut the episode (its own limit).
        info: anything else (logged with the episode).
        rewrite: a new context (the whole message list) replacing the conversation: the episode *forks* (the
            closed branch keeps its tokens; the next turn is generated from the rewritten context).
    """

    messages: list[Message] = field(default_factory=list)
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    info: dict = field(default_factory=dict)
    rewrite: Optional[list[Message]] = None


@dataclass
class Verdict:
    """The reward of an episode and its named components.

    ``spans``: named parts of the assistant's turns ``{name: [(turn, char_start, char_end), ...]}`` (character
    offsets in the decoded text of assistant turn ``turn``; ``char_end=None``: to the end of the turn, its stop token
    included); the loop maps them to token ranges of the :class:`~lckernels_rl.agents.TrainSample`.
    """

    reward: float
    components: dict[str, float] = field(default_factory=dict)
    spans: dict[str, list[tuple[int, int, Optional[int]]]] = field(default_factory=dict)
    info: dict = field(default_factory=dict)


class ToolEnv:
    """Base class of multi-turn tool environments.  Subclasses implement :meth:`reset` and :meth:`answer` (and
    usually :meth:`verify`, :meth:`state`, :meth:`demonstration`).

    Attributes:
        name: registry name.
        tools: the tools the agent may call (``@tool`` functions, usually bound to the instance's state).
        concurrent_tools: several calls of one turn may run concurrently.
        blocking: ``reset`` / ``step`` / ``verify`` wait on something outside Python (a database, a subprocess, a
            remote service), so the agent loop runs the episodes' calls in threads; pure-Python environments set it
            to ``False`` (threads would only add overhead and GIL contention with the policy's own threads).
        tool_format: the tool-call parser the environment's demonstrations are written in.
        protocol_tokens: tags of the environment's turn format (``<think>``, ``<tool_call>``, ...) that a tokenizer
            trained for it keeps as one ordinary token each (the trainer's BPE tokenizers do).
    """

    name: ClassVar[str] = ""
    tools: Sequence = ()
    concurrent_tools: bool = True
    blocking: bool = True
    tool_format: ClassVar[Optional[str]] = None
    protocol_tokens: ClassVar[tuple[str, ...]] = ()

    def reset(self, seed: Optional[int] = None, task: Any = None) -> tuple[list[Message], dict]:
        raise NotImplementedError

    def step(self, turn: Message) -> StepResult:
        if turn.tool_calls:
            from lckernels_rl.agents.tools import run_tool_calls

            return StepResult(messages=run_tool_calls(list(self.tools), turn.tool_calls,
                                                      concurrent=self.concurrent_tools))
        return self.answer(turn)

    def answer(self, turn: Message) -> StepResult:
        """A turn without tool calls: the final answer (default: ends the episode with reward 0)."""
        return StepResult(terminated=True)

    def verify(self, trajectory) -> Verdict:
        return Verdict(reward=float(sum(r for _, r in trajectory.step_rewards)))

    def state(self) -> Any:
        """The environment state as JSON-serializable data (for :meth:`state_digest`)."""
        return None

    def state_digest(self) -> str:
        """SHA-256 of the canonical JSON of :meth:`state` (sorted keys, no whitespace)."""
        blob = json.dumps(self.state(), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def demonstration(self, messages: Sequence[Message]) -> Optional[str]:
        """The scripted next assistant turn (text) for the conversation so far, for the supervised warm-up;
        ``None``: no demonstration."""
        return None

    def tokenizer_corpus(self, n: int = 64) -> list[str]:
        """Texts that cover what prompts, tool outputs and correct answers contain (tokenizers are built from them).
        Default: the contents of ``n`` demonstrated episodes."""
        return []

    def close(self) -> None:
        pass


class TextEnvAdapter(ToolEnv):
    """A gymnasium-style text environment as a :class:`ToolEnv`.

    The wrapped ``env`` has ``reset(seed=...) -> (obs, info)`` and ``step(action: str) -> (obs, reward, terminated,
    truncated, info)`` with string observations (``None``/``""``: nothing to say); each observation becomes a
    ``role`` message (``user`` by default), each assistant turn's text is the action.  Tool calls are not parsed for
    such environments (the whole text is the action).  ``demonstration()`` of the wrapped env (if any) is used for
    the warm-up of single-turn tasks.  A response cut at the token budget is still scored (``steps_cut_turns``; the
    episode then ends with stop reason ``length``), as single-turn RL trainers score truncated responses.
    :meth:`verify` sums the step rewards and takes named ``components`` and
    ``spans`` (``{name: [(char_start, char_end), ...]}`` in the last action's text) from the last step's info.
    """

    steps_cut_turns = True
    blocking = False  # gymnasium-style text envs are pure Python

    def __init__(self, env, *, role: str = "user", system: Optional[str] = None):
        for attr in ("reset", "step"):
            if not callable(getattr(env, attr, None)):
                raise TypeError(f"TextEnvAdapter: `env` needs a callable {attr}(); got {type(env).__name__}")
        self.env, self.role, self.system = env, role, system
        self.alphabet = getattr(env, "alphabet", "")
        self._turns = 0
        self._last_info: dict = {}

    @property
    def name(self) -> str:  # type: ignore[override]
        return getattr(self.env, "name", type(self.env).__name__)

    def _obs_messages(self, obs) -> list[Message]:
        if obs is None or obs == "":
            return []
        if isinstance(obs, list):  # chat-style observations: [{"role", "content"}, ...]
            return [m if isinstance(m, Message) else Message.from_dict(m) for m in obs]
        if not isinstance(obs, str):
            raise TypeError(f"TextEnvAdapter: observations must be str or a list of messages; got "
                            f"{type(obs).__name__}")
        return [Message(self.role, obs)]

    def reset(self, seed: Optional[int] = None, task: Any = None) -> tuple[list[Message], dict]:
        if task is not None:
            raise ValueError("TextEnvAdapter: text environments generate their task from `seed`; got a `task`")
        obs, info = self.env.reset(seed=seed)
        self._turns, self._last_info = 0, {}
        msgs = ([Message("system", self.system)] if self.system else []) + self._obs_messages(obs)
        if not msgs:
            raise ValueError("TextEnvAdapter: the environment's first observation is empty")
        return msgs, dict(info or {})

    def step(self, turn: Message) -> StepResult:
        obs, reward, terminated, truncated, info = self.env.step(turn.content)
        self._turns += 1
        self._last_info = dict(info or {})
        return StepResult(messages=[] if (terminated or truncated) else self._obs_messages(obs),
                          reward=float(reward), terminated=bool(terminated), truncated=bool(truncated),
                          info=dict(info or {}))

    def verify(self, trajectory) -> Verdict:
        info = self._last_info
        turn = self._turns - 1
        spans = {k: [(turn, int(a), None if b is None else int(b)) for a, b in v]
                 for k, v in (info.get("spans") or {}).items()} if turn >= 0 else {}
        return Verdict(reward=float(sum(r for _, r in trajectory.step_rewards)),
                       components=dict(info.get("components") or {}), spans=spans)

    def demonstration(self, messages: Sequence[Message]) -> Optional[str]:
        demo = getattr(self.env, "demonstration", None)
        return demo() if callable(demo) else None

    def close(self) -> None:
        close = getattr(self.env, "close", None)
        if callable(close):
            close()
