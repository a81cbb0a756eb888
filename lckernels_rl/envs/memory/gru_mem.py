"""``gru_mem``: a gated recurrent-memory reader of long documents (GRU-Mem, arXiv 2602.10560).

GRU-Mem ("When to Memorize and When to Stop: Gated Recurrent Memory for Long-Context Reasoning", Sheng et al.,
2026) extends MemAgent's chunk-by-chunk reading loop with two text-controlled gates.  At step ``t`` the agent reads
the question ``Q``, chunk ``C_t`` and its memory ``M_{t-1}`` and emits an update gate ``U_t``, a candidate memory
``M^_t`` and an exit gate ``E_t``.  From the paper (abstract, method section; the authors' project page
alphalab-ustc.github.io/grumem-alphalab) -- VERIFIED against the paper text, no released code was readable:

* the memory changes only when the update gate is open (``M_t = M^_t`` if ``U_t`` else ``M_{t-1}``);
* when the exit gate opens the loop stops at once and the answer is produced from the terminal memory;
* end-to-end RL with two dedicated rewards, ``r^update`` for correct update decisions and ``r^exit`` for correct
  exit decisions, next to the outcome reward (and a format reward); a mixing weight (``alpha``) balances them.

INFERRED (the paper text available to us does not give the exact formulas; ours):

* The data: a generated document of ``min_chunks..max_chunks`` chunks (default 32-128) of filler words; a few chunks
  hold key-value needles (``"note ab=42."``, written as the memory writes it: storing it is a copy),
  ``num_queries`` of whose keys the question asks (``"q: ab cd"``); ``num_distractors`` needles hold other keys.  Evidence chunks = those holding an asked key.
* ``r_update`` = the fraction of the chunks read whose update gate equals "this chunk is evidence".
* ``r_exit``: ``T`` = the chunk at which the exit gate opened (``n`` when it never did), ``t*`` = the last evidence
  chunk: 1 when ``T == t*``, 0 when ``T < t*`` (evidence missed), ``1 - (T - t*) / (n - t*)`` when later (linear
  down to 0 for never exiting).
* reward = ``w_outcome * outcome + w_update * r_update + w_exit * r_exit`` (defaults 1, 0.5, 0.5; all
  configurable; ``w_update = w_exit = 0`` is the outcome-only MemAgent-style reward).
* Turn format: ``<update>y</update><memory>ab=42</memory><exit>n</exit>`` (``y``/``n``; the memory is
  ``key=value`` entries, at most ``memory_max_entries``: extra entries are dropped and counted); the answer turn
  ``<answer>42</answer>`` (the asked values in question order, space-separated), exact match.
* A malformed turn ends the episode with reward 0 and the reason in ``Verdict.info["reason"]`` (the format
  reward of the paper reduced to a gate); reaching the answer with an empty memory ends it with reward 0 and
  reason ``empty_memory`` (no answer turn: there is nothing to answer from); an episode cut before its answer
  (turn or context budget) scores 0 (reason ``incomplete``).

The context stays bounded: after every turn the environment rewrites it (:attr:`StepResult.rewrite`) to the
question, the current memory and the next chunk only, so the trajectory forks and each chunk's turn is its own
training sample (with the episode's reward).  The demonstration (``demo_policy``) is either the gated reader
(update only on evidence, exit at the last evidence chunk) or ``memagent`` (always update, rewriting the whole
memory, never exit).
"""

from __future__ import annotations

import re
import string
from typing import Any, ClassVar, Optional, Sequence

import numpy as np

from lckernels_rl.agents.types import Message

from ..tool_env import StepResult, ToolEnv, Verdict
from ._scripted import scripted_texts

__all__ = ["GRUMemEnv", "parse_gate_turn", "exit_reward", "update_reward"]

_WORDS = ("the", "river", "runs", "past", "old", "mill", "a", "cold", "wind", "over", "green", "hills", "birds",
          "sing", "at", "dawn", "long", "road", "home", "quiet", "town", "rain", "falls", "slowly")
_TURN_RE = re.compile(r"\s*<update>(y|n)</update>\s*<memory>(.*?)</memory>\s*<exit>(y|n)</exit>\s*", re.S)
_ANSWER_RE = re.compile(r"\s*<answer>(.*?)</answer>\s*", re.S)
_ENTRY_RE = re.compile(r"([a-z]{2})=(\d+)")


