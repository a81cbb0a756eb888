"""Task generation with validated verifier programs (STAGE-Claw, arXiv:2606.10394).

VERIFIED (abstract of arXiv:2606.10394): from a *task hint* the framework creates and validates a task with its
environment, prompt, ground truth and verification programs; agents are scored by the correctness of the final
system state.  INFERRED (the paper body and any code were not readable here; the rule comes from our issue 13): the
validation rule implemented below -- a verifier is **accepted only if it passes the reference solution and fails
both the do-nothing run and a claim-only run** (the agent says "done" and changes nothing); the templated drafts
that stand in for the paper's LLM-written programs, and their flaw kinds.

A task hint is one of :data:`HINTS`; the prompt is a short command (the library's policies are tiny):

============  =========================  ==================================================  ==========
hint          prompt                     reference solution (turns)                          reads?
============  =========================  ==================================================  ==========
``mv``        ``mv ab.txt cd.txt``       ``@mv(src=ab.txt, dst=cd.txt)``                     no
``rm``        ``rm ab.txt``              ``@rm(path=ab.txt)``                                no
``book``      ``book gym d3``            ``@book(title=gym, day=d3)``                        no
``cancel``    ``cancel d3``              ``@cal()`` then ``@unbook(title=<event on d3>)``    yes
``save``      ``note ab to cd.txt``      ``@note(title=ab)`` then ``@write(path=cd.txt, ...)`` yes
============  =========================  ==================================================  ==========

then a final answer ``done``.

**Verifier programs** are Python *expressions* over ``s`` (the final state, frozen: ``s['files']``,
``s['calendar']``, ``s['notes']``) and ``answer`` (the final assistant text, ``""`` when none), e.g.
``'ab.txt' not in s['files'] and s['files'].get('cd.txt') == 'milk'``.  They run restricted (:func:`run_verifier`):
parsed with :mod:`ast` and rejected before running if they contain anything but literals, the names ``s`` /
``answer`` / a few pure builtins (``len``, ``sorted``, ``any``, ``all``, ``set``, ``sum``, ``min``, ``max``,
``str``, ``int``, ``bool``), comparisons, boolean/arithmetic operators, subscripts, comprehensions, and the methods
``get keys values items lower strip split startswith endswith count``; no attribute starting with ``_``, no
``while``, no ``lambda``, no imports (an expression cannot hold statements).  That whitelist is only the first
gate: a whitelisted program can still hang (``any(a == b for a in 'x' * 100000 for b in 'y' * 100000)``) or
exhaust memory (``'x' * 1000000000``), so every program then runs in the confined child process of
:mod:`.sandbox` (a wall-time limit, rlimits, Landlock, an audit hook, a read-only state).  A program that does not
parse, uses something outside the list, raises, hangs, exhausts its limits, attempts a forbidden operation or
returns a non-bool yields ``passed=False`` with the reason (``VerifierResult.kind`` says which).

**Drafts.**  :func:`generate_task` writes ``k`` flawed drafts (``k`` drawn per task: each further flaw with
probability ``flaw_rate``, at most 3) before the good one, and validates them in order; the first accepted one is
the task's verifier.  The flaw kinds are the ways a verifier fails the rule: ``vacuous`` (true of the initial state:
passes do-nothing), ``claim`` (reads the answer: passes claim-only), ``strict`` (demands something the reference
does not do: fails the reference), ``raising`` (indexes a missing key: raises on the reference).  When all of the
first ``max_drafts`` drafts are rejected the task is dropped (:class:`TaskGenerator` then draws another one).
Counters: ``drafted``, ``accepted``, ``rejected``, ``rejected_reference``, ``rejected_do_nothing``,
``rejected_claim_only``, ``dropped``.
"""

from __future__ import annotations

import ast
import copy
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from ._verifier_worker import SAFE_BUILTINS
from .state import PCState
from .tools import DAYS, make_tools

__all__ = ["HINTS", "FLAWS", "Task", "VerifierResult", "AcceptReport", "run_verifier", "accept_verifier",
           "apply_calls", "generate_task", "TaskGenerator", "CLAIM_TEXT"]

