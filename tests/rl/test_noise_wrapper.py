"""Noise (issue 13 §2): each tool noise on hand-made results, failures not executed, user noise, solvability of
every noisy task by a retrying / asking scripted agent, mixed clean/noisy groups, the curriculum, bad input."""

from __future__ import annotations

import re

import numpy as np
import pytest

from lckernels_rl.agents import Message, ToolCall
from lckernels_rl.agents.parsers import get_parser
from lckernels_rl.envs import KVLookupEnv
from lckernels_rl.envs.tool_domains import EpisodeCounter, NoiseCurriculum, NoiseWrapper, ToolDomainEnv
from lckernels_rl.envs.tool_domains.noise import (FAILURE_ERRORS, erroneous, failure, get_curriculum, incomplete,
                                                  is_noisy_occurrence, redundant)

from .test_tool_domains import GOLD_WRITE, _play, _solve, _task

P = get_parser("compact")


def _rng(s=0):
    return np.random.default_rng(s)


@pytest.mark.parametrize("s", range(6))
def test_tool_noise_edits_on_hand_made_results(s):
    assert failure("ana:c1", _rng(s)) in FAILURE_ERRORS
    assert incomplete("o7 status=new eta=am", _rng(s)) in ("o7 eta=am", "o7 status=new")
    assert incomplete("ana:c1", _rng(s)) == "none"
    assert incomplete("bob:c2 ana:c1", _rng(s)) in ("bob:c2", "ana:c1")
    assert re.fullmatch(r"ana:c\d\d", erroneous("ana:c1", _rng(s)))  # an id that cannot exist (ids have 1 digit)
    assert re.fullmatch(r"o\d\d status=new eta=am", erroneous("o7 status=new eta=am", _rng(s)))
    red = redundant("ana:c1", _rng(s)).split()
    assert len(red) == 2 and "ana:c1" in red
    other = [e for e in red if e != "ana:c1"][0]
    assert re.fullmatch(r"[a-z]+:c\d\d", other) and not other.startswith("ana:")
    red = redundant("c1:o1", _rng(s)).split()
    assert "c1:o1" in red and re.fullmatch(r"c\d\d:o\d\d", [e for e in red if e != "c1:o1"][0])
    recs = redundant("o7 status=new eta=am", _rng(s)).split(" | ")
    assert "o7 status=new eta=am" in recs and len(recs) == 2
    assert re.fullmatch(r"o\d\d status=new eta=am", [r for r in recs if not r.startswith("o7 ")][0])


def _noisy(types, level=1.0, **kw):
    return NoiseWrapper(ToolDomainEnv(**kw.pop("env_kw", {})), level, types=types, counter=EpisodeCounter(), **kw)


def test_a_failed_call_is_not_executed_and_a_retry_succeeds():
    env = _noisy(("failure",), max_per_episode=1, start_step=3)
    texts = GOLD_WRITE[:2] + [GOLD_WRITE[2], GOLD_WRITE[2], "done"]
    convo = _play(env, texts, task=_task())
    tool = [m.content for m in convo if m.role == "tool"]
    assert tool[:2] == ["ana:c1", "c1:o1"]
    assert tool[2] in FAILURE_ERRORS and tool[3] == "ok"  # the write's first try failed (3rd call), not run
    assert [c.name for c in env.env.calls] == ["find_customer", "find_order", "set_order_eta"]
    v = env.verify()
    assert v.reward == 1.0 and v.components["noisy"] == 1.0 and v.info["noise_events"] == [(3, "failure")]


def test_erroneous_id_is_recovered_by_calling_the_producer_again():
    env = _noisy(("erroneous",), max_per_episode=1, start_step=2)
    convo = _play(env, ["@find_customer(name=ana)", "@find_order(customer=c1)"], task=_task())
    bad = convo[-1].content
    assert re.fullmatch(r"c1:o\d\d", bad)
    demo = env.demonstration(convo)
    assert demo == f"@get_order(order={bad.split(':')[1]})" or demo.startswith("@set_order_eta")
    # the agent uses the wrong id: a visible "no order" error; the scripted agent then calls find_order again
    wrong = bad.split(":")[1]
    turn = Message("assistant", f"@set_order_eta(order={wrong}, value=pm)",
                   tool_calls=P.parse(f"@set_order_eta(order={wrong}, value=pm)").calls)
    convo += [turn] + env.step(turn).messages
    assert convo[-1].is_error and f"no order {wrong}" in convo[-1].content
    assert env.demonstration(convo) == "@find_order(customer=c1)"


