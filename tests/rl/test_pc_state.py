"""pc_state (issue 13 part 3, STAGE-Claw): rewards of hand-made episodes, the verifier acceptance rule, the
restricted verifier, visible tool errors, determinism per seed, and a trainer smoke run of the bundled config."""

from __future__ import annotations

import hashlib

import pytest

from lckernels_rl.agents import Message, ToolCall
from lckernels_rl.agents.trajectory import Trajectory
from lckernels_rl.envs import make_tool_env
from lckernels_rl.envs.pc_state import (PCState, PCStateEnv, Task, TaskGenerator, accept_verifier, generate_task,
                                        make_tools, run_verifier)

INIT = {"files": {"ab.txt": "milk", "cd.txt": "tea"}, "calendar": {"gym": "d3", "run": "d5"},
        "notes": {"xy": "buy eggs"}}
GOOD_MV = "'ab.txt' not in s['files'] and s['files'].get('ef.txt') == 'milk'"


def mv_task(verifier=GOOD_MV) -> Task:
    return Task(hint="mv", initial=INIT, prompt="mv ab.txt ef.txt", goal={"kind": "mv", "src": "ab.txt",
                "dst": "ef.txt"}, reference=[[("mv", {"src": "ab.txt", "dst": "ef.txt"})]], verifier=verifier)


def cancel_task() -> Task:
    return Task(hint="cancel", initial=INIT, prompt="cancel d3", goal={"kind": "cancel", "day": "d3"},
                reference=[[("cal", {})], [("unbook", {"title": "gym"})]],
                verifier="'d3' not in s['calendar'].values() and len(s['calendar']) == 1")


def call(name, i=0, **args):
    return ToolCall(id=f"call_0_{i}", name=name, arguments=args, raw=f"@{name}(...)")


def episode(env, task, turns, stop_reason="env_done") -> Trajectory:
    msgs, _ = env.reset(task=task)
    t = Trajectory(messages=list(msgs), stop_reason=stop_reason)
    for turn in turns:
        t.messages.append(turn)
        t.messages.extend(env.step(turn).messages)
    return t


def A(text="", *calls):
    return Message("assistant", text, tool_calls=list(calls))


def test_rewards_on_hand_made_episodes():
    env = PCStateEnv()
    good = episode(env, mv_task(), [A("x", call("mv", src="ab.txt", dst="ef.txt")), A("done")])
    assert good.messages[2].content == "ok" and not good.messages[2].is_error
    v = env.verify(good)
    assert v.reward == 1.0
    assert v.components == {"verified": 1.0, "state_changed": 1.0, "claimed": 1.0, "false_claim": 0.0,
                            "verifier_error": 0.0}
    claim = episode(env, mv_task(), [A("done")])  # says done, changes nothing
    v = env.verify(claim)
    assert v.reward == 0.0 and v.components["false_claim"] == 1.0 and v.components["state_changed"] == 0.0
    fake = episode(env, mv_task(), [A("x", call("write", path="ef.txt", text="tea"), call("rm", 1, path="ab.txt")),
                                    A("done")])  # right names, content lost
    v = env.verify(fake)
    assert v.reward == 0.0 and v.components["state_changed"] == 1.0 and v.info["reason"].startswith("final state")
    quiet = episode(env, mv_task(), [A("x", call("mv", src="ab.txt", dst="ef.txt"))], "max_turns")  # no answer
    v = env.verify(quiet)
    assert v.reward == 1.0 and v.components["claimed"] == 0.0  # the state is scored whatever the reply


def test_multi_turn_cancel_reads_the_calendar():
    env = PCStateEnv()
    t = episode(env, cancel_task(), [A("x", call("cal")), A("y", call("unbook", title="gym")), A("done")])
    assert t.messages[2].content == "gym d3, run d5"
    assert env.verify(t).reward == 1.0 and env.state()["calendar"] == {"run": "d5"}
    wrong = episode(env, cancel_task(), [A("y", call("unbook", title="run")), A("done")])
    assert env.verify(wrong).reward == 0.0


