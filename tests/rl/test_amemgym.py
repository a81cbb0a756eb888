"""AMemGym (issue 14 §1): scores and the write/read diagnosis on hand-made episodes, the context rewrite per turn,
bad turns, determinism per seed, the scripted demonstration through the agent loop, a trainer smoke run."""

from __future__ import annotations

import string

import pytest

pytest.importorskip("transformers")

from lckernels_rl.agents import AgentLoop, Budget  # noqa: E402
from lckernels_rl.agents.renderer import PLAIN_CHAT_TOKENS, make_renderer  # noqa: E402
from lckernels_rl.envs import make_tool_env  # noqa: E402
from lckernels_rl.envs.memory.amemgym import AMemGymEnv, parse_memory  # noqa: E402
from lckernels_rl.models import build_char_tokenizer  # noqa: E402
from lckernels_rl.train.sources import DemonstrationEngine  # noqa: E402

from .tiny import run_scripted  # noqa: E402

# two variables, three periods: drink changes at period 1, diet at period 2; one question per period
TASK = {
    "schema": {"diet": ["vegan", "fish", "meat"], "drink": ["tea", "coffee", "juice"]},
    "states": [{"diet": "vegan", "drink": "tea"}, {"diet": "vegan", "drink": "coffee"},
               {"diet": "meat", "drink": "coffee"}],
    "updates": [{"diet": "vegan", "drink": "tea"}, {"drink": "coffee"}, {"diet": "meat"}],
    "sessions": ["my diet is vegan. my drink is tea.", "drink was tea, now coffee.", "diet was vegan, now meat."],
    "questions": [{"required": ["drink"], "choices": [["tea"], ["coffee"], ["juice"]]},
                  {"required": ["diet"], "choices": [["meat"], ["vegan"], ["fish"]]}],
    "schedule": [[0], [0], [1]],
}


def _run(env, turns, task=TASK):
    return run_scripted(env, turns, task)


def _env(**kw):
    return AMemGymEnv(num_variables=2, **kw)


M = "<memory>{}</memory>".format
A = "<answer>{}</answer>".format


def test_all_correct_including_after_state_changes():
    v, res = _run(_env(), [M("diet vegan, drink tea"), A(1), M("diet vegan, drink coffee"), A(2),
                           M("diet meat, drink coffee"), A(1)])
    assert v.reward == 1.0
    assert v.components == {"format_ok": 1.0, "memory_accuracy": 1.0, "accuracy": 1.0, "write_failure": 0.0,
                            "read_failure": 0.0}
    assert res[-1].terminated and all(r.rewrite is not None for r in res[:-1])
    # every turn's context is rewritten: only the memory crosses periods
    assert res[0].rewrite[0].content == "mem: diet vegan, drink tea\nq: drink\n1) tea 2) coffee 3) juice"
    assert res[1].rewrite[0].content == "mem: diet vegan, drink tea\nuser: drink was tea, now coffee."
    assert v.info["reason"] == "completed"


def test_write_failure_when_memory_was_wrong_at_the_last_update():
    # period 1: the user said coffee, the memory kept tea -> the tea answer misses; drink's write_pos is 1
    v, _ = _run(_env(), [M("diet vegan, drink tea"), A(1), M("diet vegan, drink tea"), A(1),
                         M("diet meat, drink coffee"), A(1)])
    assert v.reward == pytest.approx(2 / 3)
    assert v.components["write_failure"] == pytest.approx(1 / 3)
    assert v.components["read_failure"] == 0.0
    assert v.components["memory_accuracy"] == pytest.approx((1 + 0.5 + 1) / 3)
    miss = [r for r in v.info["results"] if r["score"] == 0]
    assert [(r["period"], r["diagnosis"], r["write_wrong"]) for r in miss] == [(1, "write", ["drink"])]


def test_read_failure_when_memory_was_right():
    # period 1: memory right (coffee), answer tea; period 2: memory right (meat), answer vegan
    v, _ = _run(_env(), [M("diet vegan, drink tea"), A(1), M("diet vegan, drink coffee"), A(1),
                         M("diet meat, drink coffee"), A(2)])
    assert v.reward == pytest.approx(1 / 3)
    assert (v.components["write_failure"], v.components["read_failure"]) == (0.0, pytest.approx(2 / 3))
    # a memory right at the update (period 1) but lost later (period 2) is a read failure too
    task = {**TASK, "schedule": [[0], [0], [0]]}
    v, _ = _run(_env(), [M("diet vegan, drink tea"), A(1), M("diet vegan, drink coffee"), A(2), M("diet meat"), A(2)],
                task)
    last = v.info["results"][-1]
    assert (last["score"], last["reason"], last["diagnosis"]) == (0.0, "answered_without_memory", "read")
    assert v.reward == pytest.approx(2 / 3)


