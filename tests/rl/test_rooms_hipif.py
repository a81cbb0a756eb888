"""HIPIF rooms: hand-made episodes with hand-written rewards, folding as a fork, reflection, bad input, seeds."""

import string

import pytest

from lckernels_rl.agents import AgentLoop, Budget
from lckernels_rl.agents.renderer import PLAIN_CHAT_TOKENS, make_renderer
from lckernels_rl.models import build_char_tokenizer
from lckernels_rl.train.sources import DemonstrationEngine

from lckernels_rl.agents.types import Message
from lckernels_rl.envs import make_env, make_tool_env
from lckernels_rl.envs.long_horizon.rooms import RoomsEnv

TASK = {"keys": ["b", "a", "c"]}
TASK4 = {"keys": ["b", "a", "c", "a"]}


def act(env, text):
    return env.step(Message("assistant", text))


def test_registry():
    assert isinstance(make_env("hipif_rooms"), RoomsEnv)


def test_perfect_episode_subgoal_rewards_and_folds():
    env = RoomsEnv(n_rooms=3, fold=True)
    msgs, _ = env.reset(task=TASK)
    assert msgs[0].content == "rooms 3 | r1 key b"
    r = act(env, "take b")
    assert (r.messages[0].content, r.reward, r.rewrite) == ("ok key", 0.0, None)
    assert act(env, "open").messages[0].content == "ok door"
    r = act(env, "go")  # subgoal r1 done: process reward, fold into a summary
    assert r.reward == 0.25 and r.messages == [] and not r.terminated
    assert [m.content for m in r.rewrite] == ["rooms 3 | done r1 | r2 key a"]
    for a in ("take a", "open"):
        act(env, a)
    r = act(env, "go")
    assert [m.content for m in r.rewrite] == ["rooms 3 | done r1 r2 | r3 key c"]
    act(env, "take c"), act(env, "open")
    r = act(env, "go")
    assert r.terminated and r.reward == 1.25 and r.rewrite is None  # 0.25 subgoal + 1.0 exit
    v = env.verify(None)
    assert v.reward == 1.75  # 3 * 0.25 + 1.0
    assert v.components == {"success": 1.0, "subgoals": 3.0, "errors": 0.0, "reflections": 0.0, "folds": 2.0}


def test_no_fold_keeps_history():
    env = RoomsEnv(n_rooms=3, fold=False)
    env.reset(task=TASK)
    act(env, "take b"), act(env, "open")
    r = act(env, "go")
    assert r.rewrite is None and [m.content for m in r.messages] == ["done r1 | r2 key a"] and r.reward == 0.25


def test_partial_episode_reward():
    env = RoomsEnv(n_rooms=3)
    env.reset(task=TASK)
    act(env, "take b"), act(env, "open"), act(env, "go")
    assert env.verify(None).reward == 0.25  # one subgoal, no exit


def test_reflection_levels_and_failure():
    env = RoomsEnv(n_rooms=3, fold=True, reflect_after=2, max_errors=2)
    env.reset(task=TASK)
    r = act(env, "take a")  # low-level reflection
    assert r.messages[0].content == "err no key at a | sub r1" and r.reward == 0.0
    assert r.info["reflection"] == "action"
    r = act(env, "open")  # second failure in the subgoal: high-level reflection, failed attempt folded away
    assert r.info["reflection"] == "subgoal" and r.messages == []
    assert [m.content for m in r.rewrite] == ["rooms 3 | done none | r1 key b | reflect r1: take b, open, go"]
    r = act(env, "go")  # third error > max_errors: the episode fails
    assert r.terminated and r.info["failure"] == "too_many_errors"
    v = env.verify(None)
    assert v.reward == 0.0 and v.components["errors"] == 3.0 and v.components["reflections"] == 1.0
    assert v.info["errors"] == ["no key at a", "need key", "door locked"]


def test_reflection_without_fold_is_a_message():
    env = RoomsEnv(n_rooms=2, fold=False, reflect_after=1)
    env.reset(task={"keys": ["a", "b"]})
    r = act(env, "go")
    assert r.rewrite is None and r.messages[0].content == "err door locked | reflect r1: take a, open, go"


