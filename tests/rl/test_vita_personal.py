"""vita_personal (VitaBench-style personalization, issue 14 §1): subtask success and rubric items on hand-made
episodes for each memory backend (null / rewrite / full_context), the sliding-window judge, the head truncation,
off-script and malformed turns, determinism per seed, the scripted demonstration through the agent loop, a trainer
smoke run."""

from __future__ import annotations

import string

import pytest

pytest.importorskip("transformers")

from lckernels_rl.agents import AgentLoop, Budget, Message  # noqa: E402
from lckernels_rl.agents.renderer import PLAIN_CHAT_TOKENS, make_renderer  # noqa: E402
from lckernels_rl.envs import make_tool_env  # noqa: E402
from lckernels_rl.envs.memory.vita import (DOMAINS, VitaPersonalEnv, judge_subtask, parse_action,  # noqa: E402
                                           sliding_windows, truncate_head)
from lckernels_rl.models import build_char_tokenizer  # noqa: E402
from lckernels_rl.train.sources import DemonstrationEngine  # noqa: E402

from .tiny import run_scripted  # noqa: E402

# food (diet, budget) -> trip (seat, budget) -> table (seat, time); diet, budget and seat are stated in subtask 0,
# time in subtask 2: subtask 1 needs seat + budget carried, subtask 2 needs seat carried
TASK = {"prefs": {"diet": "vegan", "seat": "window", "budget": "cheap", "time": "noon"},
        "subtasks": [{"domain": "food", "reveal": ["diet", "budget", "seat"]},
                     {"domain": "trip", "reveal": []},
                     {"domain": "table", "reveal": ["time"]}]}

A = "<action> {}</action>".format
M = "<memory> {}</memory>".format


def _run(env, turns, task=TASK):
    return run_scripted(env, turns, task)


def test_rewrite_all_right_and_the_note_is_all_that_crosses_subtasks():
    env = VitaPersonalEnv(memory="rewrite")
    msgs, _ = env.reset(task=TASK)
    assert msgs[0].content == "mem: -\nuser: order food. my diet is vegan. my budget is cheap. my seat is window."
    v, res = _run(env, [A("diet vegan, budget cheap"), M("diet vegan, budget cheap, seat window"),
                        A("seat window, budget cheap"), M("diet vegan, budget cheap, seat window"),
                        A("seat window, time noon")])
    assert v.reward == 1.0
    assert v.components == {"success": 1.0, "rubric_score": 1.0, "carried_success": 1.0, "format_ok": 1.0,
                            "success_at_0": 1.0, "success_at_1": 1.0, "success_at_2": 1.0}
    assert [m.content for m in res[0].messages] == ["write memory."] and res[0].rewrite is None
    assert res[1].rewrite[0].content == "mem: diet vegan, budget cheap, seat window\nuser: plan a trip."
    assert res[3].rewrite[0].content == "mem: diet vegan, budget cheap, seat window\nuser: book a table. my time is noon."
    assert res[-1].terminated and v.info["reason"] == "completed"
    assert [r["carried"] for r in v.info["subtasks"]] == [[], ["seat", "budget"], ["seat"]]


