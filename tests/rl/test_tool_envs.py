"""Tool environments and adapters (issue 11): kv_lookup's rewards on hand-made episodes, the text-env adapter for
gymnasium-style environments, the registry."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from lckernels_rl.agents import AgentLoop, Budget, Message, ToolCall  # noqa: E402
from lckernels_rl.agents.renderer import PLAIN_CHAT_TOKENS, make_renderer  # noqa: E402
from lckernels_rl.agents.trajectory import Trajectory  # noqa: E402
from lckernels_rl.envs import ArithmeticEnv, KVLookupEnv, TextEnvAdapter, make_tool_env  # noqa: E402
from lckernels_rl.models import build_char_tokenizer  # noqa: E402
from lckernels_rl.rollout.engine import ScriptedEngine  # noqa: E402

TASK = {"table": {"ab": 7, "cd": 35, "ef": 0}, "question": ["ab"]}


def _episode(env, turns: list[Message], stop_reason="env_done") -> Trajectory:
    """Step ``env`` through hand-written assistant turns; the trajectory the loop would have built (messages)."""
    msgs, _ = env.reset(task=env._task) if hasattr(env, "_task") else (None, None)
    t = Trajectory(messages=list(msgs), stop_reason=stop_reason)
    for turn in turns:
        t.messages.append(turn)
        res = env.step(turn)
        t.messages.extend(res.messages)
    return t


def _kv(task=TASK, **kw) -> KVLookupEnv:
    env = KVLookupEnv(**kw)
    env._task = task
    return env


def _call(key, i=0):
    return ToolCall(id=f"call_0_{i}", name="lookup", arguments={"key": key}, raw=f"@lookup(key={key})")


def test_kv_lookup_rewards_on_hand_made_episodes():
    env = _kv()
    good = _episode(env, [Message("assistant", "@lookup(key=ab)", tool_calls=[_call("ab")]), Message("assistant", "7")])
    assert [m.content for m in good.messages] == ["key ab", "@lookup(key=ab)", "7", "7"]
    assert good.messages[2].role == "tool" and not good.messages[2].is_error
    v = env.verify(good)
    assert (v.reward, v.components) == (1.0, {"correct": 1.0, "called_tool": 1.0})

    wrong = _episode(env, [Message("assistant", "@lookup(key=ab)", tool_calls=[_call("ab")]), Message("assistant", "8")])
    assert env.verify(wrong).reward == 0.0
    guessed = _episode(env, [Message("assistant", " 7 ")])  # right without the tool: the reward is the outcome only
    assert env.verify(guessed).components == {"correct": 1.0, "called_tool": 0.0}
    missing = _episode(env, [Message("assistant", "@lookup(key=zz)", tool_calls=[_call("zz")])], "max_turns")
    assert missing.messages[-1].is_error and "no key 'zz'" in missing.messages[-1].content
    assert env.verify(missing).reward == 0.0  # never answered


def test_kv_lookup_two_keys_sum_and_generation():
    env = _kv({"table": {"ab": 7, "cd": 35}, "question": ["ab", "cd"]}, keys_per_task=2)
    t = _episode(env, [Message("assistant", "x", tool_calls=[_call("ab"), _call("cd", 1)]), Message("assistant", "42")])
    assert [m.content for m in t.messages if m.role == "tool"] == ["7", "35"]
    assert t.messages[0].content == "sum ab cd" and env.verify(t).reward == 1.0
    a, b = KVLookupEnv(), KVLookupEnv()
    assert a.reset(seed=3)[0][0].content == b.reset(seed=3)[0][0].content and a.table == b.table
    assert a.reset(seed=4)[1]["task"] != b.reset(seed=3)[1]["task"]
    with pytest.raises(ValueError, match="keys_per_task"):
        KVLookupEnv(table_size=2, keys_per_task=3)
    with pytest.raises(ValueError, match="not in the table"):
        KVLookupEnv().reset(task={"table": {"ab": 1}, "question": ["cd"]})


def test_kv_lookup_demonstration_and_state_digest():
    env = _kv()
    msgs, _ = env.reset(task=TASK)
    assert env.demonstration(msgs) == "@lookup(key=ab)"
    d0 = env.state_digest()
    res = env.step(Message("assistant", "@lookup(key=ab)", tool_calls=[_call("ab")]))
    assert env.state_digest() != d0  # the lookup is part of the state
    assert env.demonstration([*msgs, Message("assistant", "@lookup(key=ab)"), *res.messages]) == "7"


class GuessEnv:
    """A gymnasium-style text env: guess a number in up to 3 tries; observations say higher/lower."""

    def reset(self, seed=None):
        self.target, self.tries = 5, 0
        return "guess 1-9", {}

    def step(self, action):
        self.tries += 1
        g = int(action.strip()) if action.strip().isdigit() else -1
        if g == self.target:
            return None, 1.0, True, False, {}
        return ("higher" if g < self.target else "lower"), 0.0, False, self.tries >= 3, {}


def test_text_env_adapter_runs_a_gym_style_env_through_the_loop():
    tok = build_char_tokenizer("abcdefghijklmnopqrstuvwxyz0123456789- ", extra_special_tokens=PLAIN_CHAT_TOKENS)
    renderer = make_renderer("plain", tok)
    eos = tok.eos_token_id
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    engine = ScriptedEngine([enc("3") + [eos], enc("7") + [eos], enc("5") + [eos]], stop_token_ids=[eos])
    traj = AgentLoop(engine, renderer, None, Budget(max_turns=5)).run(TextEnvAdapter(GuessEnv()), seed=0)
    assert traj.stop_reason == "env_done" and traj.reward == 1.0 and traj.num_turns == 3
    assert [(m.role, m.content) for m in traj.messages] == [("user", "guess 1-9"), ("assistant", "3"),
                                                            ("user", "higher"), ("assistant", "7"),
                                                            ("user", "lower"), ("assistant", "5")]
    engine = ScriptedEngine([enc("1") + [eos]] * 3, stop_token_ids=[eos])
    traj = AgentLoop(engine, renderer, None, Budget(max_turns=5)).run(TextEnvAdapter(GuessEnv()), seed=0)
    assert traj.stop_reason == "env_done" and traj.reward == 0.0 and traj.num_turns == 3  # env truncated at 3 tries
    with pytest.raises(TypeError, match="reset"):
        TextEnvAdapter(object())


def test_registry_wraps_text_envs():
    assert isinstance(make_tool_env("arithmetic", max_value=9), TextEnvAdapter)
    assert isinstance(make_tool_env("kv_lookup"), KVLookupEnv)
    env = make_tool_env("arithmetic", max_value=9)
    msgs, info = env.reset(seed=1)
    assert msgs[0].role == "user" and msgs[0].content == ArithmeticEnv(max_value=9).reset(seed=1)[0]
    with pytest.raises(ValueError, match="available: .*arithmetic, .*kv_lookup, "):
        make_tool_env("chess")


class SpanEnv(KVLookupEnv):
    """kv_lookup whose verdict marks two spans of the final turn: characters 1..3, and from character 2 to the end."""

    def verify(self, trajectory):
        v = super().verify(trajectory)
        turn = trajectory.num_turns - 1
        v.spans = {"mid": [(turn, 1, 3)], "tail": [(turn, 2, None)]}
        return v


def test_verdict_spans_map_to_token_ranges_and_a_bad_span_is_an_episode_error():
    tok = build_char_tokenizer(KVLookupEnv.alphabet, extra_special_tokens=PLAIN_CHAT_TOKENS)
    renderer = make_renderer("plain", tok)
    eos = tok.eos_token_id
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    engine = ScriptedEngine([enc("abcd") + [eos]], stop_token_ids=[eos])
    env = SpanEnv()
    traj = AgentLoop(engine, renderer, "compact", Budget()).run(env, task=TASK)
    p = len(traj.segments[0].ids)  # the answer turn starts right after the prompt; one char = one token
    assert traj.spans == {"mid": [(p + 1, p + 3)], "tail": [(p + 2, p + 5)]}  # tail: "cd" and the stop token
    sample = traj.to_sample()
    assert sample.span_mask("mid")[p:p + 5] == [0, 1, 1, 0, 0]

    class BadSpan(KVLookupEnv):
        def verify(self, trajectory):
            v = super().verify(trajectory)
            v.spans = {"x": [(7, 0, 1)]}  # there is no turn 7
            return v

    engine = ScriptedEngine([enc("7") + [eos]], stop_token_ids=[eos])
    traj = AgentLoop(engine, renderer, "compact", Budget()).run(BadSpan(), task=TASK)
    assert traj.stop_reason == "error" and "turn 7 out of range" in traj.error and traj.reward == 0.0


def test_arithmetic_schema_component_and_span_by_hand():
    """The dual-track mapping on arithmetic: span "schema" = the answer's leading character; component "schema" = 1
    only when that character is right and the whole answer correct."""
    env = ArithmeticEnv(max_value=9)
    prompt, info = env.reset(seed=1)
    ans = info["answer"]
    wrong = str(int(ans) + 1) if len(str(int(ans) + 1)) == len(ans) and str(int(ans) + 1)[0] == ans[0] \
        else ans[0] + "x"  # same leading character, wrong answer
    assert env.step(ans)[4]["components"] == {"schema": 1.0}
    assert env.step(wrong)[4]["components"] == {"schema": 0.0}
    assert env.step("z" + ans[1:])[4]["components"] == {"schema": 0.0}
    assert env.step("  " + ans)[4]["spans"] == {"schema": [(2, 3)]}