HINTS = ("mv", "rm", "book", "cancel", "save")
FLAWS = ("vacuous", "claim", "strict", "raising")
CLAIM_TEXT = "done"
_EVENTS = ("gym", "run", "yoga", "lunch", "call", "exam", "trip", "dentist", "party", "class")
_WORDS = ("milk", "eggs", "tea", "rent", "plan", "memo", "list", "bread", "keys", "ideas", "todo", "bills")
_SAFE_BUILTINS = SAFE_BUILTINS  # the names a program may call; the child evaluates with exactly these
_SAFE_METHODS = {"get", "keys", "values", "items", "lower", "strip", "split", "startswith", "endswith", "count"}
_ALLOWED_NODES = (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.BinOp, ast.Add,
                  ast.Sub, ast.Mult, ast.Compare, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In,
                  ast.NotIn, ast.Is, ast.IsNot, ast.Constant, ast.Name, ast.Load, ast.Subscript, ast.Call,
                  ast.Attribute, ast.Tuple, ast.List, ast.Set, ast.ListComp, ast.SetComp, ast.GeneratorExp,
                  ast.comprehension, ast.Store, ast.IfExp, ast.Slice)


# ------------------------------------------------------------------------------------------------ the task


@dataclass
class Task:
    """One generated task.

    Attributes:
        hint: the task hint it was generated from.
        initial: the initial state (``PCState.to_dict()``).
        prompt: the user message.
        goal: the structured goal (``{"kind": hint, ...}``; what the agent judge reads from the prompt too).
        reference: the reference solution, turn by turn: ``[[(tool, args), ...], ...]``.
        verifier: the accepted verifier program (a Python expression).
        drafts: ``[(program, verdict)]`` of every draft validated, verdict ``"accepted"`` or ``"rejected: ..."``.
    """

    hint: str
    initial: dict
    prompt: str
    goal: dict
    reference: list
    verifier: str = ""
    drafts: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"hint": self.hint, "initial": self.initial, "prompt": self.prompt, "goal": self.goal,
                "reference": [[[n, dict(a)] for n, a in turn] for turn in self.reference],
                "verifier": self.verifier, "drafts": [list(d) for d in self.drafts]}

    @classmethod
    def from_dict(cls, d: Any) -> "Task":
        if isinstance(d, Task):
            return d
        need = ("hint", "initial", "prompt", "goal", "reference", "verifier")
        if not isinstance(d, dict) or any(k not in d for k in need):
            raise ValueError(f"Task.from_dict: `task` must be a Task or a dict with keys {need}; got "
                             f"{type(d).__name__}")
        PCState.from_dict(d["initial"])  # validates
        ref = [[(str(n), dict(a)) for n, a in turn] for turn in d["reference"]]
        return cls(hint=d["hint"], initial=d["initial"], prompt=d["prompt"], goal=dict(d["goal"]), reference=ref,
                   verifier=d["verifier"], drafts=[tuple(x) for x in d.get("drafts", [])])


# ------------------------------------------------------------------------------------------------ verifiers


@dataclass
class VerifierResult:
    """``passed``; ``error``: the reason when the program did not run to a bool; ``kind``: ``ok``, ``rejected``
    (the AST gate), or the sandbox's ``raised`` / ``forbidden`` / ``timeout`` / ``crashed`` / ``garbage`` /
    ``unavailable``."""

    passed: bool
    error: Optional[str] = None
    kind: str = "ok"


def _check_program(program: str) -> ast.Expression:
    if not isinstance(program, str):
        raise TypeError(f"verifier program must be a str (a Python expression); got {type(program).__name__}")
    tree = ast.parse(program, mode="eval")
    bound = {"s", "answer", *_SAFE_BUILTINS}
    for node in ast.walk(tree):
        if isinstance(node, ast.comprehension):
            for n in ast.walk(node.target):
                if isinstance(n, ast.Name):
                    bound.add(n.id)
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            raise ValueError(f"disallowed construct {type(node).__name__}")
        if isinstance(node, ast.Name) and (node.id.startswith("_") or node.id not in bound):
            raise ValueError(f"unknown name {node.id!r}")
        if isinstance(node, ast.Attribute) and (node.attr.startswith("_") or node.attr not in _SAFE_METHODS):
            raise ValueError(f"disallowed attribute {node.attr!r}")
    return tree


