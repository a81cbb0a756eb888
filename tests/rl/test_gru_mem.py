"""GRU-Mem (issue 14 §1): gate and outcome rewards on hand-made gate sequences, the update gate holding memory, the
exit gate stopping the reading, bad turns, determinism per seed, demonstrations through the loop, a trainer smoke
run."""

from __future__ import annotations

import string

import pytest

pytest.importorskip("transformers")

from lckernels_rl.agents import AgentLoop, Budget, Message  # noqa: E402
from lckernels_rl.agents.renderer import PLAIN_CHAT_TOKENS, make_renderer  # noqa: E402
from lckernels_rl.envs import make_tool_env  # noqa: E402
from lckernels_rl.envs.memory.gru_mem import GRUMemEnv, exit_reward, parse_gate_turn, update_reward  # noqa: E402
from lckernels_rl.models import build_char_tokenizer  # noqa: E402
from lckernels_rl.train.sources import DemonstrationEngine  # noqa: E402

from .tiny import run_scripted  # noqa: E402

# six chunks; the asked key ab sits in chunk 1 (0-based), a distractor key zz in chunk 3
TASK = {"chunks": ["a b", "x note ab=42.", "c d", "y note zz=7.", "e f", "g h"],
        "query": ["ab"], "answers": {"ab": "42"}, "evidence": [1]}


def G(update, memory, exit_):
    return f"<update>{update}</update><memory>{memory}</memory><exit>{exit_}</exit>"


def _run(env, turns, task=TASK):
    return run_scripted(env, turns, task)


def test_gated_reader_exiting_at_the_evidence():
    env = GRUMemEnv(min_chunks=6, max_chunks=6)
    v, res = _run(env, [G("n", "", "n"), G("y", "ab=42", "y"), "<answer>42</answer>"])
    # outcome 1, r_update 2/2, r_exit 1 -> 1 + 0.5 + 0.5
    assert v.reward == 2.0
    assert (v.components["outcome"], v.components["r_update"], v.components["r_exit"]) == (1.0, 1.0, 1.0)
    assert v.components["chunks_read"] == 2.0 and v.components["read_fraction"] == pytest.approx(2 / 6)
    assert res[0].rewrite[0].content == "q: ab\nmem: -\nchunk 2: x note ab=42."
    assert res[1].rewrite[0].content == "q: ab\nmem: ab=42\nanswer:"  # exit stops reading: the answer turn next


def test_always_update_never_exit_reader():
    env = GRUMemEnv(min_chunks=6, max_chunks=6)
    turns = [G("y", "", "n")] + [G("y", "ab=42", "n")] * 5 + ["<answer>42</answer>"]
    v, _ = _run(env, turns)
    # update gate right on 1 chunk of 6 (the evidence); never exited -> r_exit 0
    assert v.components["r_update"] == pytest.approx(1 / 6) and v.components["r_exit"] == 0.0
    assert v.reward == pytest.approx(1 + 0.5 / 6)
    assert v.components["chunks_read"] == 6.0
    v, _ = _run(GRUMemEnv(min_chunks=6, max_chunks=6, w_update=0.0, w_exit=0.0), turns)  # outcome-only weights
    assert v.reward == 1.0


def test_late_and_premature_exits():
    env = GRUMemEnv(min_chunks=6, max_chunks=6)
    v, _ = _run(env, [G("n", "", "n"), G("y", "ab=42", "n"), G("n", "", "n"), G("n", "", "y"), "<answer>42</answer>"])
    # exit at chunk 3, last evidence 1, n 6: r_exit = 1 - 2/5 = 0.6; gates all right
    assert v.components["r_exit"] == pytest.approx(0.6) and v.components["r_update"] == 1.0
    assert v.reward == pytest.approx(1 + 0.5 + 0.3)
    v, _ = _run(env, [G("y", "ab=1", "y"), "<answer>1</answer>"])  # exit before the evidence, wrong answer
    assert v.components == {**v.components, "outcome": 0.0, "r_update": 0.0, "r_exit": 0.0}
    assert v.reward == 0.0


def test_memory_unchanged_when_the_update_gate_is_off():
    env = GRUMemEnv(min_chunks=6, max_chunks=6)
    env.reset(task=TASK)
    r = env.step(Message("assistant", G("n", "ab=99", "n")))
    assert env.memory == {} and r.rewrite[0].content.splitlines()[1] == "mem: -"
    env.step(Message("assistant", G("y", "ab=42", "n")))
    assert env.memory == {"ab": "42"}
    r = env.step(Message("assistant", G("n", "ab=5", "n")))
    assert env.memory == {"ab": "42"} and r.rewrite[0].content.splitlines()[1] == "mem: ab=42"
    r = env.step(Message("assistant", G("y", "ab=42 zz=7 cd=1", "n")))
    assert env.memory == {"ab": "42", "zz": "7", "cd": "1"}  # the agent may keep distractors (within the cap)


def test_memory_cap_drops_extra_entries():
    env = GRUMemEnv(min_chunks=6, max_chunks=6, memory_max_entries=1)
    v, _ = _run(env, [G("y", "ab=42 zz=7", "y"), "<answer>42</answer>"])
    assert env.memory == {"ab": "42"} and v.info["dropped_entries"] == 1


