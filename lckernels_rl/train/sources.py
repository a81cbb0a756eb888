"""Rollout sources: where the trainer's groups of :class:`~lckernels_rl.agents.TrainSample` s come from.

A source has ``next(step) -> RolloutGroups`` (``step``: the 0-based RL step) and ``state_dict`` /
``load_state_dict`` (what an exact resume needs).  Every sample of one group (one task) shares a ``group_id``; the
advantage estimator normalizes within it.

* :class:`EpisodeSource` -- the task pool, the budget allocator and the agent loop: the default.
* :class:`SelfVerificationSource` -- Self-Verify's schedule around another source: on verification steps the policy
  judges its own rollouts of the previous generation step (built by :class:`~lckernels_rl.objectives.SelfVerify`,
  which wraps the default source with it; the trainer does not know it exists).
* :class:`DemonstrationEngine` -- scripted turns from the environments' demonstrations, so the supervised warm-up
  runs through the same loop (same prompts, same token ledger) as RL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from lckernels_rl.agents.loop import Episode
from lckernels_rl.agents.trajectory import TrainSample, Trajectory
from lckernels_rl.agents.types import Message
from lckernels_rl.envs.tool_env import StepResult, ToolEnv, Verdict
from lckernels_rl.rollout.engine import GenerationRequest, ScriptedEngine

from .allocation import PromptPool, allocate_rollouts

__all__ = ["RolloutGroups", "SourceContext", "trainable_samples", "EpisodeSource", "SelfVerificationSource", "DemonstrationEngine",
           "VerificationEnv", "episode_metrics"]


@dataclass
class RolloutGroups:
    """One step's samples (flat, each group contiguous), the trajectories they came from with the group id of each,
    the per-task counts and the source's metrics."""

    samples: list[TrainSample]
    trajectories: list[Trajectory]
    counts: np.ndarray
    metrics: dict = field(default_factory=dict)
    group_ids: list = field(default_factory=list)

    @property
    def rewards(self) -> np.ndarray:
        return np.array([s.reward for s in self.samples], dtype=np.float64)


@dataclass
class SourceContext:
    """What a source may use: the RL config, the trainer's generator, and ``run(episodes) -> trajectories`` (the
    agent loop with the sampling engine)."""

    rl: Any
    rng: np.random.Generator
    run: Callable[[Sequence[Episode]], list[Trajectory]]


def episode_metrics(trajs: Sequence[Trajectory]) -> dict:
    """Counts over episodes: stop reasons, turns, tool calls / errors / parse errors per episode."""
    n = max(len(trajs), 1)
    out: dict[str, Any] = {}
    reasons: dict[str, int] = {}
    for t in trajs:
        reasons[t.stop_reason] = reasons.get(t.stop_reason, 0) + 1
    for r, c in sorted(reasons.items()):
        out[f"stop_{r}"] = c
    for key in ("turns", "tool_calls", "tool_errors", "parse_errors"):
        out[f"{key}_per_episode"] = sum(t.metrics.get(key, 0) for t in trajs) / n
    out["tool_call_rate"] = sum(1 for t in trajs if t.metrics.get("tool_calls", 0) > 0) / n
    out["episodes"] = len(trajs)
    return out


def trainable_samples(trajs: Sequence[Trajectory], group_ids: Sequence[Any]) -> tuple[list[TrainSample], int]:
    """The samples of ``trajs`` to train on, and how many episodes were left out: an episode that ended in ``error``
    (an environment or tool crash, not the policy's doing) is excluded -- training on it would credit the policy
    with the crash -- and counted (``excluded_error_episodes``); a branch with no sampled token has nothing to train."""
    out: list[TrainSample] = []
    excluded = 0
    for t, g in zip(trajs, group_ids):
        if t.stop_reason == "error":
            excluded += 1
            continue
        out.extend(s for s in t.to_samples(group_id=g) if s.num_sampled)
    return out, excluded


