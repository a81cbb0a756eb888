"""``skill1``: one policy queries a skill library, reranks the top 3 hits to one, solves the task with it and
distils a new skill; both auxiliary credits come from ONE task outcome.

Paper: Shi et al. 2026, *Skill1: Unified Evolution of Skill-Augmented Agents via Reinforcement Learning*
(arXiv 2605.06130).  The credit maths lives in :func:`lckernels_rl.advantages.skill1.skill1_credit`; this file is the
environment around it.

Source status (launch script ``launch_scripts/alfworld/train_alfworld.sh`` of AlphaLab-USTC/Skill1, commit
``f3aa2fbf9d4c2f10f94cf821ab597abfe8005c76``, read with ``read_file``; the training code itself is not public):

* VERIFIED: ``env.skill_library.top_k=3``, ``enable_query_generation=True`` (the policy writes the query),
  ``enable_rerank=True`` + ``rerank_train_top1=True`` (rerank the top 3 to one), ``alpha=0.05`` (EMA of the
  utility), ``distill_reward_type=first_order_diff`` and ``u_hat_aggregation=max``, ``lambda_distill=0.3`` and
  ``lambda_rerank=0.3``, ``train_retrieve_type=ucb`` / ``eval_retrieve_type=greedy``.
* INFERRED (the script names the switches, not their code): the reward mix
  ``R + lambda_rerank * selection + lambda_distill * distillation`` on the whole episode (the spans ``select`` and
  ``distill`` are also exported so a span-aware objective can put each credit on its own turn); the retrieval is
  lexical BM25 (``retrieve_mode=both`` in the script also uses embeddings -- not reproduced); UCB retrieval is not
  reproduced (retrieval is greedy BM25, the policy reranks); the distillation credit is paid only when the distilled
  skill is well formed; the library is shared by all episodes of one process (an online EMA, episode order).

Task (generated, seeded): ``task <verb> <object>``; the answer is a short macro (3 action words) drawn per
(verb, object) family from ``library_seed``: solvable only with the right macro skill.  The initial library holds,
per family, the right skill and ``distractors`` wrong ones with the same description; ``missing`` families start
with distractors only (the policy must distil their skill).  Protocol (one tag per assistant turn)::

    user  task heat apple
    asst  <query>heat apple</query>
    user  hits [1] heat apple: go open take u=0.1 [2] ... [3] ...
    asst  <select>2</select>
    user  skill go open take
    asst  <answer>go open take</answer>
    user  outcome 1 gold go open take
    asst  <distill>heat apple: go open take</distill>

Malformed tags, an out-of-range selection or a query with no BM25 hit end the episode with reward 0 and the reason
in ``Verdict.info["reason"]`` (components ``malformed`` / ``no_hit``).  Retrieval: ``rank_bm25.BM25Okapi``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional, Sequence

import numpy as np
import torch

from lckernels_rl.advantages.skill1 import skill1_credit
from lckernels_rl.agents.types import Message

from ..tool_env import StepResult, ToolEnv, Verdict

__all__ = ["Skill1Env", "SkillLibrary", "get_library", "reset_libraries"]

VERBS = ("heat", "cool", "clean", "slice")
OBJECTS = ("apple", "egg", "mug")
ACTIONS = ("go", "open", "take", "put", "close", "wash", "cut", "turn")
TAGS = ("query", "select", "answer", "distill")


def _macro(rng) -> str:
    return " ".join(ACTIONS[int(i)] for i in rng.choice(len(ACTIONS), size=3, replace=False))


@dataclass
class SkillLibrary:
    """The shared skill library: entries ``{"desc", "macro"}``, their EMA utilities, a BM25 index over descriptions.

    ``truth`` maps each family ``"verb object"`` to its gold macro."""

    truth: dict
    entries: list = field(default_factory=list)
    utility: list = field(default_factory=list)
    max_size: int = 64
    _bm25: Any = None

    def _reindex(self) -> None:
        from rank_bm25 import BM25Okapi

        self._bm25 = BM25Okapi([e["desc"].split() for e in self.entries]) if self.entries else None

    def add(self, desc: str, macro: str, utility: float = 0.0) -> None:
        if len(self.entries) >= self.max_size:  # evict the lowest-utility entry (INFERRED)
            j = int(np.argmin(self.utility))
            del self.entries[j], self.utility[j]
        self.entries.append({"desc": desc, "macro": macro})
        self.utility.append(float(utility))
        self._reindex()

    def retrieve(self, query: str, k: int = 3) -> list[int]:
        """Top ``k`` entry ids sharing a word with ``query``, by BM25 score, ties by utility (higher first; INFERRED
        from ``relevance_weight`` / ``retrieve_type`` of the script), then by id."""
        if self._bm25 is None:
            self._reindex()
        if self._bm25 is None:
            return []
        q = query.split()
        # a word present in every description gets a non-positive Okapi idf; a hit is a shared word
        scores = self._bm25.get_scores(q)
        order = sorted(range(len(self.entries)), key=lambda i: (-round(float(scores[i]), 9), -self.utility[i], i))
        return [i for i in order if set(q) & set(self.entries[i]["desc"].split())][:k]

    def quality(self) -> float:
        """Fraction of entries whose macro is the gold macro of their description."""
        if not self.entries:
            return 0.0
        return float(np.mean([self.truth.get(e["desc"]) == e["macro"] for e in self.entries]))

    def coverage(self) -> float:
        """Fraction of families with at least one right skill."""
        right = {e["desc"] for e in self.entries if self.truth.get(e["desc"]) == e["macro"]}
        return len(right) / len(self.truth)


_LIBRARIES: dict = {}


def reset_libraries() -> None:
    """Forget every shared library (tests, demos)."""
    _LIBRARIES.clear()


def get_library(library_id: str = "default", library_seed: int = 0, distractors: int = 2, missing: int = 2,
                max_size: int = 64) -> SkillLibrary:
    """The process-wide library ``library_id`` (created, seeded, on first use)."""
    key = (library_id, library_seed, distractors, missing, max_size)
    if key not in _LIBRARIES:
        rng = np.random.default_rng(library_seed)
        fams = [f"{v} {o}" for v in VERBS for o in OBJECTS]
        truth = {f: _macro(rng) for f in fams}
        gone = {fams[int(i)] for i in rng.choice(len(fams), size=missing, replace=False)} if missing else set()
        lib = SkillLibrary(truth=truth, max_size=max_size)
        for f in fams:
            items = [] if f in gone else [truth[f]]
            while len(items) < (distractors + (0 if f in gone else 1)):
                m = _macro(rng)
                if m != truth[f] and m not in items:
                    items.append(m)
            for j in rng.permutation(len(items)):
                lib.entries.append({"desc": f, "macro": items[int(j)]})
                lib.utility.append(0.0)
        lib._reindex()
        _LIBRARIES[key] = lib
    return _LIBRARIES[key]


class Skill1Env(ToolEnv):
    """Query -> rerank (top 3 to one) -> solve -> distil, with Skill1's trend/variation credits.

    Args:
        library_id / library_seed / distractors / missing / max_library: select (and seed) the shared library.
        top_k: hits shown (3 in the released script).
        alpha: EMA rate of the utility trend (0.05).
        lambda_rerank / lambda_distill: weights of the selection and distillation credits (0.3 each).
        update_library: apply the EMA update and add distilled skills (``False`` for evaluation).

    Example:
        >>> reset_libraries(); env = Skill1Env()
        >>> msgs, info = env.reset(seed=0)
        >>> msgs[0].content.startswith("task ")
        True
    """

    name: ClassVar[str] = "skill1"
    blocking = False
    protocol_tokens: ClassVar[tuple[str, ...]] = tuple(t for n in TAGS for t in (f"<{n}>", f"</{n}>"))
    alphabet: ClassVar[str] = "abcdefghijklmnopqrstuvwxyz0123456789 .:=[]<>/\n"

    def __init__(self, library_id: str = "default", library_seed: int = 0, distractors: int = 2, missing: int = 2,
                 max_library: int = 64, top_k: int = 3, alpha: float = 0.05, lambda_rerank: float = 0.3,
                 lambda_distill: float = 0.3, update_library: bool = True):
        for n, v, lo in (("library_seed", library_seed, 0), ("distractors", distractors, 0), ("missing", missing, 0),
                         ("max_library", max_library, 1), ("top_k", top_k, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"Skill1Env: `{n}` must be an int >= {lo}; got {v!r}")
        if missing > len(VERBS) * len(OBJECTS):
            raise ValueError(f"Skill1Env: `missing` must be <= {len(VERBS) * len(OBJECTS)}; got {missing}")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"Skill1Env: `alpha` must lie in (0, 1]; got {alpha!r}")
        for n, v in (("lambda_rerank", lambda_rerank), ("lambda_distill", lambda_distill)):
            if not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"Skill1Env: `{n}` must be a number >= 0; got {v!r}")
        self.lib = get_library(str(library_id), library_seed, distractors, missing, max_library)
        self.top_k, self.alpha = top_k, float(alpha)
        self.lambda_rerank, self.lambda_distill = float(lambda_rerank), float(lambda_distill)
        self.update_library = bool(update_library)
        self.family = ""
        self._reset_state()

    def _reset_state(self) -> None:
        self.phase, self.hits, self.selected = "query", [], -1
        self.outcome, self.reason, self.distilled = 0.0, "", None
        self.verdict: Optional[Verdict] = None

    # ---- episode -----------------------------------------------------------------------------------------------
    def reset(self, seed: Optional[int] = None, task: Any = None) -> tuple[list[Message], dict]:
        fams = list(self.lib.truth)
        if task is None:
            task = fams[int(np.random.default_rng(seed).integers(len(fams)))]
        if task not in self.lib.truth:
            raise ValueError(f"Skill1Env.reset: `task` must be one of {fams}; got {task!r}")
        self.family = task
        self._reset_state()
        return [Message("user", f"task {task}")], {"answer": self.lib.truth[task], "task": task}

    @staticmethod
    def _tag(text: str, name: str) -> Optional[str]:
        m = re.fullmatch(rf"\s*<{name}>([^<>]*)</{name}>\s*", text)
        return None if m is None else m.group(1).strip()

    def _hits_text(self) -> str:
        return "hits " + " ".join(f"[{i + 1}] {self.lib.entries[j]['desc']}: {self.lib.entries[j]['macro']} "
                                  f"u={self.lib.utility[j]:.1f}" for i, j in enumerate(self.hits))

    def _fail(self, reason: str) -> StepResult:
        self.reason, self.phase = reason, "done"
        self._finish()
        return StepResult(terminated=True, info={"reason": reason})

    def step(self, turn: Message) -> StepResult:
        text = turn.content or ""
        if self.phase == "query":
            q = self._tag(text, "query")
            if not q:
                return self._fail("malformed: expected <query>words</query>")
            self.hits = self.lib.retrieve(q, self.top_k)
            if not self.hits:
                return self._fail(f"no_hit: the query {q!r} matches no skill")
            self.phase = "select"
            return StepResult(messages=[Message("user", self._hits_text())])
        if self.phase == "select":
            s = self._tag(text, "select")
            if s is None or not s.isdigit() or not 1 <= int(s) <= len(self.hits):
                return self._fail(f"malformed: expected <select>1..{len(self.hits)}</select>")
            self.selected = self.hits[int(s) - 1]
            self.phase = "solve"
            return StepResult(messages=[Message("user", f"skill {self.lib.entries[self.selected]['macro']}")])
        if self.phase == "solve":
            a = self._tag(text, "answer")
            if a is None:
                return self._fail("malformed: expected <answer>macro</answer>")
            self.outcome = float(" ".join(a.split()) == self.lib.truth[self.family])
            self.phase = "distill"
            gold = self.lib.truth[self.family]
            return StepResult(messages=[Message("user", f"outcome {int(self.outcome)} gold {gold}")])
        if self.phase == "distill":
            d = self._tag(text, "distill")
            if d is not None and ":" in d:
                desc, macro = (" ".join(p.split()) for p in d.split(":", 1))
                if desc in self.lib.truth and len(macro.split()) == 3 and all(w in ACTIONS for w in macro.split()):
                    self.distilled = (desc, macro)
            if self.distilled is None:
                self.reason = "malformed: expected <distill>verb object: a b c</distill>"
            self.phase = "done"
            self._finish()
            return StepResult(terminated=True, info={"reason": self.reason} if self.reason else {})
        return StepResult(terminated=True, info={"reason": "episode already over"})

    def _finish(self) -> None:
        """Credits from the one outcome (see :func:`skill1_credit`), library update, cached :class:`Verdict`."""
        comps = {"outcome": self.outcome, "selection": 0.0, "distillation": 0.0, "u_hat": 0.0,
                 "malformed": float(self.reason.startswith("malformed")), "no_hit": float(self.reason.startswith("no_hit")),
                 "right_skill": 0.0, "distilled_right": 0.0}
        reward = 0.0
        solved_turn = self.selected >= 0 and self.phase == "done" and (
            not self.reason or self.reason.startswith("malformed: expected <distill>"))
        if solved_turn:  # the task was attempted: the outcome exists and credits both turns
            cred = skill1_credit(torch.tensor([self.outcome]), torch.tensor([self.selected]),
                                 torch.tensor(self.lib.utility, dtype=torch.float64), alpha=self.alpha,
                                 candidates=[self.hits], u_hat_aggregation="max")
            sel, dist = float(cred.selection[0]), float(cred.distillation[0])
            if self.distilled is None:
                dist = 0.0
            comps.update(selection=sel, distillation=dist, u_hat=float(cred.u_hat[0]),
                         right_skill=float(self.lib.entries[self.selected]["macro"] == self.lib.truth[self.family]))
            if self.distilled is not None:
                comps["distilled_right"] = float(self.lib.truth[self.distilled[0]] == self.distilled[1])
            reward = self.outcome + self.lambda_rerank * sel + self.lambda_distill * dist
            if self.update_library:
                self.lib.utility = [float(x) for x in cred.utility.double()]
                if self.distilled is not None:
                    self.lib.add(*self.distilled)
        self.verdict = Verdict(reward=float(reward), components=comps, info={"reason": self.reason})

    def verify(self, trajectory) -> Verdict:
        if self.verdict is None:  # cut before the end (max_turns, context): no outcome
            self.reason = f"unfinished: {getattr(trajectory, 'stop_reason', '?')}"
            self.verdict = Verdict(reward=0.0, components={"outcome": 0.0, "selection": 0.0, "distillation": 0.0,
                                                           "malformed": 0.0, "no_hit": 0.0},
                                   info={"reason": self.reason})
        return self.verdict

    def state(self) -> dict:
        return {"family": self.family, "phase": self.phase, "hits": self.hits, "selected": self.selected,
                "entries": self.lib.entries, "utility": [round(u, 6) for u in self.lib.utility]}

    # ---- SFT warm-up and tokenizer -----------------------------------------------------------------------------
    def demonstration(self, messages: Sequence[Message]) -> Optional[str]:
        last = messages[-1].content if messages else ""
        if last.startswith("task "):
            return f"<query>{last[5:]}</query>"
        if last.startswith("hits "):
            best = max(range(len(self.hits)), key=lambda i: (self.lib.utility[self.hits[i]], -i)) if self.hits else 0
            return f"<select>{best + 1}</select>"
        if last.startswith("skill "):
            return f"<answer>{last[6:]}</answer>"
        if last.startswith("outcome "):
            return f"<distill>{self.family}: {last.split(' gold ', 1)[1]}</distill>"
        return None

    def tokenizer_corpus(self, n: int = 64) -> list[str]:
        """Words, tags, every family's skill line and ``n`` demonstrated episodes (played on a private copy of the
        library, so the shared one is untouched)."""
        words = list(VERBS) + list(OBJECTS) + list(ACTIONS)
        out = [" ".join(words), "task hits skill outcome gold u=0.0 u=0.5 u=1.0 [1] [2] [3] 0 1 2 3 4 5 6 7 8 9"]
        out += [f"<{t}>{w}</{t}>" for t in TAGS for w in words]
        out += [f"{f}: {m}" for f, m in self.lib.truth.items()]
        shadow = Skill1Env.__new__(Skill1Env)
        shadow.__dict__.update(self.__dict__)
        shadow.lib = SkillLibrary(truth=dict(self.lib.truth), entries=[dict(e) for e in self.lib.entries],
                                  utility=list(self.lib.utility), max_size=self.lib.max_size)
        shadow.update_library = False
        for s in range(n):
            msgs, _ = shadow.reset(seed=10**7 + s)
            for _ in range(4):
                d = shadow.demonstration(msgs)
                r = shadow.step(Message("assistant", d))
                out += [m.content for m in msgs[-1:]] + [d]
                if r.terminated:
                    break
                msgs = msgs + [Message("assistant", d)] + r.messages
        return out
