"""MixtureEnv (issue 13 part 5): the domain draw per seed, the weights, delegation of whole episodes (rewards written
by hand), the union tokenizer inputs, bad input, and a 2-step trainer run of the bundled ``mixture`` config."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from lckernels_rl.agents import AgentLoop, Budget  # noqa: E402
from lckernels_rl.agents.renderer import PLAIN_CHAT_TOKENS, make_renderer  # noqa: E402
from lckernels_rl.envs import make_tool_env  # noqa: E402
from lckernels_rl.envs.mixture import MixtureEnv  # noqa: E402
from lckernels_rl.models import build_char_tokenizer  # noqa: E402
from lckernels_rl.rollout.engine import ScriptedEngine  # noqa: E402

ARITH = {"env": "arithmetic", "name": "arith", "args": {"max_value": 9}}
KV = {"env": "kv_lookup", "name": "kv"}
ROOMS = {"env": "hipif_rooms", "name": "rooms", "args": {"n_rooms": 2}}


def _mix(*specs, **kw) -> MixtureEnv:
    return MixtureEnv(envs=[dict(s) for s in specs], **kw)


def _w(spec, w):
    return {**spec, "weight": w}


# ------------------------------------------------------------------ the draw
def test_same_seed_same_domain_and_task_across_instances():
    a, b = _mix(ARITH, KV, ROOMS), _mix(ARITH, KV, ROOMS)
    for seed in range(40):
        ma, ia = a.reset(seed=seed)
        mb, ib = b.reset(seed=seed)
        assert ia["domain"] == ib["domain"] == a.labels[a.domain_of(seed)]
        assert [(m.role, m.content) for m in ma] == [(m.role, m.content) for m in mb]
    assert a.labels == ["arith", "kv", "rooms"]
    # the sub-env sees the seed itself: the task is the one a single-env run generates from it
    i = next(s for s in range(40) if a.domain_of(s) == 1)
    alone = make_tool_env("kv_lookup").reset(seed=i)[0]
    assert [m.content for m in a.reset(seed=i)[0]] == [m.content for m in alone]
    # 3 domains over 40 seeds: every one is drawn (a constant draw would fail)
    assert {a.domain_of(s) for s in range(40)} == {0, 1, 2}


def test_weights_are_respected_over_many_seeds():
    """Weights 1 : 3 : 0 over seeds 0..3999: expected counts 1000 / 3000 / 0.  Each seed's draw is an independent
    uniform, so a count is Binomial(4000, p): std sqrt(4000 * 0.25 * 0.75) = 27.4; the tolerance 110 is 4 std (the
    draw is deterministic, so the test is too)."""
    env = _mix(_w(ARITH, 1.0), _w(KV, 3.0), _w(ROOMS, 0.0))
    counts = [0, 0, 0]
    for s in range(4000):
        counts[env.domain_of(s)] += 1
    assert abs(counts[0] - 1000) <= 110 and abs(counts[1] - 3000) <= 110
    assert counts[2] == 0  # weight 0: never drawn
    # `weights` replaces the specs' weights; `only` forces one domain, a weight-0 one included
    flipped = _mix(_w(ARITH, 1.0), _w(KV, 3.0), _w(ROOMS, 0.0), weights={"arith": 0.0, "rooms": 1.0})
    assert flipped.weights == [0.0, 3.0, 1.0]
    assert {flipped.domain_of(s) for s in range(200)} == {1, 2}
    only = _mix(_w(ARITH, 1.0), _w(KV, 3.0), _w(ROOMS, 0.0), only="rooms")
    assert {only.domain_of(s) for s in range(50)} == {2}
    assert only.reset(seed=5)[1]["domain"] == "rooms"


# ------------------------------------------------------------------ delegation of whole episodes
def _loop(env, texts, max_turns=8):
    tok = build_char_tokenizer(env.alphabet, extra_special_tokens=PLAIN_CHAT_TOKENS)
    renderer = make_renderer("plain", tok)
    stop = renderer.stop_token_ids[0]
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    engine = ScriptedEngine([enc(t) + [stop] for t in texts], stop_token_ids=renderer.stop_token_ids)
    return AgentLoop(engine, renderer, env.tool_format, Budget(max_turns=max_turns, max_context_tokens=512,
                                                               max_new_tokens=32))


def _run(env, texts, seed=None, task=None, max_turns=8):
    return _loop(env, texts, max_turns).run(env, task=task, seed=seed)


def test_delegates_tool_episode_rewards_and_adds_the_domain():
    env = _mix(ARITH, KV, ROOMS, only="kv")
    assert env.tool_format == "compact"  # kv_lookup's; arithmetic and rooms need no parser
    task = {"table": {"ab": 7, "cd": 35}, "question": ["ab"]}
    good = _run(env, ["@lookup(key=ab)", "7"], task=task)
    assert good.stop_reason == "env_done" and good.reward == 1.0
    assert good.components == {"correct": 1.0, "called_tool": 1.0}  # kv_lookup's own components, unchanged
    assert [m.content for m in good.messages] == ["key ab", "@lookup(key=ab)", "7", "7"]
    assert env.verify(good).info["domain"] == "kv"
    wrong = _run(_mix(ARITH, KV, ROOMS, only="kv"), ["@lookup(key=ab)", "8"], task=task)
    assert (wrong.reward, wrong.components) == (0.0, {"correct": 0.0, "called_tool": 1.0})
    bad_call = _run(_mix(ARITH, KV, ROOMS, only="kv"), ["@lookup(key=zz)", "7"], task=task)
    assert bad_call.metrics["tool_errors"] == 1 and bad_call.components == {"correct": 1.0, "called_tool": 0.0}


def test_delegates_text_and_multi_turn_text_episodes():
    # arithmetic, seed 0, max_value 9: "8+6=" (ArithmeticEnv's own draw from seed 0) -> 14
    arith = _mix(ARITH, KV, ROOMS, only="arith")
    t = _run(arith, ["14"], seed=0)
    assert t.messages[0].content == "8+6=" and t.reward == 1.0 and t.components == {"schema": 1.0}
    t = _run(_mix(ARITH, KV, ROOMS, only="arith"), ["13"], seed=0)
    assert t.reward == 0.0 and t.components == {"schema": 0.0}
    assert arith.steps_cut_turns  # a text task scores a cut response, as TextEnvAdapter does
    # rooms with keys b, a: take b / open / go (subgoal r1, 0.25) / take a / open / go (r2 0.25 + exit 1.0) = 1.5
    rooms = _mix(ARITH, KV, ROOMS, only="rooms")
    t = _run(rooms, ["take b", "open", "go", "take a", "open", "go"], task={"keys": ["b", "a"]})
    assert t.stop_reason == "env_done" and t.reward == pytest.approx(1.5)
    assert t.components["success"] == 1.0 and t.components["subgoals"] == 2.0
    assert rooms.verify(t).info["domain"] == "rooms"
    # one wrong spot first (an error turn, reward 0), then only the first room in 4 turns: 0.25
    t = _run(_mix(ARITH, KV, ROOMS, only="rooms"), ["take c", "take b", "open", "go"], task={"keys": ["b", "a"]},
             max_turns=4)
    assert t.stop_reason == "max_turns" and t.reward == pytest.approx(0.25) and t.components["errors"] == 1.0 and t.components["success"] == 0.0


def test_demonstration_and_state_follow_the_current_domain():
    env = _mix(ARITH, KV, ROOMS, only="kv")
    msgs, _ = env.reset(task={"table": {"ab": 7}, "question": ["ab"]})
    assert env.demonstration(msgs) == "@lookup(key=ab)"
    assert env.state()["domain"] == "kv" and env.state()["state"]["question"] == ["ab"]
    assert isinstance(env.state_digest(), str)
    with pytest.raises(RuntimeError, match="reset"):
        _mix(ARITH, KV).step(None)


# ------------------------------------------------------------------ tokenizer inputs
def test_tokenizer_inputs_are_the_union_over_all_specs_weight_zero_included():
    skill = {"env": "skill0", "name": "skill"}
    zero = _mix(_w(ARITH, 1.0), _w(ROOMS, 0.0), _w(skill, 0.0))
    other = _mix(_w(ARITH, 0.0), _w(ROOMS, 1.0), _w(skill, 5.0))
    assert zero.tokenizer_corpus(4) == other.tokenizer_corpus(4)
    assert zero.alphabet == other.alphabet and zero.protocol_tokens == other.protocol_tokens
    corpus = zero.tokenizer_corpus(4)
    assert any(c.startswith("rooms 2 | r1 key") for c in corpus)  # the weight-0 rooms' prompts are in
    assert "take" in " ".join(corpus)  # and its demonstrations
    assert set("0123456789+=") <= set(zero.alphabet) and set("|'") <= set(zero.alphabet)
    assert "<answer>" in zero.protocol_tokens  # skill0's tags
    tok_a = build_char_tokenizer(zero.alphabet, extra_special_tokens=PLAIN_CHAT_TOKENS)
    tok_b = build_char_tokenizer(other.alphabet, extra_special_tokens=PLAIN_CHAT_TOKENS)
    assert tok_a.get_vocab() == tok_b.get_vocab()


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("envs, match", [
    ([], r"`envs` must be a non-empty list"),
    ([ARITH, {"env": "chess"}], r"envs\[1\]\.env: unknown environment 'chess'"),
    ([_w(ARITH, -1.0)], r"envs\[0\]\.weight must be a finite number >= 0"),
    ([_w(ARITH, 0.0), _w(KV, 0.0)], r"every weight is 0"),
    ([{"env": "kv_lookup", "args": {"table_size": 0}}], r"envs\[0\]\.args: kv_lookup rejected"),
    ([ARITH, {"env": "arithmetic", "name": "arith"}], r"envs\[1\]\.name: label 'arith' is used twice"),
    ([{"env": "arithmetic", "wieght": 1}], r"envs\[0\]: unknown field\(s\) \['wieght'\]"),
    ([{"env": "mixture"}], r"envs\[0\]\.env: a mixture cannot contain a mixture"),
    ([ARITH, KV, {"env": "kv_lookup", "name": "kv_h", "args": {"tool_format": "hermes"}}],
     r"envs\[2\]\.args\.tool_format: kv_lookup needs the 'hermes' tool-call parser but envs\[1\]"),
])
def test_bad_input_names_the_field(envs, match):
    with pytest.raises(ValueError, match=match):
        MixtureEnv(envs=envs)


def test_bad_only_and_weights():
    with pytest.raises(ValueError, match="`only`: no env labelled 'x'"):
        _mix(ARITH, KV, only="x")
    with pytest.raises(ValueError, match=r"weights\.x: no env labelled"):
        _mix(ARITH, KV, weights={"x": 1.0})
    with pytest.raises(ValueError, match=r"weights\.kv must be a finite number >= 0"):
        _mix(ARITH, KV, weights={"kv": -2})
    # a text env with a hermes tool env: one parser (hermes) serves both
    assert _mix(ARITH, {"env": "kv_lookup", "args": {"tool_format": "hermes"}}).tool_format == "hermes"
    assert _mix(ARITH, ROOMS).tool_format is None  # nothing needs a parser: the trainer's default


# ------------------------------------------------------------------ the trainer
def test_bundled_mixture_config_trains_two_rl_steps(tmp_path):
    from .tiny import bundled_smoke_config, fit_rl_rows

    from lckernels_rl.train import Trainer

    cfg = bundled_smoke_config("mixture", tmp_path, "rl.max_new_tokens=16")
    assert cfg.task.env == "mixture" and len(cfg.task.env_args["envs"]) == 3
    tr = Trainer(cfg)
    try:
        assert tr.renderer_name == "plain" and tr.parser.name == "compact" and not tr.is_text_env
    finally:
        tr.close()
    rows = fit_rl_rows(cfg)
    assert len(rows) == 2 and all(r["rollouts"] > 0 for r in rows)