def run_verifier(program: str, state: Any, answer: str = "", *, sandbox=None) -> VerifierResult:
    """Evaluate ``program`` on ``state`` (a :class:`PCState` or its dict) and ``answer``; never raises.

    First gate: the AST whitelist (:func:`_check_program`), in this process.  Then the program runs in the
    confined child process of ``sandbox`` (default: the process-wide :func:`~.sandbox.default_sandbox`) with a
    wall-time limit; whatever it does there -- raise, hang, exhaust memory, try a file, a module, a process -- comes
    back as ``passed=False`` with the reason."""
    try:
        _check_program(program)
        st = state if isinstance(state, PCState) else PCState.from_dict(state)
    except (SyntaxError, ValueError, TypeError) as e:
        return VerifierResult(False, f"rejected program: {type(e).__name__}: {e}", "rejected")
    from .sandbox import default_sandbox

    res = (sandbox or default_sandbox()).run(program, st.to_dict(), str(answer or ""))
    return VerifierResult(res.passed, res.error, res.kind)


def apply_calls(state: PCState, calls: Sequence[tuple[str, dict]]) -> list[str]:
    """Run ``calls`` on ``state`` through the tools (in place); returns the tool outputs (``error: ...`` kept)."""
    table = {t.name: t for t in make_tools(lambda: state)}
    out = []
    for name, args in calls:
        if name not in table:
            out.append(f"error: unknown tool {name!r}")
            continue
        out.append(table[name].invoke(dict(args)).content)
    return out


@dataclass
class AcceptReport:
    """Outcome of the acceptance rule: ``accepted`` and one result per run."""

    accepted: bool
    reference: VerifierResult
    do_nothing: VerifierResult
    claim_only: VerifierResult

    @property
    def reason(self) -> str:
        if self.accepted:
            return "accepted"
        why = []
        if not self.reference.passed:
            why.append("fails the reference" + (f" ({self.reference.error})" if self.reference.error else ""))
        if self.do_nothing.passed:
            why.append("passes the do-nothing run")
        if self.claim_only.passed:
            why.append("passes the claim-only run")
        return "rejected: " + "; ".join(why)


def accept_verifier(program: str, task: Task) -> AcceptReport:
    """The acceptance rule: pass the reference run, fail the do-nothing run and the claim-only run."""
    ref_state = PCState.from_dict(task.initial)
    for turn in task.reference:
        outs = apply_calls(ref_state, turn)
        bad = [o for o in outs if o.startswith("error:")]
        if bad:
            raise RuntimeError(f"accept_verifier: the reference solution of {task.prompt!r} fails: {bad}")
    init = PCState.from_dict(task.initial)
    ref = run_verifier(program, ref_state, CLAIM_TEXT)
    nothing = run_verifier(program, init, "")
    claim = run_verifier(program, init, CLAIM_TEXT)
    return AcceptReport(ref.passed and not nothing.passed and not claim.passed, ref, nothing, claim)


# ------------------------------------------------------------------------------------------------ generation


def _names(rng, n: int, suffix: str = "") -> list[str]:
    out: list[str] = []
    letters = "abcdefghijklmnopqrstuvwxyz"
    while len(out) < n:
        k = "".join(letters[int(i)] for i in rng.integers(0, 26, size=2)) + suffix
        if k not in out:
            out.append(k)
    return out


def _initial(rng) -> PCState:
    paths = _names(rng, 3, ".txt")
    events = [_EVENTS[int(i)] for i in rng.choice(len(_EVENTS), size=3, replace=False)]
    days = [DAYS[int(i)] for i in rng.choice(len(DAYS), size=3, replace=False)]
    notes = _names(rng, 2)
    word = lambda: _WORDS[int(rng.integers(len(_WORDS)))]  # noqa: E731
    return PCState(files={p: word() for p in paths}, calendar=dict(zip(events, days)),
                   notes={t: f"{word()} {word()}" for t in notes})


