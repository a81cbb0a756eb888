"""A generated, verifiable arithmetic task with an exact-match reward.

A problem is ``"a+b="`` (or ``-``, ``*``) with operands drawn uniformly from ``[min_value, max_value]``; the answer
is the integer result written in decimal, and the reward is 1.0 when the response (EOS and surrounding whitespace
stripped) equals it exactly, else 0.0.  ``demonstration()`` gives the correct answer for supervised warm-up.

``step``'s info also names a protocol phase for objectives that credit one separately (dual-track GRPO's "schema"
track; this mapping is ours): span ``"schema"`` is the answer's leading character, and component ``"schema"`` is 1.0
when that character is right *and* the whole answer is correct (TRUST-SQL's "truematch": the schema reward is kept
only when the outcome is right).
"""

from __future__ import annotations

import numpy as np

from .base import Env

__all__ = ["ArithmeticEnv"]

_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


class ArithmeticEnv(Env):
    """Single-turn arithmetic.

    Args:
        ops: the operators to draw from (any of ``"+-*"``).
        min_value / max_value: operand range (inclusive), ``0 <= min_value <= max_value``.

    Example:
        >>> env = ArithmeticEnv(ops="+", max_value=9)
        >>> obs, info = env.reset(seed=3)
        >>> obs, info["answer"] == str(eval(obs[:-1]))
        ('8+0=', True)
        >>> env.step(info["answer"])[1:3]
        (1.0, True)
    """

    alphabet = "0123456789+-*="

    def __init__(self, ops: str = "+", min_value: int = 0, max_value: int = 99):
        if not isinstance(ops, str) or not ops or any(o not in _OPS for o in ops):
            raise ValueError(f"ArithmeticEnv: `ops` must be a non-empty string of {''.join(_OPS)}; got {ops!r}")
        for name, v in (("min_value", min_value), ("max_value", max_value)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"ArithmeticEnv: `{name}` must be an int >= 0; got {v!r}")
        if min_value > max_value:
            raise ValueError(f"ArithmeticEnv: `min_value` ({min_value}) must be <= `max_value` ({max_value})")
        self.ops, self.min_value, self.max_value = ops, min_value, max_value
        self._answer: str | None = None

    def reset(self, seed: int | None = None) -> tuple[str, dict]:
        rng = np.random.default_rng(seed)
        a, b = (int(x) for x in rng.integers(self.min_value, self.max_value + 1, size=2))
        op = self.ops[int(rng.integers(len(self.ops)))]
        self._answer = str(_OPS[op](a, b))
        prompt = f"{a}{op}{b}="
        return prompt, {"answer": self._answer}

    def demonstration(self) -> str:
        """The correct response to the current problem."""
        if self._answer is None:
            raise RuntimeError("ArithmeticEnv: call reset() first")
        return self._answer

    def step(self, action: str) -> tuple[None, float, bool, bool, dict]:
        if self._answer is None:
            raise RuntimeError("ArithmeticEnv: call reset() first")
        if not isinstance(action, str):
            raise TypeError(f"ArithmeticEnv.step: `action` must be the decoded response str; got "
                            f"{type(action).__name__}")
        text = action.strip()
        reward = 1.0 if text == self._answer else 0.0
        lead = len(action) - len(action.lstrip())
        info = {"answer": self._answer,
                "components": {"schema": float(reward > 0 and text[:1] == self._answer[:1])},
                "spans": {"schema": [(lead, lead + 1)]}}
        return None, reward, True, False, info
