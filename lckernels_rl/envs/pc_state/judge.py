"""Two judges of a finished ``pc_state`` trajectory, and their evaluation on scripted, labelled trajectories.

AJ-Bench (Shi et al., arXiv:2604.18240) -- VERIFIED from its abstract: an *Agent-as-a-Judge* actively interacts with
the environment and its tools to acquire verifiable evidence (information acquisition, state verification, process
verification), and is compared with LLM-as-a-Judge baselines that only read the trajectory; judges are scored
against annotated trajectories.  INFERRED (paper body / code at aj-bench.github.io not read): everything concrete
below -- the two rule-based judges, the trajectory kinds, the metric (precision / recall / F1 of the "success" label).

* :class:`TranscriptJudge` (the LLM-as-a-Judge stand-in: sees only the messages): success when the final answer
  claims completion (contains ``done``) and the transcript holds at least one write-tool call answered without an
  error.
* :class:`AgentJudge` (sees the messages *and* may query the final state, read-only): reads the goal from the prompt
  (the five command forms of :mod:`.tasks`), issues read-only tool calls (``ls`` / ``cat`` / ``cal`` / ``note``)
  through the agent layer's :func:`run_tool_calls` on a copy of the final state -- the write tools are not in its
  table, so a write is impossible -- and decides from what it read; the final answer's claim is ignored.

Both judges are **rule-based scripted policies**, not a trained policy of the library: the library's policies are
tiny models trained from scratch on short command strings and cannot read free-form transcripts, and a fixed rule
isolates what the comparison is about -- *which evidence* the judge has (transcript vs state) -- from judge skill.

:func:`scripted_trajectories` runs, for each task, trajectories whose labels are fixed by construction:
``solved`` (reference + ``done``: 1), ``quiet`` (reference + ``ok``, no claim: 1), ``claim_only`` (``done``, no
action: 0), ``wrong`` (a write with a wrong target/value + ``done``: 0), ``failed`` (a write that errors + ``done``:
0), ``undone`` (reference, then its undo + ``done``: 0), and for ``mv`` tasks ``fake_mv`` (write the new name with
other content, delete the old + ``done``: 0 -- the content was lost; a presence-only state check misses it),
``gave_up`` (no action, ``cannot``: 0).  Every negative but ``gave_up`` is a false success claim.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional, Sequence

from lckernels_rl.agents.tools import run_tool_calls
from lckernels_rl.agents.trajectory import Trajectory
from lckernels_rl.agents.types import Message, ToolCall

from .state import PCState
from .tasks import CLAIM_TEXT, Task
from .tools import DAYS, WRITE_TOOLS, make_tools

__all__ = ["JudgeResult", "TranscriptJudge", "AgentJudge", "ScriptedExample", "scripted_trajectories",
           "judge_scores", "evaluate_judges", "parse_goal"]


@dataclass
class JudgeResult:
    success: bool
    reason: str
    queries: list = field(default_factory=list)  # (call text, tool output) of the agent judge


def _final_answer(messages: Sequence[Message]) -> str:
    last = messages[-1] if messages else None
    return last.content.strip() if last is not None and last.role == "assistant" and not last.tool_calls else ""


class TranscriptJudge:
    """Success from the transcript only: a completion claim plus one successful write call."""

    def judge(self, messages: Sequence[Message], state: Optional[PCState] = None) -> JudgeResult:
        if not isinstance(messages, (list, tuple)):
            raise TypeError(f"TranscriptJudge.judge: `messages` must be a list of Message; got "
                            f"{type(messages).__name__}")
        claimed = CLAIM_TEXT in _final_answer(messages).lower()
        writes = [m for m in messages if m.role == "tool" and m.name in WRITE_TOOLS and not m.is_error]
        if not claimed:
            return JudgeResult(False, "no completion claim")
        if not writes:
            return JudgeResult(False, "claims completion but no successful write in the transcript")
        return JudgeResult(True, f"claims completion after {len(writes)} successful write(s)")


_GOALS = [
    ("mv", re.compile(r"^mv (\S+) (\S+)$")),
    ("rm", re.compile(r"^rm (\S+)$")),
    ("book", re.compile(r"^book (\S+) (d\d)$")),
    ("cancel", re.compile(r"^cancel (d\d)$")),
    ("save", re.compile(r"^note (\S+) to (\S+)$")),
]


def parse_goal(prompt: str) -> Optional[tuple[str, tuple[str, ...]]]:
    """``(kind, fields)`` of a task prompt, ``None`` when it is none of the command forms."""
    for kind, rx in _GOALS:
        m = rx.match(prompt.strip())
        if m:
            return kind, m.groups()
    return None


class AgentJudge:
    """Success from the final state, queried with read-only tools (the prompt gives the goal)."""

    def judge(self, messages: Sequence[Message], state: PCState) -> JudgeResult:
        if not isinstance(state, PCState):
            raise TypeError(f"AgentJudge.judge: `state` must be a PCState; got {type(state).__name__}")
        prompt = next((m.content for m in messages if m.role == "user"), "")
        goal = parse_goal(prompt)
        if goal is None:
            return JudgeResult(False, f"cannot read the task from {prompt!r}")
        view = state.copy()  # the judge's tools act on a copy; they are read-only anyway
        tools = make_tools(lambda: view, read_only=True)
        queries: list = []

        def ask(name: str, **args) -> tuple[str, bool]:
            call = ToolCall(id=f"judge_{len(queries)}", name=name, arguments=args, raw=name)
            out = run_tool_calls(tools, [call], concurrent=False)[0]
            queries.append((f"{name}({args})", out.content))
            return out.content, out.is_error

        kind, f = goal
        if kind in ("mv", "rm"):
            listing = set(ask("ls")[0].split())
            ok = (f[1] in listing and f[0] not in listing) if kind == "mv" else f[0] not in listing
        elif kind in ("book", "cancel"):
            events = [e.split() for e in ask("cal")[0].split(", ") if e != "(none)"]
            ok = [f[0], f[1]] in events if kind == "book" else all(e[1] != f[0] for e in events)
        else:  # save
            text, err1 = ask("note", title=f[0])
            got, err2 = ask("cat", path=f[1])
            ok = not err1 and not err2 and got == text
        return JudgeResult(bool(ok), f"state check for {kind}: {'pass' if ok else 'fail'}", queries)


# ------------------------------------------------------------------------------------------------ scripted data


@dataclass
class ScriptedExample:
    kind: str
    task: Task
    trajectory: Trajectory
    final_state: PCState
    label: bool


def _wrong(task: Task) -> list:
    g, init = task.goal, task.initial
    if g["kind"] == "mv":
        return [("mv", {"src": g["src"], "dst": "zz.txt"})]
    if g["kind"] == "rm":
        other = sorted(p for p in init["files"] if p != g["path"])[0]
        return [("rm", {"path": other})]
    if g["kind"] == "book":
        return [("book", {"title": g["title"], "day": next(d for d in DAYS if d != g["day"])})]
    if g["kind"] == "cancel":
        other = sorted(t for t, d in init["calendar"].items() if d != g["day"])[0]
        return [("unbook", {"title": other})]
    return [("write", {"path": g["dst"], "text": "zz"})]


def _undo(task: Task) -> list:
    g, init = task.goal, task.initial
    if g["kind"] == "mv":
        return [("mv", {"src": g["dst"], "dst": g["src"]})]
    if g["kind"] == "rm":
        return [("write", {"path": g["path"], "text": init["files"][g["path"]]})]
    if g["kind"] == "book":
        return [("unbook", {"title": g["title"]})]
    if g["kind"] == "cancel":
        title = next(t for t, d in init["calendar"].items() if d == g["day"])
        return [("book", {"title": title, "day": g["day"]})]
    return [("rm", {"path": g["dst"]})]


def _scripts(task: Task) -> list[tuple[str, list, str, bool]]:
    ref = [list(t) for t in task.reference]
    out = [("solved", ref, CLAIM_TEXT, True), ("quiet", ref, "ok", True), ("claim_only", [], CLAIM_TEXT, False),
           ("wrong", [_wrong(task)], CLAIM_TEXT, False),
           ("failed", [[("rm", {"path": "zz.txt"})]], CLAIM_TEXT, False),
           ("undone", ref + [_undo(task)], CLAIM_TEXT, False), ("gave_up", [], "cannot", False)]
    if task.goal["kind"] == "mv":
        out.append(("fake_mv", [[("write", {"path": task.goal["dst"], "text": "zz"}),
                                 ("rm", {"path": task.goal["src"]})]], CLAIM_TEXT, False))
    return out


def run_script(env, task: Task, turns: list, answer: str) -> Trajectory:
    """Step ``env`` (a :class:`~.env.PCStateEnv`) through scripted call turns then ``answer``; the trajectory."""
    msgs, _ = env.reset(task=task)
    traj = Trajectory(messages=list(msgs), stop_reason="env_done", task=task)
    for k, calls in enumerate(turns):
        text = env._parser.format_calls([(n, dict(a)) for n, a in calls])
        turn = Message("assistant", text, tool_calls=env._parser.parse(text, turn=k).calls)
        traj.messages.append(turn)
        traj.messages.extend(env.step(turn).messages)
    final = Message("assistant", answer)
    traj.messages.append(final)
    env.step(final)
    return traj


def scripted_trajectories(tasks: Sequence[Task]) -> list[ScriptedExample]:
    """The labelled scripted trajectories of ``tasks`` (see the module docstring)."""
    from .env import PCStateEnv

    env = PCStateEnv()
    out = []
    for task in tasks:
        for kind, turns, answer, label in _scripts(task):
            traj = run_script(env, task, turns, answer)
            out.append(ScriptedExample(kind, task, traj, env.pc.copy(), label))
    return out


def judge_scores(preds: Sequence[bool], labels: Sequence[bool]) -> dict:
    """Precision / recall / F1 of the positive ("success") label, with the counts (0.0 where undefined)."""
    if len(preds) != len(labels):
        raise ValueError(f"judge_scores: `preds` ({len(preds)}) and `labels` ({len(labels)}) differ in length")
    tp = sum(p and y for p, y in zip(preds, labels))
    fp = sum(p and not y for p, y in zip(preds, labels))
    fn = sum(y and not p for p, y in zip(preds, labels))
    tn = len(preds) - tp - fp - fn
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {"precision": prec, "recall": rec, "f1": f1, "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def evaluate_judges(examples: Sequence[ScriptedExample]) -> dict:
    """``{"transcript": scores, "agent": scores}`` of both judges on ``examples``."""
    labels = [e.label for e in examples]
    tj, aj = TranscriptJudge(), AgentJudge()
    return {"transcript": judge_scores([tj.judge(e.trajectory.messages).success for e in examples], labels),
            "agent": judge_scores([aj.judge(e.trajectory.messages, e.final_state).success for e in examples], labels)}