def parse_gate_turn(text: str) -> tuple[bool, dict[str, str], bool]:
    """``"<update>y</update><memory>ab=42</memory><exit>n</exit>"`` -> ``(True, {"ab": "42"}, False)``.

    Raises ``ValueError`` naming what is wrong (missing / misordered tags, a gate not ``y``/``n``, an entry not
    ``key=number``, text outside the tags)."""
    m = _TURN_RE.fullmatch(text or "")
    if m is None:
        raise ValueError("expected <update>y|n</update><memory>key=value ...</memory><exit>y|n</exit>")
    mem: dict[str, str] = {}
    for entry in m.group(2).split():
        e = _ENTRY_RE.fullmatch(entry)
        if e is None:
            raise ValueError(f"memory entry {entry!r} is not key=number (two lower-case letters)")
        mem.pop(e.group(1), None)
        mem[e.group(1)] = e.group(2)
    return m.group(1) == "y", mem, m.group(3) == "y"


def update_reward(gates: Sequence[bool], evidence: Sequence[bool]) -> float:
    """Fraction of read chunks whose update gate equals the chunk's evidence label (INFERRED form of
    ``r^update``)."""
    if len(gates) != len(evidence):
        raise ValueError(f"update_reward: {len(gates)} gates for {len(evidence)} evidence labels")
    if not gates:
        return 0.0
    return sum(bool(g) == bool(e) for g, e in zip(gates, evidence)) / len(gates)


def exit_reward(exit_at: int, last_evidence: int, n_chunks: int) -> float:
    """``r^exit`` (INFERRED): 1 at the last evidence chunk, 0 before it, linear down to 0 at ``n_chunks`` (never
    exited) after it."""
    if not 0 <= last_evidence < n_chunks or not 0 <= exit_at <= n_chunks:
        raise ValueError(f"exit_reward: need 0 <= last_evidence ({last_evidence}) < n_chunks ({n_chunks}) and "
                         f"0 <= exit_at ({exit_at}) <= n_chunks")
    if exit_at < last_evidence:
        return 0.0
    return 1.0 - (exit_at - last_evidence) / (n_chunks - last_evidence)


def _int_arg(name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"GRUMemEnv: `{name}` must be an int >= {lo}; got {v!r}")
    return int(v)