class EpisodeSource:
    """Pool tasks -> allocator counts -> episodes through the agent loop -> groups of samples.

    Args:
        make_env: a fresh environment per episode.
        pool: the training tasks and their statistics.
        ctx: the :class:`SourceContext`.
    """

    def __init__(self, make_env: Callable[[], ToolEnv], pool: PromptPool, ctx: SourceContext):
        self.make_env, self.pool, self.ctx = make_env, pool, ctx

    def next(self, step: int) -> RolloutGroups:
        rl = self.ctx.rl
        prompt_idx = self.pool.sample(self.ctx.rng, rl.prompts_per_step)
        seed = int(self.ctx.rng.integers(2**31))

        def sample(counts):
            index = [i for i, c in enumerate(counts) for _ in range(int(c))]
            trajs = self.ctx.run([Episode(self.make_env(), None, self.pool.seed(prompt_idx[i])) for i in index])
            return trajs, index, [t.reward for t in trajs]

        trajs, index, rewards, counts = allocate_rollouts(rl, self.pool, prompt_idx, seed, sample)
        ok = [k for k, t in enumerate(trajs) if t.stop_reason != "error"]  # a crash says nothing about the task
        self.pool.update(prompt_idx, [index[k] for k in ok], np.asarray([rewards[k] for k in ok]))
        order = sorted(range(len(trajs)), key=lambda k: index[k])  # groups contiguous, in prompt order
        kept_trajs = [trajs[k] for k in order]
        group_ids = [int(prompt_idx[index[k]]) for k in order]  # the task's pool index
        samples, excluded = trainable_samples(kept_trajs, group_ids)
        m = episode_metrics(kept_trajs)
        m["excluded_error_episodes"] = excluded
        return RolloutGroups(samples, kept_trajs, np.asarray(counts), m, group_ids)

    def state_dict(self) -> dict:
        return {"pool": self.pool.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.pool.load_state_dict(state["pool"])


class VerificationEnv(ToolEnv):
    """A single-turn episode judging one :class:`~lckernels_rl.objectives.self_verify.VerificationExample`: the
    prompt is the example's text, the reward ``reward_fn(answer, label)``."""

    name = "self_verification"

    def __init__(self, reward_fn: Callable[[str, str], float]):
        self.reward_fn = reward_fn
        self.example = None

    def reset(self, seed=None, task=None):
        if task is None:
            raise ValueError("VerificationEnv.reset: needs the verification example as `task`")
        self.example = task
        return [Message("user", task.prompt)], {"label": task.label}

    def answer(self, turn: Message) -> StepResult:
        return StepResult(reward=float(self.reward_fn(turn.content, self.example.label)), terminated=True)

    def verify(self, trajectory) -> Verdict:
        return Verdict(reward=float(sum(r for _, r in trajectory.step_rewards)))


class SelfVerificationSource:
    """Self-Verify's steps around ``base``: on the schedule's verification steps (when the previous generation step
    gave a usable example) the policy answers "Yes"/"No" on its own previous rollouts; other steps are ``base``'s.

    The examples come from ``objective.build_examples`` on the last generation step's groups (question = the task's
    prompt text, response = the decoded final assistant turn, label = reward > 0); the budget is split uniformly
    (at least one rollout per example).
    """

    def __init__(self, base: EpisodeSource, objective):
        self.base, self.objective = base, objective
        self.last_groups = None

    def next(self, step: int) -> RolloutGroups:
        if self.last_groups is not None and self.objective.schedule().is_verification_step(step):
            res = self._verification()
            if res is not None:
                return res
        res = self.base.next(step)
        self._remember(res)
        res.metrics["step_kind"] = "generation"
        return res

    def _remember(self, res: RolloutGroups) -> None:
        trajs = res.trajectories
        groups: dict[int, list[int]] = {}
        for k, g in enumerate(res.group_ids):
            groups.setdefault(g, []).append(k)
        final = [next((m.content for m in reversed(t.messages) if m.role == "assistant"), "") for t in trajs]
        self.last_groups = ([self.base.pool.prompts[g] for g in groups],
                            [[final[k] for k in ks] for ks in groups.values()],
                            [[bool(trajs[k].reward > 0) for k in ks] for ks in groups.values()])

    def _verification(self) -> Optional[RolloutGroups]:
        from lckernels_rl.budget import uniform_allocate

        ctx = self.base.ctx
        questions, responses, correct = self.last_groups
        examples = self.objective.build_examples(questions, responses, correct, seed=int(ctx.rng.integers(2**31)))
        if not examples:
            return None
        counts = uniform_allocate(ctx.rl.rollouts_per_step, len(examples), n_min=1,
                                  seed=int(ctx.rng.integers(2**31)))
        index = [i for i, c in enumerate(counts) for _ in range(int(c))]
        trajs = ctx.run([Episode(VerificationEnv(self.objective.reward), examples[i], None) for i in index])
        group_ids = [("verify", k) for k in index]
        samples, excluded = trainable_samples(trajs, group_ids)
        m = episode_metrics(trajs)
        m["excluded_error_episodes"] = excluded
        m["step_kind"] = "verification"
        return RolloutGroups(samples, trajs, np.asarray(counts), m, group_ids)

    def state_dict(self) -> dict:
        return {"base": self.base.state_dict(), "last_groups": self.last_groups}

    def load_state_dict(self, state: dict) -> None:
        self.base.load_state_dict(state["base"])
        self.last_groups = state["last_groups"]

    @property
    def pool(self):
        return self.base.pool


class DemonstrationEngine(ScriptedEngine):
    """An engine that answers each request with the demonstration of the episode's environment
    (``env.demonstration(messages)``), rendered as a sampled assistant turn (``renderer.assistant_ids``), log-prob 0.

    ``envs[i]`` is the environment of episode ``i`` of the batch being run (the loop's request key is
    ``(episode index, turn)``).  An environment without a demonstration for the conversation raises.
    """

    def __init__(self, envs: Sequence[ToolEnv], renderer, version: int = 0):
        envs = list(envs)

        def demonstrate(r: GenerationRequest) -> list[int]:
            env = envs[r.key[0]]
            text = env.demonstration(list(r.messages or ()))
            if text is None:
                raise ValueError(f"{type(env).__name__} has no demonstration for this conversation (turn "
                                 f"{r.key[1]})")
            return list(renderer.assistant_ids(text))

        super().__init__(demonstrate, stop_token_ids=renderer.stop_token_ids, version=version)
