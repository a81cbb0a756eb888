"""SKILL0: the withdrawal schedule on hand-made helpfulness tables, and the in-context skill env."""

import pytest

from lckernels_rl.agents.types import Message
from lckernels_rl.envs import make_env
from lckernels_rl.envs.skills.skill0 import (Skill0Env, SkillWithdrawalSchedule, active_skills, set_active_skills,
                                             skill_files)

NAMES = ["general_skills", "heat_skills", "cool_skills", "clean_skills", "slice_skills"]
T2S = {"heat": "heat_skills", "cool": "cool_skills", "clean": "clean_skills", "slice": "slice_skills",
       "heat_twice": "heat_skills"}


def test_released_phases_and_linear():
    s = SkillWithdrawalSchedule(NAMES, T2S, [6, 3, 0], total_steps=150, test_freq=10, schedule_id="p")
    # 15 validations, 5 per phase: steps 10..50 -> 6, 60..100 -> 3, 110..150 -> 0
    assert [s.max_set(k) for k in (10, 50, 60, 100, 110, 150)] == [6, 6, 3, 3, 0, 0]
    lin = SkillWithdrawalSchedule(NAMES, T2S, [6], total_steps=150, test_freq=10, mode="linear", schedule_id="p")
    # 6 * (1 - v / 14) rounded, v = validation index
    assert [lin.max_set(k) for k in (10, 80, 150)] == [6, 3, 0]
    with pytest.raises(ValueError, match="must divide"):
        SkillWithdrawalSchedule(NAMES, T2S, [6, 3, 0], total_steps=100, test_freq=10)


def test_withdrawal_rule_on_hand_table():
    s = SkillWithdrawalSchedule(NAMES, T2S, [6, 3, 0], total_steps=30, test_freq=10, schedule_id="w")
    deltas = {"heat": 0.3, "heat_twice": 0.1, "cool": -0.1, "clean": 0.0, "slice": 0.5}
    # per file: heat (0.3 + 0.1) / 2 = 0.2, cool -0.1 (dropped), clean 0.0 (kept), slice 0.5
    assert s.withdraw(deltas, 6) == ["general_skills", "slice_skills", "heat_skills", "clean_skills"]
    assert s.withdraw(deltas, 3) == ["general_skills", "slice_skills", "heat_skills"]
    assert s.withdraw(deltas, 1) == ["general_skills"]
    assert s.withdraw(deltas, 0) == []
    assert active_skills("w") == []
    # averaging makes a mixed file negative: (0.2 - 0.4) / 2 < 0
    assert s.withdraw({"heat": 0.2, "heat_twice": -0.4}, 6) == ["general_skills"]


def test_on_step_hook_calls_validation_with_and_without():
    s = SkillWithdrawalSchedule(NAMES, T2S, [6, 3, 0], total_steps=30, test_freq=10, schedule_id="h")
    calls = []

    def evaluate(names):
        calls.append(names)
        return {"heat": 0.9, "cool": 0.5, "slice": 0.2} if names else {"heat": 0.4, "cool": 0.6, "slice": 0.2}

    assert s.on_step(5, evaluate) is None and calls == []
    assert s.on_step(10, evaluate) == ["general_skills", "heat_skills", "slice_skills"]  # cool: 0.5 - 0.6 < 0
    assert calls == [NAMES, None]
    assert s.on_step(20, evaluate) == ["general_skills", "heat_skills", "slice_skills"]  # max_set 3
    assert s.on_step(30, evaluate) == []  # max_set 0
    assert [h["max_set"] for h in s.history] == [6, 3, 0]


def test_env_shows_active_skills_and_rewards():
    files, truth = skill_files(0)
    set_active_skills("e", ["general_skills"])
    env = Skill0Env(schedule_id="e")
    msgs, info = env.reset(task="heat egg")
    assert msgs[0].content == f"<skills>{files['general_skills'][0]}</skills> task heat egg"
    set_active_skills("e", None)
    msgs, _ = env.reset(task="heat egg")
    assert f"heat egg: {truth['heat egg']}" in msgs[0].content
    r = env.step(Message("assistant", f"<answer>{truth['heat egg']}</answer>"))
    assert r.terminated and env.verify(None).reward == 1.0
    env.reset(task="heat egg")
    env.step(Message("assistant", "go go go"))
    v = env.verify(None)
    assert v.reward == 0.0 and v.info["reason"].startswith("malformed")
    z = Skill0Env(skills="none")
    assert z.reset(task="cool mug")[0][0].content == "task cool mug"


def test_determinism_and_bad_args():
    a, b = make_env("skill0", skill_seed=3), make_env("skill0", skill_seed=3)
    assert a.truth == b.truth and a.truth != make_env("skill0", skill_seed=4).truth
    assert [a.reset(seed=s)[0][0].content for s in range(8)] == [b.reset(seed=s)[0][0].content for s in range(8)]
    with pytest.raises(ValueError, match="skills"):
        Skill0Env(skills="some")
    with pytest.raises(ValueError, match="general_skills"):
        SkillWithdrawalSchedule(["heat_skills"], T2S)


def test_config_smoke(tmp_path):
    import yaml

    from lckernels_rl.train.config import bundled_configs
    from tests.rl.tiny import fit_rl_rows, tiny_config

    data = yaml.safe_load(open(bundled_configs()["skill0"]))
    cfg = tiny_config(tmp_path, task={**data["task"], "train_size": 32, "eval_size": 4}, agent=data["agent"],
                      sft={"steps": 2, "batch_size": 4},
                      rl={"steps": 1, "prompts_per_step": 2, "rollouts_per_step": 4, "max_new_tokens": 8})
    assert len(fit_rl_rows(cfg)) == 1


def test_withdrawal_callback_drives_the_trainer(tmp_path):
    """callbacks: [{target: skill0_withdrawal}] with schedule [6, 0] over 2 RL steps, validating every step: after
    step 1 max_set is 6 (general_skills kept), after step 2 it is 0 -- no skill file is shown any more."""
    import yaml

    from lckernels_rl.train import Trainer
    from lckernels_rl.train.config import bundled_configs
    from tests.rl.tiny import tiny_config

    data = yaml.safe_load(open(bundled_configs()["skill0"]))
    cfg = tiny_config(tmp_path, task={**data["task"], "env_args": {"skill_seed": 0, "skills": "schedule"},
                                      "train_size": 32, "eval_size": 4}, agent=data["agent"],
                      sft={"steps": 1, "batch_size": 4},
                      rl={"steps": 2, "prompts_per_step": 2, "rollouts_per_step": 4, "max_new_tokens": 8},
                      callbacks=[{"target": "skill0_withdrawal", "args": {"max_set_schedule": [6, 0],
                                                                          "test_freq": 1}}])
    tr = Trainer(cfg)
    try:
        rows = [r for r in tr.fit() if r["phase"] == "rl"]
        assert [r["skill0_max_set"] for r in rows] == [6, 0]
        assert rows[1]["skill0_active"] == 0 and tr.env_overrides["train"]["active"] == []
        msgs, info = tr.make_env().reset(seed=0)
        assert info["skills"] == [] and "<skills>" not in msgs[0].content
    finally:
        tr.close()
    bad = tiny_config(tmp_path, callbacks=[{"target": "skill0_withdrawal"}])  # arithmetic: not a skill0 task
    tr = Trainer(bad)
    try:
        with pytest.raises(ValueError, match="skills: schedule"):
            tr.fit()
    finally:
        tr.close()
    with pytest.raises(ValueError, match="unknown skill files"):
        Skill0Env(active=["nope"])
