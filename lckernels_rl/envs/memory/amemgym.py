"""``amemgym``: a templated AMemGym -- a user whose latent state evolves over periods, an agent with a bounded memory.

AMemGym (AGI-Eval-Official/amemgym, commit ffcd18857a3e2b2c61f00730ebdec676e27d3e87) evaluates assistants on
long-horizon personalisation: a simulated user has a *state* (a schema of variables, each with a few choices) that
changes from period to period and is revealed only through conversation; after every period the assistant is asked
the user's questions, each of whose correct choice depends on the current values of a few state variables.  Here
the LLM-written user is replaced by short templates so that the library's tiny policies can learn it from scratch.

What is taken from the authors' code (VERIFIED, paths in that repo):

* ``configs/env/v1.base.json``: 10 periods, 10 questions, 2 state variables per question
  (``num_states_per_question``), 3 choices per variable (``num_choices_per_state``), 4 changes per period
  (``num_changes_per_period``), at most 3 changes of one variable (``max_changes_per_state``), at least 4 answer
  variants per question (``min_state_variants``).  Our defaults: 10 periods, 10 questions, 2 variables per
  question, 3 values per variable, 3 changes of one variable at most, 4 variants; 6 variables and 2 changes per
  period (the official schema has more variables, so 4 changes per period would change too much of ours).
* ``src/amemgym/env/gen.py``: the initial sessions expose the initial state (``sample_init_queries(..., states[0])``),
  each later period's sessions expose that period's updates; ``new_state = prev_state | updated``.
* ``src/amemgym/env/sample_evaluation_qa.py::get_state_variants``: a question's answer variants are the distinct
  value tuples of its required variables over the states of the episode, padded with random unseen combinations
  up to ``min_variants``; the variants are fixed per question across periods.
* ``src/amemgym/eval/overall.py`` + ``eval/metric.py``: at every period every question is asked with its numbered
  choices; the golden choice is the variant equal to the current values of the required variables; the score is
  ``accuracy`` = 1 only when the chosen variant's state equals the golden one exactly (all required variables).
* ``src/amemgym/eval/diagnosis.py``: the memory lifecycle split -- per required variable, ``write_pos`` = the last
  period whose updates touched it, ``read_pos`` = the current period; a miss is a *write failure* when the agent's
  state dump was already wrong at ``write_pos``, else a *read failure*.

Ours (INFERRED / simplified):

* The user's utterances are templates (``"my diet is vegan."``, ``"drink was tea, now coffee."``) plus optional
  filler chatter; the old value appears in an update utterance, so a careless writer can store the wrong one.
* Period 0 is the initial reveal (every variable counts as updated at period 0); periods ``1..P-1`` each change
  ``changes_per_period`` variables (among those changed fewer than ``max_changes_per_state`` times).
* The agent's memory is the only thing that crosses periods: one turn per period writes it
  (``<memory> diet vegan, drink tea</memory>``, at most ``memory_budget`` entries; later entries of the same name
  override earlier ones; entries beyond the budget are dropped and counted), then ``questions_per_period`` turns
  answer questions from the memory alone (``<answer>2</answer>``).  Each turn's context is rewritten
  (:attr:`StepResult.rewrite`): the trajectory forks and every branch (one turn each) is its own training sample.
* The *state dump* of the diagnosis is the parsed memory itself (the official code asks the agent a JSON
  "which option fits each state type" prompt; ours needs no extra turn).  Our diagnosis is per asked question
  (the official counts per required variable): a miss is a write failure when any required variable was wrong in
  the memory written at its ``write_pos``, else a read failure (memory right there, answer still wrong: read or
  later overwrite).
* ``credit_guesses=False`` (default): an answer given while the memory holds no entry for a required variable
  scores 0 (reason ``answered_without_memory``), so an empty memory never earns reward by a lucky guess; the
  official score credits any matching choice.
* A malformed turn (missing / extra text around the tags, an entry not ``name value``, an answer index out of range)
  ends the episode with reward 0 and the reason in ``Verdict.info["reason"]`` (``components["format_ok"] = 0``).

Reward: the mean score over every scheduled question of the episode (``periods x questions_per_period``; a question
not reached scores 0).  Verdict components: ``accuracy`` (the reward), ``write_failure`` / ``read_failure``
(fractions of the scheduled questions), ``memory_accuracy`` (fraction of the state held correctly right after each
write, averaged over writes), ``format_ok``.
"""

