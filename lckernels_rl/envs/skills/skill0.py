"""``skill0``: tasks with in-context skill files, and the SKILL0 curriculum that withdraws them.

Paper: SKILL0 / SkillZero (ZJU-REAL), code github.com/ZJU-REAL/SkillZero.  The agent first trains with skill files
in its context; every ``test_freq`` steps validation runs with and without the skills, files whose helpfulness
``delta = success(with) - success(without)`` is negative are dropped, the rest ranked by ``delta`` and the top
``max_set - 1`` kept plus ``general_skills``; ``max_set`` follows a step schedule ending at 0 (zero-shot).

Source status -- VERIFIED in ZJU-REAL/SkillZero ``agent_system/environments/curriculum_skill_manager.py`` (commit
``08f06aa``, read from the fetched mirror):

* ``max_set_schedule`` (docstring example ``[6, 3, 0]``), phases of equal length:
  ``validations_per_phase = (total_steps // test_freq) // len(schedule)``, phase of a step
  ``min(((step - 1) // test_freq) // validations_per_phase, len(schedule) - 1)``; the script asserts that
  ``len(schedule)`` divides ``total_steps // test_freq`` (here: a ``ValueError``);
* per-task deltas are averaged per skill file (``task_to_skill``); files with ``delta < 0`` are dropped;
  ``general_skills`` is never ranked and always kept unless ``max_set == 0`` (then no skills at all); the others are
  sorted by ``delta`` descending and the top ``max_set - 1`` kept (``delta == 0`` is kept).
* INFERRED: the ``linear`` alternative (``max_set`` from ``schedule[0]`` to 0 linearly over the validations); the
  toy tasks (below); driving the curriculum from the trainer's callback hook (:class:`SkillWithdrawalCallback`,
  ``callbacks: [{target: skill0_withdrawal}]``: after every ``test_freq``-th RL step a greedy validation with and
  without the active skills, then ``trainer.set_env_args(active=...)``; the released code validates on its own
  validation set, ours on the trainer's evaluation tasks).

Task (generated, seeded): ``task <verb> <object>``; the answer is a 3-word macro of the family (drawn from
``skill_seed``); a skill file per verb (``<verb>_skills``: the macros of its objects) and ``general_skills`` (the
answer format).  The prompt carries the active skill files' lines; the answer is ``<answer>a b c</answer>`` (reward 1
exactly when right; a malformed answer is reward 0 with the reason in ``Verdict.info``).
"""

from __future__ import annotations

import re
from typing import Any, Callable, ClassVar, Literal, Optional, Sequence

import numpy as np

from lckernels_rl.agents.types import Message

from lckernels_rl.train.callbacks import TrainerCallback

from ..tool_env import StepResult, ToolEnv, Verdict
from .skill1 import ACTIONS, OBJECTS, VERBS, _macro

__all__ = ["Skill0Env", "SkillWithdrawalSchedule", "SkillWithdrawalCallback", "skill_files", "set_active_skills",
           "active_skills"]

GENERAL = "general_skills"
_ACTIVE: dict[str, Optional[list[str]]] = {}


def skill_files(skill_seed: int = 0) -> tuple[dict[str, list[str]], dict[str, str]]:
    """``(files, truth)``: ``files[name]`` the lines of each skill file, ``truth[family]`` the gold macro."""
    rng = np.random.default_rng(skill_seed)
    truth = {f"{v} {o}": _macro(rng) for v in VERBS for o in OBJECTS}
    files = {GENERAL: ["answer as <answer>a b c</answer>"]}
    for v in VERBS:
        files[f"{v}_skills"] = [f"{v} {o}: {truth[f'{v} {o}']}" for o in OBJECTS]
    return files, truth


def set_active_skills(schedule_id: str, names: Optional[Sequence[str]]) -> None:
    """Make ``names`` the skill files every :class:`Skill0Env` of ``schedule_id`` shows (``None``: all)."""
    _ACTIVE[schedule_id] = None if names is None else list(names)


def active_skills(schedule_id: str) -> Optional[list[str]]:
    return _ACTIVE.get(schedule_id)


