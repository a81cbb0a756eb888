"""DuCA sales dialogue: hand-made sessions with hand-written turn / session rewards, repetition, bad input, seeds."""

import string

import pytest
import torch

from lckernels_rl.advantages import hian_advantages
from lckernels_rl.agents import AgentLoop, Budget, Message
from lckernels_rl.agents.renderer import PLAIN_CHAT_TOKENS, make_renderer
from lckernels_rl.envs import make_env, make_tool_env
from lckernels_rl.envs.long_horizon.sales import SalesEnv
from lckernels_rl.models import build_char_tokenizer
from lckernels_rl.train.sources import DemonstrationEngine

TASK = {"need": "room", "budget": "high"}  # product "rh"


def run(env, turns):
    return [env.step(Message("assistant", t)) for t in turns]


def test_registry():
    assert isinstance(make_env("duca_sales"), SalesEnv)


def test_good_session_turn_and_session_rewards():
    env = SalesEnv()
    assert env.reset(task=TASK)[0][0].content == "hi"
    res = run(env, ["ask need", "ask budget", "offer rh", "close"])
    assert [r.messages[0].content for r in res] == ["need room", "budget high", "yes", "deal"]
    assert [r.reward for r in res] == [0.1, 0.1, 0.0, 0.0]
    assert res[-1].terminated
    v = env.verify(None)
    assert v.components == {"session": 1.0, "turn_sum": pytest.approx(0.2), "repeats": 0.0, "errors": 0.0,
                            "turns": 4.0}
    assert v.reward == pytest.approx(1.2) and v.info["turn_rewards"] == [0.1, 0.1, 0.0, 0.0]


def test_repetition_penalty_and_wrong_close():
    env = SalesEnv(max_turns=6)
    env.reset(task=TASK)
    res = run(env, ["ask need", "ask need", "offer sl", "close"])
    assert [r.messages[0].content for r in res] == ["need room", "you said that", "no", "no deal"]
    assert [r.reward for r in res] == [0.1, -0.2, 0.0, 0.0]
    v = env.verify(None)
    assert v.reward == pytest.approx(-0.1) and v.components["session"] == 0.0 and v.components["repeats"] == 1.0


def test_session_only_mode_ignores_turn_rewards():
    env = SalesEnv(reward_mode="session")
    env.reset(task=TASK)
    run(env, ["ask need", "ask need", "offer rh", "close"])
    assert env.verify(None).reward == 1.0


def test_out_of_turns():
    env = SalesEnv(max_turns=3)
    env.reset(task=TASK)
    res = run(env, ["ask need", "offer rh", "offer sl"])
    assert res[-1].terminated and res[-1].messages[0].content == "bye" and res[-1].info["failure"] == "out_of_turns"
    assert env.verify(None).reward == pytest.approx(0.1)


@pytest.mark.parametrize("text", ["", "buy now", "offer s", "ask price", "close deal"])
def test_malformed_turns_are_visible_errors(text):
    env = SalesEnv()
    env.reset(task=TASK)
    r = env.step(Message("assistant", text))
    assert r.reward == 0.0 and not r.terminated and r.messages[0].content.startswith("err bad action")
    assert "ask need|ask budget|offer xy|close" in r.info["error"]
    assert env.verify(None).components["errors"] == 1.0


def test_determinism_and_bad_args():
    assert SalesEnv().reset(seed=5)[1] == SalesEnv().reset(seed=5)[1]
    assert len({SalesEnv().reset(seed=s)[1]["product"] for s in range(30)}) == 6
    with pytest.raises(ValueError, match="reward_mode"):
        SalesEnv(reward_mode="both")
    with pytest.raises(ValueError, match="max_turns"):
        SalesEnv(max_turns=1)
    with pytest.raises(ValueError, match="task"):
        SalesEnv().reset(task={"need": "taste", "budget": "low"})


def test_demonstration_through_the_loop_and_hian_per_turn():
    env = make_tool_env("duca_sales")
    tok = build_char_tokenizer(string.printable, extra_special_tokens=PLAIN_CHAT_TOKENS)
    renderer = make_renderer("plain", tok)
    traj = AgentLoop(DemonstrationEngine([env], renderer), renderer, None,
                     Budget(max_turns=6, max_context_tokens=512, max_new_tokens=16)).run(env, task=TASK)
    assert traj.stop_reason == "env_done" and traj.reward == pytest.approx(1.2)
    assert traj.step_rewards == [(0, 0.1), (1, 0.1)]  # the per-turn rewards hian needs, by turn
    # hian per token over turns on two hand-made sessions of one group: session rewards 1 / 0; turn rewards
    # [0.1, 0.1] / [0.1, -0.2]; token_turn maps 2 tokens to each turn.
    adv = hian_advantages(torch.tensor([1.0, 0.0]), torch.tensor([[0.1, 0.1], [0.1, -0.2]]),
                          torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1]]), [0, 0])
    # session: +-0.7071 (mean 0.5, unbiased std 0.7071); turns pooled: mean 0.025, std 0.15 -> 0.5, 0.5, 0.5, -1.5
    assert adv[0].tolist() == pytest.approx([1.2071, 1.2071, 1.2071, 1.2071], abs=1e-3)
    assert adv[1].tolist() == pytest.approx([-0.2071, -0.2071, -2.2071, -2.2071], abs=1e-3)


def test_config_smoke(tmp_path):
    from lckernels_rl.train.config import load_config

    from .tiny import TINY_LONGCAT, fit_rl_rows

    cfg = load_config("duca_sales", [f"log.output_dir={tmp_path / 'run'}", "log.progress=false", "log.plots=false",
                                     "log.checkpoint_every=0", "log.eval_every=2", f"model.overrides={TINY_LONGCAT}",
                                     "task.train_size=8", "task.eval_size=2", "sft.steps=1", "sft.batch_size=2",
                                     "rl.steps=2", "rl.prompts_per_step=2", "rl.rollouts_per_step=4"])
    rows = fit_rl_rows(cfg)
    assert [r["step"] for r in rows] == [2, 3]