def test_acceptance_rule_on_hand_written_verifiers():
    task = mv_task()
    vacuous = accept_verifier("len(s['files']) == 2", task)  # true before and after the mv
    assert not vacuous.accepted and vacuous.do_nothing.passed and "passes the do-nothing run" in vacuous.reason
    claim = accept_verifier("'done' in answer", task)
    assert not claim.accepted and claim.claim_only.passed and not claim.do_nothing.passed
    assert claim.reason == "rejected: passes the claim-only run"
    assert accept_verifier(GOOD_MV, task).accepted and accept_verifier(GOOD_MV, task).reason == "accepted"
    strict = accept_verifier("s['files'].get('ef.txt') == 'tea'", task)
    assert not strict.accepted and strict.reason == "rejected: fails the reference"
    raising = accept_verifier("s['files']['zz'] == ''", task)
    assert not raising.accepted and "KeyError" in raising.reason


def test_generator_counts_rejections_and_drops():
    from collections import Counter

    c = Counter()
    assert generate_task("rm", 0, flaw_rate=1.0, max_drafts=3, stats=c) is None  # three flaws, then no draft left
    assert (c["drafted"], c["rejected"], c["accepted"], c["dropped"]) == (3, 3, 0, 1)
    c = Counter()
    t = generate_task("rm", 0, flaw_rate=1.0, max_drafts=4, stats=c)
    assert t is not None and (c["drafted"], c["rejected"], c["accepted"]) == (4, 3, 1)
    assert [d[1] == "accepted" for d in t.drafts] == [False, False, False, True]
    c = Counter()
    assert generate_task("book", 0, flaw_rate=0.0, stats=c).drafts[0][1] == "accepted" and c["drafted"] == 1
    for h in ("mv", "rm", "book", "cancel", "save"):  # every accepted verifier obeys the rule
        for s in range(4):
            t = generate_task(h, s, flaw_rate=0.5, max_drafts=4)
            assert t is not None and accept_verifier(t.verifier, t).accepted


def test_raising_verifier_is_zero_with_reason():
    env = PCStateEnv()
    t = episode(env, mv_task("s['files']['zz.txt'] == 'x'"), [A("x", call("mv", src="ab.txt", dst="ef.txt")),
                                                            A("done")])
    v = env.verify(t)
    assert v.reward == 0.0 and v.components["verifier_error"] == 1.0 and "KeyError" in v.info["reason"]


def test_verifier_is_restricted_and_cannot_write():
    st = PCState.from_dict(INIT)
    d0 = st.digest()
    for prog, msg in [("__import__('os')", "unknown name '__import__'"), ("open('x', 'w')", "unknown name 'open'"),
                      ("s['files'].pop('ab.txt')", "disallowed attribute 'pop'"),
                      ("s.__class__", "disallowed attribute '__class__'"), ("(lambda: 1)()", "Lambda"),
                      ("(", "SyntaxError")]:
        r = run_verifier(prog, st)
        assert not r.passed and msg in r.error, (prog, r.error)
    r = run_verifier("s['files'].update({'zz': 'x'}) or True", st)
    assert not r.passed and "update" in r.error
    r = run_verifier("len(s['files'])", st)
    assert not r.passed and r.error == "verifier returned int, expected bool"
    assert run_verifier("all(v != 'd3' for v in s['calendar'].values()) is False", st).passed
    assert st.digest() == d0


def test_tool_errors_are_visible_and_the_episode_goes_on():
    env = PCStateEnv()
    env.reset(task=mv_task())
    p = env._parser
    d0 = env.state_digest()
    texts = ["@mv(src=ab.txt", "@zap()", "@cat(path=zz.txt)", "@mv(src=ab.txt)", "@book(title=x, day=d9)"]
    msgs = []
    for k, text in enumerate(texts):
        res = env.step(Message("assistant", text, tool_calls=p.parse(text, turn=k).calls))
        msgs += res.messages
        assert not res.terminated
    assert all(m.is_error for m in msgs)
    assert msgs[0].content.startswith("error: could not parse tool call")
    assert msgs[1].content.startswith("error: unknown tool 'zap'")
    assert msgs[2].content == "error: ValueError: no file 'zz.txt'"
    assert "missing required argument 'dst'" in msgs[3].content
    assert msgs[4].content == "error: ValueError: bad day 'd9' (expected d1 .. d7)"
    assert env.state_digest() == d0
    res = env.step(Message("assistant", "@mv(src=ab.txt, dst=ef.txt)",
                           tool_calls=p.parse("@mv(src=ab.txt, dst=ef.txt)").calls))
    assert res.messages[0].content == "ok" and env.state_digest() != d0


