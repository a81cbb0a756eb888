"""``vita_personal``: VitaBench-style personalization -- preferences that carry across the subtasks of one episode.

VitaBench 2.0 (arXiv 2605.27141; meituan-longcat/VitaBench-2.0, read at commit
748ec85f644b42c666bda24454da9fdba5739bbc) extends VitaBench (arXiv 2509.26490) from one-shot life-service requests to
one user served over a sequence of subtasks (food delivery, in-store, travel); the user's preferences must be
inferred in earlier interactions and applied in later requests that no longer state them.  Here the LLM user, the
LLM judge and the 66 tools are replaced by templates and rules so that the library's tiny policies can learn it.

What is taken from the authors' code (VERIFIED, paths in that repo):

* ``src/vita/orchestrator/personalization_orchestrator.py``: the subtasks of a task run in order; before each one
  the memory is updated, the agent's conversation state is reset (``PersonalizationAgent.reset_state`` keeps only the
  memory), each subtask is judged on its own messages, and the task's reward is the **average** of the subtask
  rewards (``_aggregate_rewards``); a judge error gives that subtask reward 0 with a note.
* ``src/vita/agent/personalization_agent.py``: ``memory.read()`` is injected into the agent's prompt (a "User
  Preference Memory" section) at every subtask.
* ``src/vita/memory/null_memory.py``: ``null`` -- ``read()`` is empty, ``update()`` stores nothing.
* ``src/vita/memory/rewrite_memory.py`` + ``prompts/memory_update_prompt.yaml``: ``rewrite`` -- one text is kept;
  each update asks the *agent's own LLM* (``llm=self.llm``) to merge the current memory with the new interactions
  (retain / update / add) under an output budget (``max_tokens``), and the result **replaces** the old memory.
* ``src/vita/memory/full_context.py``: ``full_context`` -- every interaction is appended; ``read()`` returns the text
  truncated **from the head** to ``max_tokens``, dropping the partial leading line.
* ``src/vita/evaluator/evaluator_traj.py`` (``TrajectoryEvaluator.calculate_reward``): the rubric judge walks
  sliding windows of the subtask's messages (``window_size=10``, ``overlap=2``: windows start every 8 messages, one
  window when the dialogue is short); every rubric item starts "not met" and each window's judgment updates the
  items' states (carried to the next window); the subtask reward is 1 only when **all** items are met (and there is
  at least one), the fraction met is reported beside it (``reward_breakdown``).

Ours (INFERRED / simplified):

* The user has one value for each of 4 preference slots (:data:`PREFS`: diet, seat, budget, time); each subtask is a
  request of a domain (:data:`DOMAINS`: ``order food.`` -> diet, budget; ``book a table.`` -> seat, time; ``plan a
  trip.`` -> seat, budget) whose applicable slots are its rubric: one item per slot, "the action respects <slot>
  <value>".  Each preference is stated once (``"my diet is vegan."``) in a subtask drawn uniformly at or before the
  first subtask that applies it, and never restated (VitaBench 2.0's tasks come from real logs; its preferences
  also drift -- no drift here).  In VitaBench 2.0 the memory is updated from interaction records carried by each
  subtask; here the records are the previous subtasks' dialogues.
* The agent acts once per subtask: ``<action> diet vegan, budget cheap</action>`` (entries ``slot value``); the
  action ends the subtask.  The rule judge reads, per window, the last well-formed action inside it: every item's
  state becomes "that action gives the slot this value" (windows without an action keep the states).  With one
  action per subtask this equals judging the last action; the windows matter once off-script turns lengthen the
  dialogue (and for ``window_size`` smaller than it).
* ``rewrite``: after each subtask but the last the agent writes ``<memory> slot value, ...</memory>`` (at most
  ``memory_budget`` entries; later entries of a slot override; entries beyond the budget are dropped and counted);
  the next subtask's context is that note and the new request only (the policy itself rewrites, as the released
  backend asks the agent's LLM).  ``full_context``: the next context is every earlier message of the episode
  (``user: ...`` / ``agent: ...`` lines), truncated from the head to ``context_budget`` *characters* (tokens in the
  released code) dropping the partial leading line, then the request.  ``null``: the request only.  Every
  subtask's context is rewritten (:attr:`StepResult.rewrite`): the trajectory forks, each branch its own sample.
* Off-script turns (no / malformed tags, an unknown slot or value) get a visible error message from the user and
  count against ``max_retries`` per phase; past it the subtask fails (reason ``off_script``) or, for a memory note,
  the memory becomes empty (reason ``malformed_memory``) and the episode goes on.  ``components["format_ok"]`` is 0
  once any turn was off-script.
* The reward is the mean subtask success over all ``num_subtasks`` subtasks (an unreached subtask scores 0).

Verdict components: ``success`` (the reward), ``rubric_score`` (mean fraction of items met), ``success_at_<k>``
(success of subtask ``k``: "success by subtask index"), ``carried_success`` (mean success over the subtasks that
need a preference stated in an earlier subtask; 0 when there is none), ``format_ok``.  ``info``: per subtask the
rubric items (``met``, ``reason``: ``met`` / ``missing`` / ``wrong_value``), whether the memory shown was empty, the
windows judged, the subtask's reason (``met``, ``rubric``, ``off_script``, ``no_action``: opened, never answered,
``not_reached``); the episode's off-script errors.
"""

