"""The trainer's extension points: per-turn advantages (``rl.advantage: hian``), callbacks with
``set_env_args``, warm starts (``model.init_from``), the async rollout-correction warning and ``mask_stale_tokens``.
Expected values are written by hand."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from lckernels_rl.agents.trajectory import Segment, TrainSample, Trajectory
from lckernels_rl.train import ConfigError, TrainConfig, Trainer
from lckernels_rl.train.batch import pack_samples
from lckernels_rl.train.callbacks import TrainerCallback

from .tiny import tiny_config


def _traj(turn_ids, step_rewards, reward=0.0, components=None):
    """A hand-made episode: prompt [1, 2], then per turn a sampled segment and an env delta [9]."""
    segs = [Segment([1, 2], False)]
    for t, ids in enumerate(turn_ids):
        segs.append(Segment(list(ids), True, logprobs=[-0.5] * len(ids), version=3, source="assistant", turn=t))
        segs.append(Segment([9], False, source="env", turn=t))
    return Trajectory(segments=segs, step_rewards=list(step_rewards), reward=reward, components=dict(components or {}),
                      stop_reason="env_done")


# ------------------------------------------------------------------ turn indices and turn rewards
def test_to_sample_records_turn_of_each_token_and_rewards_per_turn():
    s = _traj([[5, 6], [7]], [(0, 0.1), (1, -0.2), (1, 0.05)]).to_sample("g")
    #            prompt  turn 0  delta turn 1 delta
    assert s.token_turn == [-1, -1, 0, 0, -1, 1, -1]
    assert s.turn_rewards == pytest.approx([0.1, -0.15])
    with pytest.raises(ValueError, match="token_turn"):
        TrainSample(input_ids=[1, 2], loss_mask=[0, 1], rollout_logprobs=[0, 0], token_versions=[-1, 0],
                    token_turn=[-1])


def test_pack_samples_turn_tensors():
    a = _traj([[5, 6], [7]], [(0, 0.1), (1, -0.2)]).to_sample("g")
    b = _traj([[8]], [(0, 0.1)]).to_sample("g")
    batch = pack_samples([a, b], pad_id=0)
    assert batch.token_turn.tolist() == [[0, 0, 1], [0, -1, -1]]
    assert torch.allclose(batch.turn_rewards, torch.tensor([[0.1, -0.2], [0.1, 0.0]]))
    assert batch.turn_mask.tolist() == [[True, True], [True, False]]
    # a sample built without turn indices: every trained token outside any turn
    c = TrainSample(input_ids=[1, 2, 3], loss_mask=[0, 1, 1], rollout_logprobs=[0, 0, 0], token_versions=[-1, 0, 0])
    assert pack_samples([c], 0).token_turn.tolist() == [[-1, -1]]


def test_hian_advantages_through_the_trainer(tmp_path):
    """One group of two sessions: session rewards 1 / 0 (from the ``session`` component, not the rewards 0.1 / 0.9
    that rank them the other way),
    turn rewards [0.1, -0.2] and [0.1].  By hand: A_s = +-0.5 / std([1, 0], unbiased) = +-0.70711; the pooled turn
    rewards (0.1, -0.2, 0.1) have mean 0 and unbiased std sqrt(0.03) = 0.17321 -> 0.57735, -1.15470, 0.57735."""
    cfg = tiny_config(tmp_path, rl={"advantage": "hian"})
    tr = Trainer(cfg)
    try:
        a = _traj([[5, 6], [7]], [(0, 0.1), (1, -0.2)], reward=0.1, components={"session": 1.0}).to_sample("g")
        b = _traj([[8]], [(0, 0.1)], reward=0.9, components={"session": 0.0}).to_sample("g")
        batch = pack_samples([a, b], 0)
        adv = tr._hian(batch, batch.mask)
    finally:
        tr.close()
    assert adv[0].tolist() == pytest.approx([0.70711 + 0.57735, 0.70711 + 0.57735, 0.70711 - 1.15470], abs=1e-4)
    assert adv[1].tolist() == pytest.approx([-0.70711 + 0.57735, 0.0, 0.0], abs=1e-4)


def test_hian_trains_on_the_sales_env(tmp_path):
    from .tiny import bundled_smoke_config

    cfg = bundled_smoke_config("duca_sales", tmp_path, "rl.advantage=hian", "rl.advantage_args={w_turn: 0.5}")
    tr = Trainer(cfg)
    try:
        rows = [r for r in tr.fit() if r["phase"] == "rl"]
    finally:
        tr.close()
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows if r.get("updates"))


def test_hian_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="advantage_args.*w_bogus"):
        tiny_config(tmp_path, rl={"advantage": "hian", "advantage_args": {"w_bogus": 1.0}})
    with pytest.raises(ConfigError, match="advantage_args.*grpo"):
        tiny_config(tmp_path, rl={"advantage": "grpo", "advantage_args": {"w_turn": 1.0}})


# ------------------------------------------------------------------ callbacks and set_env_args
class Curriculum(TrainerCallback):
    """Raises the arithmetic task's max_value after the first RL step; counts its calls."""

    def __init__(self, to: int = 19):
        self.to, self.calls, self.begun = to, [], 0

    def on_train_begin(self, trainer):
        self.begun += 1

    def on_step_end(self, trainer, metrics):
        self.calls.append((metrics["step"], metrics["phase"]))
        metrics["curriculum_level"] = len(self.calls)
        if metrics["phase"] == "rl":
            trainer.set_env_args(max_value=self.to)

    def state_dict(self):
        return {"calls": list(self.calls)}

    def load_state_dict(self, state):
        self.calls = [tuple(c) for c in state["calls"]]