def _weight(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
        raise ValueError(f"GRUMemEnv: `{name}` must be a finite number >= 0; got {v!r}")
    return float(v)


class GRUMemEnv(ToolEnv):
    """Chunk-by-chunk reading with an update gate, a candidate memory and an exit gate, then an answer from memory.

    Args:
        min_chunks, max_chunks: document length range (chunks), drawn per task.
        words_per_chunk: filler words per chunk.
        num_queries: keys the question asks (their needles are the evidence).
        num_distractors: needles of other keys.
        max_value: needle values in ``[0, max_value]``.
        key_pool: keys are drawn from the first ``key_pool`` two-letter names (``aa``, ``ab``, ...; 676: all);
            a small pool keeps the copy learnable for tiny policies.
        memory_max_entries: the memory holds at most this many ``key=value`` entries.
        w_outcome, w_update, w_exit: reward weights.
        demo_policy: ``gated`` (GRU-Mem) or ``memagent`` (always update, never exit) demonstrations.

    Example:
        >>> env = GRUMemEnv(min_chunks=32, max_chunks=32)
        >>> msgs, info = env.reset(seed=0)
        >>> msgs[0].content.splitlines()[1]
        'mem: -'
    """

    name: ClassVar[str] = "gru_mem"
    blocking = False  # pure Python
    alphabet: ClassVar[str] = string.ascii_letters + string.digits + string.punctuation + " \n"  # char tokenizers
    protocol_tokens: ClassVar[tuple[str, ...]] = ("<update>", "</update>", "<memory>", "</memory>", "<exit>",
                                                  "</exit>", "<answer>", "</answer>")

    def __init__(self, min_chunks: int = 32, max_chunks: int = 128, words_per_chunk: int = 5, num_queries: int = 1,
                 num_distractors: int = 2, max_value: int = 99, key_pool: int = 676, memory_max_entries: int = 4,
                 w_outcome: float = 1.0, w_update: float = 0.5, w_exit: float = 0.5, demo_policy: str = "gated"):
        self.min_chunks = _int_arg("min_chunks", min_chunks, 1)
        self.max_chunks = _int_arg("max_chunks", max_chunks, 1)
        if self.max_chunks < self.min_chunks:
            raise ValueError(f"GRUMemEnv: `max_chunks` ({max_chunks}) must be >= `min_chunks` ({min_chunks})")
        self.words_per_chunk = _int_arg("words_per_chunk", words_per_chunk, 1)
        self.num_queries = _int_arg("num_queries", num_queries, 1)
        self.num_distractors = _int_arg("num_distractors", num_distractors, 0)
        if self.num_queries + self.num_distractors > self.min_chunks:
            raise ValueError(f"GRUMemEnv: `num_queries + num_distractors` ({self.num_queries + self.num_distractors}"
                             f") needles must fit in `min_chunks` ({min_chunks}) chunks")
        self.max_value = _int_arg("max_value", max_value, 0)
        self.key_pool = _int_arg("key_pool", key_pool, self.num_queries + self.num_distractors)
        if self.key_pool > 26 * 26:
            raise ValueError(f"GRUMemEnv: `key_pool` must be <= 676 (two-letter names); got {key_pool}")
        self.memory_max_entries = _int_arg("memory_max_entries", memory_max_entries, 1)
        self.w_outcome, self.w_update, self.w_exit = (_weight("w_outcome", w_outcome), _weight("w_update", w_update),
                                                      _weight("w_exit", w_exit))
        if demo_policy not in ("gated", "memagent"):
            raise ValueError(f"GRUMemEnv: `demo_policy` must be 'gated' or 'memagent'; got {demo_policy!r}")
        self.demo_policy = demo_policy
        self.task: dict = {}
        self._reset_progress()

    # ------------------------------------------------------------------ task
    def generate(self, seed: Optional[int]) -> dict:
        """``{"chunks": [str], "query": [key], "answers": {key: value}, "evidence": [chunk index per query]}``."""
        rng = np.random.default_rng(seed)
        n = int(rng.integers(self.min_chunks, self.max_chunks + 1))
        letters = string.ascii_lowercase
        pool = [a + b for a in letters for b in letters][:self.key_pool]
        keys = [pool[int(i)] for i in rng.choice(len(pool), size=self.num_queries + self.num_distractors,
                                                 replace=False)]
        values = [str(int(v)) for v in rng.integers(0, self.max_value + 1, size=len(keys))]
        pos = [int(p) for p in rng.choice(n, size=len(keys), replace=False)]
        chunks = [" ".join(_WORDS[int(i)] for i in rng.integers(0, len(_WORDS), size=self.words_per_chunk))
                  for _ in range(n)]
        for k, v, p in zip(keys, values, pos):
            chunks[p] = f"{chunks[p]} note {k}={v}."
        q = keys[:self.num_queries]
        return {"chunks": chunks, "query": q, "answers": dict(zip(q, values[:self.num_queries])),
                "evidence": pos[:self.num_queries]}

    def _check_task(self, task) -> dict:
        if not isinstance(task, dict):
            raise TypeError(f"GRUMemEnv.reset: `task` must be a dict; got {type(task).__name__}")
        missing = [k for k in ("chunks", "query", "answers", "evidence") if k not in task]
        if missing:
            raise ValueError(f"GRUMemEnv.reset: `task` lacks {missing}")
        n = len(task["chunks"])
        if n == 0 or not task["query"] or len(task["evidence"]) != len(task["query"]) \
                or any(not 0 <= int(e) < n for e in task["evidence"]) \
                or any(k not in task["answers"] for k in task["query"]):
            raise ValueError("GRUMemEnv.reset: `task` needs chunks, a non-empty query, an answer per key and one "
                             "evidence chunk index (in range) per key")
        return task

    def _reset_progress(self) -> None:
        self.t = 0  # the chunk being read
        self.phase = "read"  # "read" | "answer" | "done"
        self.memory: dict[str, str] = {}
        self.gates: list[bool] = []
        self.exits: list[bool] = []
        self.exit_at: Optional[int] = None
        self.answer: Optional[str] = None
        self.reason: Optional[str] = None
        self.dropped_entries = 0
        self.max_memory_entries = 0

    def reset(self, seed: Optional[int] = None, task: Any = None) -> tuple[list[Message], dict]:
        self.task = self._check_task(self.generate(seed) if task is None else task)
        self._reset_progress()
        return [Message("user", self._read_prompt())], {"answer": self.gold_answer(), "task": self.task}

    @property
    def n_chunks(self) -> int:
        return len(self.task["chunks"])

    def gold_answer(self) -> str:
        return " ".join(str(self.task["answers"][k]) for k in self.task["query"])

    def is_evidence(self, t: int) -> bool:
        return t in {int(e) for e in self.task["evidence"]}

    @property
    def last_evidence(self) -> int:
        return max(int(e) for e in self.task["evidence"])

    def _head(self) -> str:
        return f"q: {' '.join(self.task['query'])}\nmem: {' '.join(f'{k}={v}' for k, v in self.memory.items()) or '-'}"

    def _read_prompt(self) -> str:
        return f"{self._head()}\nchunk {self.t + 1}: {self.task['chunks'][self.t]}"

    def _answer_prompt(self) -> str:
        return f"{self._head()}\nanswer:"

    def _fail(self, reason: str) -> StepResult:
        self.reason, self.phase = reason, "done"
        return StepResult(terminated=True, info={"reason": reason})

    def step(self, turn: Message) -> StepResult:
        text = turn.content if isinstance(turn, Message) else turn
        if not isinstance(text, str):
            raise TypeError(f"GRUMemEnv.step: `turn` must be a Message or str; got {type(turn).__name__}")
        if self.phase == "done":
            return self._fail("turn after the episode ended")
        if self.phase == "answer":
            m = _ANSWER_RE.fullmatch(text)
            if m is None:
                return self._fail("malformed_answer: expected <answer>values</answer>")
            self.answer = " ".join(m.group(1).split())
            self.phase = "done"
            return StepResult(terminated=True, info={"reason": "answered"})
        try:
            update, candidate, exit_ = parse_gate_turn(text)
        except ValueError as e:
            return self._fail(f"malformed_turn: {e}")
        self.gates.append(update)
        self.exits.append(exit_)
        if update:
            if len(candidate) > self.memory_max_entries:
                self.dropped_entries += len(candidate) - self.memory_max_entries
                candidate = dict(list(candidate.items())[:self.memory_max_entries])
            self.memory = candidate
            self.max_memory_entries = max(self.max_memory_entries, len(candidate))
        self.t += 1
        if exit_:
            self.exit_at = self.t - 1
        if exit_ or self.t >= self.n_chunks:
            if not self.memory:
                return self._fail("empty_memory: nothing to answer from")
            self.phase = "answer"
            return StepResult(rewrite=[Message("user", self._answer_prompt())])
        return StepResult(rewrite=[Message("user", self._read_prompt())])

    @property
    def chunks_read(self) -> int:
        return len(self.gates)

    def verify(self, trajectory=None) -> Verdict:
        n = self.n_chunks
        r_up = update_reward(self.gates, [self.is_evidence(t) for t in range(len(self.gates))])
        r_ex = exit_reward(n if self.exit_at is None else self.exit_at, self.last_evidence, n)
        outcome = float(self.answer is not None and self.answer == self.gold_answer())
        reason = self.reason or ("answered" if self.phase == "done" else "incomplete")
        ok = reason == "answered"
        comps = {"outcome": outcome if ok else 0.0, "r_update": r_up if ok else 0.0, "r_exit": r_ex if ok else 0.0,
                 "format_ok": float(not reason.startswith("malformed")), "chunks_read": float(self.chunks_read),
                 "read_fraction": self.chunks_read / n, "memory_entries_max": float(self.max_memory_entries),
                 "updates": float(sum(self.gates))}
        reward = (self.w_outcome * outcome + self.w_update * r_up + self.w_exit * r_ex) if ok else 0.0
        info = {"reason": reason, "answer": self.answer, "gold": self.gold_answer(), "exit_at": self.exit_at,
                "dropped_entries": self.dropped_entries}
        return Verdict(reward=float(reward), components=comps, info=info)

    def state(self) -> dict:
        return {"task": self.task, "t": self.t, "phase": self.phase, "memory": self.memory, "gates": self.gates,
                "exits": self.exits, "answer": self.answer}

    # ------------------------------------------------------------------ demonstrations
    def demonstration(self, messages: Sequence[Message] = ()) -> Optional[str]:
        """The scripted turn of ``demo_policy`` (see the module docstring)."""
        if not self.task or self.phase == "done":
            return None
        if self.phase == "answer":
            return f"<answer>{' '.join(self.memory.get(k, '0') for k in self.task['query'])}</answer>"
        t = self.t
        found = {k: str(self.task["answers"][k]) for k, e in zip(self.task["query"], self.task["evidence"])
                 if int(e) <= t}
        mem = " ".join(f"{k}={found[k]}" for k in self.task["query"] if k in found)
        mem = f" {mem}" if mem else ""  # a leading space: the entry tokenizes as it does in the chunk and prompt
        if self.demo_policy == "memagent":
            return f"<update>y</update><memory>{mem}</memory><exit>n</exit>"
        ev = self.is_evidence(t)
        done = t == self.last_evidence
        return (f"<update>{'y' if ev else 'n'}</update><memory>{mem if ev else ''}</memory>"
                f"<exit>{'y' if done else 'n'}</exit>")

    def tokenizer_corpus(self, n: int = 8) -> list[str]:
        out = [t for s in range(n) for t in scripted_texts(self, 10**7 + s)]
        out += [" ".join(_WORDS), " ".join(str(v) for v in range(self.max_value + 1)),
                "<update>y</update><memory></memory><exit>y</exit> <update>n</update><exit>n</exit>"]
        self.task = {}
        self._reset_progress()
        return out
