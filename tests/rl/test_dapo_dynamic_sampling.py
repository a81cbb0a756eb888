"""DAPO's dynamic sampling in the rollout source (issue 16): the step's own zero-std groups are dropped and new tasks
sampled until the batch is full, as verl's DAPO recipe does (volcengine/verl recipe/dapo/dapo_ray_trainer.py, commit
004c888, read: keep a group when std > 0 or it has one response; more generation batches until train_batch_size
groups are kept, at most max_num_gen_batches, raising at the cap; the first train_batch_size kept groups are
trained).  Every expected value below is worked out by hand from hand-written rewards per task."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lckernels_rl.agents.trajectory import TrainSample
from lckernels_rl.agents.types import Message
from lckernels_rl.envs import make_tool_env
from lckernels_rl.train import TrainConfig
from lckernels_rl.train.allocation import PromptPool
from lckernels_rl.train.config import ConfigError, RLConfig
from lckernels_rl.train.sources import EpisodeSource, SourceContext

from .tiny import fit_rl_rows, tiny_config



class FakeTraj:
    """A finished one-turn episode with a given reward (one sampled token)."""

    def __init__(self, reward, stop_reason="env_done"):
        self.reward, self.stop_reason = float(reward), stop_reason
        self.messages = [Message("assistant", "x")]
        self.metrics = {}

    def to_samples(self, group_id=None):
        return [TrainSample([5, 6], [0, 1], [0.0, 0.0], [-1, 0], reward=self.reward, group_id=group_id)]


def make_source(rewards: dict, *, size=8, first=None, **rl):
    """An EpisodeSource over ``size`` arithmetic tasks whose episodes get scripted rewards: ``rewards[task]`` is a
    list of reward lists, one per time the task is sampled (the last one repeats); ``None`` in a list: the episode
    crashed.  ``first``: the tasks of the first round (the pool's draw, fixed for a hand-computed case)."""
    calls: dict[int, int] = {}
    log: list[list[int]] = []  # the tasks of each round, in order

    def run(episodes):
        out, seen = [], {}
        tasks = [ep.seed for ep in episodes]
        log.append(sorted(set(tasks)))
        for t in tasks:
            k = seen.setdefault(t, calls.get(t, 0))
            script = rewards[t][min(k, len(rewards[t]) - 1)]
            j = sum(1 for u in tasks[:len(out)] if u == t)
            r = script[j]
            out.append(FakeTraj(0.0, "error") if r is None else FakeTraj(r))
        for t in seen:
            calls[t] = seen[t] + 1
        return out

    cfg = RLConfig(**{"prompts_per_step": 4, "rollouts_per_step": 8, "allocator": "dapo_filter", "n_min": 0, **rl})
    pool = PromptPool(lambda: make_tool_env("arithmetic", max_value=9), size)
    if first is not None:
        real = pool.sample
        pool.sample = lambda rng, n: np.asarray(first) if not log else real(rng, n)
    return EpisodeSource(lambda: make_tool_env("arithmetic", max_value=9), pool,
                         SourceContext(cfg, np.random.default_rng(0), run)), log


def trained_groups(res) -> dict:
    out: dict = {}
    for s in res.samples:
        out.setdefault(s.group_id, []).append(s.reward)
    return out


# tasks 0, 5: all correct; 1, 7: all wrong; 2, 3, 4, 6: mixed (two rollouts each)
REWARDS = {0: [[1, 1]], 1: [[0, 0]], 2: [[1, 0]], 3: [[0, 1]], 4: [[1, 0]], 5: [[1, 1]], 6: [[0, 1]], 7: [[0, 0]]}


def test_zero_std_groups_are_dropped_and_refilled():
    """Round 1 = tasks 0-3: 0 and 1 have zero std -> dropped, 2 and 3 kept (2 of 4).  Round 2 draws 4 tasks not drawn
    yet -- {4, 5, 6, 7}, the rest of the pool -- 5 and 7 dropped, 4 and 6 kept: 4 of 4, full."""
    src, log = make_source(REWARDS, first=[0, 1, 2, 3])
    res = src.next(0)
    assert log == [[0, 1, 2, 3], [4, 5, 6, 7]]
    groups = trained_groups(res)
    assert sorted(groups) == [2, 3, 4, 6]
    assert all(np.std(r) > 0 for r in groups.values())          # no zero-advantage group reaches training
    m = res.metrics
    assert (m["dynamic_sampling_rounds"], m["dynamic_sampling_groups_dropped"], m["dynamic_sampling_groups_kept"],
            m["dynamic_sampling_filled"], m["dynamic_sampling_episodes"], m["dynamic_sampling_groups_truncated"]) \
        == (2, 4, 4, True, 16, 0)
    assert len(res.samples) == 8 and res.counts.tolist() == [2, 2, 2, 2]
    assert src.pool.attempts.tolist() == [2] * 8                  # every round's episodes update the task statistics


def test_old_predictive_mode_trains_the_zero_std_groups():
    """dynamic_sampling=off (the old mode): the first step has no previous groups, so tasks 0-3 get 2 rollouts each
    and the all-correct / all-wrong groups 0 and 1 reach training."""
    src, log = make_source(REWARDS, first=[0, 1, 2, 3], dynamic_sampling="off")
    res = src.next(0)
    groups = trained_groups(res)
    assert log == [[0, 1, 2, 3]] and sorted(groups) == [0, 1, 2, 3]
    assert sum(np.std(r) == 0 for r in groups.values()) == 2
    assert "dynamic_sampling_rounds" not in res.metrics


def test_cap_errors_like_verl_or_trains_what_it_has():
    src, _ = make_source(REWARDS, first=[0, 1, 2, 3], dynamic_sampling_max_rounds=1)
    with pytest.raises(RuntimeError, match=r"2 of 4 groups .* after 1 rounds .*rl.dynamic_sampling_max_rounds=1"):
        src.next(0)
    src, log = make_source(REWARDS, first=[0, 1, 2, 3], dynamic_sampling_max_rounds=1,
                           dynamic_sampling_on_cap="train")
    res = src.next(0)
    assert log == [[0, 1, 2, 3]] and sorted(trained_groups(res)) == [2, 3]
    m = res.metrics
    assert (m["dynamic_sampling_rounds"], m["dynamic_sampling_groups_dropped"], m["dynamic_sampling_filled"]) \
        == (1, 2, False)


def test_oversampling_truncates_to_the_first_groups():
    """gen_prompts=8: one round of all 8 tasks (budget 8 * 8 // 4 = 16, two each); 0, 1, 5, 7 dropped; the kept
    2, 3, 4, 6 are exactly 4.  With task 5 mixed too, 5 groups are kept and the first 4 in task order train."""
    src, log = make_source(REWARDS, first=list(range(8)), dynamic_sampling_gen_prompts=8)
    res = src.next(0)
    assert log == [list(range(8))] and sorted(trained_groups(res)) == [2, 3, 4, 6]
    assert res.metrics["dynamic_sampling_groups_truncated"] == 0
    src, _ = make_source({**REWARDS, 5: [[0, 1]]}, first=list(range(8)), dynamic_sampling_gen_prompts=8)
    res = src.next(0)
    assert sorted(trained_groups(res)) == [2, 3, 4, 5]
    assert (res.metrics["dynamic_sampling_groups_truncated"], res.metrics["dynamic_sampling_groups_dropped"]) == (1, 3)


def test_single_reward_group_is_kept_and_dropped_tasks_are_drawn_again():
    """Two tasks, two groups wanted.  Task 0: one rollout crashes, one reward left -> kept (verl keeps a group of one
    response).  Task 1: all-correct the first time -> dropped; the pool has no undrawn task left, so round 2 draws the
    dropped task 1 again (never the kept 0), now mixed -> kept, full after 2 rounds."""
    src, log = make_source({0: [[1, None]], 1: [[1, 1], [0, 1]]}, size=2, prompts_per_step=2, rollouts_per_step=4)
    res = src.next(0)
    assert log == [[0, 1], [1]]
    groups = trained_groups(res)
    assert groups == {0: [1.0], 1: [0.0, 1.0]}
    assert (res.metrics["dynamic_sampling_rounds"], res.metrics["dynamic_sampling_groups_dropped"],
            res.metrics["excluded_error_episodes"]) == (2, 1, 1)


def test_the_filter_does_not_predict_from_the_previous_step():
    """Tasks 0 and 1 were all-correct / all-wrong last time but are mixed now.  With the filter every task of the
    round gets 8 / 4 = 2 rollouts and all 4 groups are kept in one round (the old predictive mode would give 0 and 1
    nothing -- n_min = 0 -- and 4 each to 2 and 3)."""
    now = {**REWARDS, 0: [[1, 0]], 1: [[0, 1]], 2: [[1, 0, 1, 0]], 3: [[0, 1, 0, 1]]}
    src, log = make_source(now, first=[0, 1, 2, 3])
    src.pool.last_group.update({0: [1.0, 1.0], 1: [0.0, 0.0]})
    res = src.next(1)
    assert res.counts.tolist() == [2, 2, 2, 2] and res.metrics["dynamic_sampling_rounds"] == 1
    assert sorted(trained_groups(res)) == [0, 1, 2, 3]
    src, _ = make_source(now, first=[0, 1, 2, 3], dynamic_sampling="off")
    src.pool.last_group.update({0: [1.0, 1.0], 1: [0.0, 0.0]})
    assert src.next(1).counts.tolist() == [0, 0, 4, 4]


def test_other_allocators_are_untouched_unless_asked():
    src, log = make_source(REWARDS, first=[0, 1, 2, 3], allocator="uniform")
    assert sorted(trained_groups(src.next(0))) == [0, 1, 2, 3] and len(log) == 1
    src, log = make_source(REWARDS, first=[0, 1, 2, 3], allocator="uniform", dynamic_sampling="filter")
    assert sorted(trained_groups(src.next(0))) == [2, 3, 4, 6] and len(log) == 2


@pytest.mark.parametrize("bad, needle", [
    ({"dynamic_sampling": "on"}, "rl.dynamic_sampling: unknown value 'on'; valid choices: auto, filter, off"),
    ({"dynamic_sampling_on_cap": "skip"}, "rl.dynamic_sampling_on_cap: unknown value 'skip'"),
    ({"dynamic_sampling_max_rounds": -1}, "rl.dynamic_sampling_max_rounds must be >= 0"),
    ({"dynamic_sampling_gen_prompts": 0}, "rl.dynamic_sampling_gen_prompts must be in [1,"),
    ({"dynamic_sampling_gen_prompts": 2, "rollouts_per_step": 4, "prompts_per_step": 4, "n_min": 2},
     "rl.dynamic_sampling_gen_prompts=2: a round's budget"),
])
def test_bad_options_name_the_field(bad, needle):
    with pytest.raises(ConfigError) as exc:
        TrainConfig.from_dict({"task": {"train_size": 16}, "rl": bad})
    assert needle in str(exc.value)


# ------------------------------------------------------------------------------------------------ the trainer
def test_trainer_trains_only_groups_with_signal(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from lckernels_rl.envs import ArithmeticEnv
    from lckernels_rl.train import Trainer, trainer as trainer_mod

    real = ArithmeticEnv.step

    def step(self, action):  # odd-length answers are "correct": mixed and degenerate groups both occur
        obs, _, term, trunc, info = real(self, action)
        return obs, float(len(action) % 2), term, trunc, info

    monkeypatch.setattr(ArithmeticEnv, "step", step)
    packed: list[dict] = []
    real_pack = trainer_mod.pack_samples

    def spy(samples, pad_id):
        groups: dict = {}
        for s in samples:
            groups.setdefault(s.group_id, []).append(s.reward)
        packed.append(groups)
        return real_pack(samples, pad_id)

    monkeypatch.setattr(trainer_mod, "pack_samples", spy)
    cfg = tiny_config(tmp_path, task={"train_size": 32, "eval_size": 0}, sft={"steps": 0}, log={"eval_every": 0},
                      rl={"rollouts_per_step": 8, "allocator": "dapo_filter", "n_min": 2,
                          "dynamic_sampling_max_rounds": 0})
    rows = fit_rl_rows(cfg)
    rl_packs = [p for p in packed if len(p) == 4]
    assert len(rows) == 2 and len(rl_packs) == 2
    for groups in rl_packs:
        assert all(np.std(r) > 0 for r in groups.values())
    for r in rows:
        assert r["dynamic_sampling_filled"] is True and r["dynamic_sampling_rounds"] >= 1
        assert r["rollouts"] == 8 and math.isfinite(r["loss"]) and r["extra_updates"] == 0