def test_bad_turns_give_zero_reward_with_a_reason():
    env = GRUMemEnv(min_chunks=6, max_chunks=6)
    v, res = _run(env, [G("maybe", "", "n")])
    assert res[-1].terminated and v.reward == 0.0 and v.info["reason"].startswith("malformed_turn")
    assert v.components["format_ok"] == 0.0
    v, _ = _run(env, ["<memory>ab=42</memory><update>y</update><exit>n</exit>"])  # misordered tags
    assert v.reward == 0.0 and v.info["reason"].startswith("malformed_turn")
    v, _ = _run(env, [G("y", "ab:42", "n")])
    assert "not key=number" in v.info["reason"]
    v, _ = _run(env, [G("n", "", "n"), G("y", "ab=42", "y"), "42"])  # answer without tags
    assert v.reward == 0.0 and v.info["reason"].startswith("malformed_answer")
    v, res = _run(env, [G("n", "", "y")])  # exit with an empty memory: nothing to answer from
    assert res[-1].terminated and v.reward == 0.0 and v.info["reason"].startswith("empty_memory")
    v, _ = _run(env, [G("n", "", "n")] * 6)  # read everything, never wrote: empty memory too
    assert v.reward == 0.0 and v.info["reason"].startswith("empty_memory")
    v, _ = _run(env, [G("y", "ab=42", "n")])  # cut by the loop mid-document
    assert v.reward == 0.0 and v.info["reason"] == "incomplete"


def test_gate_reward_functions_on_hand_values():
    assert update_reward([True, False, False], [True, False, True]) == pytest.approx(2 / 3)
    assert update_reward([], []) == 0.0
    assert exit_reward(1, 1, 6) == 1.0 and exit_reward(0, 1, 6) == 0.0
    assert exit_reward(3, 1, 6) == pytest.approx(0.6) and exit_reward(6, 1, 6) == 0.0
    with pytest.raises(ValueError):
        exit_reward(7, 1, 6)
    with pytest.raises(ValueError):
        update_reward([True], [])
    assert parse_gate_turn(" " + G("y", "ab=4 cd=5 ab=6", "n") + "\n") == (True, {"cd": "5", "ab": "6"}, False)


def test_generation_is_deterministic_and_in_range():
    env = GRUMemEnv()
    a, b, c = env.generate(11), env.generate(11), env.generate(12)
    assert a == b and a != c
    for s in range(20):
        t = env.generate(s)
        assert 32 <= len(t["chunks"]) <= 128
        (k,) = t["query"]
        assert f" note {k}={t['answers'][k]}." in t["chunks"][t["evidence"][0]]
        assert sum(" note " in ch for ch in t["chunks"]) == 3  # 1 asked + 2 distractor needles
    small = GRUMemEnv(key_pool=3).generate(0)  # 3 needles from a pool of 3 names
    assert sorted(small["query"] + [c.split(" note ")[1][:2] for c in small["chunks"] if " note " in c
                                    and c.split(" note ")[1][:2] not in small["query"]]) == ["aa", "ab", "ac"]
    for bad in ({"min_chunks": 0}, {"key_pool": 2}, {"key_pool": 677}, {"min_chunks": 8, "max_chunks": 4}, {"w_exit": -1.0}, {"demo_policy": "x"},
                {"min_chunks": 2, "max_chunks": 2, "num_queries": 2, "num_distractors": 1}):
        with pytest.raises(ValueError):
            GRUMemEnv(**bad)


@pytest.mark.parametrize("policy, read_all", [("gated", False), ("memagent", True)])
def test_demonstrations_through_the_loop(policy, read_all):
    env = make_tool_env("gru_mem", min_chunks=32, max_chunks=40, num_queries=2, demo_policy=policy)
    tok = build_char_tokenizer(string.printable, extra_special_tokens=PLAIN_CHAT_TOKENS)
    renderer = make_renderer("plain", tok)
    traj = AgentLoop(DemonstrationEngine([env], renderer), renderer, None,
                     Budget(max_turns=64, max_context_tokens=1024, max_new_tokens=256)).run(env, seed=4)
    assert traj.stop_reason == "env_done" and traj.components["outcome"] == 1.0
    n, last = env.n_chunks, env.last_evidence
    assert traj.components["chunks_read"] == (n if read_all else last + 1)
    assert len(traj.forks) == traj.components["chunks_read"]  # one branch per chunk, then the answer turn
    if policy == "gated":
        assert traj.reward == 2.0


def test_config_smoke(tmp_path):
    from .tiny import bundled_smoke_config, fit_rl_rows

    cfg = bundled_smoke_config("gru_mem", tmp_path,
                               "task.env_args={min_chunks: 32, max_chunks: 32, words_per_chunk: 2}")
    rows = fit_rl_rows(cfg)
    assert [r["step"] for r in rows] == [2, 3]
    assert "eval_accuracy" in rows[-1] and "eval_chunks_read" in rows[-1]