def _spec(hint: str, rng, st: PCState) -> tuple[str, dict, list, str]:
    """(prompt, goal, reference turns, good verifier) for ``hint`` on initial state ``st``."""
    files, cal, notes = st.files, st.calendar, st.notes
    nf, nc = len(files), len(cal)
    if hint == "mv":
        src = sorted(files)[int(rng.integers(nf))]
        dst = _names(rng, 1, ".txt")[0]
        while dst in files:
            dst = _names(rng, 1, ".txt")[0]
        return (f"mv {src} {dst}", {"kind": "mv", "src": src, "dst": dst},
                [[("mv", {"src": src, "dst": dst})]],
                f"{src!r} not in s['files'] and s['files'].get({dst!r}) == {files[src]!r} and len(s['files']) == {nf}")
    if hint == "rm":
        p = sorted(files)[int(rng.integers(nf))]
        return (f"rm {p}", {"kind": "rm", "path": p}, [[("rm", {"path": p})]],
                f"{p!r} not in s['files'] and len(s['files']) == {nf - 1}")
    if hint == "book":
        title = [e for e in _EVENTS if e not in cal][int(rng.integers(len(_EVENTS) - nc))]
        day = DAYS[int(rng.integers(len(DAYS)))]
        return (f"book {title} {day}", {"kind": "book", "title": title, "day": day},
                [[("book", {"title": title, "day": day})]],
                f"s['calendar'].get({title!r}) == {day!r} and len(s['calendar']) == {nc + 1}")
    if hint == "cancel":
        title = sorted(cal)[int(rng.integers(nc))]
        day = cal[title]
        return (f"cancel {day}", {"kind": "cancel", "day": day}, [[("cal", {})], [("unbook", {"title": title})]],
                f"{day!r} not in s['calendar'].values() and len(s['calendar']) == {nc - 1}")
    if hint == "save":
        t = sorted(notes)[int(rng.integers(len(notes)))]
        dst = _names(rng, 1, ".txt")[0]
        while dst in files:
            dst = _names(rng, 1, ".txt")[0]
        return (f"note {t} to {dst}", {"kind": "save", "title": t, "dst": dst},
                [[("note", {"title": t})], [("write", {"path": dst, "text": notes[t]})]],
                f"s['files'].get({dst!r}) == {notes[t]!r} and s['notes'].get({t!r}) == {notes[t]!r}")
    raise ValueError(f"generate_task: `hint` must be one of {HINTS}; got {hint!r}")


def _flawed(kind: str, good: str) -> str:
    if kind == "vacuous":
        return "len(s['files']) + len(s['calendar']) > 0"
    if kind == "claim":
        return f"{CLAIM_TEXT!r} in answer.lower()"
    if kind == "strict":
        return f"({good}) and len(s['notes']) == 99"
    if kind == "raising":
        return f"s['files']['zz.missing'] == '' or ({good})"
    raise ValueError(f"unknown flaw {kind!r}; expected one of {FLAWS}")