from __future__ import annotations

import re
import string
from typing import Any, ClassVar, Optional, Sequence

import numpy as np

from lckernels_rl.agents.types import Message

from ..tool_env import StepResult, ToolEnv, Verdict
from .amemgym import _int_arg as _amemgym_int_arg
from .amemgym import format_memory, parse_entries, parse_memory
from ._scripted import scripted_texts

__all__ = ["VitaPersonalEnv", "PREFS", "DOMAINS", "BACKENDS", "parse_action", "sliding_windows", "judge_subtask",
           "truncate_head"]

#: preference slot -> its values (distinct across slots, so a value names its slot)
PREFS: dict[str, tuple[str, ...]] = {
    "diet": ("vegan", "halal", "kosher"),
    "seat": ("window", "aisle", "booth"),
    "budget": ("cheap", "midrange", "luxury"),
    "time": ("morning", "noon", "evening"),
}
#: domain -> (request text, the slots an action of that domain must respect)
DOMAINS: dict[str, tuple[str, tuple[str, ...]]] = {
    "food": ("order food.", ("diet", "budget")),
    "table": ("book a table.", ("seat", "time")),
    "trip": ("plan a trip.", ("seat", "budget")),
}
BACKENDS = ("null", "rewrite", "full_context")
WINDOW_SIZE, OVERLAP = 10, 2  # evaluator_traj.py defaults
_REVEAL = "my {slot} is {value}."
_REVEAL_RE = re.compile(r"my ([a-z]+) is ([a-z]+)\.")
_ACTION_RE = re.compile(r"\s*<action>(.*?)</action>\s*", re.S)
_TAGGED_RE = re.compile(r"<(?:action|memory)>(.*?)</(?:action|memory)>", re.S)
_ENTRY_RE = re.compile(r"([a-z]+) ([a-z]+)")
ACTION_ERROR = "error: expected <action> slot value, ...</action>."
MEMORY_ERROR = "error: expected <memory> slot value, ...</memory>."
MEMORY_PROMPT = "write memory."


def _int_arg(name: str, v, lo: int, hi: Optional[int] = None) -> int:
    return _amemgym_int_arg(name, v, lo, hi, who="VitaPersonalEnv")


def _check_entries(entries: dict[str, str]) -> dict[str, str]:
    for slot, value in entries.items():
        if slot not in PREFS:
            raise ValueError(f"unknown slot {slot!r} (expected one of {list(PREFS)})")
        if value not in PREFS[slot]:
            raise ValueError(f"{value!r} is not a value of {slot!r} (expected one of {list(PREFS[slot])})")
    return entries


def parse_action(text: str) -> dict[str, str]:
    """``"<action> diet vegan, budget cheap</action>"`` -> ``{"diet": "vegan", "budget": "cheap"}`` (a later entry of a
    slot overrides).  Raises ``ValueError`` naming what is wrong (no tags, text outside them, an entry not ``slot
    value``, an unknown slot or value)."""
    m = _ACTION_RE.fullmatch(text or "")
    if m is None:
        raise ValueError("expected exactly <action>slot value, ...</action>")
    return _check_entries(parse_entries(m.group(1), "action", "slot"))