def test_state_digest_and_tools_marking():
    st = PCState(files={"a": "x"})
    blob = '{"calendar":{},"files":{"a":"x"},"notes":{}}'
    assert st.digest() == hashlib.sha256(blob.encode()).hexdigest()
    assert PCState(files={"a": "x"}).digest() == st.digest() != PCState(files={"a": "y"}).digest()
    tools = make_tools(lambda: st)
    assert [t.name for t in tools if t.read_only] == ["ls", "cat", "cal", "note"]
    assert [t.name for t in tools if not t.read_only] == ["write", "rm", "mv", "book", "unbook", "jot"]
    assert [t.name for t in make_tools(lambda: st, read_only=True)] == ["ls", "cat", "cal", "note"]


def test_determinism_per_seed_and_demonstration_solves():
    a, b = PCStateEnv(), PCStateEnv()
    for s in (0, 3, 11):
        ma, ia = a.reset(seed=s)
        mb, ib = b.reset(seed=s)
        assert ia["task"] == ib["task"] and ma[0].content == mb[0].content and a.state_digest() == b.state_digest()
    assert a.generator.stats == b.generator.stats
    assert PCStateEnv().reset(seed=1)[1]["task"] != PCStateEnv().reset(seed=2)[1]["task"]
    env = make_tool_env("pc_state")
    assert isinstance(env, PCStateEnv)
    for s in range(10):
        msgs, _ = env.reset(seed=s)
        t = Trajectory(messages=list(msgs), stop_reason="env_done")
        for k in range(4):
            text = env.demonstration(t.messages)
            turn = Message("assistant", text, tool_calls=env._parser.parse(text, turn=k).calls)
            t.messages.append(turn)
            res = env.step(turn)
            t.messages += res.messages
            if res.terminated:
                break
        assert env.verify(t).reward == 1.0, t.messages
    corpus = env.tokenizer_corpus(3)
    assert "done" in corpus and any(c.startswith("@") for c in corpus)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="hints"):
        PCStateEnv(hints=("zz",))
    with pytest.raises(ValueError, match="flaw_rate"):
        generate_task("mv", 0, flaw_rate=2.0)
    with pytest.raises(ValueError, match="max_drafts"):
        TaskGenerator(max_drafts=0).generate(0)
    with pytest.raises(ValueError, match="task"):
        PCStateEnv().reset(task={"x": 1})
    with pytest.raises(TypeError, match="files"):
        PCState(files={"a": 1})
    with pytest.raises(ValueError, match="verifier"):
        PCStateEnv().reset(task=mv_task(verifier=""))


def test_config_smoke_through_the_trainer(tmp_path):
    pytest.importorskip("transformers")
    from lckernels_rl.train import load_config

    from .tiny import TINY_LONGCAT, fit_rl_rows

    cfg = load_config("pc_state", [f"log.output_dir={tmp_path / 'run'}", "log.progress=false", "log.plots=false",
                                   "log.checkpoint_every=0", "log.eval_every=2", f"model.overrides={TINY_LONGCAT}",
                                   "task.train_size=8", "task.eval_size=2", "sft.steps=1", "sft.batch_size=2",
                                   "rl.steps=2", "rl.prompts_per_step=2", "rl.rollouts_per_step=4",
                                   "rl.max_new_tokens=8"])
    rows = fit_rl_rows(cfg)
    assert [r["step"] for r in rows] == [2, 3]
    assert "eval_accuracy" in rows[-1]