def test_callback_hooks_env_args_and_resume(tmp_path):
    cfg = tiny_config(tmp_path, log={"checkpoint_every": 1, "eval_every": 0})
    cb = Curriculum()
    tr = Trainer(cfg, callbacks=[cb])
    try:
        assert tr.make_env().env.max_value == 9
        rows = tr.fit(max_steps=3)  # sft 1, sft 2, rl 3
        assert cb.begun == 1 and cb.calls == [(1, "sft"), (2, "sft"), (3, "rl")]
        assert [r.get("curriculum_level") for r in rows[1:]] == [1, 2, 3]  # logged with the step
        assert tr.make_env().env.max_value == 19 and tr.make_eval_env().env.max_value == 9
        with pytest.raises(Exception):
            tr.set_env_args(max_value="nine")  # built once at once: a bad value fails here...
        assert tr.make_env().env.max_value == 19  # ...and leaves the previous overrides
    finally:
        tr.close()
    cb2 = Curriculum()
    tr2 = Trainer(cfg, resume=True, callbacks=[cb2])
    try:
        assert cb2.calls == [(1, "sft"), (2, "sft"), (3, "rl")]  # the callback's state came back
        assert tr2.make_env().env.max_value == 19  # so did the overrides
    finally:
        tr2.close()
    with pytest.raises(ValueError, match="callback"):
        Trainer(cfg, resume=True)


def test_callbacks_from_config(tmp_path):
    cfg = tiny_config(tmp_path, callbacks=[{"target": "tests.rl.test_trainer_hooks:Curriculum", "args": {"to": 15}}])
    tr = Trainer(cfg)
    try:
        assert len(tr.callbacks) == 1 and tr.callbacks[0].to == 15
    finally:
        tr.close()
    for bad, msg in [([{"target": "nomodule"}], "module:Class"), ([{"target": "json:loads"}], "not a TrainerCallback"),
                     ([{"target": "tests.rl.test_trainer_hooks:Curriculum", "args": {"nope": 1}}], r"args"),
                     ([{"target": "tests.rl.test_trainer_hooks:Curriculum", "when": 1}], "unknown field"),
                     ("x", "must be a list")]:
        with pytest.raises(ConfigError, match=msg):
            tiny_config(tmp_path, callbacks=bad)
    with pytest.raises(TypeError, match="TrainerCallback"):
        Trainer(tiny_config(tmp_path), callbacks=[object()])


