"""TopoCurate's RL task selection: score tasks by the topology of their rollouts, not by their pass rate alone.

TopoCurate (Yang et al., arXiv 2603.01714, "Modeling Interaction Topology for Tool-Use Agent Training").  VERIFIED from
the paper's abstract (the arXiv HTML; no code released -- "we will release the code and data soon"): multi-trial
rollouts of one task are projected into one graph by *merging equivalent action-observation states*; for RL, tasks with
*high error branch ratios and strategic heterogeneity* are selected, to raise the policy gradient's signal-to-noise
ratio where rewards are sparse (tasks of equal pass rate differ in how much they teach).  INFERRED here (the formulas
were not readable): the state equivalence, both scores and their combination, below.

* **State** of a step: the assistant turn's action and what the environment answered, canonicalised
  (:func:`canonical_step`: whitespace collapsed; tool calls by name and sorted arguments where they parsed, the raw
  text otherwise; tool/user answers in order).  Equal canonical steps are one node of the task's graph
  (:class:`TaskTopology`) whatever the history before them -- the quotient -- with an edge to the next step's node
  and, after a trajectory's last step, to its outcome (success when ``reward >= success_threshold``).
* **Error branch ratio** (EBR): among the nodes with two or more distinct successors (branching states), the share
  from which at least one trajectory went on to succeed and at least one to fail; 0 when nothing branches.  A task
  whose rollouts split at a shared state is one where a decision made there decides the outcome -- the advantage
  then credits that decision.
* **Strategic heterogeneity**: distinct successful paths (node sequences) over successful trajectories, times the
  share of trajectories that succeeded at all (0 without a success): several ways to win, and wins that happen.
* **Score** = EBR + ``variety_weight`` x heterogeneity (default weight 1); :func:`select_tasks` keeps the top ``k``
  (ties: lower task index first).  :func:`match_on_pass_rate` draws, for comparison, tasks with the same pass rates
  as a selection (the paper's baseline selects by pass rate).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Hashable, Iterable, Mapping, Sequence

import numpy as np

__all__ = ["canonical_step", "trajectory_steps", "TaskTopology", "topology_scores", "select_tasks",
           "match_on_pass_rate"]

SUCCESS, FAILURE = "<success>", "<failure>"
_WS = re.compile(r"\s+")


def _norm(text: str) -> str:
    return _WS.sub(" ", text).strip()


def canonical_step(action, observations: Sequence = ()) -> str:
    """The canonical text of one step: the assistant ``action`` (a :class:`~lckernels_rl.agents.Message` or a str)
    and the environment's answers to it (messages or strs).  Parsed tool calls count by name and sorted arguments
    (two spellings of one call are one state); unparsed ones by their raw text."""
    if isinstance(action, str):
        act = _norm(action)
    elif hasattr(action, "content"):
        calls = getattr(action, "tool_calls", None) or []
        if calls:
            act = " ; ".join(
                f"{c.name}({json.dumps(c.arguments, sort_keys=True, default=str)})" if c.ok else f"!{_norm(c.raw)}"
                for c in calls)
        else:
            act = _norm(action.content)
    else:
        raise TypeError(f"canonical_step: `action` must be a str or a Message; got {type(action).__name__}")
    obs = []
    for o in observations:
        if isinstance(o, str):
            obs.append(_norm(o))
        elif hasattr(o, "content"):
            obs.append(("!" if getattr(o, "is_error", False) else "") + _norm(o.content))
        else:
            raise TypeError(f"canonical_step: an observation must be a str or a Message; got {type(o).__name__}")
    return act + " => " + " | ".join(obs)


def trajectory_steps(messages: Sequence) -> list[str]:
    """The canonical steps of a conversation: each assistant message with the non-assistant messages after it (the
    opening prompt is the task's and is left out)."""
    steps: list[str] = []
    action, obs = None, []
    for m in messages:
        role = getattr(m, "role", None)
        if role is None:
            raise TypeError(f"trajectory_steps: expected messages with a `role`; got {type(m).__name__}")
        if role == "assistant":
            if action is not None:
                steps.append(canonical_step(action, obs))
            action, obs = m, []
        elif action is not None:
            obs.append(m)
    if action is not None:
        steps.append(canonical_step(action, obs))
    return steps


@dataclass
class TaskTopology:
    """The quotient graph of one task's rollouts (see the module docstring).

    Build it with :meth:`add` per trajectory (its canonical steps and its reward), then read :attr:`error_branch_ratio`,
    :attr:`heterogeneity`, :meth:`score`.
    """

    success_threshold: float = 1.0
    successors: dict[str, set] = field(default_factory=dict)     # node -> distinct next nodes / outcomes
    outcomes: dict[str, set] = field(default_factory=dict)       # node -> outcomes of the trajectories through it
    paths: list[tuple[tuple[str, ...], bool]] = field(default_factory=list)

    def add(self, steps: Sequence[str], reward: float) -> None:
        if not isinstance(steps, (list, tuple)) or not all(isinstance(s, str) for s in steps):
            raise TypeError("TaskTopology.add: `steps` must be a list of canonical step strings")
        ok = float(reward) >= self.success_threshold
        end = SUCCESS if ok else FAILURE
        nodes = ["<start>", *steps]
        for a, b in zip(nodes, [*nodes[1:], end]):
            self.successors.setdefault(a, set()).add(b)
        for n in nodes:
            self.outcomes.setdefault(n, set()).add(ok)
        self.paths.append((tuple(steps), ok))

    @property
    def pass_rate(self) -> float:
        return float(np.mean([ok for _, ok in self.paths])) if self.paths else 0.0

    @property
    def branching_nodes(self) -> list[str]:
        return [n for n, nxt in self.successors.items() if len(nxt) >= 2]

    @property
    def error_branch_ratio(self) -> float:
        branching = self.branching_nodes
        if not branching:
            return 0.0
        return sum(1 for n in branching if self.outcomes[n] == {True, False}) / len(branching)

    @property
    def heterogeneity(self) -> float:
        wins = [p for p, ok in self.paths if ok]
        if not wins:
            return 0.0
        return len(set(wins)) / len(wins) * (len(wins) / len(self.paths))

    def score(self, variety_weight: float = 1.0) -> float:
        return self.error_branch_ratio + float(variety_weight) * self.heterogeneity


def topology_scores(rollouts: Mapping[Hashable, Iterable], *, success_threshold: float = 1.0,
                    variety_weight: float = 1.0) -> dict:
    """Per task: ``{"score", "error_branch_ratio", "heterogeneity", "pass_rate", "n"}`` from its rollouts.

    ``rollouts[task]``: trajectories (objects with ``messages`` and ``reward``, e.g.
    :class:`~lckernels_rl.agents.Trajectory`) or ``(steps, reward)`` pairs with canonical steps already made."""
    if not isinstance(rollouts, Mapping):
        raise TypeError(f"topology_scores: `rollouts` must map task -> trajectories; got {type(rollouts).__name__}")
    out = {}
    for task, trajs in rollouts.items():
        topo = TaskTopology(success_threshold=success_threshold)
        for t in trajs:
            if isinstance(t, tuple) and len(t) == 2:
                topo.add(list(t[0]), t[1])
            elif hasattr(t, "messages") and hasattr(t, "reward"):
                topo.add(trajectory_steps(t.messages), t.reward)
            else:
                raise TypeError(f"topology_scores: task {task!r}: expected trajectories or (steps, reward) pairs; "
                                f"got {type(t).__name__}")
        if not topo.paths:
            raise ValueError(f"topology_scores: task {task!r} has no rollouts")
        out[task] = {"score": topo.score(variety_weight), "error_branch_ratio": topo.error_branch_ratio,
                     "heterogeneity": topo.heterogeneity, "pass_rate": topo.pass_rate, "n": len(topo.paths)}
    return out


def select_tasks(scores: Mapping[Hashable, Mapping], k: int, *, key: str = "score") -> list:
    """The ``k`` tasks with the highest ``scores[task][key]`` (ties: the order of ``scores``)."""
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= len(scores):
        raise ValueError(f"select_tasks: `k` must be an int in [0, {len(scores)}]; got {k!r}")
    order = sorted(range(len(scores)), key=lambda i: -float(list(scores.values())[i][key]))
    names = list(scores)
    return [names[i] for i in order[:k]]


def match_on_pass_rate(scores: Mapping[Hashable, Mapping], chosen: Sequence, rng: np.random.Generator,
                       *, exclude_chosen: bool = True) -> list:
    """For each chosen task, a different task with the nearest pass rate (drawn at random among the nearest; without
    replacement): the pass-rate-matched baseline of a selection."""
    pool = [t for t in scores if not (exclude_chosen and t in set(chosen))]
    out = []
    for c in chosen:
        if not pool:
            raise ValueError("match_on_pass_rate: not enough other tasks to match every chosen one")
        d = np.array([abs(scores[t]["pass_rate"] - scores[c]["pass_rate"]) for t in pool])
        nearest = np.flatnonzero(d == d.min())
        pick = pool[int(rng.choice(nearest))]
        out.append(pick)
        pool.remove(pick)
    return out