@pytest.mark.parametrize("text", ["", "take", "take bb", "fly", "@take(x=b)", "go now"])
def test_malformed_actions_are_visible_errors(text):
    env = RoomsEnv(n_rooms=2, reflect_after=5)
    env.reset(task={"keys": ["a", "b"]})
    r = act(env, text)
    assert r.reward == 0.0 and not r.terminated and r.messages[0].content.startswith("err bad action")
    assert "use take X|open|go" in r.info["error"]


@pytest.mark.parametrize("fold, budget", [(True, 96), (False, 96), (False, 2048)])
def test_fork_through_the_agent_loop(fold, budget):
    """Folding forks the trajectory: each closed branch holds one subgoal's turns, the next branch starts from the
    summary; without folding the full history overflows the same small context."""
    env = make_tool_env("hipif_rooms", n_rooms=4, fold=fold)
    tok = build_char_tokenizer(string.printable, extra_special_tokens=PLAIN_CHAT_TOKENS)
    renderer = make_renderer("plain", tok)
    traj = AgentLoop(DemonstrationEngine([env], renderer), renderer, None,
                     Budget(max_turns=40, max_context_tokens=budget, max_new_tokens=8)).run(env, task=TASK4)
    if fold:
        assert traj.stop_reason == "env_done" and traj.reward == 2.0  # 4 * 0.25 + 1.0
        assert len(traj.forks) == 3 and all(f.stop_reason == "fork" and f.num_turns == 3 for f in traj.forks)
        assert [m.content for m in traj.forks[1].messages if m.role == "user"] == [
            "rooms 4 | done r1 | r2 key a", "ok key", "ok door"]
        assert [m.content for m in traj.messages][:1] == ["rooms 4 | done r1 r2 r3 | r4 key a"]
        assert len(traj.to_samples()) == 4
    elif budget == 96:
        assert traj.stop_reason == "context" and traj.forks == [] and traj.reward < 2.0
    else:
        assert traj.stop_reason == "env_done" and traj.reward == 2.0 and traj.forks == []


def test_determinism_and_bad_args():
    a, b = RoomsEnv(n_rooms=5), RoomsEnv(n_rooms=5)
    assert a.reset(seed=3)[1] == b.reset(seed=3)[1]
    assert [RoomsEnv(n_rooms=5).reset(seed=s)[1]["task"]["keys"] for s in range(6)] != [a.keys] * 6
    with pytest.raises(ValueError, match="n_rooms"):
        RoomsEnv(n_rooms=0)
    with pytest.raises(ValueError, match="spots"):
        RoomsEnv(spots="aa")
    with pytest.raises(TypeError, match="fold"):
        RoomsEnv(fold="yes")
    with pytest.raises(ValueError, match="task"):
        RoomsEnv(n_rooms=2).reset(task={"keys": ["a"]})


def test_demonstration_solves_and_corpus():
    env = RoomsEnv(n_rooms=4)
    env.reset(seed=1)
    for _ in range(12):
        r = act(env, env.demonstration([]))
    assert r.terminated and env.verify(None).reward == 2.0
    assert "ok door" in env.tokenizer_corpus(2)


def test_config_smoke(tmp_path):
    from lckernels_rl.train.config import load_config

    from .tiny import TINY_LONGCAT, fit_rl_rows

    cfg = load_config("hipif_rooms", [f"log.output_dir={tmp_path / 'run'}", "log.progress=false", "log.plots=false",
                                      "log.checkpoint_every=0", "log.eval_every=2", f"model.overrides={TINY_LONGCAT}",
                                      "task.train_size=8", "task.eval_size=2", "sft.steps=1", "sft.batch_size=2",
                                      "rl.steps=2", "rl.prompts_per_step=2", "rl.rollouts_per_step=4",
                                      "task.env_args.n_rooms=2"])
    rows = fit_rl_rows(cfg)
    assert [r["step"] for r in rows] == [2, 3]
