"""Skill1 env: hand-made episodes with hand-worked trend / variation credits (alpha 0.05, max aggregation, lambda 0.3)."""

import pytest

from lckernels_rl.agents.types import Message
from lckernels_rl.envs import make_env
from lckernels_rl.envs.skills.skill1 import Skill1Env, reset_libraries

RIGHT, WRONG = "go open take", "put close cut"


@pytest.fixture
def env():
    reset_libraries()
    e = Skill1Env(library_id="hand", missing=0)
    e.lib.truth = {"heat apple": RIGHT, "cool egg": "wash turn go"}
    e.lib.entries = [{"desc": "heat apple", "macro": RIGHT}, {"desc": "heat apple", "macro": WRONG}]
    e.lib.utility = [0.2, 0.6]
    e.lib._reindex()
    yield e
    reset_libraries()


def play(env, turns, task="heat apple"):
    msgs, _ = env.reset(task=task)
    seen = []
    for t in turns:
        r = env.step(Message("assistant", t))
        seen += [m.content for m in r.messages]
        if r.terminated:
            break
    return env.verify(None), seen


def test_hand_worked_trend_and_variation(env):
    # episode 1: hits sorted by utility: [1] WRONG u=.6, [2] RIGHT u=.2; pick RIGHT, solve: R = 1
    v, seen = play(env, ["<query>heat apple</query>", "<select>2</select>", f"<answer>{RIGHT}</answer>",
                         f"<distill>heat apple: {RIGHT}</distill>"])
    assert seen[0] == f"hits [1] heat apple: {WRONG} u=0.6 [2] heat apple: {RIGHT} u=0.2"
    assert seen[1] == f"skill {RIGHT}"
    # selection (trend) = EMA of the picked skill: 0.95 * 0.2 + 0.05 * 1 = 0.24
    # distillation (variation) = R - max(pre-update utilities of the hits) = 1 - 0.6 = 0.4
    # reward = 1 + 0.3 * 0.24 + 0.3 * 0.4 = 1.192
    assert v.components["outcome"] == 1.0
    assert v.components["selection"] == pytest.approx(0.24)
    assert v.components["distillation"] == pytest.approx(0.4)
    assert v.reward == pytest.approx(1.192)
    assert env.lib.utility == pytest.approx([0.24, 0.6, 0.0])  # the distilled skill joins at utility 0
    assert env.lib.entries[2] == {"desc": "heat apple", "macro": RIGHT}
    # episode 2: hits [1] WRONG .6 [2] RIGHT .24 [3] distilled 0; pick WRONG: R = 0
    v, _ = play(env, ["<query>heat apple</query>", "<select>1</select>", f"<answer>{WRONG}</answer>",
                      f"<distill>heat apple: {RIGHT}</distill>"])
    # selection = 0.95 * 0.6 = 0.57; distillation = 0 - max(.6, .24, 0) = -0.6
    # reward = 0 + 0.3 * 0.57 - 0.3 * 0.6 = -0.009
    assert v.components["selection"] == pytest.approx(0.57)
    assert v.components["distillation"] == pytest.approx(-0.6)
    assert v.reward == pytest.approx(-0.009)
    assert env.lib.utility[:2] == pytest.approx([0.24, 0.57])


def test_lambda_weights_are_the_arguments():
    reset_libraries()
    e = Skill1Env(library_id="w", missing=0, lambda_rerank=0.0, lambda_distill=1.0)
    e.lib.truth = {"heat apple": RIGHT}
    e.lib.entries, e.lib.utility = [{"desc": "heat apple", "macro": RIGHT}], [0.5]
    e.lib._reindex()
    v, _ = play(e, ["<query>heat</query>", "<select>1</select>", f"<answer>{RIGHT}</answer>",
                    f"<distill>heat apple: {RIGHT}</distill>"])
    assert v.reward == pytest.approx(1 + 1.0 * (1 - 0.5))  # selection weight 0, distillation 0.5
    reset_libraries()


def test_malformed_distill_keeps_outcome_drops_distill_credit(env):
    v, _ = play(env, ["<query>heat apple</query>", "<select>2</select>", f"<answer>{RIGHT}</answer>", "skill?"])
    assert v.components["distillation"] == 0.0 and v.reward == pytest.approx(1 + 0.3 * 0.24)
    assert v.info["reason"].startswith("malformed")
    assert len(env.lib.entries) == 2


@pytest.mark.parametrize("turns,reason", [
    (["heat apple"], "malformed"),
    (["<query>heat apple"], "malformed"),
    (["<query>cool egg</query>"], "no_hit"),
    (["<query>heat apple</query>", "<select>7</select>"], "malformed"),
    (["<query>heat apple</query>", "<select>1</select>", "go open take"], "malformed"),
])
def test_bad_turns_give_zero_reward_with_reason(env, turns, reason):
    v, _ = play(env, turns)
    assert v.reward == 0.0 and v.info["reason"].startswith(reason)
    assert env.lib.utility == [0.2, 0.6]  # no outcome: no EMA update


def test_determinism_and_registry():
    reset_libraries()
    a = make_env("skill1", library_id="d1")
    reset_libraries()
    b = make_env("skill1", library_id="d1")
    assert a.lib.entries == b.lib.entries and a.lib.truth == b.lib.truth
    assert [a.reset(seed=s)[0][0].content for s in range(10)] == [b.reset(seed=s)[0][0].content for s in range(10)]
    c = make_env("skill1", library_id="d2", library_seed=1)
    assert c.lib.truth != a.lib.truth
    reset_libraries()


def test_demonstration_solves_and_bad_args():
    reset_libraries()
    e = Skill1Env(library_id="demo", missing=0)
    msgs, info = e.reset(seed=5)
    while True:
        d = e.demonstration(msgs)
        r = e.step(Message("assistant", d))
        if r.terminated:
            break
        msgs = msgs + [Message("assistant", d)] + r.messages
    assert e.verify(None).components["distilled_right"] == 1.0
    with pytest.raises(ValueError, match="top_k"):
        Skill1Env(top_k=0)
    with pytest.raises(ValueError, match="alpha"):
        Skill1Env(alpha=0.0)
    reset_libraries()


def test_config_smoke(tmp_path):
    import yaml

    from lckernels_rl.train.config import bundled_configs
    from tests.rl.tiny import fit_rl_rows, tiny_config

    data = yaml.safe_load(open(bundled_configs()["skill1"]))
    task = {**data["task"], "train_size": 32, "eval_size": 4,
            "env_args": {**data["task"]["env_args"], "library_id": "smoke"}}
    cfg = tiny_config(tmp_path, task=task, agent=data["agent"], sft={"steps": 2, "batch_size": 4},
                      rl={"steps": 1, "prompts_per_step": 2, "rollouts_per_step": 4, "max_new_tokens": 12})
    rows = fit_rl_rows(cfg)
    assert len(rows) == 1
    reset_libraries()