from __future__ import annotations

import itertools
import re
import string
from typing import Any, ClassVar, Optional, Sequence

import numpy as np

from lckernels_rl.agents.types import Message

from ..tool_env import StepResult, ToolEnv, Verdict
from ._scripted import scripted_texts

__all__ = ["AMemGymEnv", "VARIABLES"]

#: the variable pool: name -> its 3 values (distinct across the pool, so a value names its variable)
VARIABLES: dict[str, tuple[str, ...]] = {
    "diet": ("vegan", "fish", "meat"),
    "drink": ("tea", "coffee", "juice"),
    "city": ("paris", "rome", "oslo"),
    "pet": ("cat", "dog", "bird"),
    "sport": ("swim", "run", "golf"),
    "music": ("jazz", "rock", "folk"),
    "job": ("nurse", "chef", "coder"),
    "ride": ("bike", "bus", "van"),
}
_INIT = ("my {var} is {new}.", "i have {new} as {var}.")
_UPDATE = ("{var} was {old}, now {new}.", "i changed {var} from {old} to {new}.")
_FILLER = ("nice weather today.", "i had a long week.", "thanks for the help.", "work was busy.")

_MEMORY_RE = re.compile(r"\s*<memory>(.*?)</memory>\s*", re.S)
_ANSWER_RE = re.compile(r"\s*<answer>\s*(\d+)\s*</answer>\s*", re.S)
_ENTRY_RE = re.compile(r"([a-z]+) ([a-z]+)")


def _int_arg(name: str, v, lo: int, hi: Optional[int] = None, who: str = "AMemGymEnv") -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{who}: `{name}` must be an int {rng}; got {v!r}")
    return int(v)


def parse_memory(text: str) -> dict[str, str]:
    """``"<memory> diet vegan, drink tea</memory>"`` -> ``{"diet": "vegan", "drink": "tea"}`` (insertion order; a
    later name overrides).  The entries are ``name value`` pairs separated by commas: the words tokenize as they
    do in the sessions and the choices (a copy for the tiny policies' tokenizers, unlike ``name=value``).

    Raises ``ValueError`` naming what is wrong (no tags, text outside them, an entry not ``name value``)."""
    m = _MEMORY_RE.fullmatch(text or "")
    if m is None:
        raise ValueError("expected exactly <memory>name value, ...</memory>")
    return parse_entries(m.group(1), "memory", "name")


def parse_entries(body: str, what: str, key: str) -> dict[str, str]:
    """The comma-separated ``key value`` pairs of a tag's ``body`` (lower-case words; insertion order, a later key
    overrides and moves to the end); a malformed entry raises ``ValueError`` naming the ``what`` entry."""
    out: dict[str, str] = {}
    body = body.strip()
    for entry in body.split(",") if body else []:
        e = _ENTRY_RE.fullmatch(entry.strip())
        if e is None:
            raise ValueError(f"{what} entry {entry.strip()!r} is not '{key} value' (lower-case words)")
        out.pop(e.group(1), None)
        out[e.group(1)] = e.group(2)
    return out


