"""The agent loop: token-exact ledgers, loss masks, tool-call handling, budgets and stop reasons, forks, and the
BackendEngine's cutting.

Every expectation is written by hand from hand-made episodes: expected ids are spelled out from the tokenizer's
vocabulary (one character = one id for the char tokenizer), never produced by the renderer or the loop under test.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("transformers")

from lckernels_rl.agents.loop import AgentLoop, Budget, Episode  # noqa: E402
from lckernels_rl.agents.renderer import PLAIN_CHAT_TOKENS, PlainChatRenderer  # noqa: E402
from lckernels_rl.agents.tools import tool  # noqa: E402
from lckernels_rl.agents.types import Message  # noqa: E402
from lckernels_rl.envs import KVLookupEnv  # noqa: E402
from lckernels_rl.envs.tool_env import StepResult, ToolEnv  # noqa: E402
from lckernels_rl.models import build_bpe_tokenizer, build_char_tokenizer  # noqa: E402
from lckernels_rl.models.tokenizer import non_canonical_pair  # noqa: E402
from lckernels_rl.rollout.engine import BackendEngine, GenerationRequest, ScriptedEngine  # noqa: E402

EOS = 2  # </s> of both library tokenizers
ALPHABET = KVLookupEnv.alphabet + "\n"
TASK = {"table": {"ab": 42, "cd": 7}, "question": ["ab"]}


# ------------------------------------------------------------------ tokenizers and helpers
@pytest.fixture(scope="module")
def ctok():
    return build_char_tokenizer(ALPHABET, extra_special_tokens=PLAIN_CHAT_TOKENS)


@pytest.fixture(scope="module")
def bpe():
    corpus = ["hello world", "the cat sat on the mat", "abab abab abab", "again and again"] * 4
    return build_bpe_tokenizer(corpus, vocab_size=300, extra_special_tokens=PLAIN_CHAT_TOKENS)


class V:
    """Ids of the char tokenizer, looked up one character / special token at a time."""

    def __init__(self, tok):
        self.tok = tok
        sp = {t: tok.convert_tokens_to_ids(t) for t in PLAIN_CHAT_TOKENS}
        self.S, self.U, self.A, self.T, self.E = (sp["<|system|>"], sp["<|user|>"], sp["<|assistant|>"],
                                                  sp["<|tool|>"], sp["<|end|>"])
        assert len({self.S, self.U, self.A, self.T, self.E, EOS}) == 6

    def __call__(self, text: str) -> list[int]:
        out = [self.tok.convert_tokens_to_ids(ch) for ch in text]
        assert 3 not in out, f"{text!r} has characters outside the test alphabet"
        return out


@pytest.fixture(scope="module")
def v(ctok):
    return V(ctok)


def make_loop(engine, tok, parser="compact", **budget):
    return AgentLoop(engine, PlainChatRenderer(tok), parser=parser, budget=Budget(**budget), tools_in_prompt=False,
                     max_env_workers=1)


def sample_mask(traj):
    return traj.to_sample().loss_mask


# ------------------------------------------------------------------ small hand-made environments
class EchoEnv(ToolEnv):
    """Opens with user 'hello'; answers each turn with user 'again'; terminates on turn ``done_at`` with step reward
    1.0 (``done_at=None``: never)."""

    name = "echo"

    def __init__(self, done_at=3):
        self.done_at, self.n = done_at, 0

    def reset(self, seed=None, task=None):
        self.n = 0
        return [Message("user", "hello")], {}

    def step(self, turn):
        self.n += 1
        if self.done_at is not None and self.n >= self.done_at:
            return StepResult(reward=1.0, terminated=True)
        return StepResult(messages=[Message("user", "again")])


class RaisingEnv(EchoEnv):
    def step(self, turn):
        raise RuntimeError("boom in step")


class RaisingResetEnv(EchoEnv):
    def reset(self, seed=None, task=None):
        raise ValueError("boom in reset")


class ForkEnv(EchoEnv):
    """Turn 1: answers 'again' and rewrites the context to [system 'sum', user 'hello']; turn 2: done, reward 1."""

    def step(self, turn):
        self.n += 1
        if self.n == 1:
            return StepResult(messages=[Message("user", "again")],
                              rewrite=[Message("system", "sum"), Message("user", "hello")])
        return StepResult(reward=1.0, terminated=True)


class DumpEnv(ToolEnv):
    """One tool, ``dump()``, returning ``size`` characters 'x'."""

    name = "dump"

    def __init__(self, size):
        @tool
        def dump() -> str:
            """Dump a long text."""
            return "x" * size

        self.tools = [dump]

    def reset(self, seed=None, task=None):
        return [Message("user", "hello")], {}


class WaitEnv(ToolEnv):
    """One tool, ``wait(ms)``, that sleeps ``ms`` milliseconds and returns ``w<ms>`` (slow calls finish last)."""

    name = "wait"

    def __init__(self):
        @tool
        def wait(ms: int) -> str:
            """Sleep a while."""
            time.sleep(ms / 1000)
            return f"w{ms}"

        self.tools = [wait]

    def reset(self, seed=None, task=None):
        return [Message("user", "hello")], {}


# ------------------------------------------------------------------ 1. token exactness (byte-level BPE)
def test_sampled_ids_are_kept_exactly_not_reencoded(bpe):
    ids, reencoded = non_canonical_pair(bpe)
    assert reencoded != ids  # the premise: decode + re-encode would change the sampled ids
    assert bpe.encode(bpe.decode(ids), add_special_tokens=False) == reencoded
    U, A, E = (bpe.convert_tokens_to_ids(t) for t in ("<|user|>", "<|assistant|>", "<|end|>"))
    hello = bpe("hello", add_special_tokens=False)["input_ids"]
    again = bpe("again", add_special_tokens=False)["input_ids"]
    turn = ids + [EOS]

    def logprob(req, out):
        return [-0.1 * (10 * req.key[1] + k + 1) for k in range(len(out))]

    engine = ScriptedEngine([turn, turn, turn], stop_token_ids=[EOS], logprob=logprob, version=7)
    traj = AgentLoop(engine, PlainChatRenderer(bpe), parser=None, max_env_workers=1).run(EchoEnv(done_at=3))

    prompt = [U] + hello + [E, A]
    delta = [U] + again + [E, A]
    expected = prompt + turn + delta + turn + delta + turn
    assert traj.stop_reason == "env_done" and traj.error is None
    assert traj.ids() == expected
    s = traj.to_sample()
    assert s.input_ids == expected
    n_p, n_d = len(prompt), len(delta)
    assert s.loss_mask == [0] * n_p + [1] * 3 + [0] * n_d + [1] * 3 + [0] * n_d + [1] * 3
    assert s.sampled_ids() == turn * 3
    assert all(reencoded != s.sampled_ids()[k:k + len(reencoded)] for k in range(0, 9, 3))
    sampled_lps = [x for x, m in zip(s.rollout_logprobs, s.loss_mask) if m]
    assert sampled_lps == pytest.approx([-0.1, -0.2, -0.3, -1.1, -1.2, -1.3, -2.1, -2.2, -2.3])
    assert all(x == 0.0 for x, m in zip(s.rollout_logprobs, s.loss_mask) if not m)
    assert s.token_versions == [7 if m else -1 for m in s.loss_mask]
    # the engine saw the exact ledger each round (the sampled ids, not their re-encoding)
    assert [c.prompt_ids for c in engine.calls] == [prompt, prompt + turn + delta, prompt + turn + delta + turn + delta]
    assert [m.content for m in traj.messages if m.role == "assistant"] == [bpe.decode(ids)] * 3
    assert s.reward == 1.0 and s.num_turns == 3 and s.reward_positions == [(len(expected) - 1, 1.0)]


# ------------------------------------------------------------------ 2. loss mask, position by position
@pytest.mark.parametrize("answer, reward", [("42", 1.0), ("41", 0.0)])
def test_kv_episode_ids_mask_and_reward_by_hand(ctok, v, answer, reward):
    turns = [v("@lookup(key=ab)") + [EOS], v(answer) + [EOS]]
    engine = ScriptedEngine(turns, stop_token_ids=[EOS], logprob=lambda r, ids: [-0.5] * len(ids), version=3)
    traj = make_loop(engine, ctok).run(KVLookupEnv(table_size=2), task=TASK)

    expected = ([v.U] + v("key ab") + [v.E] + [v.A]                      # prompt: 9 tokens
                + v("@lookup(key=ab)") + [EOS]                           # turn 0: 16 sampled tokens
                + [v.T] + v("42") + [v.E] + [v.A]                         # tool answer + generation prompt: 5
                + v(answer) + [EOS])                                      # turn 1: 3 sampled tokens
    mask = [0] * 9 + [1] * 16 + [0] * 5 + [1] * 3
    assert len(expected) == len(mask) == 33
    s = traj.to_sample(group_id="g")
    assert s.input_ids == expected
    assert s.loss_mask == mask
    assert s.token_versions == [3 if m else -1 for m in mask]
    assert s.rollout_logprobs == [-0.5 if m else 0.0 for m in mask]
    assert s.stop_reason == traj.stop_reason == "env_done"
    assert s.reward == traj.reward == reward
    assert s.reward_components == {"correct": reward, "called_tool": 1.0}
    assert s.reward_positions == [(32, reward)]
    assert s.group_id == "g" and s.num_turns == 2
    assert traj.metrics["tool_calls"] == 1 and traj.metrics["parse_errors"] == 0
    assert traj.metrics["tool_errors"] == 0 and traj.metrics["turns"] == 2
    roles = [m.role for m in traj.messages]
    assert roles == ["user", "assistant", "tool", "assistant"]
    tool_msg = traj.messages[2]
    assert (tool_msg.content, tool_msg.tool_call_id, tool_msg.name, tool_msg.is_error) == \
        ("42", "call_0_0", "lookup", False)
    call = traj.messages[1].tool_calls[0]
    assert (call.name, call.arguments, call.raw) == ("lookup", {"key": "ab"}, "@lookup(key=ab)")
    # the second request was the ledger up to the generation prompt
    assert engine.calls[1].prompt_ids == expected[:30]
    assert [c.max_new_tokens for c in engine.calls] == [256, 256]


def test_tools_rendered_into_the_system_prompt(ctok, v):
    spec = ('{"type": "function", "function": {"name": "lookup", "description": "Look up the value stored under a '
            'key.", "parameters": {"type": "object", "properties": {"key": {"type": "string", "description": "the '
            'key (two lower-case letters)."}}, "required": ["key"], "additionalProperties": false}}}')
    engine = ScriptedEngine([v("42") + [EOS]], stop_token_ids=[EOS])
    loop = AgentLoop(engine, PlainChatRenderer(ctok), parser="compact", tools_in_prompt=True, max_env_workers=1)
    traj = loop.run(KVLookupEnv(table_size=2), task=TASK)
    prompt = [v.S] + v(spec) + [v.E] + [v.U] + v("key ab") + [v.E] + [v.A]
    assert traj.segments[0].ids == prompt and not traj.segments[0].trainable
    assert traj.ids() == prompt + v("42") + [EOS]
    # answered without looking up: right value, but no tool use
    assert traj.reward == 1.0 and traj.components == {"correct": 1.0, "called_tool": 0.0}


# ------------------------------------------------------------------ 3. parser integration
def test_bad_calls_become_visible_tool_errors_and_the_episode_goes_on(ctok, v):
    turns = [v("@lookup(key=") + [EOS], v("@fetch(key=ab)") + [EOS], v("@lookup(key=12)") + [EOS],
             v("42") + [EOS]]
    engine = ScriptedEngine(turns, stop_token_ids=[EOS])
    traj = make_loop(engine, ctok).run(KVLookupEnv(table_size=2), task=TASK)

    assert traj.stop_reason == "env_done"
    assert [m.role for m in traj.messages] == ["user", "assistant", "tool", "assistant", "tool", "assistant", "tool",
                                               "assistant"]
    assert traj.metrics["parse_errors"] == 1
    assert traj.metrics["tool_calls"] == 3 and traj.metrics["tool_errors"] == 3 and traj.metrics["turns"] == 4
    malformed, unknown, badtype = traj.messages[2], traj.messages[4], traj.messages[6]
    for m, cid in ((malformed, "call_0_0"), (unknown, "call_1_0"), (badtype, "call_2_0")):
        assert m.role == "tool" and m.is_error and m.tool_call_id == cid
    assert traj.messages[1].tool_calls[0].error is not None
    assert malformed.content.startswith("error: could not parse tool call:") and "'key'" in malformed.content
    assert unknown.content == "error: unknown tool 'fetch'; available: lookup"
    assert "'key'" in badtype.content and "string" in badtype.content and "12" in badtype.content
    assert traj.messages[5].tool_calls[0].error is None  # well-formed; the argument type is the tool's problem
    # the errors are in the tokens the model sees next: each delta is <|tool|> error <|end|> <|assistant|>
    deltas = [s.ids for s in traj.segments if s.source == "env"]
    assert deltas == [[v.T] + v(m.content) + [v.E, v.A] for m in (malformed, unknown, badtype)]
    assert [s.trainable for s in traj.segments] == [False, True, False, True, False, True, False, True]
    assert traj.reward == 1.0 and traj.components == {"correct": 1.0, "called_tool": 0.0}


# ------------------------------------------------------------------ 4. budgets and stop reasons
def test_stop_env_done_and_max_turns(ctok, v):
    hi = v("hi") + [EOS]
    prompt = [v.U] + v("hello") + [v.E, v.A]
    delta = [v.U] + v("again") + [v.E, v.A]
    engine = ScriptedEngine([hi] * 5, stop_token_ids=[EOS])
    traj = make_loop(engine, ctok, parser=None, max_turns=2).run(EchoEnv(done_at=None))
    assert traj.stop_reason == "max_turns" and traj.num_turns == 2 and len(engine.calls) == 2
    assert traj.ids() == prompt + hi + delta + hi  # no delta after the last allowed turn
    assert sample_mask(traj) == [0] * 8 + [1] * 3 + [0] * 8 + [1] * 3

    engine = ScriptedEngine([hi] * 5, stop_token_ids=[EOS])
    traj = make_loop(engine, ctok, parser=None, max_turns=5).run(EchoEnv(done_at=2))
    assert traj.stop_reason == "env_done" and traj.num_turns == 2 and traj.reward == 1.0
    assert traj.ids() == prompt + hi + delta + hi


def test_stop_context_when_the_prompt_does_not_fit(ctok, v):
    engine = ScriptedEngine([v("hi") + [EOS]], stop_token_ids=[EOS])
    traj = make_loop(engine, ctok, parser=None, max_context_tokens=8).run(EchoEnv())  # prompt: 8 tokens
    assert traj.stop_reason == "context" and traj.num_turns == 0 and engine.calls == []
    assert traj.ids() == [v.U] + v("hello") + [v.E, v.A]
    assert traj.to_sample().loss_mask == [0] * 8


def test_stop_context_when_the_delta_does_not_fit(ctok, v):
    # prompt 9 + turn 16 = 25; the delta (5) would reach 30 = max_context_tokens: no room for another turn
    turns = [v("@lookup(key=ab)") + [EOS], v("42") + [EOS]]
    engine = ScriptedEngine(turns, stop_token_ids=[EOS])
    traj = make_loop(engine, ctok, max_context_tokens=30).run(KVLookupEnv(table_size=2), task=TASK)
    assert traj.stop_reason == "context" and len(engine.calls) == 1
    assert traj.ids() == [v.U] + v("key ab") + [v.E, v.A] + v("@lookup(key=ab)") + [EOS]
    assert traj.reward == 0.0


def test_stop_context_when_the_next_turn_is_cut_by_the_context(ctok, v):
    # max_context_tokens 31: the delta fits (30), one token is left; the turn is cut there -> "context", not "length"
    turns = [v("@lookup(key=ab)") + [EOS], v("42") + [EOS]]
    engine = ScriptedEngine(turns, stop_token_ids=[EOS])
    traj = make_loop(engine, ctok, max_context_tokens=31).run(KVLookupEnv(table_size=2), task=TASK)
    assert [c.max_new_tokens for c in engine.calls] == [31 - 9, 1]
    assert traj.stop_reason == "context"
    assert traj.ids()[-6:] == [v.T] + v("42") + [v.E, v.A] + v("4")
    assert sample_mask(traj)[-6:] == [0, 0, 0, 0, 0, 1]
    assert traj.reward == 0.0


def test_stop_length_when_a_turn_hits_max_new_tokens(ctok, v):
    engine = ScriptedEngine([v("@lookup(key=ab)") + [EOS]], stop_token_ids=[EOS], version=2)
    env = KVLookupEnv(table_size=2)
    traj = make_loop(engine, ctok, max_new_tokens=4).run(env, task=TASK)
    assert traj.stop_reason == "length" and engine.calls[0].max_new_tokens == 4
    assert traj.ids() == [v.U] + v("key ab") + [v.E, v.A] + v("@loo")
    s = traj.to_sample()
    assert s.loss_mask == [0] * 9 + [1] * 4 and s.token_versions == [-1] * 9 + [2] * 4
    assert [m.role for m in traj.messages] == ["user", "assistant"]  # the cut turn is not stepped
    assert traj.messages[-1].content == "@loo"
    assert env.looked_up == set() and traj.reward == 0.0


def test_stop_error_when_the_env_raises(ctok, v):
    engine = ScriptedEngine([v("hi") + [EOS]], stop_token_ids=[EOS])
    traj = make_loop(engine, ctok, parser=None).run(RaisingEnv())
    assert traj.stop_reason == "error" and traj.metrics["error_where"] == "step"
    assert "Traceback" in traj.error and "RuntimeError: boom in step" in traj.error
    assert traj.reward == 0.0 and traj.components == {}
    assert traj.ids() == [v.U] + v("hello") + [v.E, v.A] + v("hi") + [EOS]

    traj = make_loop(ScriptedEngine([], stop_token_ids=[EOS]), ctok, parser=None).run(RaisingResetEnv())
    assert traj.stop_reason == "error" and traj.metrics["error_where"] == "reset"
    assert "ValueError: boom in reset" in traj.error and traj.ids() == []


@pytest.mark.parametrize("workers", [1, 3])
def test_run_batch_one_failing_env_does_not_stop_the_others(ctok, v, workers):
    hi = v("hi") + [EOS]
    engine = ScriptedEngine(lambda r: hi, stop_token_ids=[EOS])
    loop = AgentLoop(engine, PlainChatRenderer(ctok), budget=Budget(), max_env_workers=workers)
    trajs = loop.run_batch([Episode(EchoEnv(3)), Episode(RaisingEnv()), Episode(EchoEnv(3))])
    assert [t.stop_reason for t in trajs] == ["env_done", "error", "env_done"]
    assert [t.num_turns for t in trajs] == [3, 1, 3]
    assert [t.reward for t in trajs] == [1.0, 0.0, 1.0]
    assert trajs[0].error is None and trajs[2].error is None
    assert "Traceback" in trajs[1].error and "boom in step" in trajs[1].error
    prompt = [v.U] + v("hello") + [v.E, v.A]
    delta = [v.U] + v("again") + [v.E, v.A]
    assert trajs[0].ids() == trajs[2].ids() == prompt + hi + delta + hi + delta + hi
    # one engine call per round: 3 requests, then the 2 live episodes twice
    assert [c.key for c in engine.calls] == [(0, 0), (1, 0), (2, 0), (0, 1), (2, 1), (0, 2), (2, 2)]


@pytest.mark.parametrize("size, shown", [(15, "x" * 15), (16, "xxxx[truncated]"), (50, "xxxx[truncated]")])
def test_tool_output_is_capped_in_the_delta(ctok, v, size, shown):
    # cap 15 tokens; the marker "[truncated]" is 11 characters, so a cut keeps 4 'x' (15 tokens in all)
    engine = ScriptedEngine([v("@dump()") + [EOS], v("ok") + [EOS]], stop_token_ids=[EOS])
    traj = make_loop(engine, ctok, max_tool_output_tokens=15).run(DumpEnv(size))
    delta = [s for s in traj.segments if s.source == "env"][0].ids
    assert delta == [v.T] + v(shown) + [v.E, v.A]
    assert len(delta) == 1 + 15 + 2
    assert traj.messages[2].content == shown


def test_tool_output_cap_below_the_marker_length(ctok, v):
    engine = ScriptedEngine([v("@dump()") + [EOS], v("ok") + [EOS]], stop_token_ids=[EOS])
    traj = make_loop(engine, ctok, max_tool_output_tokens=5).run(DumpEnv(50))
    delta = [s for s in traj.segments if s.source == "env"][0].ids
    assert len(delta) - 3 == 5 and traj.messages[2].content == "x" * 5  # no room for the marker: cut only


def test_tool_output_cap_with_byte_level_bpe_multibyte(bpe):
    loop = AgentLoop(ScriptedEngine([], stop_token_ids=[EOS]), PlainChatRenderer(bpe),
                     budget=Budget(max_tool_output_tokens=14))
    capped = loop._cap(Message("tool", "é" * 40, tool_call_id="c", name="t"))
    assert len(bpe(capped.content, add_special_tokens=False)["input_ids"]) <= 14
    assert capped.content.endswith("[truncated]") and "\ufffd" not in capped.content


# ------------------------------------------------------------------ 5. fork
def test_rewrite_forks_into_two_samples_with_the_final_reward(ctok, v):
    hi, ok = v("hi") + [EOS], v("ok") + [EOS]
    engine = ScriptedEngine([hi, ok], stop_token_ids=[EOS], logprob=lambda r, ids: [-1.0] * len(ids))
    traj = make_loop(engine, ctok, parser=None).run(ForkEnv())
    samples = traj.to_samples(group_id=5)
    assert len(samples) == 2 and len(traj.forks) == 1
    first, second = samples
    assert first.input_ids == [v.U] + v("hello") + [v.E, v.A] + hi
    assert first.loss_mask == [0] * 8 + [1] * 3
    assert first.stop_reason == "fork" and first.num_turns == 1
    rewritten = [v.S] + v("sum") + [v.E] + [v.U] + v("hello") + [v.E, v.A]
    assert second.input_ids == rewritten + ok
    assert second.loss_mask == [0] * 13 + [1] * 3
    assert second.stop_reason == "env_done" and second.num_turns == 1
    assert first.reward == second.reward == 1.0
    assert first.reward_positions == [(10, 1.0)] and second.reward_positions == [(15, 1.0)]
    assert first.group_id == second.group_id == 5
    # the next turn was generated from the rewritten context, not the old ledger
    assert engine.calls[1].prompt_ids == rewritten
    assert traj.metrics["forks"] == 1


# ------------------------------------------------------------------ 6. several calls in one turn
def test_several_calls_in_one_turn_answer_in_call_order(ctok, v):
    task = {"table": {"ab": 3, "cd": 39, "ef": 5}, "question": ["ab", "cd"]}
    turns = [v("@lookup(key=ab)\n@lookup(key=cd)") + [EOS], v("42") + [EOS]]
    engine = ScriptedEngine(turns, stop_token_ids=[EOS])
    traj = make_loop(engine, ctok).run(KVLookupEnv(table_size=3, keys_per_task=2), task=task)
    assert traj.segments[0].ids == [v.U] + v("sum ab cd") + [v.E, v.A]
    tools = [m for m in traj.messages if m.role == "tool"]
    assert [(m.content, m.tool_call_id) for m in tools] == [("3", "call_0_0"), ("39", "call_0_1")]
    delta = [s for s in traj.segments if s.source == "env"][0].ids
    assert delta == [v.T] + v("3") + [v.E] + [v.T] + v("39") + [v.E] + [v.A]
    assert traj.metrics["tool_calls"] == 2 and traj.stop_reason == "env_done"
    assert traj.reward == 1.0 and traj.components == {"correct": 1.0, "called_tool": 1.0}


def test_concurrent_calls_come_back_in_call_order_not_completion_order(ctok, v):
    engine = ScriptedEngine([v("@wait(ms=80)@wait(ms=1)") + [EOS], v("ok") + [EOS]], stop_token_ids=[EOS])
    traj = make_loop(engine, ctok).run(WaitEnv())
    tools = [m for m in traj.messages if m.role == "tool"]
    assert [(m.content, m.tool_call_id) for m in tools] == [("w80", "call_0_0"), ("w1", "call_0_1")]
    delta = [s for s in traj.segments if s.source == "env"][0].ids
    assert delta == [v.T] + v("w80") + [v.E] + [v.T] + v("w1") + [v.E] + [v.A]


# ------------------------------------------------------------------ 7. BackendEngine cutting
class FakeBackend:
    """Returns fixed continuations (one per prompt, whatever the budget); records the calls."""

    def __init__(self, responses):
        self.responses, self.calls = responses, []

    def generate(self, prompt_ids, counts, max_new_tokens, temperature):
        self.calls.append((list(map(list, prompt_ids)), list(counts), max_new_tokens, temperature))
        ids = [self.responses[tuple(p)] for p in prompt_ids]
        return SimpleNamespace(response_ids=[list(r) for r in ids],
                               logprobs=[[-0.1 * (k + 1) for k in range(len(r))] for r in ids])

    def sync_weights(self, model):
        pass

    def close(self):
        pass


def test_backend_engine_cuts_to_each_request_budget():
    backend = FakeBackend({(1,): [10, 11, 12, 13, 14, 15], (2,): [10, 11, 99, 13, 14, 15],
                           (3,): [10, 11, 12, 99, 14, 15], (4,): [10, 11, 12, 13, 14, 15]})
    engine = BackendEngine(backend, stop_token_ids=[99], version=4)
    reqs = [GenerationRequest([1], 3), GenerationRequest([2], 6), GenerationRequest([3], 3),
            GenerationRequest([4], 5, temperature=0.5)]
    gens = engine.generate(reqs)
    # no stop token within budget 3: cut, "length"
    assert (gens[0].ids, gens[0].finish_reason) == ([10, 11, 12], "length")
    assert gens[0].logprobs == pytest.approx([-0.1, -0.2, -0.3])
    # stop token inside the budget: included, "stop"
    assert (gens[1].ids, gens[1].finish_reason) == ([10, 11, 99], "stop")
    assert gens[1].logprobs == pytest.approx([-0.1, -0.2, -0.3])
    # stop token just past the budget: not reached, "length"
    assert (gens[2].ids, gens[2].finish_reason) == ([10, 11, 12], "length")
    assert (gens[3].ids, gens[3].finish_reason) == ([10, 11, 12, 13, 14], "length")
    assert all(g.version == 4 for g in gens)
    # one backend call per temperature, with that group's largest budget
    assert backend.calls == [([[1], [2], [3]], [1, 1, 1], 6, 1.0), ([[4]], [1], 5, 0.5)]
    engine.sync_weights(None)
    assert engine.generate([GenerationRequest([1], 2)])[0].version == 5


def test_scripted_engine_cuts_and_stops():
    engine = ScriptedEngine([[5, 6, 7, 8], [5, 2, 7], [5, 6]], stop_token_ids=[2])
    g = engine.generate([GenerationRequest([1], 3), GenerationRequest([1], 5), GenerationRequest([1], 5)])
    assert [(x.ids, x.finish_reason) for x in g] == [([5, 6, 7], "length"), ([5, 2], "stop"), ([5, 6], "length")]
    assert g[0].logprobs == [0.0, 0.0, 0.0]