def parse_note(text: str) -> dict[str, str]:
    """A rewrite memory note (:func:`~lckernels_rl.envs.memory.amemgym.parse_memory` plus the slot/value check)."""
    return _check_entries(parse_memory(text))


def sliding_windows(items: Sequence, window_size: int = WINDOW_SIZE, overlap: int = OVERLAP) -> list[list]:
    """Windows of ``window_size`` items starting every ``window_size - overlap`` items, the last one reaching the end
    (one window when ``len(items) <= window_size``) -- ``TrajectoryEvaluator._create_sliding_windows``."""
    if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 1:
        raise ValueError(f"sliding_windows: `window_size` must be an int >= 1; got {window_size!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < window_size:
        raise ValueError(f"sliding_windows: `overlap` must be an int in [0, window_size); got {overlap!r}")
    items = list(items)
    if len(items) <= window_size:
        return [items]
    out, i, step = [], 0, window_size - overlap
    while i < len(items):
        out.append(items[i:i + window_size])
        if i + window_size >= len(items):
            break
        i += step
    return out


def judge_subtask(messages: Sequence[tuple[str, str]], rubric: Sequence[tuple[str, str]],
                  window_size: int = WINDOW_SIZE, overlap: int = OVERLAP) -> tuple[list[dict], int]:
    """The rule judge of one subtask: ``messages`` are ``(role, text)`` of its dialogue, ``rubric`` the ``(slot,
    value)`` items.  Every item starts not met; per window, the last well-formed ``<action>`` of the agent in it sets
    each item to "the action gives ``slot`` the value ``value``" (windows without an action keep the states).
    Returns (per item ``{"slot", "value", "met", "reason"}``, number of windows)."""
    states = [{"slot": s, "value": v, "met": False, "reason": "missing"} for s, v in rubric]
    windows = sliding_windows(messages, window_size, overlap)
    for window in windows:
        action = None
        for role, text in window:
            if role == "agent":
                try:
                    action = parse_action(text)
                except ValueError:
                    pass
        if action is None:
            continue
        for st in states:
            got = action.get(st["slot"])
            st["met"] = got == st["value"]
            st["reason"] = "met" if st["met"] else ("missing" if got is None else "wrong_value")
    return states, len(windows)


def truncate_head(text: str, budget: int) -> str:
    """``text`` cut from the head to its last ``budget`` characters, a partial leading line dropped
    (``FullContextMemory.read``, characters for tokens)."""
    if len(text) <= budget:
        return text
    tail = text[len(text) - budget:] if budget > 0 else ""
    nl = tail.find("\n")
    if nl != -1 and nl < len(tail) - 1:
        tail = tail[nl + 1:]
    return tail


def visible_prefs(text: str) -> dict[str, str]:
    """The preferences a perfect reader finds in a context: the entries of a ``mem: slot value, ...`` line and of
    earlier ``<action>`` / ``<memory>`` turns, then the stated ones (``my <slot> is <value>.``), which win; within each
    kind later mentions override earlier ones."""
    found: list[tuple[int, int, str, str]] = []  # (priority, position, slot, value)

    def entries(body: str, prio: int, pos: int) -> None:
        for entry in body.split(","):
            e = _ENTRY_RE.fullmatch(entry.strip())
            if e is not None:
                found.append((prio, pos, e.group(1), e.group(2)))

    for m in re.finditer(r"^mem: (.*)$", text, re.M):
        entries(m.group(1), 0, m.start())
    for m in _TAGGED_RE.finditer(text):
        entries(m.group(1), 0, m.start())
    for m in _REVEAL_RE.finditer(text):
        found.append((1, m.start(), m.group(1), m.group(2)))
    out: dict[str, str] = {}
    for _, _, s, v in sorted(found, key=lambda f: (f[0], f[1])):
        if s in PREFS and v in PREFS[s]:
            out.pop(s, None)
            out[s] = v
    return out


class VitaPersonalEnv(ToolEnv):
    """A user served over ``num_subtasks`` subtasks whose preferences carry across them through a memory backend.

    Args:
        memory: the backend between subtasks: ``"null"`` (nothing carried), ``"rewrite"`` (the agent writes a bounded
            note at the end of each subtask; it replaces the context), ``"full_context"`` (every earlier message,
            truncated from the head to ``context_budget`` characters); ``None`` (a bare YAML ``null``) is ``"null"``.
        num_subtasks: subtasks per episode.
        memory_budget: entries a rewrite note may hold.
        context_budget: characters of history the ``full_context`` backend keeps.
        max_retries: off-script turns allowed per phase before the subtask fails / the note is taken as empty.
        window_size / overlap: the judge's sliding windows (in messages; 10 / 2 released).

    Example:
        >>> env = VitaPersonalEnv(memory="rewrite", num_subtasks=2)
        >>> msgs, info = env.reset(seed=0)
        >>> msgs[0].content.startswith("mem: -")
        True
    """

    name: ClassVar[str] = "vita_personal"
    blocking = False  # pure Python
    alphabet: ClassVar[str] = string.ascii_letters + string.digits + string.punctuation + " \n"
    protocol_tokens: ClassVar[tuple[str, ...]] = ("<action>", "</action>", "<memory>", "</memory>")

    def __init__(self, memory: str = "rewrite", num_subtasks: int = 4, memory_budget: int = 4,
                 context_budget: int = 2048, max_retries: int = 1, window_size: int = WINDOW_SIZE,
                 overlap: int = OVERLAP):
        if memory is None:  # YAML / override parsers read a bare `null` as None
            memory = "null"
        if memory not in BACKENDS:
            raise ValueError(f"VitaPersonalEnv: `memory` must be one of {list(BACKENDS)}; got {memory!r}")
        self.memory_backend = memory
        self.num_subtasks = _int_arg("num_subtasks", num_subtasks, 1)
        self.memory_budget = _int_arg("memory_budget", memory_budget, 1)
        self.context_budget = _int_arg("context_budget", context_budget, 0)
        self.max_retries = _int_arg("max_retries", max_retries, 0)
        self.window_size = _int_arg("window_size", window_size, 1)
        self.overlap = _int_arg("overlap", overlap, 0, self.window_size - 1)
        self.task: dict = {}
        self._reset_progress()

    # ------------------------------------------------------------------ task generation
    def generate(self, seed: Optional[int]) -> dict:
        """The task of ``seed``: the user's preferences and the subtasks (domain, slots stated in its request)."""
        rng = np.random.default_rng([0 if seed is None else abs(int(seed)), 14])
        prefs = {s: vals[int(rng.integers(len(vals)))] for s, vals in PREFS.items()}
        names = list(DOMAINS)
        domains = [names[int(rng.integers(len(names)))] for _ in range(self.num_subtasks)]
        reveal_at = {}
        for s in PREFS:
            first = next((k for k, d in enumerate(domains) if s in DOMAINS[d][1]), self.num_subtasks - 1)
            reveal_at[s] = int(rng.integers(first + 1))
        subtasks = [{"domain": d, "reveal": [s for s in PREFS if reveal_at[s] == k]} for k, d in enumerate(domains)]
        return {"prefs": prefs, "subtasks": subtasks}

    def _check_task(self, task) -> dict:
        if not isinstance(task, dict) or "prefs" not in task or "subtasks" not in task:
            raise TypeError("VitaPersonalEnv.reset: `task` must be a dict with 'prefs' and 'subtasks'")
        _check_entries(dict(task["prefs"]))
        if set(task["prefs"]) != set(PREFS):
            raise ValueError(f"VitaPersonalEnv.reset: task['prefs'] must give every slot {list(PREFS)}")
        if not task["subtasks"]:
            raise ValueError("VitaPersonalEnv.reset: task['subtasks'] is empty")
        for st in task["subtasks"]:
            if st.get("domain") not in DOMAINS or any(s not in PREFS for s in st.get("reveal", [])):
                raise ValueError(f"VitaPersonalEnv.reset: bad subtask {st!r} (domain in {list(DOMAINS)}, "
                                 f"reveal a list of slots)")
        return task

    # ------------------------------------------------------------------ episode
    def _reset_progress(self) -> None:
        self.k = 0  # current subtask
        self.phase = "act"  # "act" | "memory" | "done"
        self.retries = 0
        self.note: dict[str, str] = {}  # the rewrite backend's memory
        self.dialogues: list[list[tuple[str, str]]] = []  # per subtask: (role, text), judged
        self.contexts: list[str] = []  # the context each subtask was opened with
        self.memories: list[str] = []  # the memory part of it (what the backend carried; "" = nothing)
        self.failed: dict[int, str] = {}  # subtask -> failure reason (off_script)
        self.errors: list[dict] = []
        self.truncated_entries = 0
        self.reason: Optional[str] = None

    def reset(self, seed: Optional[int] = None, task: Any = None) -> tuple[list[Message], dict]:
        self.task = self._check_task(self.generate(seed) if task is None else task)
        self._reset_progress()
        return [Message("user", self._open(0))], {"task": self.task, "memory": self.memory_backend}

    @property
    def n(self) -> int:
        return len(self.task["subtasks"])

    def request(self, k: int) -> str:
        st = self.task["subtasks"][k]
        reveals = [_REVEAL.format(slot=s, value=self.task["prefs"][s]) for s in st["reveal"]]
        return " ".join([DOMAINS[st["domain"]][0], *reveals])

    def rubric(self, k: int) -> list[tuple[str, str]]:
        return [(s, self.task["prefs"][s]) for s in DOMAINS[self.task["subtasks"][k]["domain"]][1]]

    def revealed_at(self, slot: str) -> Optional[int]:
        return next((k for k, st in enumerate(self.task["subtasks"]) if slot in st["reveal"]), None)

    def memory_text(self, k: int) -> str:
        """What the backend carries into subtask ``k`` (``""``: nothing)."""
        if self.memory_backend == "rewrite":
            return format_memory(self.note)
        if self.memory_backend == "full_context":
            lines = [f"{role}: {text}" for d in self.dialogues[:k] for role, text in d]
            return truncate_head("\n".join(lines), self.context_budget)
        return ""

    def _open(self, k: int) -> str:
        mem = self.memory_text(k)
        if self.memory_backend == "full_context":
            ctx = (mem + "\n" if mem else "") + f"user: {self.request(k)}"
        else:
            ctx = f"mem: {mem or '-'}\nuser: {self.request(k)}"
        self.k, self.phase, self.retries = k, "act", 0
        self.dialogues.append([("user", self.request(k))])
        self.contexts.append(ctx)
        self.memories.append(mem)
        return ctx

    def _next(self, info: Optional[dict] = None) -> StepResult:
        """Close the current subtask (and its memory note): open the next one (context rewrite) or end."""
        if self.k + 1 >= self.n:
            self.phase, self.reason = "done", "completed"
            return StepResult(terminated=True, info={"reason": "completed", **(info or {})})
        return StepResult(rewrite=[Message("user", self._open(self.k + 1))], info=info or {})

    def _after_action(self) -> StepResult:
        if self.memory_backend == "rewrite" and self.k + 1 < self.n:
            self.phase, self.retries = "memory", 0
            return StepResult(messages=[Message("user", MEMORY_PROMPT)])
        return self._next()

    def step(self, turn: Message) -> StepResult:
        text = turn.content if isinstance(turn, Message) else turn
        if not isinstance(text, str):
            raise TypeError(f"VitaPersonalEnv.step: `turn` must be a Message or str; got {type(turn).__name__}")
        if self.phase == "done" or not self.task:
            self.errors.append({"subtask": self.k, "phase": "done", "error": "turn after the episode ended"})
            return StepResult(terminated=True, info={"reason": "turn after the episode ended"})
        if self.phase == "act":
            self.dialogues[self.k].append(("agent", text))
            try:
                parse_action(text)
            except ValueError as e:
                self.errors.append({"subtask": self.k, "phase": "act", "error": str(e)})
                self.retries += 1
                if self.retries > self.max_retries:
                    self.failed[self.k] = "off_script"
                    return self._after_action()
                self.dialogues[self.k].append(("user", ACTION_ERROR))
                return StepResult(messages=[Message("user", ACTION_ERROR)], info={"error": str(e)})
            return self._after_action()
        try:  # memory phase (rewrite backend)
            note = parse_note(text)
        except ValueError as e:
            self.errors.append({"subtask": self.k, "phase": "memory", "error": str(e)})
            self.retries += 1
            if self.retries > self.max_retries:
                self.note = {}
                return self._next({"reason": "malformed_memory"})
            return StepResult(messages=[Message("user", MEMORY_ERROR)], info={"error": str(e)})
        if len(note) > self.memory_budget:
            self.truncated_entries += len(note) - self.memory_budget
            note = dict(list(note.items())[:self.memory_budget])
        self.note = note
        return self._next()

    # ------------------------------------------------------------------ judging
    def subtask_results(self) -> list[dict]:
        out = []
        for k in range(self.n):
            rubric = self.rubric(k)
            carried = [s for s, _ in rubric if (self.revealed_at(s) or 0) < k]
            if k >= len(self.dialogues):
                out.append({"subtask": k, "success": 0.0, "rubric_score": 0.0, "reason": "not_reached",
                            "carried": carried, "items": [], "windows": 0})
                continue
            items, nwin = judge_subtask(self.dialogues[k], rubric, self.window_size, self.overlap)
            score = sum(i["met"] for i in items) / len(items)
            ok = bool(items) and all(i["met"] for i in items) and k not in self.failed
            acted = any(role == "agent" for role, _ in self.dialogues[k])
            reason = self.failed.get(k) or ("met" if ok else ("rubric" if acted else "no_action"))
            out.append({"subtask": k, "success": float(ok), "rubric_score": float(score), "reason": reason,
                        "carried": carried, "items": items, "windows": nwin,
                        "memory_empty": not self.memories[k]})
        return out

    def verify(self, trajectory=None) -> Verdict:
        res = self.subtask_results()
        n = max(self.n, 1)
        succ = [r["success"] for r in res]
        carried = [r["success"] for r in res if r["carried"]]
        comps = {"success": sum(succ) / n, "rubric_score": sum(r["rubric_score"] for r in res) / n,
                 "carried_success": float(np.mean(carried)) if carried else 0.0,
                 "format_ok": float(not self.errors),
                 **{f"success_at_{k}": s for k, s in enumerate(succ)}}
        info = {"reason": self.reason or "incomplete", "subtasks": res, "errors": list(self.errors),
                "memory": self.memory_backend, "truncated_entries": self.truncated_entries}
        return Verdict(reward=comps["success"], components=comps, info=info)

    def state(self) -> dict:
        return {"task": self.task, "k": self.k, "phase": self.phase, "note": self.note,
                "dialogues": self.dialogues, "failed": self.failed}

    # ------------------------------------------------------------------ demonstrations
    def demonstration(self, messages: Sequence[Message] = ()) -> Optional[str]:
        """The scripted turn of a perfect reader of its context: act with every preference the context shows (a slot
        it does not show: the slot's first value -- a guess), or write every preference known (the note, then the
        ones stated in this subtask; the most recent ``memory_budget`` when over budget)."""
        if self.phase == "done" or not self.task:
            return None
        seen = visible_prefs(self.contexts[self.k])
        if self.phase == "act":
            act = {s: seen.get(s, PREFS[s][0]) for s, _ in self.rubric(self.k)}
            return f"<action> {format_memory(act)}</action>"
        keep = dict(list(seen.items())[-self.memory_budget:])
        body = format_memory(keep)
        return f"<memory> {body}</memory>" if body else "<memory></memory>"

    def tokenizer_corpus(self, n: int = 16) -> list[str]:
        out = [t for s in range(n) for t in scripted_texts(self, 10**7 + s)]
        for s, vals in PREFS.items():
            for v in vals:
                out += [_REVEAL.format(slot=s, value=v), f"<action> {s} {v}</action>", f"<memory> {s} {v}</memory>",
                        f"user: x\nagent: <action> {s} {v}</action>"]
        out += [d[0] for d in DOMAINS.values()] + [ACTION_ERROR, MEMORY_ERROR, MEMORY_PROMPT, "mem: -"]
        self._reset_progress()
        self.task = {}
        return out
