"""``duca_sales``: a scripted sales dialogue with turn-level and session-level rewards (DuCA / HIAN).

Paper: Yang et al. 2026, *Harmonizing Dense and Sparse Signals in Multi-turn RL: Dual-Horizon Credit Assignment for
Industrial Sales Agents* (arXiv 2603.01481).  Source status: abstract only (as ``lckernels_rl/advantages/hian.py``):

* VERIFIED (abstract): a sales agent trained with dense turn-level rewards (e.g. fluency / compliance) and a sparse
  session-level reward (conversion); HIAN normalises the two advantages apart before fusing them.
* INFERRED: the whole simulator below (customer, actions, reward values).

A task (from ``seed``): a customer with a latent ``need`` in ``NEEDS`` and ``budget`` in ``BUDGETS``; the right
product is ``need[0] + budget[0]`` (e.g. ``"sl"`` = speed, low).  Opening message: ``"hi"``.  Agent actions (the
whole turn text): ``ask need`` / ``ask budget`` / ``offer <xy>`` / ``close``.  Customer replies: ``need speed``,
``budget low``, ``yes`` (right offer) / ``no`` (wrong offer), ``deal`` / ``no deal``.  The session ends at ``close``
(``deal`` iff the last offer was right) or after ``max_turns`` agent turns (``bye``, no deal).

Turn rewards (paid as step rewards, listed in ``Verdict.info["turn_rewards"]``, one per agent turn):
``+info_reward`` for a question asked the first time, ``-repeat_penalty`` for a turn whose text repeats an earlier
agent turn, ``0`` otherwise; a malformed turn gets ``0`` and a visible ``err`` reply (reason in ``info``).
Session reward: ``1.0`` on a deal, else ``0``.  :meth:`verify` reward: ``reward_mode="dual"``:
``session + turn_weight * sum(turn rewards)``; ``"session"``: the session reward only.  Components: ``session``,
``turn_sum``, ``repeats``, ``errors``, ``turns``.  The ``hian`` estimator needs the per-turn rewards apart from the
session reward: they are in ``trajectory.step_rewards`` (turn, reward) and ``Verdict.info``.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Optional, Sequence

import numpy as np

from lckernels_rl.agents.types import Message

from ..tool_env import StepResult, ToolEnv, Verdict

__all__ = ["SalesEnv", "NEEDS", "BUDGETS"]

NEEDS = ("speed", "price", "room")  # distinct initials: 6 distinct products
BUDGETS = ("low", "high")
_ACTION = re.compile(r"^ask (need|budget)$|^offer ([a-z]{2})$|^(close)$")


class SalesEnv(ToolEnv):
    """A scripted customer with latent needs.

    Args:
        max_turns: agent turns before the customer leaves (>= 2).
        info_reward: turn reward of a first-time question (>= 0).
        repeat_penalty: turn penalty of a repeated turn (>= 0).
        turn_weight: weight of the summed turn rewards in the ``dual`` reward (>= 0).
        reward_mode: ``"dual"`` or ``"session"``.
    """

    name: ClassVar[str] = "duca_sales"
    blocking = False
    alphabet: ClassVar[str] = "abcdefghijklmnopqrstuvwxyz0123456789 |:'\n"

    def __init__(self, max_turns: int = 6, info_reward: float = 0.1, repeat_penalty: float = 0.2,
                 turn_weight: float = 1.0, reward_mode: str = "dual"):
        if isinstance(max_turns, bool) or not isinstance(max_turns, int) or max_turns < 2:
            raise ValueError(f"SalesEnv: `max_turns` must be an int >= 2; got {max_turns!r}")
        for n, v in (("info_reward", info_reward), ("repeat_penalty", repeat_penalty), ("turn_weight", turn_weight)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"SalesEnv: `{n}` must be a number >= 0; got {v!r}")
        if reward_mode not in ("dual", "session"):
            raise ValueError(f"SalesEnv: `reward_mode` must be 'dual' or 'session'; got {reward_mode!r}")
        self.max_turns, self.info_reward, self.repeat_penalty = max_turns, float(info_reward), float(repeat_penalty)
        self.turn_weight, self.reward_mode = float(turn_weight), reward_mode
        self.need, self.budget = NEEDS[0], BUDGETS[0]
        self._clear()

    def _clear(self) -> None:
        self.said: list[str] = []
        self.asked: set[str] = set()
        self.turn_rewards: list[float] = []
        self.errors: list[str] = []
        self.repeats = 0
        self.last_offer: Optional[str] = None
        self.deal = False
        self.over = False

    @property
    def product(self) -> str:
        return self.need[0] + self.budget[0]

    def reset(self, seed: Optional[int] = None, task: Any = None) -> tuple[list[Message], dict]:
        if task is None:
            rng = np.random.default_rng(seed)
            task = {"need": NEEDS[int(rng.integers(len(NEEDS)))], "budget": BUDGETS[int(rng.integers(len(BUDGETS)))]}
        if not isinstance(task, dict) or task.get("need") not in NEEDS or task.get("budget") not in BUDGETS:
            raise ValueError(f"SalesEnv.reset: `task` must be a dict with 'need' in {NEEDS} and 'budget' in {BUDGETS}")
        self.need, self.budget = task["need"], task["budget"]
        self._clear()
        return [Message("user", "hi")], {"task": task, "product": self.product}

    def step(self, turn: Message) -> StepResult:
        return self.answer(turn)

    def answer(self, turn: Message) -> StepResult:
        if self.over:
            return StepResult(terminated=True, info={"error": "session already over"})
        text = (turn.content or "").strip()
        repeated = text in self.said
        self.said.append(text)
        m = _ACTION.match(text)
        info: dict = {}
        if m is None:
            reward, reply = 0.0, f"err bad action {text[:16]!r}: use ask need|ask budget|offer xy|close"
            self.errors.append(reply[4:])
            info["error"] = reply[4:]
        elif repeated:
            self.repeats += 1
            reward, reply = -self.repeat_penalty, "you said that"
            info["repeat"] = True
        elif m.group(1):
            topic = m.group(1)
            self.asked.add(topic)
            reward, reply = self.info_reward, (f"need {self.need}" if topic == "need" else f"budget {self.budget}")
        elif m.group(2):
            self.last_offer = m.group(2)
            reward, reply = 0.0, "yes" if self.last_offer == self.product else "no"
        else:
            reward, reply = 0.0, ""
        self.turn_rewards.append(reward)
        if m is not None and m.group(3) and not repeated:  # close
            self.deal, self.over = self.last_offer == self.product, True
            return StepResult(messages=[Message("user", "deal" if self.deal else "no deal")], reward=reward,
                              terminated=True, info={**info, "deal": self.deal})
        if len(self.turn_rewards) >= self.max_turns:
            self.over = True
            return StepResult(messages=[Message("user", "bye")], reward=reward, terminated=True,
                              info={**info, "deal": False, "failure": "out_of_turns"})
        return StepResult(messages=[Message("user", reply)], reward=reward, info=info)

    def verify(self, trajectory) -> Verdict:
        session = float(self.deal)
        turn_sum = float(sum(self.turn_rewards))
        reward = session + self.turn_weight * turn_sum if self.reward_mode == "dual" else session
        return Verdict(reward=reward, components={
            "session": session, "turn_sum": turn_sum, "repeats": float(self.repeats),
            "errors": float(len(self.errors)), "turns": float(len(self.turn_rewards))},
            info={"turn_rewards": list(self.turn_rewards), "errors": list(self.errors)})

    def state(self) -> dict:
        return {"need": self.need, "budget": self.budget, "said": self.said, "deal": self.deal}

    def demonstration(self, messages: Sequence[Message]) -> Optional[str]:
        if self.over:
            return None
        if "need" not in self.asked:
            return "ask need"
        if "budget" not in self.asked:
            return "ask budget"
        return "close" if self.last_offer == self.product else f"offer {self.product}"

    def tokenizer_corpus(self, n: int = 64) -> list[str]:
        out = ["hi", "you said that", "bye", "deal", "no deal", "yes", "no", "close",
               "err bad action 'x': use ask need|ask budget|offer xy|close"]
        out += [f"need {a}" for a in NEEDS] + [f"budget {b}" for b in BUDGETS]
        out += [f"offer {a[0]}{b[0]}" for a in NEEDS for b in BUDGETS] + ["ask need", "ask budget"]
        self._clear()
        return out