# ------------------------------------------------------------------ warm starts
def test_init_from_keeps_tokenizer_and_weights(tmp_path):
    first = tiny_config(tmp_path, sft={"steps": 2}, rl={"steps": 0}, log={"output_dir": str(tmp_path / "a")})
    tr = Trainer(first)
    try:
        tr.fit()
        vocab = tr.tokenizer.get_vocab()
        weights = {k: v.clone() for k, v in tr.model.state_dict().items()}
    finally:
        tr.close()
    # the next stage trains a different task: the tokenizer is the earlier run's, not rebuilt from this task
    nxt = tiny_config(tmp_path, task={"env_args": {"max_value": 19}},
                      model={"init_from": str(tmp_path / "a")}, log={"output_dir": str(tmp_path / "b")})
    tr2 = Trainer(nxt)
    try:
        assert tr2.tokenizer.get_vocab() == vocab
        for k, v in tr2.model.state_dict().items():
            assert torch.equal(v, weights[k]), k
        assert tr2.step == 0
    finally:
        tr2.close()
    with pytest.raises(ConfigError, match="output directory of an earlier run"):
        Trainer(tiny_config(tmp_path, model={"init_from": str(tmp_path / "missing")}))
    other = dict(first.model.overrides, hidden_size=48)
    with pytest.raises(ConfigError, match="model.overrides differs"):
        Trainer(tiny_config(tmp_path, model={"init_from": str(tmp_path / "a"), "overrides": other}))


# ------------------------------------------------------------------ async: correction warning, stale tokens
def test_async_without_rollout_correction_warns(tmp_path):
    with pytest.warns(UserWarning, match="no rollout correction"):
        Trainer(tiny_config(tmp_path, rollout={"mode": "async", "max_staleness": 1})).close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Trainer(tiny_config(tmp_path, rollout={"mode": "async", "max_staleness": 1},
                            rl={"objective_args": {"rollout_correction": "token_truncate"}})).close()
        Trainer(tiny_config(tmp_path, rollout={"mode": "async", "max_staleness": 0})).close()


def test_mask_stale_tokens_drops_only_tokens_past_the_bound(tmp_path):
    """Engine at version 5, max_staleness 1: tokens of versions 4 and 5 are trained, versions 3 and 2 are not."""
    from lckernels_rl.train.sources import RolloutGroups

    cfg = tiny_config(tmp_path, rollout={"mask_stale_tokens": True, "max_staleness": 1})
    tr = Trainer(cfg)
    try:
        tr.step = cfg.sft.steps
        tr._enter_phase("rl")
        tr.engine.version = 5
        samples = []
        for i, vers in enumerate([[5, 4], [3, 2], [4, 3]]):
            samples.append(TrainSample(input_ids=[1, 2, 3], loss_mask=[0, 1, 1], rollout_logprobs=[0.0, -1.0, -1.0],
                                       token_versions=[-1, *vers], reward=float(i % 2), group_id=0))
        seen = {}
        real = tr._loss

        def spy(hidden, targets, adv, old, mask, *rest):
            seen.setdefault("mask", mask.clone())
            return real(hidden, targets, adv, old, mask, *rest)

        tr._loss = spy
        groups = RolloutGroups(samples=samples, trajectories=[], group_ids=[0, 0, 0],
                               counts=__import__("numpy").array([3]), metrics={})
        out = tr._update(groups, 0.0, 0.0)
    finally:
        tr.close()
    assert seen["mask"].tolist() == [[True, True], [False, False], [True, False]]
    assert out["stale_masked_frac"] == pytest.approx(3 / 6)
    assert out["token_lag_max"] == 3  # version 2 under the version-5 policy


def test_hian_with_an_objective_needing_scalar_advantages_is_clear(tmp_path):
    tr = Trainer(tiny_config(tmp_path, rl={"advantage": "hian"}))
    try:
        with pytest.raises(ConfigError, match="per-token advantages"):
            tr._context().advantage_fn(torch.zeros(2), torch.zeros(2, dtype=torch.long))
    finally:
        tr.close()


def test_char_tokenizer_warns_about_characters_outside_the_env_alphabet(tmp_path):
    """An env whose texts hold a character its `alphabet` lacks ('9' here): the char tokenizer would turn it into
    <unk>, so building the trainer warns and names it; the complete alphabet builds silently."""
    from lckernels_rl.envs import register_env
    from lckernels_rl.envs.arithmetic import ArithmeticEnv

    class No9(ArithmeticEnv):
        alphabet = "012345678+-*="

    register_env("arith_no9_test", No9)
    with pytest.warns(UserWarning, match=r"outside the environment's alphabet '9'"):
        Trainer(tiny_config(tmp_path, task={"env": "arith_no9_test", "env_args": {"max_value": 99}}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Trainer(tiny_config(tmp_path / "ok", task={"env": "arithmetic", "env_args": {"max_value": 99}}))
