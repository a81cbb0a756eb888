"""The environment interface (gymnasium / gem style) every task of the RL layer follows.

``reset(seed) -> (observation, info)`` and ``step(action) -> (observation, reward, terminated, truncated, info)``,
where an observation is the text the policy sees next (a prompt string; chat-style environments may return a list of
``{"role", "content"}`` messages and list OpenAI function-tool schemas in ``tools``) and an action is the policy's
decoded text.  Single-turn verifiable tasks terminate after the first ``step``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Env"]


class Env:
    """Base class: subclasses implement :meth:`reset` and :meth:`step`.

    Attributes:
        tools: OpenAI function-tool schemas the environment accepts (none for plain text tasks).
        alphabet: every character a prompt or a correct answer can contain (character-level tokenizers are built
            from it).
    """

    tools: list[dict] = []
    alphabet: str = ""

    def reset(self, seed: int | None = None) -> tuple[Any, dict]:
        raise NotImplementedError

    def step(self, action: str) -> tuple[Any, float, bool, bool, dict]:
        raise NotImplementedError

    def close(self) -> None:
        pass