def test_user_ambiguity_self_correction_and_topic_shift():
    env = _noisy(("ambiguity",))
    msgs, info = env.reset(task=_task())
    assert msgs[0].content in ("customer: order eta=pm", "customer ana: order eta=?")
    assert env.demonstration(msgs) in ("ask name", "ask value")

    env = _noisy(("self_correction", "topic_shift"))
    msgs, info = env.reset(task=_task())
    corr = info["user_noise"]["correction"]
    assert corr in ("am", "eve") and info["user_noise"]["topic_shift"].startswith("btw")
    convo = _play(env, GOLD_WRITE, task=_task())  # ignores the correction: writes the old value
    users = [m.content for m in convo if m.role == "user"]
    assert users[1].startswith("btw") and users[2] == f"sorry, eta={corr}"
    assert env.verify().reward == 0.0 and env.verify().components["state"] == 0.0
    convo = _play(env, GOLD_WRITE[:2] + [f"@set_order_eta(order=o1, value={corr})", "done"], task=_task())
    assert env.verify().reward == 1.0
    # writing the old value first, then the corrected one: the same target, allowed
    _play(env, GOLD_WRITE[:3] + [f"@set_order_eta(order=o1, value={corr})", "done"], task=_task())
    assert env.verify().reward == 1.0




@pytest.mark.parametrize("level,procedural", [(1.0, False), (0.5, False), (1.0, True)])
def test_every_noisy_task_stays_solvable_by_retry_and_ask(level, procedural):
    env = NoiseWrapper(ToolDomainEnv(domains="all", procedural=procedural), level, max_per_episode=2,
                       counter=EpisodeCounter())
    events = set()
    for s in range(48):
        v, info, convo = _solve(env, s)
        assert info["noisy"]
        assert v.reward == 1.0, (s, v.components, [m.content for m in convo])
        events |= {k for _, k in v.info["noise_events"]}
    assert events == {"failure", "incomplete", "erroneous", "redundant", "ambiguity", "self_correction",
                      "topic_shift"}