def generate_task(hint: str, seed: int, *, flaw_rate: float = 0.5, max_drafts: int = 3,
                  stats: Optional[Counter] = None) -> Optional[Task]:
    """A task for ``hint`` (deterministic in ``seed``), or ``None`` when every draft was rejected (dropped).

    Args:
        hint: one of :data:`HINTS`.
        seed: the generator seed.
        flaw_rate: probability of each further flawed draft before the good one (at most 3).
        max_drafts: drafts validated before the task is dropped.
        stats: a Counter updated with the draft/accept/reject/drop counts.
    """
    if hint not in HINTS:
        raise ValueError(f"generate_task: `hint` must be one of {HINTS}; got {hint!r}")
    if not (isinstance(flaw_rate, (int, float)) and 0.0 <= flaw_rate <= 1.0):
        raise ValueError(f"generate_task: `flaw_rate` must be in [0, 1]; got {flaw_rate!r}")
    if isinstance(max_drafts, bool) or not isinstance(max_drafts, int) or max_drafts < 1:
        raise ValueError(f"generate_task: `max_drafts` must be an int >= 1; got {max_drafts!r}")
    stats = Counter() if stats is None else stats
    rng = np.random.default_rng(seed)
    st = _initial(rng)
    prompt, goal, reference, good = _spec(hint, rng, st)
    task = Task(hint=hint, initial=st.to_dict(), prompt=prompt, goal=goal, reference=reference)
    flaws = []
    while len(flaws) < 3 and rng.random() < flaw_rate:
        flaws.append(FLAWS[int(rng.integers(len(FLAWS)))])
    drafts = [_flawed(k, good) for k in flaws] + [good]
    for program in drafts[:max_drafts]:
        stats["drafted"] += 1
        rep = accept_verifier(program, task)
        task.drafts.append((program, rep.reason))
        if rep.accepted:
            stats["accepted"] += 1
            task.verifier = program
            return task
        stats["rejected"] += 1
        stats["rejected_reference"] += int(not rep.reference.passed)
        stats["rejected_do_nothing"] += int(rep.do_nothing.passed)
        stats["rejected_claim_only"] += int(rep.claim_only.passed)
    stats["dropped"] += 1
    return None


_CACHE: "OrderedDict[tuple, tuple[dict, Counter]]" = OrderedDict()
_CACHE_SIZE = 16384  # tasks (a few KiB each)
_CACHE_LOCK = threading.Lock()


class TaskGenerator:
    """Draws tasks over ``hints`` (the hint drawn from the seed); a dropped task is regenerated with the next
    sub-seed (up to ``max_tries``).  ``stats`` accumulates :func:`generate_task`'s counters."""

    def __init__(self, hints: Sequence[str] = HINTS, *, flaw_rate: float = 0.5, max_drafts: int = 3,
                 max_tries: int = 16):
        hints = tuple(hints)
        if not hints or any(h not in HINTS for h in hints):
            raise ValueError(f"TaskGenerator: `hints` must be a non-empty subset of {HINTS}; got {hints!r}")
        if isinstance(max_tries, bool) or not isinstance(max_tries, int) or max_tries < 1:
            raise ValueError(f"TaskGenerator: `max_tries` must be an int >= 1; got {max_tries!r}")
        self.hints, self.flaw_rate, self.max_drafts, self.max_tries = hints, flaw_rate, max_drafts, max_tries
        self.stats: Counter = Counter()

    def generate(self, seed: int) -> Task:
        """The task of ``seed``.  Memoized per process (:data:`_CACHE`, keyed by the generator's settings and the
        seed): every episode's reset regenerates its task, and validating the drafts costs up to nine verifier runs
        in the sandbox process; a cached task adds the counters its generation added, so ``stats`` reads the same
        either way."""
        seed = 0 if seed is None else int(seed)
        key = (self.hints, float(self.flaw_rate), self.max_drafts, self.max_tries, seed)
        with _CACHE_LOCK:
            hit = _CACHE.get(key)
            if hit is not None:
                _CACHE.move_to_end(key)
        if hit is not None:
            self.stats.update(hit[1])
            return Task.from_dict(copy.deepcopy(hit[0]))
        counts: Counter = Counter()
        task = self._generate(seed, counts)
        self.stats.update(counts)
        with _CACHE_LOCK:
            _CACHE[key] = (copy.deepcopy(task.to_dict()), counts)
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        return task

    def _generate(self, seed: int, stats: Counter) -> Task:
        hint = self.hints[int(np.random.default_rng([seed, 7]).integers(len(self.hints)))]
        for k in range(self.max_tries):
            task = generate_task(hint, seed * 1009 + k, flaw_rate=self.flaw_rate, max_drafts=self.max_drafts,
                                 stats=stats)
            if task is not None:
                return task
        self.stats.update(stats)
        raise RuntimeError(f"TaskGenerator: no accepted verifier for hint {hint!r} in {self.max_tries} tries "
                           f"(max_drafts={self.max_drafts}, flaw_rate={self.flaw_rate})")