class Skill0Env(ToolEnv):
    """One-turn task with the active skill files in the prompt.

    Args:
        skill_seed: seeds the macros.
        skills: ``"schedule"`` (the files :func:`set_active_skills` set for ``schedule_id``; all until then),
            ``"all"`` (always on), ``"none"`` (zero-shot).
        schedule_id: the curriculum these envs follow (a process-wide registry, :func:`set_active_skills`).
        active: with ``skills="schedule"``, the active skill files themselves (``None``: the ``schedule_id``
            registry's); what :class:`SkillWithdrawalCallback` sets through ``Trainer.set_env_args``.
    """

    name: ClassVar[str] = "skill0"
    blocking = False
    protocol_tokens: ClassVar[tuple[str, ...]] = ("<answer>", "</answer>", "<skills>", "</skills>")
    alphabet: ClassVar[str] = "abcdefghijklmnopqrstuvwxyz0123456789 .:;_<>/\n"  # ";" separates the skills

    def __init__(self, skill_seed: int = 0, skills: Literal["schedule", "all", "none"] = "schedule",
                 schedule_id: str = "default", active: Optional[Sequence[str]] = None):
        if isinstance(skill_seed, bool) or not isinstance(skill_seed, int) or skill_seed < 0:
            raise ValueError(f"Skill0Env: `skill_seed` must be an int >= 0; got {skill_seed!r}")
        if skills not in ("schedule", "all", "none"):
            raise ValueError(f"Skill0Env: `skills` must be 'schedule', 'all' or 'none'; got {skills!r}")
        self.files, self.truth = skill_files(skill_seed)
        if active is not None:
            if isinstance(active, str) or not all(isinstance(n, str) for n in active):
                raise ValueError(f"Skill0Env: `active` must be a list of skill-file names or None; got {active!r}")
            unknown = sorted(set(active) - set(self.files))
            if unknown:
                raise ValueError(f"Skill0Env: `active` names unknown skill files {unknown}; valid: {sorted(self.files)}")
        self.skills, self.schedule_id = skills, str(schedule_id)
        self.active = None if active is None else list(active)
        self.family, self.shown = "", []
        self.verdict: Optional[Verdict] = None

    def _names(self) -> list[str]:
        if self.skills == "none":
            return []
        if self.skills == "all":
            return list(self.files)
        act = self.active if self.active is not None else active_skills(self.schedule_id)
        return list(self.files) if act is None else [n for n in act if n in self.files]

    def reset(self, seed: Optional[int] = None, task: Any = None) -> tuple[list[Message], dict]:
        fams = list(self.truth)
        if task is None:
            task = fams[int(np.random.default_rng(seed).integers(len(fams)))]
        if task not in self.truth:
            raise ValueError(f"Skill0Env.reset: `task` must be one of {fams}; got {task!r}")
        self.family, self.verdict = task, None
        # only the file of the task's verb is relevant; show it (and general) when active -- keeps contexts short
        verb_file = f"{task.split()[0]}_skills"
        self.shown = [n for n in self._names() if n in (GENERAL, verb_file)]
        lines = [ln for n in self.shown for ln in self.files[n]]
        prompt = (f"<skills>{' ; '.join(lines)}</skills> " if lines else "") + f"task {task}"
        return [Message("user", prompt)], {"answer": self.truth[task], "task": task, "skills": self.shown}

    def answer(self, turn: Message) -> StepResult:
        m = re.fullmatch(r"\s*<answer>([^<>]*)</answer>\s*", turn.content or "")
        if m is None:
            self.verdict = Verdict(0.0, {"correct": 0.0, "malformed": 1.0},
                                   info={"reason": "malformed: expected <answer>a b c</answer>"})
        else:
            ok = float(" ".join(m.group(1).split()) == self.truth[self.family])
            self.verdict = Verdict(ok, {"correct": ok, "malformed": 0.0}, info={"reason": ""})
        self.verdict.components[f"{self.family.split()[0]}_success"] = self.verdict.reward  # per task type
        return StepResult(terminated=True, info=dict(self.verdict.info))

    def verify(self, trajectory) -> Verdict:
        if self.verdict is None:
            return Verdict(0.0, {"correct": 0.0, "malformed": 0.0},
                           info={"reason": f"unfinished: {getattr(trajectory, 'stop_reason', '?')}"})
        return self.verdict

    def state(self) -> dict:
        return {"family": self.family, "shown": self.shown}

    def demonstration(self, messages: Sequence[Message]) -> Optional[str]:
        return f"<answer>{self.truth[self.family]}</answer>"

    def tokenizer_corpus(self, n: int = 64) -> list[str]:
        out = [" ".join(VERBS + OBJECTS + ACTIONS), "task ; : _skills general_skills"]
        out += [ln for f in self.files.values() for ln in f]
        out += [f"<answer>{m}</answer>" for m in self.truth.values()] + ["<skills>", "</skills>"]
        shadow = Skill0Env(skill_seed=0, skills="all")
        shadow.files, shadow.truth = self.files, self.truth
        for s in range(n):
            msgs, _ = shadow.reset(seed=10**7 + s)
            out += [msgs[0].content, shadow.demonstration(msgs)]
        return out