def test_mixed_groups_and_per_episode_noise_seeds():
    flags = [is_noisy_occurrence(7, j, 0.5) for j in range(8)]
    assert sum(flags) == 4
    for n in range(1, 9):  # any window of n consecutive episodes holds floor or ceil of n * f noisy ones
        for start in range(8):
            c = sum(is_noisy_occurrence(11, j, 0.25) for j in range(start, start + n))
            assert c in (n // 4, -(-n // 4))
    assert all(is_noisy_occurrence(3, j, 1.0) for j in range(5)) and not any(
        is_noisy_occurrence(3, j, 0.0) for j in range(5))

    def group(counter):
        out = []
        for _ in range(8):  # a group: 8 fresh envs reset with the same seed (as the trainer's EpisodeSource does)
            env = NoiseWrapper(ToolDomainEnv(), 1.0, fraction=0.5, counter=counter)
            v, info, _ = _solve(env, 5)
            out.append((info["noisy"], tuple(v.info["noise_events"]), v.reward))
        return out

    a, b = group(EpisodeCounter()), group(EpisodeCounter())
    assert a == b  # deterministic given the seed and the occurrence order
    assert sum(n for n, _, _ in a) == 4
    assert len({e for n, e, _ in a if n}) > 1  # the noisy episodes of one group get different noise
    assert all(r == 1.0 for _, _, r in a)
    env = NoiseWrapper(ToolDomainEnv(), 1.0, fraction=0.0, counter=EpisodeCounter())
    assert env.reset(seed=1, noisy=True)[1]["noisy"] is True  # explicit override


def test_curriculum_raises_the_level_when_the_gap_closes():
    c = NoiseCurriculum(levels=(0.2, 0.5), threshold=0.1, window=4, min_episodes=2)
    for ok in (1, 1):
        c.record(False, ok)
    c.record(True, 0.0)
    c.record(True, 1.0)
    assert c.level == 0.2  # gap = 1 - 0.5 = 0.5 >= 0.1
    c2 = NoiseCurriculum(levels=(0.2, 0.5), threshold=0.1, window=4, min_episodes=2)
    for noisy in (False, False, True, True):
        c2.record(noisy, 1.0)
    assert c2.level == 0.5 and c2.history == [(1, 0.0)]  # gap 0 < 0.1: next level
    for noisy in (False, False, True, True):
        c2.record(noisy, 1.0)
    assert c2.level == 0.5  # the last level stays

    cur = {"name": "test_noise_wrapper", "levels": [0.0, 1.0], "threshold": 0.5, "window": 8, "min_episodes": 1}
    env = NoiseWrapper(ToolDomainEnv(), 0.0, curriculum=cur, fraction=0.5, counter=EpisodeCounter())
    assert env.level == 0.0
    for _ in range(2):
        _solve(env, 3)
    assert get_curriculum("test_noise_wrapper").level == 1.0 and env.level == 1.0


def test_wrapper_on_another_env_and_bad_input():
    env = NoiseWrapper(KVLookupEnv(), 1.0, types=("failure",), max_per_episode=1, counter=EpisodeCounter())
    msgs, _ = env.reset(seed=0)
    key = msgs[0].content.split()[1]
    call = ToolCall(id="call_0_0", name="lookup", arguments={"key": key}, raw="")
    r1 = env.step(Message("assistant", "", tool_calls=[call]))
    r2 = env.step(Message("assistant", "", tool_calls=[call]))
    assert r1.messages[0].content in FAILURE_ERRORS and r1.messages[0].is_error and not r2.messages[0].is_error
    with pytest.raises(ValueError, match="level"):
        NoiseWrapper(ToolDomainEnv(), 1.5)
    with pytest.raises(ValueError, match="fraction"):
        NoiseWrapper(ToolDomainEnv(), 0.5, fraction=-0.1)
    with pytest.raises(ValueError, match="noise types"):
        NoiseWrapper(ToolDomainEnv(), 0.5, types=("gremlins",))
    with pytest.raises(TypeError, match="env"):
        NoiseWrapper("env", 0.5)
    with pytest.raises(ValueError, match="levels"):
        NoiseCurriculum(levels=(0.5, 0.2))


def test_noise_curriculum_callback_with_a_fake_trainer():
    """The callback drains the wrapper's outcome channel at each step's end, logs the clean / noisy success and
    raises the level through ``trainer.set_env_args`` when the gap closes (expected values written by hand)."""
    from types import SimpleNamespace

    from lckernels_rl.envs.tool_domains.callbacks import NoiseCurriculumCallback
    from lckernels_rl.envs.tool_domains.noise import drain_outcomes, record_outcome

    class FakeTrainer:
        def __init__(self):
            self.config = SimpleNamespace(task=SimpleNamespace(env_args={
                "domains": ["delivery"], "noise": {"level": 0.9, "fraction": 0.5, "curriculum": {"name": "x"}}}))
            self.env_overrides = {"train": {}, "eval": {}}
            self.calls = []

        def set_env_args(self, eval=False, **kw):
            self.calls.append(kw)
            self.env_overrides["train"].update(kw)

    tr = FakeTrainer()
    cb = NoiseCurriculumCallback(levels=(0.2, 0.6), threshold=0.25, window=8, min_episodes=2, channel="t_cb")
    record_outcome("t_cb", True, 1.0)  # left over from before the run: dropped
    cb.on_train_begin(tr)
    assert tr.calls == [{"noise": {"fraction": 0.5, "level": 0.2, "outcomes": "t_cb"}}]  # curriculum key removed

    for n, r in ((False, 1.0), (True, 1.0)):  # warm-up step: outcomes dropped, no metrics added
        record_outcome("t_cb", n, r)
    m = {"phase": "sft"}
    cb.on_step_end(tr, m)
    assert m == {"phase": "sft"} and drain_outcomes("t_cb") == []

    for n, r in ((False, 1.0), (False, 1.0), (True, 0.0), (True, 1.0)):  # gap 1 - 0.5 = 0.5 >= 0.25: stay
        record_outcome("t_cb", n, r)
    m = {"phase": "rl"}
    cb.on_step_end(tr, m)
    assert m == {"phase": "rl", "noise_level": 0.2, "noise_clean_success": 1.0, "noise_noisy_success": 0.5,
                 "noise_gap": 0.5, "noise_level_raised": 0.0}
    assert len(tr.calls) == 1

    # windows now clean [1, 1, 1, 1], noisy [0, 1, 1, 1]: gap 1 - 0.75 = 0.25, not < 0.25: stay
    for n, r in ((False, 1.0), (False, 1.0), (True, 1.0), (True, 1.0)):
        record_outcome("t_cb", n, r)
    m = {"phase": "rl"}
    cb.on_step_end(tr, m)
    assert m["noise_level"] == 0.2 and m["noise_level_raised"] == 0.0 and len(tr.calls) == 1
    # the first outcome (clean 0) makes clean [1,1,1,1,0], noisy [0,1,1,1]: gap 0.8 - 0.75 = 0.05 < 0.25 -> level
    # 0.6 (windows restart), set on the trainer
    for n, r in ((False, 0.0), (True, 1.0), (True, 1.0)):
        record_outcome("t_cb", n, r)
    m = {"phase": "rl"}
    cb.on_step_end(tr, m)
    assert m["noise_level"] == 0.6 and m["noise_level_raised"] == 1.0
    assert tr.calls[-1] == {"noise": {"fraction": 0.5, "level": 0.6, "outcomes": "t_cb"}}

    state = cb.state_dict()
    cb2 = NoiseCurriculumCallback(levels=(0.2, 0.6), threshold=0.25, window=8, min_episodes=2, channel="t_cb")
    cb2.load_state_dict(state)
    assert cb2.curriculum.level == 0.6 and cb2.base == {"fraction": 0.5}
    with pytest.raises(ValueError, match="curriculum"):
        cb2.load_state_dict({"stage": 1})
    with pytest.raises(TypeError, match="noise"):
        NoiseCurriculumCallback(noise=0.5)


def test_wrapper_records_outcomes_on_its_channel():
    from lckernels_rl.envs.tool_domains.noise import drain_outcomes

    drain_outcomes("t_rec")
    env = NoiseWrapper(ToolDomainEnv(), 1.0, fraction=1.0, counter=EpisodeCounter(), outcomes="t_rec")
    v, _, _ = _solve(env, 2)
    assert drain_outcomes("t_rec") == [(True, v.reward)] and drain_outcomes("t_rec") == []
    with pytest.raises(TypeError, match="outcomes"):
        NoiseWrapper(ToolDomainEnv(), 0.5, outcomes=3)


def test_noise_curriculum_callback_through_the_trainer(tmp_path):
    from lckernels_rl.train import load_config

    from .tiny import TINY_LONGCAT, fit_rl_rows

    cb = ("{target: 'lckernels_rl.envs.tool_domains.callbacks:NoiseCurriculumCallback', "
          "args: {levels: [0.2, 0.5], threshold: 2.0, window: 4, min_episodes: 1}}")
    cfg = load_config("tool_domains_easy", [
        f"log.output_dir={tmp_path / 'run'}", "log.progress=false", "log.plots=false", "log.eval_every=0",
        f"model.overrides={dict(TINY_LONGCAT, max_position_embeddings=512)}", "task.train_size=4", "task.eval_size=0",
        "sft.steps=1", "sft.batch_size=2", "rl.steps=2", "rl.prompts_per_step=2", "rl.rollouts_per_step=4",
        "rl.max_new_tokens=8", "agent.max_turns=2", "task.env_args.noise={fraction: 0.5}", f"callbacks=[{cb}]"])
    rows = fit_rl_rows(cfg)
    # threshold 2.0: any gap is below it, so the first RL step with both kinds of episodes raises 0.2 -> 0.5
    assert [r["noise_level"] for r in rows] == [0.5, 0.5]
    assert rows[0]["noise_level_raised"] == 1.0 and rows[0]["episodes"] == 4