def test_stale_memory_after_an_unrelated_update_is_diagnosed_at_its_own_write_pos():
    # the diet question at period 2: diet last updated at period 2; memory there says vegan -> write failure,
    # although the period-0 memory (vegan, right then) was fine
    v, _ = _run(_env(), [M("diet vegan, drink tea"), A(1), M("diet vegan, drink coffee"), A(2),
                         M("diet vegan, drink coffee"), A(2)])
    assert v.info["results"][-1]["diagnosis"] == "write"
    assert v.reward == pytest.approx(2 / 3)


def test_malformed_turns_end_the_episode_with_zero_reward_and_a_reason():
    v, res = _run(_env(), [M("diet vegan, drink tea"), A(1), "diet vegan, drink coffee"])
    assert res[-1].terminated and v.reward == 0.0 and v.components["format_ok"] == 0.0
    assert v.info["reason"].startswith("malformed_memory")
    v, _ = _run(_env(), [M("diet=vegan drink=tea")])  # an entry that is not 'name value'
    assert v.reward == 0.0 and "not 'name value'" in v.info["reason"]
    v, _ = _run(_env(), [M("diet vegan, drink tea"), A(4)])  # index out of range
    assert v.reward == 0.0 and v.info["reason"].startswith("malformed_answer")
    v, _ = _run(_env(), [M("diet vegan, drink tea"), "1"])
    assert v.reward == 0.0 and v.info["reason"].startswith("malformed_answer")


def test_empty_memory_earns_nothing_by_a_lucky_guess():
    turns = [M(""), A(1), M(""), A(2), M(""), A(1)]  # every answer is the golden one
    v, _ = _run(_env(), turns)
    assert v.reward == 0.0 and v.components["write_failure"] == 1.0
    assert {r["reason"] for r in v.info["results"]} == {"answered_without_memory"}
    v, _ = _run(_env(credit_guesses=True), turns)
    assert v.reward == 1.0


def test_memory_budget_drops_entries_beyond_it():
    env = _env(memory_budget=1)
    v, _ = _run(env, [M("diet vegan, drink tea"), A(1)])
    assert env.memory_log[0] == {"diet": "vegan"} and v.info["truncated_entries"] == 1
    assert v.info["results"][0]["diagnosis"] == "write"  # drink never reached the memory
    assert v.reward == 0.0 and v.info["reason"] == "incomplete"  # cut after one question: 0 of 3


def test_parse_memory():
    assert parse_memory(" <memory> a x, b y,a z</memory>\n") == {"b": "y", "a": "z"}
    assert parse_memory("<memory></memory>") == {} and parse_memory("<memory> </memory>") == {}
    for bad in ("a x", "<memory>a x</memory> extra", "<memory>a=x</memory>", "<memory>a x b y</memory>",
                "<memory>a x,</memory>"):
        with pytest.raises(ValueError):
            parse_memory(bad)


def test_generation_is_deterministic_and_consistent():
    env = AMemGymEnv()
    a, b, c = env.generate(5), env.generate(5), env.generate(6)
    assert a == b and a != c
    assert len(a["states"]) == 10 and len(a["schema"]) == 6
    for v in a["schema"]:  # at most max_changes_per_state changes of one variable
        assert sum(v in u for u in a["updates"][1:]) <= 3
    for p in range(1, 10):
        assert len(a["updates"][p]) <= 2 and a["states"][p] == {**a["states"][p - 1], **a["updates"][p]}
    for q in a["questions"]:
        assert len(q["required"]) == 2 and len(q["choices"]) >= 4
        assert all(q["choices"].count(c) == 1 for c in q["choices"])
    with pytest.raises(ValueError, match="num_variables"):
        AMemGymEnv(num_variables=9)
    with pytest.raises(ValueError, match="memory_budget"):
        AMemGymEnv(memory_budget=0)
    with pytest.raises(TypeError, match="task"):
        AMemGymEnv().reset(task=[1])


def test_demonstration_through_the_loop_forks_per_turn_and_scores_one():
    env = make_tool_env("amemgym", num_variables=3, num_periods=4, changes_per_period=1, num_questions=3,
                        vars_per_question=1, questions_per_period=1)
    tok = build_char_tokenizer(string.printable, extra_special_tokens=PLAIN_CHAT_TOKENS)
    renderer = make_renderer("plain", tok)
    engine = DemonstrationEngine([env], renderer)
    traj = AgentLoop(engine, renderer, None, Budget(max_turns=8, max_context_tokens=1024,
                                                    max_new_tokens=256)).run(env, seed=3)
    assert traj.stop_reason == "env_done" and traj.reward == 1.0
    assert len(traj.forks) == 7 and all(f.num_turns == 1 for f in traj.forks)  # 4 writes + 4 answers, one each
    assert len(traj.to_samples()) == 8


def test_config_smoke(tmp_path):
    from .tiny import bundled_smoke_config, fit_rl_rows

    cfg = bundled_smoke_config("amemgym", tmp_path)
    rows = fit_rl_rows(cfg)
    assert [r["step"] for r in rows] == [2, 3]
    assert "eval_accuracy" in rows[-1] and "eval_write_failure" in rows[-1]
