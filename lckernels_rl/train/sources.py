"""Rollout sources: where the trainer's groups of :class:`~lckernels_rl.agents.TrainSample` s come from.

A source has ``next(step) -> RolloutGroups`` (``step``: the 0-based RL step) and ``state_dict`` /
``load_state_dict`` (what an exact resume needs).  Every sample of one group (one task) shares a ``group_id``; the
advantage estimator normalizes within it.

* :class:`EpisodeSource` -- the task pool, the budget allocator and the agent loop: the default.
* :class:`SelfVerificationSource` -- Self-Verify's schedule around another source: the policy judges its own
  rollouts of earlier generation steps, by default in an extra update after the generation update (built by
  :class:`~lckernels_rl.objectives.SelfVerify`, which wraps the default source with it; the trainer does not know
  it exists).

A source may also have ``after_update(step)``: an iterable of further :class:`RolloutGroups` the trainer trains, one
extra update each, after the step's update (each is sampled when the trainer asks for it, so after the previous
update); their metrics are logged with the group's ``name`` as prefix and counted in ``extra_updates``.
* :class:`DemonstrationEngine` -- scripted turns from the environments' demonstrations, so the supervised warm-up
  runs through the same loop (same prompts, same token ledger) as RL.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from lckernels_rl.agents.loop import Episode
from lckernels_rl.agents.trajectory import TrainSample, Trajectory
from lckernels_rl.agents.types import Message
from lckernels_rl.envs.tool_env import StepResult, ToolEnv, Verdict
from lckernels_rl.rollout.engine import GenerationRequest, ScriptedEngine

from lckernels_rl.objectives.self_verify import CORRECT_THRESHOLD

from .allocation import PromptPool, allocate_rollouts, dynamic_sampling_on

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
    name: str = ""  # an extra update's name: its metrics are logged as "<name>_<key>"

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

    With dynamic sampling on (``rl.dynamic_sampling``: ``auto`` turns it on for the ``dapo_filter`` allocator) a step
    is filled as DAPO's recipe in verl does (:meth:`_dynamic`).

    Args:
        make_env: a fresh environment per episode.
        pool: the training tasks and their statistics.
        ctx: the :class:`SourceContext`.
    """

    def __init__(self, make_env: Callable[[], ToolEnv], pool: PromptPool, ctx: SourceContext):
        self.make_env, self.pool, self.ctx = make_env, pool, ctx

    def next(self, step: int) -> RolloutGroups:
        if dynamic_sampling_on(self.ctx.rl):
            return self._dynamic(step)
        prompt_idx = self.pool.sample(self.ctx.rng, self.ctx.rl.prompts_per_step)
        groups, counts, trajs = self._round(self.ctx.rl, prompt_idx)
        kept_trajs = [t for _, ts, _ in groups for t in ts]
        group_ids = [g for _, ts, g in groups for _ in ts]
        samples, excluded = trainable_samples(kept_trajs, group_ids)
        m = episode_metrics(kept_trajs)
        m["excluded_error_episodes"] = excluded
        return RolloutGroups(samples, kept_trajs, np.asarray(counts), m, group_ids)

    def _round(self, rl, prompt_idx: np.ndarray):
        """One sampling round over tasks ``prompt_idx``: allocator counts, episodes, pool statistics.  Returns
        ``([(count, trajectories, group id)] per task with episodes, in prompt order), counts [P], all trajectories)``."""
        seed = int(self.ctx.rng.integers(2**31))

        def sample(counts):
            index = [i for i, c in enumerate(counts) for _ in range(int(c))]
            trajs = self.ctx.run([Episode(self.make_env(), None, self.pool.seed(prompt_idx[i])) for i in index])
            return trajs, index, [t.reward for t in trajs]

        trajs, index, rewards, counts = allocate_rollouts(rl, self.pool, prompt_idx, seed, sample)
        ok = [k for k, t in enumerate(trajs) if t.stop_reason != "error"]  # a crash says nothing about the task
        self.pool.update(prompt_idx, [index[k] for k in ok], np.asarray([rewards[k] for k in ok]))
        by_prompt: dict[int, list] = {}
        for k in sorted(range(len(trajs)), key=lambda k: index[k]):  # groups contiguous, in prompt order
            by_prompt.setdefault(index[k], []).append(trajs[k])
        groups = [(int(counts[i]), ts, int(prompt_idx[i])) for i, ts in by_prompt.items()]  # id: the pool index
        return groups, counts, trajs

    def _dynamic(self, step: int) -> RolloutGroups:
        """DAPO's dynamic sampling (verl ``recipe/dapo/dapo_ray_trainer.py``, ``algorithm.filter_groups``): sample a
        round of ``rl.dynamic_sampling_gen_prompts`` tasks (default ``prompts_per_step``, verl's ``gen_batch_size``),
        drop every group whose rewards have zero (population) std unless it has a single reward, keep sampling rounds
        of new tasks until ``prompts_per_step`` groups are kept, then train on the first ``prompts_per_step`` of them
        (verl: ``batch[:train_batch_size * n]``).  ``rl.dynamic_sampling_max_rounds`` caps the rounds (verl's
        ``max_num_gen_batches``; 0: no cap); when a round ends below the target at the cap, ``on_cap="error"`` raises
        as verl does and ``on_cap="train"`` trains on the groups kept so far.

        Ours (inferred): the std is over the rewards of the episodes that did not crash (the ones trained); a group
        with none is dropped; a later round draws tasks not drawn earlier in the step first (verl's next
        dataloader batch), then, when the pool runs out of those, tasks dropped earlier in the step (never a kept
        one: a task is at most one group of the batch); each round's budget is
        ``gen_prompts * rollouts_per_step // prompts_per_step`` split by the allocator.
        """
        rl = self.ctx.rl
        target = rl.prompts_per_step
        gen = rl.dynamic_sampling_gen_prompts or target
        round_rl = dataclasses.replace(rl, prompts_per_step=gen,
                                       rollouts_per_step=gen * rl.rollouts_per_step // target)
        kept: list = []
        kept_ids: set[int] = set()
        drawn: set[int] = set()
        rounds = dropped = sampled = 0
        while True:
            prompt_idx = self.pool.sample(self.ctx.rng, gen) if rounds == 0 else \
                self._draw_refill(gen, drawn, kept_ids)
            p = len(prompt_idx)  # < gen only when the pool runs short
            this_rl = round_rl if p == gen else dataclasses.replace(
                round_rl, prompts_per_step=p, rollouts_per_step=max(p * rl.rollouts_per_step // target,
                                                                    p * max(rl.n_min, 1)))
            drawn.update(int(i) for i in prompt_idx)
            groups, _, trajs = self._round(this_rl, prompt_idx)
            rounds += 1
            sampled += len(trajs)
            for cnt, ts, gid in groups:
                r = np.asarray([t.reward for t in ts if t.stop_reason != "error"], dtype=np.float64)
                if r.size == 1 or (r.size > 1 and float(np.std(r)) > 0):
                    kept.append((cnt, ts, gid))
                    kept_ids.add(gid)
                else:
                    dropped += 1
            if len(kept) >= target:
                break
            if rl.dynamic_sampling_max_rounds > 0 and rounds >= rl.dynamic_sampling_max_rounds:
                if rl.dynamic_sampling_on_cap == "error":
                    raise RuntimeError(
                        f"dynamic sampling: {len(kept)} of {target} groups with non-zero reward std after {rounds} "
                        f"rounds at RL step {step} (rl.dynamic_sampling_max_rounds={rl.dynamic_sampling_max_rounds}); "
                        "the tasks may be too hard or too easy for the policy -- raise the cap (0: no cap) or set "
                        "rl.dynamic_sampling_on_cap=train to train on the groups kept")
                break
        filled = len(kept) >= target
        truncated = max(len(kept) - target, 0)
        kept = kept[:target]
        kept_trajs = [t for _, ts, _ in kept for t in ts]
        group_ids = [g for _, ts, g in kept for _ in ts]
        samples, excluded = trainable_samples(kept_trajs, group_ids)
        m = episode_metrics(kept_trajs)
        m.update(excluded_error_episodes=excluded, dynamic_sampling_rounds=rounds,
                 dynamic_sampling_groups_dropped=dropped, dynamic_sampling_groups_kept=len(kept),
                 dynamic_sampling_groups_truncated=truncated, dynamic_sampling_filled=filled,
                 dynamic_sampling_episodes=sampled)
        counts = np.asarray([c for c, _, _ in kept] or [0], dtype=np.int64)
        return RolloutGroups(samples, kept_trajs, counts, m, group_ids)

    def _draw_refill(self, n: int, drawn: set, kept_ids: set) -> np.ndarray:
        """Up to ``n`` tasks for a refill round: not drawn yet this step first, then drawn but not kept."""
        rng = self.ctx.rng
        fresh = np.asarray([i for i in range(self.pool.size) if i not in drawn], dtype=np.int64)
        pick = rng.choice(fresh, size=min(n, fresh.size), replace=False) if fresh.size else fresh
        if pick.size < n:
            again = np.asarray([i for i in sorted(drawn) if i not in kept_ids], dtype=np.int64)
            more = rng.choice(again, size=min(n - pick.size, again.size), replace=False) if again.size else again
            pick = np.concatenate([pick, more])
        return pick.astype(np.int64)

    def state_dict(self) -> dict:
        return {"pool": self.pool.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.pool.load_state_dict(state["pool"])


class VerificationEnv(ToolEnv):
    """A single-turn episode judging one :class:`~lckernels_rl.objectives.self_verify.VerificationExample`: the
    prompt is the example's text, the reward ``reward_fn(answer, label, pass_rate)``."""

    name = "self_verification"

    def __init__(self, reward_fn: Callable[[str, str, float], float]):
        self.reward_fn = reward_fn
        self.example = None

    def reset(self, seed=None, task=None):
        if task is None:
            raise ValueError("VerificationEnv.reset: needs the verification example as `task`")
        self.example = task
        return [Message("user", task.prompt)], {"label": task.label}

    def answer(self, turn: Message) -> StepResult:
        ex = self.example
        return StepResult(reward=float(self.reward_fn(turn.content, ex.label, ex.pass_rate)), terminated=True)

    def verify(self, trajectory) -> Verdict:
        return Verdict(reward=float(sum(r for _, r in trajectory.step_rewards)))


class SelfVerificationSource:
    """Self-Verify's verification updates around ``base`` (the objective's schedule decides when).

    ``schedule_mode="extra"`` (released): :meth:`next` is always ``base``'s generation step; its examples
    (``objective.build_examples`` on the step's groups) wait in :attr:`pending`.  The trainer calls
    :meth:`after_update` after the step's update: on a verification step (with a non-empty buffer) it yields one
    :class:`RolloutGroups` named ``"verification"`` per chunk of the shuffled buffer (at most ``objective.loops``;
    each sampled only when the trainer asks for it, i.e. after the previous update), each example judged by
    ``rollouts_per_step // prompts_per_step`` rollouts; then the buffer is flushed and the step's own examples join
    it (the released order: a verification step trains on the steps before it).

    ``schedule_mode="replace"`` (old): on the schedule's verification steps (when the previous generation step gave
    a usable example) :meth:`next` returns the policy's "Yes"/"No" answers on the previous generation step's
    rollouts instead of a generation step, the budget split uniformly over the examples (at least one each).

    The groups' question = the task's prompt text, response = the decoded final assistant turn, correct = reward >=
    0.5 (released); inferred: an episode that crashed (``error``) is left out of its group.
    """

    def __init__(self, base: EpisodeSource, objective):
        self.base, self.objective = base, objective
        self.last_groups = None  # replace mode: the previous generation step's groups
        self.buffer: list = []  # extra mode: examples of the generation steps since the last verification step
        self.pending: Optional[tuple] = None  # extra mode: (examples, chunk) of the current step
        self.chunk = 0  # extra mode: 2 * floor(#groups / 2) of the latest buffered step

    def next(self, step: int) -> RolloutGroups:
        sched = self.objective.schedule()
        if sched.mode == "replace":
            if self.last_groups is not None and sched.is_verification_step(step):
                res = self._verification_replacing()
                if res is not None:
                    return res
            res = self.base.next(step)
            self.last_groups = self._groups(res)
            res.metrics["step_kind"] = "generation"
            return res
        self._buffer_pending()  # normally done by after_update
        res = self.base.next(step)
        res.metrics["step_kind"] = "generation"
        questions, responses, correct = self._groups(res)
        examples = self.objective.build_examples(questions, responses, correct,
                                                 seed=int(self.base.ctx.rng.integers(2**31)))
        self.pending = (examples, 2 * (len(questions) // 2))
        return res

    def after_update(self, step: int):
        """The extra updates after step ``step``'s update (a generator of :class:`RolloutGroups`; extra mode)."""
        sched = self.objective.schedule()
        if sched.mode != "extra":
            return
        if sched.is_verification_step(step) and self.buffer and self.chunk:
            rng = np.random.default_rng(int(self.base.ctx.rng.integers(2**31)))
            order = rng.permutation(len(self.buffer))
            shuffled = [self.buffer[i] for i in order]
            buffered = len(shuffled)
            for k in range(self.objective.loops):
                part = shuffled[k * self.chunk:(k + 1) * self.chunk]
                if not part:
                    break
                res = self._rollout(part, self._group_size())
                res.metrics.update(buffer_size=buffered, loop=k)
                yield res
            self.buffer = []  # released: the whole buffer is flushed, used or not
        self._buffer_pending()

    def _buffer_pending(self) -> None:
        if self.pending is not None:
            examples, chunk = self.pending
            self.buffer.extend(examples)
            self.chunk = chunk
            self.pending = None

    def _group_size(self) -> int:
        rl = self.base.ctx.rl
        return max(rl.rollouts_per_step // rl.prompts_per_step, 1)

    def _groups(self, res: RolloutGroups) -> tuple:
        """(questions, final answers, correct) per task of a generation step (crashed episodes left out)."""
        groups: dict[int, list[int]] = {}
        for k, g in enumerate(res.group_ids):
            if res.trajectories[k].stop_reason != "error":
                groups.setdefault(g, []).append(k)
        trajs = res.trajectories
        final = [next((m.content for m in reversed(t.messages) if m.role == "assistant"), "") for t in trajs]
        return ([self.base.pool.prompts[g] for g in groups],
                [[final[k] for k in ks] for ks in groups.values()],
                [[bool(trajs[k].reward >= CORRECT_THRESHOLD) for k in ks] for ks in groups.values()])

    def _rollout(self, examples, per_example: Optional[int] = None) -> RolloutGroups:
        """Verification episodes for ``examples``: ``per_example`` rollouts each, or the step's budget split
        uniformly (at least one each)."""
        from lckernels_rl.budget import uniform_allocate

        ctx = self.base.ctx
        if per_example is None:
            counts = uniform_allocate(ctx.rl.rollouts_per_step, len(examples), n_min=1,
                                      seed=int(ctx.rng.integers(2**31)))
        else:
            counts = np.full(len(examples), per_example, dtype=np.int64)
        index = [i for i, c in enumerate(counts) for _ in range(int(c))]
        trajs = ctx.run([Episode(VerificationEnv(self.objective.reward), examples[i], None) for i in index])
        group_ids = [("verify", k) for k in index]
        samples, excluded = trainable_samples(trajs, group_ids)
        m = episode_metrics(trajs)
        labels = [e.label for e in examples]
        m.update(excluded_error_episodes=excluded, examples=len(examples), label_yes=labels.count("Yes"),
                 label_no=labels.count("No"),
                 pass_rate_mean=float(np.mean([e.pass_rate for e in examples])) if examples else 0.0)
        return RolloutGroups(samples, trajs, np.asarray(counts), m, group_ids, name="verification")

    def _verification_replacing(self) -> Optional[RolloutGroups]:
        questions, responses, correct = self.last_groups
        examples = self.objective.build_examples(questions, responses, correct,
                                                 seed=int(self.base.ctx.rng.integers(2**31)))
        if not examples:
            return None
        res = self._rollout(examples)
        res.metrics["step_kind"] = "verification"
        return res

    def state_dict(self) -> dict:
        return {"base": self.base.state_dict(), "last_groups": self.last_groups, "buffer": list(self.buffer),
                "pending": self.pending, "chunk": self.chunk}

    def load_state_dict(self, state: dict) -> None:
        self.base.load_state_dict(state["base"])
        self.last_groups = state["last_groups"]
        self.buffer = list(state.get("buffer", []))
        self.pending = state.get("pending")
        self.chunk = int(state.get("chunk", 0))

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
