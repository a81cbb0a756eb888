"""heavy_thinking (LongCat-Flash-Thinking-2601 §4): the summary reward and the majority-vote baseline on hand-made
candidate sets, malformed answers, the synthetic first stage (deterministic per seed), a 2-step trainer smoke run."""

from __future__ import annotations

import numpy as np
import pytest

from lckernels_rl.agents import Message
from lckernels_rl.agents.trajectory import Trajectory
from lckernels_rl.envs import make_tool_env
from lckernels_rl.envs.heavy_thinking import HeavyThinkingEnv, majority_vote, synthetic_candidates


def _verdict(env, task, text, stop="env_done"):
    msgs, _ = env.reset(task=task)
    t = Trajectory(messages=[*msgs] + ([Message("assistant", text)] if text is not None else []), stop_reason=stop)
    return msgs, env.verify(t)


def test_majority_vote_by_hand():
    assert majority_vote(["46", "47", "46", "45"]) == "46"
    assert majority_vote(["47", "46", "47", "46"]) == "47"  # tie: the first seen
    assert majority_vote([" 5", "5 ", "6"]) == "5"
    assert majority_vote(["9"]) == "9" and majority_vote([]) is None


def test_summary_reward_and_baselines_on_hand_made_candidates():
    env = make_tool_env("heavy_thinking")
    assert isinstance(env, HeavyThinkingEnv)
    # majority wrong (the attractor 47 twice), the right answer present once: the summary can beat the vote
    task = {"prompt": "12+34=", "answer": "46", "candidates": ["47", "46", "47", "30"]}
    msgs, v = _verdict(env, task, "46")
    assert msgs[0].content == "12+34=|47 46 47 30|"
    assert (v.reward, v.components) == (1.0, {"correct": 1.0, "in_candidates": 1.0, "majority_correct": 0.0,
                                              "oracle": 1.0, "k": 4.0})
    _, v = _verdict(env, task, "47")  # copying the majority
    assert (v.reward, v.components["in_candidates"], v.components["majority_correct"]) == (0.0, 1.0, 0.0)
    # the right answer is not among the candidates: pass@K 0, a summary that computes it still scores
    task2 = {"prompt": "3+4=", "answer": "7", "candidates": ["8", "8"]}
    _, v = _verdict(env, task2, " 7 ")
    assert (v.reward, v.components["oracle"], v.components["in_candidates"], v.components["k"]) == (1.0, 0.0, 0.0, 2.0)
    task3 = {"prompt": "3+4=", "answer": "7", "candidates": ["7", "7", "8"]}
    _, v = _verdict(env, task3, "8")
    assert (v.reward, v.components["majority_correct"]) == (0.0, 1.0)
    hidden = HeavyThinkingEnv(show_question=False)
    assert hidden.reset(task=task)[0][0].content == "|47 46 47 30|"


@pytest.mark.parametrize("text,stop", [("", "env_done"), ("forty", "env_done"), ("4 6", "env_done"),
                                       (None, "context")])
def test_malformed_answers_zero_reward_with_reason(text, stop):
    env = HeavyThinkingEnv()
    _, v = _verdict(env, {"prompt": "1+1=", "answer": "2", "candidates": ["2", "2"]}, text, stop)
    assert v.reward == 0.0 and v.info["reason"]
    assert v.components["majority_correct"] == 1.0  # the baseline is still reported


def test_bad_arguments_and_tasks():
    for kw, match in [({"k": 0}, "k"), ({"k": [2, "4"]}, "k"), ({"first_stage": "x"}, "first_stage"),
                      ({"p_correct": 0.8, "p_attractor": 0.4}, "p_correct"), ({"attractor_offsets": [0]}, "offsets"),
                      ({"base": "nope"}, "unknown environment")]:
        with pytest.raises(ValueError, match=match):
            HeavyThinkingEnv(**kw)
    env = HeavyThinkingEnv()
    with pytest.raises(ValueError, match="candidates"):
        env.reset(task={"prompt": "1+1=", "answer": "2", "candidates": []})
    with pytest.raises(ValueError, match="prompt"):
        env.reset(task={"answer": "2"})
    with pytest.raises(ValueError, match="candidates"):
        HeavyThinkingEnv(first_stage="given").reset(seed=0)  # the given mode needs its candidates


def test_synthetic_first_stage_deterministic_and_shaped():
    a, b = HeavyThinkingEnv(k=[2, 4, 8]), HeavyThinkingEnv(k=[2, 4, 8])
    assert a.reset(seed=5)[0][0].content == b.reset(seed=5)[0][0].content
    assert a.state_digest() == b.state_digest()
    assert {len(a.make_task(s)["candidates"]) for s in range(40)} == {2, 4, 8}
    rng = np.random.default_rng(0)
    cands = [synthetic_candidates("50", 8, rng, p_correct=0.35, p_attractor=0.4) for _ in range(400)]
    flat = [c for cs in cands for c in cs]
    assert abs(flat.count("50") / len(flat) - 0.35) < 0.03
    # one attractor per problem: a set's off-by-1-or-2 wrong answers mostly take a single value (random near misses
    # land there with probability 0.25 * 4/40 per sample)
    near = [{c for c in cs if c != "50" and abs(int(c) - 50) <= 2} for cs in cands]
    assert np.mean([len(s) == 1 for s in near]) > 0.8
    maj = np.mean([majority_vote(cs) == "50" for cs in cands])
    oracle = np.mean(["50" in cs for cs in cands])
    assert maj < oracle  # the gap a trained summary can close
    t = HeavyThinkingEnv().make_task(3)
    assert t["prompt"].endswith("=") and t["answer"] == str(eval(t["prompt"][:-1]))


def test_demonstration_and_corpus():
    env = HeavyThinkingEnv()
    msgs, info = env.reset(seed=1)
    assert env.demonstration(msgs) == info["answer"]
    assert env.demonstration([*msgs, Message("assistant", "1")]) is None
    assert set("".join(env.tokenizer_corpus(8))) <= set(env.alphabet)


def test_config_trains_two_rl_steps(tmp_path):
    from lckernels_rl.train import load_config

    from .tiny import TINY_LONGCAT, fit_rl_rows

    cfg = load_config("heavy_thinking", [f"model.overrides={dict(TINY_LONGCAT)}".replace("'", '"'), "sft.steps=2",
                                         "sft.batch_size=8", "rl.steps=2", "rl.prompts_per_step=2",
                                         "rl.rollouts_per_step=8", "task.train_size=16", "task.eval_size=4",
                                         f"log.output_dir={tmp_path}/run", "log.eval_every=2", "log.progress=false",
                                         "log.plots=false", "threads=1"])
    rows = fit_rl_rows(cfg)
    assert len(rows) == 2 and all(r["episodes"] == 8 for r in rows)
    assert {"eval_correct", "eval_majority_correct", "eval_oracle"} <= set(rows[-1])
