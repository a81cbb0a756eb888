"""``heavy_thinking``: the summary stage of Heavy Thinking (LongCat-Flash-Thinking-2601, arXiv 2601.16725, §4).

Heavy Thinking scales test-time compute in two stages: K parallel reasoning samples of a task, then a summary pass
that reads them and writes the final answer; the summary stage is trained by RL.  VERIFIED (the report's abstract,
arXiv 2601.16725: "jointly expanding reasoning depth and width through intensive parallel thinking"; the authors'
follow-up HeavySkill, arXiv 2605.02396, abstract: "parallel reasoning then summarization", depth and width "scaled via
reinforcement learning"; read through stored abstracts, not the full §4 text).  INFERRED (ours): everything below --
the summary sees only the K *answers* (no reasoning traces; the base question is shown unless ``show_question``
is off), the prompt format, the reward (exact match of the final answer), the synthetic first stage.

Where the K samples come from (the design):

* ``task={"prompt", "answer", "candidates"}`` -- the K answers are part of the task.  This is the clean interface:
  a driver (``examples/heavy_thinking_demo.py --first-stage policy``) samples the K answers of the base task from
  the policy in a first stage, then runs the summary episodes with them; only the summary tokens are trained.  The
  trainer's own task pool builds tasks from seeds only, so inside ``lckernels-rl train`` the env falls back to:
* ``first_stage="synthetic"`` (default when no candidates are given) -- a seeded stand-in for K parallel samples of a
  fallible solver: each sample is right with probability ``p_correct``, the problem's *attractor* wrong answer
  (the right one off by ``attractor_offsets``, shared by all samples of that problem: a systematic error) with
  probability ``p_attractor``, else a random near miss.  With ``p_attractor > p_correct`` majority vote converges
  to the wrong answer as K grows, while a summary that checks the answers against the question can pick the right
  one whenever it is among them (pass@K rises with K).

The prompt: ``<question>|<a1> <a2> ... <aK>|`` (for arithmetic ``12+34=|46 47 46 45|``); the answer: one number.
Verdict: reward = ``correct`` (the stripped answer equals the base task's answer); components ``majority_correct``
(majority vote over the same candidates, ties to the first seen), ``oracle`` (pass@K: some candidate is right),
``in_candidates`` (the summary copied one of the candidates), ``k``.  A malformed answer (empty, not a number)
is reward 0 with ``info["reason"]``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, ClassVar, Optional, Sequence

import numpy as np

from lckernels_rl.agents.types import Message

from .tool_env import StepResult, ToolEnv, Verdict

__all__ = ["HeavyThinkingEnv", "majority_vote", "synthetic_candidates", "summary_prompt"]


def majority_vote(candidates: Sequence[str]) -> Optional[str]:
    """The most frequent candidate (stripped); ties go to the one seen first; ``None`` for no candidates."""
    c = [str(x).strip() for x in candidates]
    if not c:
        return None
    counts = Counter(c)
    best = max(counts.values())
    return next(x for x in c if counts[x] == best)


def synthetic_candidates(answer: str, k: int, rng: np.random.Generator, *, p_correct: float, p_attractor: float,
                         attractor_offsets: Sequence[int] = (-2, -1, 1, 2), spread: int = 20) -> list[str]:
    """K answers of a seeded fallible solver for a problem whose answer is ``answer`` (an integer text)."""
    a = int(answer)
    attractor = a + int(attractor_offsets[int(rng.integers(len(attractor_offsets)))])
    out = []
    for _ in range(k):
        u = rng.random()
        if u < p_correct:
            out.append(a)
        elif u < p_correct + p_attractor:
            out.append(attractor)
        else:
            d = 0
            while d == 0:
                d = int(rng.integers(-spread, spread + 1))
            out.append(a + d)
    return [str(x) for x in out]


def summary_prompt(question: str, candidates: Sequence[str], show_question: bool = True) -> str:
    return (question if show_question else "") + "|" + " ".join(str(c).strip() for c in candidates) + "|"


class HeavyThinkingEnv(ToolEnv):
    """The summary stage over K candidate answers of a base task.

    Args:
        base: a registered gymnasium-style text env whose ``reset`` info has ``"answer"`` (default ``arithmetic``).
        base_args: its constructor arguments.
        k: the number of parallel samples, an int or a list (one is drawn per task from the seed).
        first_stage: ``"synthetic"`` (candidates generated from the seed when the task gives none) or ``"given"``
            (a task must carry its candidates).
        p_correct / p_attractor / attractor_offsets / spread: the synthetic first stage.
        show_question: put the base question in the summary prompt.
    """

    name: ClassVar[str] = "heavy_thinking"
    blocking = False
    alphabet: ClassVar[str] = "0123456789+-*=| "

    def __init__(self, base: str = "arithmetic", base_args: Optional[dict] = None, k=4,
                 first_stage: str = "synthetic", p_correct: float = 0.35, p_attractor: float = 0.4,
                 attractor_offsets: Sequence[int] = (-2, -1, 1, 2), spread: int = 20, show_question: bool = True):
        from . import make_env

        ks = [k] if not isinstance(k, (list, tuple)) else list(k)
        if not ks or any(isinstance(x, bool) or not isinstance(x, int) or not 1 <= x <= 32 for x in ks):
            raise ValueError(f"HeavyThinkingEnv: `k` must be an int in [1, 32] or a non-empty list of them; got {k!r}")
        if first_stage not in ("synthetic", "given"):
            raise ValueError(f"HeavyThinkingEnv: `first_stage` must be 'synthetic' or 'given'; got {first_stage!r}")
        for n, v in (("p_correct", p_correct), ("p_attractor", p_attractor)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise ValueError(f"HeavyThinkingEnv: `{n}` must be a probability in [0, 1]; got {v!r}")
        if p_correct + p_attractor > 1:
            raise ValueError(f"HeavyThinkingEnv: `p_correct + p_attractor` must be <= 1; got {p_correct + p_attractor}")
        offs = list(attractor_offsets)
        if not offs or any(isinstance(o, bool) or not isinstance(o, int) or o == 0 for o in offs):
            raise ValueError(f"HeavyThinkingEnv: `attractor_offsets` must be non-zero ints; got {attractor_offsets!r}")
        if isinstance(spread, bool) or not isinstance(spread, int) or spread < 1:
            raise ValueError(f"HeavyThinkingEnv: `spread` must be an int >= 1; got {spread!r}")
        self.base_name, self.base_args = base, dict(base_args or {})
        self.base = make_env(base, **self.base_args)
        if not (callable(getattr(self.base, "reset", None)) and callable(getattr(self.base, "step", None))):
            raise TypeError(f"HeavyThinkingEnv: `base` {base!r} must be a gymnasium-style text env")
        self.ks, self.first_stage = ks, first_stage
        self.p_correct, self.p_attractor = float(p_correct), float(p_attractor)
        self.attractor_offsets, self.spread, self.show_question = offs, spread, bool(show_question)
        self.alphabet = self.alphabet + "".join(sorted(set(getattr(self.base, "alphabet", "")) - set(self.alphabet)))
        self.task: Optional[dict] = None

    def make_task(self, seed) -> dict:
        """The task of ``seed``: the base problem, its answer and (synthetic first stage) K candidates."""
        question, info = self.base.reset(seed=seed)
        if not isinstance(question, str) or "answer" not in info:
            raise TypeError(f"HeavyThinkingEnv: base env {self.base_name!r} must return a str question and "
                            "info['answer']")
        rng = np.random.default_rng([0 if seed is None else abs(int(seed)), 2601])
        k = self.ks[int(rng.integers(len(self.ks)))]
        task = {"prompt": question, "answer": str(info["answer"])}
        if self.first_stage == "synthetic":
            task["candidates"] = synthetic_candidates(task["answer"], k, rng, p_correct=self.p_correct,
                                                      p_attractor=self.p_attractor,
                                                      attractor_offsets=self.attractor_offsets, spread=self.spread)
        return task

    def reset(self, seed: Optional[int] = None, task: Any = None) -> tuple[list[Message], dict]:
        if task is None:
            task = self.make_task(seed)
        if not isinstance(task, dict) or not all(isinstance(task.get(f), str) for f in ("prompt", "answer")):
            raise ValueError("HeavyThinkingEnv.reset: `task` must be a dict with str 'prompt' and 'answer' and a list "
                             "'candidates'")
        cands = task.get("candidates")
        if not isinstance(cands, (list, tuple)) or not cands or not all(isinstance(c, str) for c in cands):
            raise ValueError(f"HeavyThinkingEnv.reset: `task['candidates']` must be a non-empty list of str; got "
                             f"{cands!r} (first_stage={self.first_stage!r})")
        self.task = {"prompt": task["prompt"], "answer": task["answer"].strip(),
                     "candidates": [c.strip() for c in cands]}
        text = summary_prompt(self.task["prompt"], self.task["candidates"], self.show_question)
        return [Message("user", text)], {"answer": self.task["answer"], "candidates": list(self.task["candidates"])}

    def answer(self, turn: Message) -> StepResult:
        return StepResult(terminated=True, info={"answer": turn.content.strip()})

    def baselines(self) -> dict:
        """Majority vote and pass@K of the current task's candidates."""
        t = self.task
        return {"majority_correct": float(majority_vote(t["candidates"]) == t["answer"]),
                "oracle": float(t["answer"] in t["candidates"]), "k": float(len(t["candidates"]))}

    def verify(self, trajectory) -> Verdict:
        comps = {"correct": 0.0, "in_candidates": 0.0, **self.baselines()}
        final = next((m for m in reversed(trajectory.messages) if m.role == "assistant"), None)
        if final is None or trajectory.stop_reason not in ("env_done", "length"):
            return Verdict(0.0, comps, info={"reason": f"no answer (stop reason {trajectory.stop_reason!r})"})
        text = final.content.strip()
        if not text.lstrip("-").isdigit():
            return Verdict(0.0, comps, info={"reason": f"the answer must be one integer; got {text[:32]!r}"})
        comps["correct"] = float(text == self.task["answer"])
        comps["in_candidates"] = float(text in self.task["candidates"])
        return Verdict(comps["correct"], comps, info={"reason": "" if comps["correct"] else "wrong answer"})

    def state(self) -> Any:
        return self.task

    def demonstration(self, messages: Sequence[Message]) -> Optional[str]:
        if self.task is None or any(m.role == "assistant" for m in messages):
            return None
        return self.task["answer"]

    def tokenizer_corpus(self, n: int = 64) -> list[str]:
        out = []
        for s in range(n):
            t = self.make_task(10**7 + s) if self.first_stage == "synthetic" else None
            if t is not None:
                out += [summary_prompt(t["prompt"], t["candidates"], self.show_question), t["answer"]]
        return out
