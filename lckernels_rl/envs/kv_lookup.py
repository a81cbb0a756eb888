"""``kv_lookup``: the first tool environment -- look a key up in a hidden table, then answer its value.

Small enough for the library's tiny policies to learn from scratch (a supervised warm-up on the scripted
demonstrations, then RL), and a real multi-turn tool protocol: the values are drawn per task, so the only way to the
answer is to call the tool.

A task (generated from ``seed``): a table of ``table_size`` keys (two lower-case letters) with values in
``[0, max_value]``; the question names ``keys_per_task`` of them.  One key: the answer is its value (``"key ab"``);
several keys: the answer is the sum of their values (``"sum ab cd"``).  The agent has one tool, ``lookup(key)``
(a key not in the table is a tool error).  A turn without tool calls is the final answer: reward 1.0 when its text
(stripped) equals the answer exactly, else 0.0.

Verdict components: ``correct`` (the reward), ``called_tool`` (1.0 when every key of the question was looked up
successfully before the answer).  The demonstration calls ``lookup`` for every key in one turn, then answers.
"""

from __future__ import annotations

import string
from typing import Any, ClassVar, Optional, Sequence

import numpy as np

from lckernels_rl.agents.types import Message

from .tool_env import StepResult, ToolEnv, Verdict

__all__ = ["KVLookupEnv"]


class KVLookupEnv(ToolEnv):
    """Key-value lookup through a tool.

    Args:
        table_size: keys in the hidden table (>= keys_per_task).
        keys_per_task: keys the question names (their values are summed).
        max_value: values are drawn from ``[0, max_value]``.
        tool_format: the tool-call format of the demonstrations (a registered parser name).

    Example:
        >>> env = KVLookupEnv()
        >>> msgs, info = env.reset(seed=0)
        >>> msgs[0].content, info["answer"] == str(env.table[msgs[0].content.split()[1]])
        ('key ba', True)
    """

    name: ClassVar[str] = "kv_lookup"
    blocking = False  # a dict lookup
    alphabet: ClassVar[str] = string.ascii_letters + string.digits + string.punctuation + " \n"

    def __init__(self, table_size: int = 8, keys_per_task: int = 1, max_value: int = 99,
                 tool_format: str = "compact"):
        for n, v, lo in (("table_size", table_size, 1), ("keys_per_task", keys_per_task, 1),
                         ("max_value", max_value, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"KVLookupEnv: `{n}` must be an int >= {lo}; got {v!r}")
        if keys_per_task > table_size:
            raise ValueError(f"KVLookupEnv: `keys_per_task` ({keys_per_task}) must be <= `table_size` ({table_size})")
        from lckernels_rl.agents.parsers import get_parser
        from lckernels_rl.agents.tools import tool

        self.table_size, self.keys_per_task, self.max_value = table_size, keys_per_task, max_value
        self.tool_format = tool_format
        self._parser = get_parser(tool_format)
        self.table: dict[str, int] = {}
        self.question: list[str] = []
        self.answer_text: Optional[str] = None
        self.looked_up: set[str] = set()

        @tool
        def lookup(key: str) -> str:
            """Look up the value stored under a key.

            Args:
                key: the key (two lower-case letters).
            """
            if key not in self.table:
                raise KeyError(f"no key {key!r}")
            self.looked_up.add(key)
            return str(self.table[key])

        self.tools = [lookup]

    def reset(self, seed: Optional[int] = None, task: Any = None) -> tuple[list[Message], dict]:
        if task is None:
            rng = np.random.default_rng(seed)
            letters = string.ascii_lowercase
            keys: list[str] = []
            while len(keys) < self.table_size:
                k = "".join(letters[int(i)] for i in rng.integers(0, 26, size=2))
                if k not in keys:
                    keys.append(k)
            values = [int(v) for v in rng.integers(0, self.max_value + 1, size=self.table_size)]
            pick = [keys[int(i)] for i in rng.choice(self.table_size, size=self.keys_per_task, replace=False)]
            task = {"table": dict(zip(keys, values)), "question": pick}
        if not isinstance(task, dict) or "table" not in task or "question" not in task:
            raise ValueError("KVLookupEnv.reset: `task` must be a dict with 'table' and 'question'")
        self.table = {str(k): int(v) for k, v in task["table"].items()}
        self.question = [str(k) for k in task["question"]]
        missing = [k for k in self.question if k not in self.table]
        if missing:
            raise ValueError(f"KVLookupEnv.reset: question keys {missing} are not in the table")
        self.answer_text = str(sum(self.table[k] for k in self.question))
        self.looked_up = set()
        verb = "key" if len(self.question) == 1 else "sum"
        return [Message("user", f"{verb} {' '.join(self.question)}")], {"answer": self.answer_text, "task": task}

    def answer(self, turn: Message) -> StepResult:
        return StepResult(terminated=True, info={"answer": turn.content.strip()})

    def verify(self, trajectory) -> Verdict:
        final = next((m for m in reversed(trajectory.messages) if m.role == "assistant" and not m.tool_calls), None)
        ended = trajectory.stop_reason == "env_done" and final is not None and final is trajectory.messages[-1]
        correct = float(ended and final.content.strip() == self.answer_text)
        called = float(all(k in self.looked_up for k in self.question))
        return Verdict(reward=correct, components={"correct": correct, "called_tool": called})

    def state(self) -> dict:
        return {"table": self.table, "question": self.question, "looked_up": sorted(self.looked_up)}

    def demonstration(self, messages: Sequence[Message]) -> Optional[str]:
        if not any(m.role == "tool" and not m.is_error for m in messages):  # nothing looked up yet
            return self._parser.format_calls([("lookup", {"key": k}) for k in self.question])
        return self.answer_text

    def tokenizer_corpus(self, n: int = 64) -> list[str]:
        out = []
        for s in range(n):
            msgs, info = self.reset(seed=10**7 + s)
            out += [msgs[0].content, self.demonstration(msgs), info["answer"], "error: KeyError: 'zz'"]
        return out