def format_memory(memory: dict[str, str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in memory.items())


class AMemGymEnv(ToolEnv):
    """A templated AMemGym episode: ``num_periods`` write turns, each followed by ``questions_per_period`` answers.

    Args:
        num_variables: state variables of the user (drawn from :data:`VARIABLES`, 3 values each).
        num_periods: periods (period 0 reveals the initial state).
        changes_per_period: variables changed per later period.
        max_changes_per_state: changes of one variable at most over the episode (official: 3).
        num_questions: the user's questions (each over ``vars_per_question`` variables).
        vars_per_question: required variables per question (official: 2).
        min_variants: answer choices per question at least (official: 4; capped by the combinations there are).
        questions_per_period: questions asked after each write (sampled from the user's questions; official: all).
        memory_budget: entries the memory may hold (``None``: ``num_variables``).
        filler_per_session: chatter sentences mixed into each session.
        credit_guesses: score a matching choice even when the memory lacks a required variable.

    Example:
        >>> env = AMemGymEnv(num_variables=3, num_periods=2, num_questions=2, vars_per_question=1,
        ...                  questions_per_period=1)
        >>> msgs, info = env.reset(seed=0)
        >>> msgs[0].content.startswith("mem: -")
        True
    """

    name: ClassVar[str] = "amemgym"
    blocking = False  # pure Python
    alphabet: ClassVar[str] = string.ascii_letters + string.digits + string.punctuation + " \n"  # char tokenizers
    protocol_tokens: ClassVar[tuple[str, ...]] = ("<memory>", "</memory>", "<answer>", "</answer>")

    def __init__(self, num_variables: int = 6, num_periods: int = 10, changes_per_period: int = 2,
                 max_changes_per_state: int = 3, num_questions: int = 10, vars_per_question: int = 2,
                 min_variants: int = 4, questions_per_period: int = 2, memory_budget: Optional[int] = None,
                 filler_per_session: int = 1, credit_guesses: bool = False):
        self.num_variables = _int_arg("num_variables", num_variables, 1, len(VARIABLES))
        self.num_periods = _int_arg("num_periods", num_periods, 1)
        self.changes_per_period = _int_arg("changes_per_period", changes_per_period, 0, self.num_variables)
        self.max_changes_per_state = _int_arg("max_changes_per_state", max_changes_per_state, 0)
        self.num_questions = _int_arg("num_questions", num_questions, 1)
        self.vars_per_question = _int_arg("vars_per_question", vars_per_question, 1, self.num_variables)
        self.min_variants = _int_arg("min_variants", min_variants, 1)
        self.questions_per_period = _int_arg("questions_per_period", questions_per_period, 1)
        self.memory_budget = self.num_variables if memory_budget is None else \
            _int_arg("memory_budget", memory_budget, 1)
        self.filler_per_session = _int_arg("filler_per_session", filler_per_session, 0)
        if not isinstance(credit_guesses, bool):
            raise TypeError(f"AMemGymEnv: `credit_guesses` must be a bool; got {credit_guesses!r}")
        self.credit_guesses = credit_guesses
        self.task: dict = {}
        self._reset_progress()

    # ------------------------------------------------------------------ task generation
    def generate(self, seed: Optional[int]) -> dict:
        """The task of ``seed``: schema, states per period, updates, sessions, questions, the ask schedule."""
        rng = np.random.default_rng(seed)
        names = list(VARIABLES)
        pick = sorted(int(i) for i in rng.choice(len(names), size=self.num_variables, replace=False))
        schema = {names[i]: list(VARIABLES[names[i]]) for i in pick}
        var_names = list(schema)
        state = {v: schema[v][int(rng.integers(3))] for v in var_names}
        states, updates = [dict(state)], [dict(state)]  # period 0: everything revealed
        counts = {v: 0 for v in var_names}
        for _ in range(1, self.num_periods):
            free = [v for v in var_names if counts[v] < self.max_changes_per_state]
            k = min(self.changes_per_period, len(free))
            changed = [free[int(i)] for i in rng.choice(len(free), size=k, replace=False)] if k else []
            upd = {}
            for v in sorted(changed, key=var_names.index):
                others = [x for x in schema[v] if x != state[v]]
                upd[v] = others[int(rng.integers(len(others)))]
                counts[v] += 1
            state = {**state, **upd}
            states.append(dict(state))
            updates.append(upd)
        sessions = []
        for p, upd in enumerate(updates):
            lines = []
            for v, new in upd.items():
                tmpl = _INIT if p == 0 else _UPDATE
                lines.append(tmpl[int(rng.integers(len(tmpl)))].format(var=v, new=new, old=states[p - 1][v]
                                                                       if p else ""))
            lines += [_FILLER[int(rng.integers(len(_FILLER)))] for _ in range(self.filler_per_session)]
            order = rng.permutation(len(lines))
            sessions.append(" ".join(lines[int(i)] for i in order))
        questions = []
        for _ in range(self.num_questions):
            req = sorted((var_names[int(i)] for i in rng.choice(len(var_names), size=self.vars_per_question,
                                                                replace=False)), key=var_names.index)
            seen = list(dict.fromkeys(tuple(s[v] for v in req) for s in states))
            unseen = [c for c in itertools.product(*(schema[v] for v in req)) if c not in seen]
            need = max(0, min(self.min_variants, len(seen) + len(unseen)) - len(seen))
            extra = [unseen[int(i)] for i in rng.choice(len(unseen), size=need, replace=False)] if need else []
            variants = seen + extra
            order = rng.permutation(len(variants))
            questions.append({"required": req, "choices": [list(variants[int(i)]) for i in order]})
        schedule = [[int(q) for q in rng.choice(self.num_questions, size=min(self.questions_per_period,
                                                                               self.num_questions),
                                                replace=False)] for _ in range(self.num_periods)]
        return {"schema": schema, "states": states, "updates": updates, "sessions": sessions,
                "questions": questions, "schedule": schedule}

    def _check_task(self, task) -> dict:
        if not isinstance(task, dict):
            raise TypeError(f"AMemGymEnv.reset: `task` must be a dict; got {type(task).__name__}")
        missing = [k for k in ("schema", "states", "updates", "sessions", "questions", "schedule") if k not in task]
        if missing:
            raise ValueError(f"AMemGymEnv.reset: `task` lacks {missing}")
        P = len(task["states"])
        if not (len(task["updates"]) == len(task["sessions"]) == len(task["schedule"]) == P) or P == 0:
            raise ValueError("AMemGymEnv.reset: `task` states/updates/sessions/schedule must have one entry per "
                             f"period; got {len(task['states'])}/{len(task['updates'])}/{len(task['sessions'])}/"
                             f"{len(task['schedule'])}")
        for q in task["questions"]:
            gold = [tuple(s[v] for v in q["required"]) for s in task["states"]]
            if any(list(g) not in [list(c) for c in q["choices"]] for g in gold):
                raise ValueError(f"AMemGymEnv.reset: question over {q['required']} lacks a golden choice")
        return task

    # ------------------------------------------------------------------ episode
    def _reset_progress(self) -> None:
        self.period = 0
        self.phase = "write"  # "write" | ("answer", k) | "done"
        self.ask = 0  # index into the period's schedule
        self.memory: dict[str, str] = {}
        self.memory_log: list[dict[str, str]] = []  # memory right after each period's write
        self.results: list[dict] = []  # one per answered question
        self.reason: Optional[str] = None
        self.truncated_entries = 0

    def reset(self, seed: Optional[int] = None, task: Any = None) -> tuple[list[Message], dict]:
        self.task = self._check_task(self.generate(seed) if task is None else task)
        self._reset_progress()
        return [Message("user", self._write_prompt())], {"task": self.task}

    def _mem_text(self) -> str:
        return format_memory(self.memory) or "-"

    def _write_prompt(self) -> str:
        return f"mem: {self._mem_text()}\nuser: {self.task['sessions'][self.period]}"

    def _question(self) -> dict:
        return self.task["questions"][self.task["schedule"][self.period][self.ask]]

    def _answer_prompt(self) -> str:
        q = self._question()
        choices = " ".join(f"{i + 1}) {' '.join(c)}" for i, c in enumerate(q["choices"]))
        return f"mem: {self._mem_text()}\nq: {' '.join(q['required'])}\n{choices}"

    def golden_index(self, period: int, question: int) -> int:
        """1-based index of the golden choice of ``question`` at ``period``."""
        q = self.task["questions"][question]
        gold = [self.task["states"][period][v] for v in q["required"]]
        return [list(c) for c in q["choices"]].index(gold) + 1

    def last_update(self, var: str, period: int) -> int:
        """The last period ``<= period`` whose updates touched ``var`` (the diagnosis' ``write_pos``)."""
        return max(p for p in range(period + 1) if var in self.task["updates"][p])

    def _fail(self, reason: str) -> StepResult:
        self.reason, self.phase = reason, "done"
        return StepResult(terminated=True, info={"reason": reason})

    def step(self, turn: Message) -> StepResult:
        if self.phase == "done":
            return self._fail("turn after the episode ended")
        text = turn.content if isinstance(turn, Message) else turn
        if not isinstance(text, str):
            raise TypeError(f"AMemGymEnv.step: `turn` must be a Message or str; got {type(turn).__name__}")
        if self.phase == "write":
            try:
                mem = parse_memory(text)
            except ValueError as e:
                return self._fail(f"malformed_memory: {e}")
            if len(mem) > self.memory_budget:
                self.truncated_entries += len(mem) - self.memory_budget
                mem = dict(list(mem.items())[:self.memory_budget])
            self.memory = mem
            self.memory_log.append(dict(mem))
            self.phase, self.ask = "answer", 0
            return StepResult(rewrite=[Message("user", self._answer_prompt())])
        m = _ANSWER_RE.fullmatch(text)
        q = self._question()
        if m is None or not 1 <= int(m.group(1)) <= len(q["choices"]):
            return self._fail(f"malformed_answer: expected <answer>k</answer> with k in 1..{len(q['choices'])}")
        self.results.append(self._score(int(m.group(1))))
        self.ask += 1
        if self.ask < len(self.task["schedule"][self.period]):
            return StepResult(rewrite=[Message("user", self._answer_prompt())])
        self.period += 1
        if self.period >= len(self.task["states"]):
            self.phase = "done"
            return StepResult(terminated=True, info={"reason": "completed"})
        self.phase = "write"
        return StepResult(rewrite=[Message("user", self._write_prompt())])

    def _score(self, choice: int) -> dict:
        p, qi = self.period, self.task["schedule"][self.period][self.ask]
        q = self.task["questions"][qi]
        gold = self.golden_index(p, qi)
        in_memory = all(v in self.memory for v in q["required"])
        score = float(choice == gold and (in_memory or self.credit_guesses))
        res = {"period": p, "question": qi, "choice": choice, "golden": gold, "score": score,
               "reason": None, "diagnosis": None}
        if choice == gold and not score:
            res["reason"] = "answered_without_memory"
        if score < 0.5:
            wrote_wrong = [v for v in q["required"]
                           if self.memory_log[self.last_update(v, p)].get(v) != self.task["states"][p][v]]
            res["diagnosis"] = "write" if wrote_wrong else "read"
            res["write_wrong"] = wrote_wrong
        return res

    def scheduled(self) -> int:
        return sum(len(s) for s in self.task["schedule"])

    def verify(self, trajectory=None) -> Verdict:
        n = max(self.scheduled(), 1)
        fmt = float(self.reason is None or self.reason == "completed")
        mem_acc = [sum(m.get(v) == s[v] for v in s) / len(s)
                   for m, s in zip(self.memory_log, self.task["states"])]
        info = {"reason": self.reason or ("incomplete" if self.phase != "done" else "completed"),
                "results": list(self.results), "memory_log": [dict(m) for m in self.memory_log],
                "truncated_entries": self.truncated_entries}
        comps = {"format_ok": fmt, "memory_accuracy": float(np.mean(mem_acc)) if mem_acc else 0.0}
        if not fmt:
            comps.update(accuracy=0.0, write_failure=0.0, read_failure=0.0)
            return Verdict(reward=0.0, components=comps, info=info)
        acc = sum(r["score"] for r in self.results) / n
        comps.update(accuracy=acc,
                     write_failure=sum(r["diagnosis"] == "write" for r in self.results) / n,
                     read_failure=sum(r["diagnosis"] == "read" for r in self.results) / n)
        return Verdict(reward=acc, components=comps, info=info)

    def state(self) -> dict:
        return {"task": self.task, "period": self.period, "phase": str(self.phase), "ask": self.ask,
                "memory": self.memory, "memory_log": self.memory_log, "results": self.results}

    # ------------------------------------------------------------------ demonstrations
    def demonstration(self, messages: Sequence[Message] = ()) -> Optional[str]:
        """The scripted turn: write the current state (most recently updated first when over the budget, written
        in schema order), or answer the golden choice."""
        if self.phase == "done" or not self.task:
            return None
        p = self.period
        if self.phase == "write":
            state = self.task["states"][p]
            recency = sorted(state, key=lambda v: -self.last_update(v, p))
            keep = set(recency[:self.memory_budget])
            mem = format_memory({v: state[v] for v in state if v in keep})
            return f"<memory> {mem}</memory>" if mem else "<memory></memory>"  # leading space: tokens as in prompts
        return f"<answer>{self.golden_index(p, self.task['schedule'][p][self.ask])}</answer>"

    def tokenizer_corpus(self, n: int = 16) -> list[str]:
        out = [t for s in range(n) for t in scripted_texts(self, 10**7 + s)]
        out += [f"<memory> {v} {x}</memory>" for v, xs in VARIABLES.items() for x in xs]
        out += [" ".join(_FILLER), "mem: -", "<answer>1</answer> <answer>2</answer> <answer>3</answer> "
                                             "<answer>4</answer>"]
        self._reset_progress()
        self.task = {}
        return out