def test_rewrite_note_that_drops_a_preference_fails_the_later_subtasks():
    # the note forgets seat; the agent then guesses aisle twice
    v, _ = _run(VitaPersonalEnv(memory="rewrite"),
                [A("diet vegan, budget cheap"), M("diet vegan, budget cheap"), A("seat aisle, budget cheap"),
                 M("diet vegan, budget cheap, seat aisle"), A("seat aisle, time noon")])
    assert v.reward == pytest.approx(1 / 3)
    assert v.components["rubric_score"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert v.components["carried_success"] == 0.0
    assert (v.components["success_at_0"], v.components["success_at_1"], v.components["success_at_2"]) == (1, 0, 0)
    items = v.info["subtasks"][1]["items"]
    assert [(i["slot"], i["met"], i["reason"]) for i in items] == [("seat", False, "wrong_value"),
                                                                    ("budget", True, "met")]


def test_null_carries_nothing():
    env = VitaPersonalEnv(memory="null")
    v, res = _run(env, [A("diet vegan, budget cheap"), A("seat window"), A("seat window, time noon")])
    assert res[0].rewrite[0].content == "mem: -\nuser: plan a trip."  # no note turn, nothing carried
    assert res[1].rewrite[0].content == "mem: -\nuser: book a table. my time is noon."
    # subtask 1 lacks budget (missing); subtask 2 right (a lucky seat)
    assert v.reward == pytest.approx(2 / 3)
    assert v.components["rubric_score"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert v.components["carried_success"] == pytest.approx(0.5)
    assert v.info["subtasks"][1]["items"][1]["reason"] == "missing"
    assert all(r["memory_empty"] for r in v.info["subtasks"])


def test_full_context_keeps_the_history_and_cuts_it_from_the_head():
    env = VitaPersonalEnv(memory="full_context")
    _, res = _run(env, [A("diet vegan, budget cheap"), A("seat window, budget cheap"), A("seat window, time noon")])
    assert res[0].rewrite[0].content == ("user: order food. my diet is vegan. my budget is cheap. my seat is window.\n"
                                         "agent: <action> diet vegan, budget cheap</action>\nuser: plan a trip.")
    assert env.verify().reward == 1.0
    # 124 characters of history, budget 60: the tail starts inside the first line, which is dropped -> seat is lost
    env = VitaPersonalEnv(memory="full_context", context_budget=60)
    v, res = _run(env, [A("diet vegan, budget cheap"), A("seat aisle, budget cheap"), A("seat window, time noon")])
    assert res[0].rewrite[0].content == "agent: <action> diet vegan, budget cheap</action>\nuser: plan a trip."
    assert (v.components["success_at_1"], v.components["success_at_2"]) == (0.0, 1.0)
    assert v.reward == pytest.approx(2 / 3)


def test_unreached_subtasks_score_zero():
    v, _ = _run(VitaPersonalEnv(memory="null"), [A("diet vegan, budget cheap")])  # cut after subtask 0 of 3
    assert v.reward == pytest.approx(1 / 3) and v.info["reason"] == "incomplete"
    assert [r["reason"] for r in v.info["subtasks"]] == ["met", "no_action", "not_reached"]
    assert v.components["carried_success"] == 0.0


def test_truncate_head():
    assert truncate_head("ab\ncd", 10) == "ab\ncd"
    # tail "def\ngh": its first line is dropped although it happens to be whole (as the released read() does)
    assert truncate_head("abc\ndef\ngh", 6) == "gh"
    assert truncate_head("abc\ndefg", 5) == "defg"  # tail "\ndefg": the partial (empty) first line dropped
    assert truncate_head("abcdefg", 3) == "efg"  # no newline: the tail as it is
    assert truncate_head("abc\n", 2) == "c\n"  # a newline at the very end is not a line start


def test_off_script_turn_is_a_visible_error_then_a_failed_subtask():
    env = VitaPersonalEnv(memory="null", max_retries=1)
    v, res = _run(env, ["i will order it", A("diet vegan, budget cheap"), "ok", "<action> colour red</action>",
                        A("seat window, time noon")])
    assert [m.content for m in res[0].messages] == ["error: expected <action> slot value, ...</action>."]
    assert not res[0].terminated and res[0].rewrite is None
    # subtask 0: the retry counts (the judge reads the last action); subtask 1: two off-script turns -> failed
    assert v.info["subtasks"][0]["success"] == 1.0 and v.info["subtasks"][1]["reason"] == "off_script"
    assert v.components["format_ok"] == 0.0 and v.reward == pytest.approx(2 / 3)
    assert "unknown slot 'colour'" in v.info["errors"][-1]["error"]
    assert env.dialogues[0] == [("user", env.request(0)), ("agent", "i will order it"),
                                ("user", "error: expected <action> slot value, ...</action>."),
                                ("agent", A("diet vegan, budget cheap"))]


def test_malformed_and_empty_memory_notes():
    env = VitaPersonalEnv(memory="rewrite", max_retries=1)
    v, res = _run(env, [A("diet vegan, budget cheap"), "diet vegan", M("diet=vegan"), A("seat window, budget cheap"),
                        M(""), A("seat aisle, time noon")])
    assert [m.content for m in res[1].messages] == ["error: expected <memory> slot value, ...</memory>."]
    assert res[2].info["reason"] == "malformed_memory"
    assert res[2].rewrite[0].content == "mem: -\nuser: plan a trip."  # the malformed note became an empty memory
    assert res[4].rewrite[0].content == "mem: -\nuser: book a table. my time is noon."  # <memory></memory>: empty
    assert [r["memory_empty"] for r in v.info["subtasks"]] == [True, True, True]
    assert v.reward == pytest.approx(2 / 3) and v.components["format_ok"] == 0.0
    with pytest.raises(ValueError, match="not a value of 'seat'"):
        parse_action("<action> seat vegan</action>")


def test_sliding_windows_and_the_judge():
    w = sliding_windows(list(range(25)))  # released defaults: 10 messages, overlap 2
    assert w == [list(range(0, 10)), list(range(8, 18)), list(range(16, 25))]
    assert sliding_windows([1, 2, 3]) == [[1, 2, 3]]
    msgs = [("user", "order food."), ("agent", A("diet vegan, budget luxury")), ("user", "x"),
            ("agent", A("diet vegan, budget cheap")), ("user", "y")]
    items, n = judge_subtask(msgs, [("diet", "vegan"), ("budget", "cheap")], window_size=2, overlap=0)
    assert n == 3 and [i["met"] for i in items] == [True, True]  # the window without an action keeps the states
    items, _ = judge_subtask(msgs[:3], [("diet", "vegan"), ("budget", "cheap")], window_size=2, overlap=0)
    assert [i["reason"] for i in items] == ["met", "wrong_value"]
    items, n = judge_subtask([("user", "order food."), ("agent", "hello")], [("diet", "vegan")])
    assert (n, items[0]["met"], items[0]["reason"]) == (1, False, "missing")  # no action: nothing met
    with pytest.raises(ValueError, match="overlap"):
        sliding_windows([1], 2, 2)


def test_generation_is_deterministic_and_reveals_before_first_use():
    env = VitaPersonalEnv(num_subtasks=6)
    a, b, c = env.generate(5), env.generate(5), env.generate(6)
    assert a == b and a != c
    for seed in range(50):
        t = env.generate(seed)
        revealed = [s for st in t["subtasks"] for s in st["reveal"]]
        assert sorted(revealed) == sorted(t["prefs"])  # every preference stated exactly once
        for k, st in enumerate(t["subtasks"]):
            for slot in DOMAINS[st["domain"]][1]:
                assert any(slot in t["subtasks"][j]["reveal"] for j in range(k + 1))


def test_bad_arguments():
    for kw, match in (({"memory": "rag"}, "memory"), ({"num_subtasks": 0}, "num_subtasks"),
                      ({"memory_budget": 0}, "memory_budget"), ({"overlap": 10}, "overlap")):
        with pytest.raises(ValueError, match=match):
            VitaPersonalEnv(**kw)
    with pytest.raises(TypeError, match="task"):
        VitaPersonalEnv().reset(task=[1])
    assert VitaPersonalEnv(memory=None).memory_backend == "null"  # `memory: null` in YAML
    env = VitaPersonalEnv(num_subtasks=1)
    _run(env, [A("diet vegan, budget cheap")], task={**TASK, "subtasks": TASK["subtasks"][:1]})
    res = env.step(Message("assistant", "more"))
    assert res.terminated and res.info["reason"] == "turn after the episode ended"


@pytest.mark.parametrize("memory,forks", [("rewrite", 3), ("full_context", 3), ("null", 3)])
def test_demonstration_through_the_loop(memory, forks):
    env = make_tool_env("vita_personal", memory=memory, num_subtasks=4)
    tok = build_char_tokenizer(string.printable, extra_special_tokens=PLAIN_CHAT_TOKENS)
    renderer = make_renderer("plain", tok)
    traj = AgentLoop(DemonstrationEngine([env], renderer), renderer, None,
                     Budget(max_turns=12, max_context_tokens=2048, max_new_tokens=256)).run(env, seed=3)
    assert traj.stop_reason == "env_done" and len(traj.forks) == forks
    assert traj.components["success_at_0"] == 1.0
    if memory != "null":  # a perfect reader of a complete memory succeeds everywhere
        assert traj.reward == 1.0


def test_config_smoke(tmp_path):
    from .tiny import bundled_smoke_config, fit_rl_rows

    cfg = bundled_smoke_config("vita_personal", tmp_path)
    rows = fit_rl_rows(cfg)
    assert [r["step"] for r in rows] == [2, 3]
    assert "eval_success_at_0" in rows[-1] and "eval_carried_success" in rows[-1]