class SkillWithdrawalSchedule:
    """SKILL0's skill-withdrawal curriculum, driven by :meth:`on_step`.

    Args:
        skill_names: the skill files (``general_skills`` among them).
        task_to_skill: task type -> the skill file it validates (per-task deltas are averaged per file).
        max_set_schedule: ``max_set`` per phase (released example ``[6, 3, 0]``).
        total_steps / test_freq: the run length and the validation period ``N``.
        mode: ``"released"`` (equal phases) or ``"linear"`` (``max_set`` falls linearly from ``schedule[0]`` to 0).
        schedule_id: the :class:`Skill0Env` group whose active skills it sets.

    Hook: the trainer calls ``on_step(step, evaluate_fn)`` after each RL step (1-based); on every ``test_freq``-th
    step it calls ``evaluate_fn(skill_names_or_None) -> {task_type: success}`` twice (with the active skills, without
    any), withdraws by the rule and returns the new active set (else ``None``).
    """

    def __init__(self, skill_names: Sequence[str], task_to_skill: dict, max_set_schedule: Sequence[int] = (6, 3, 0),
                 total_steps: int = 150, test_freq: int = 10, mode: Literal["released", "linear"] = "released",
                 schedule_id: str = "default"):
        if GENERAL not in skill_names:
            raise ValueError(f"SkillWithdrawalSchedule: `skill_names` must contain {GENERAL!r}")
        for n, v in (("total_steps", total_steps), ("test_freq", test_freq)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"SkillWithdrawalSchedule: `{n}` must be an int >= 1; got {v!r}")
        sched = [int(x) for x in max_set_schedule]
        if not sched or any(x < 0 for x in sched):
            raise ValueError(f"SkillWithdrawalSchedule: `max_set_schedule` must be non-empty ints >= 0; got {sched}")
        if mode not in ("released", "linear"):
            raise ValueError(f"SkillWithdrawalSchedule: `mode` must be 'released' or 'linear'; got {mode!r}")
        nval = total_steps // test_freq
        if mode == "released" and (nval == 0 or nval % len(sched)):
            raise ValueError(f"SkillWithdrawalSchedule: len(max_set_schedule)={len(sched)} must divide "
                             f"total_steps // test_freq = {nval}")
        self.skill_names, self.task_to_skill = list(skill_names), dict(task_to_skill)
        self.schedule, self.total_steps, self.test_freq, self.mode = sched, total_steps, test_freq, mode
        self.schedule_id = schedule_id
        self.active: list[str] = list(self.skill_names)
        self.history: list[dict] = []
        set_active_skills(schedule_id, self.active)

    def max_set(self, step: int) -> int:
        """``max_set`` in force at validation step ``step`` (1-based)."""
        nval = self.total_steps // self.test_freq
        vidx = (step - 1) // self.test_freq
        if self.mode == "linear":
            if nval <= 1:
                return 0
            return int(round(self.schedule[0] * (1 - min(vidx, nval - 1) / (nval - 1))))
        per = nval // len(self.schedule)
        return self.schedule[min(vidx // per, len(self.schedule) - 1)]

    def withdraw(self, deltas: dict, max_set: int) -> list[str]:
        """Apply the released rule to per-task ``deltas`` (with - without) and return the new active set."""
        per_file: dict[str, list[float]] = {}
        for task, d in deltas.items():
            f = self.task_to_skill.get(task)
            if f is not None:
                per_file.setdefault(f, []).append(float(d))
        agg = {f: sum(v) / len(v) for f, v in per_file.items()}
        cands = sorted(((f, d) for f, d in agg.items() if d >= 0 and f != GENERAL), key=lambda x: -x[1])
        self.active = [] if max_set <= 0 else [GENERAL] + [f for f, _ in cands[:max_set - 1]]
        set_active_skills(self.schedule_id, self.active)
        return list(self.active)

    def on_step(self, step: int, evaluate_fn: Callable[[Optional[list]], dict]) -> Optional[list[str]]:
        if step < 1 or step % self.test_freq:
            return None
        with_s, without = evaluate_fn(list(self.active)), evaluate_fn(None)
        deltas = {t: with_s.get(t, 0.0) - without.get(t, 0.0) for t in set(with_s) | set(without)}
        ms = self.max_set(step)
        new = self.withdraw(deltas, ms)
        self.history.append({"step": step, "max_set": ms, "deltas": deltas, "active": new})
        return new


class SkillWithdrawalCallback(TrainerCallback):
    """SKILL0's curriculum driven by the trainer (``callbacks: [{target: skill0_withdrawal, args: {...}}]``).

    The training environments must be ``skill0`` with ``skills: schedule``.  After every ``test_freq``-th RL step it
    evaluates greedily on the trainer's evaluation tasks with the active skills and without any (per task type,
    the ``<verb>_success`` components), applies :class:`SkillWithdrawalSchedule`'s rule and sets the training
    environments' ``active`` files (``Trainer.set_env_args``).  ``total_steps`` defaults to ``rl.steps``.  Logged:
    ``skill0_max_set``, ``skill0_active`` (number of files) on validation steps.
    """

    def __init__(self, max_set_schedule: Sequence[int] = (6, 3, 0), test_freq: int = 10,
                 mode: Literal["released", "linear"] = "released", total_steps: Optional[int] = None):
        self.args = dict(max_set_schedule=list(max_set_schedule), test_freq=test_freq, mode=mode,
                         total_steps=total_steps)
        self.schedule: Optional[SkillWithdrawalSchedule] = None
        self._state: Optional[dict] = None

    def on_train_begin(self, trainer) -> None:
        if self.schedule is not None:
            return
        env = trainer.make_env()
        if not isinstance(env, Skill0Env) or env.skills != "schedule":
            raise ValueError("SkillWithdrawalCallback: task.env must be skill0 with env_args.skills: schedule; got "
                             f"{trainer.config.task.env!r} {trainer.config.task.env_args}")
        a = dict(self.args)
        a["total_steps"] = a["total_steps"] or trainer.config.rl.steps
        self.schedule = SkillWithdrawalSchedule(list(env.files), {v: f"{v}_skills" for v in VERBS},
                                                schedule_id=f"callback-{id(self)}", **a)
        if self._state is not None:
            self.schedule.active, self.schedule.history = list(self._state["active"]), list(self._state["history"])
        trainer.set_env_args(active=list(self.schedule.active))

    def _evaluate(self, trainer, names) -> dict:
        saved = dict(trainer.env_overrides["eval"])
        trainer.env_overrides["eval"] = {**saved, "skills": "schedule" if names else "none",
                                         "active": list(names or [])}
        try:
            trainer.evaluate()
        finally:
            trainer.env_overrides["eval"] = saved
        return {v: trainer.eval_components.get(f"{v}_success", 0.0) for v in VERBS}

    def on_step_end(self, trainer, metrics: dict) -> None:
        if metrics.get("phase") != "rl" or self.schedule is None:
            return
        rl_step = int(metrics["step"]) - trainer.config.sft.steps
        new = self.schedule.on_step(rl_step, lambda names: self._evaluate(trainer, names))
        if new is not None:
            trainer.set_env_args(active=new)
            metrics.update(skill0_max_set=self.schedule.history[-1]["max_set"], skill0_active=len(new))

    def state_dict(self) -> dict:
        if self.schedule is None:
            return {}
        return {"active": list(self.schedule.active), "history": list(self.schedule.history)}

    def load_state_dict(self, state: dict) -> None:
        self._state = dict(state) if state else None

