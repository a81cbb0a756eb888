"""pc_state (issue 13 part 3, STAGE-Claw): rewards of hand-made episodes, the verifier acceptance rule, the
restricted verifier, visible tool errors, determinism per seed, and a trainer smoke run of the bundled config."""

from __future__ import annotations

import hashlib
from pathlib import Path

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
    """The bundled config through the trainer (1 warm-up step, 2 RL steps), and issue 13 part 3's diagnosis: the RL
    rollouts made no tool call because the default character tokenizer had no ``@ ( = ,`` or digits (the env had
    no ``alphabet``) and ``rl.max_new_tokens`` (24) cut every ``mv`` / ``book`` / ``save`` call; then
    ``agent.max_tool_output_tokens`` (16 characters) hid the calendar a ``cancel`` task must read.  With the
    trainer's tokenizer and budgets the demonstrations decode back exactly, each calls a tool, sees whole tool
    outputs, ends ``env_done`` and is verified."""
    pytest.importorskip("transformers")
    from lckernels_rl.train import Trainer, load_config

    from .tiny import TINY_LONGCAT

    cfg = load_config("pc_state", [f"log.output_dir={tmp_path / 'run'}", "log.progress=false", "log.plots=false",
                                   "log.checkpoint_every=0", "log.eval_every=2", f"model.overrides={TINY_LONGCAT}",
                                   "task.train_size=8", "task.eval_size=2", "sft.steps=1", "sft.batch_size=2",
                                   "rl.steps=2", "rl.prompts_per_step=2", "rl.rollouts_per_step=4"])
    tr = Trainer(cfg)
    try:
        tok = tr.tokenizer
        call_text = '@write(path=x1.txt, text="bread bills")'
        assert tok.decode(tok(call_text, add_special_tokens=False)["input_ids"]) == call_text
        assert tok.unk_token_id not in tok("note ab to cd.txt @mv(src=ab.txt, dst=cd.txt) gym d3, run d5")["input_ids"]
        trajs = tr.demonstrations(range(20))
        assert all(t.stop_reason == "env_done" for t in trajs), [t.stop_reason for t in trajs]
        assert all(t.metrics["tool_calls"] >= 1 and t.metrics["parse_errors"] == 0 for t in trajs)
        assert all(t.reward == 1.0 for t in trajs)
        # ... and the agent sees whole tool outputs (the 16-token cap cut `cal`'s listing: cancel was unlearnable)
        assert not any("[truncated]" in m.content for t in trajs for m in t.messages if m.role == "tool")
        assert any(m.content.count(",") == 2 for t in trajs for m in t.messages if m.role == "tool")  # a 3-event cal
        rows = [r for r in tr.fit() if r["phase"] == "rl"]
    finally:
        tr.close()
    assert [r["step"] for r in rows] == [2, 3]
    assert "eval_accuracy" in rows[-1] and "tool_call_rate" in rows[0]


# ------------------------------------------------------------------ the verifier sandbox (a confined child process)

HANG = "any(a == b for a in 'x' * 100000 for b in 'y' * 100000)"  # passes the AST gate: 10^10 comparisons
MEMORY_BOMB = "len('x' * 1000000000) > 0"  # passes the AST gate: 1 GB > the child's 256 MiB address space


def _snapshot(*dirs):
    out = {}
    for d in dirs:
        for p in sorted(Path(d).rglob("*")):
            if p.is_file():
                out[str(p)] = p.read_bytes()
            else:
                out[str(p)] = None
    return out


@pytest.fixture(scope="module")
def sandbox():
    from lckernels_rl.envs.pc_state.sandbox import VerifierSandbox

    with VerifierSandbox(timeout_s=0.5) as sb:
        yield sb


def test_hanging_and_memory_bomb_verifiers_are_zero_and_the_run_goes_on(sandbox):
    st = PCState.from_dict(INIT)
    r = run_verifier(HANG, st, sandbox=sandbox)
    assert (r.passed, r.kind) == (False, "timeout")
    assert r.error == "verifier timed out after 0.5 s (wall-time limit); its process was killed"
    r = run_verifier(MEMORY_BOMB, st, sandbox=sandbox)
    assert (r.passed, r.kind, r.error) == (False, "raised", "verifier raised MemoryError: ")
    starts = sandbox.starts
    assert run_verifier(GOOD_MV, PCState(files={"ef.txt": "milk"}), sandbox=sandbox).passed  # a new child answers
    assert run_verifier(GOOD_MV, PCState(files={"ef.txt": "tea"}), sandbox=sandbox).kind == "ok"
    assert sandbox.starts == starts  # the memory error did not cost the child; the good jobs reused it


def test_env_scores_a_hanging_verifier_zero_with_its_reason():
    env = PCStateEnv(verifier_timeout_s=0.5)
    t = episode(env, mv_task(HANG), [A("x", call("mv", src="ab.txt", dst="ef.txt")), A("done")])
    v = env.verify(t)
    assert v.reward == 0.0 and v.components["verifier_error"] == 1.0 and v.components["state_changed"] == 1.0
    assert v.info["verifier_outcome"] == "timeout" and v.info["reason"].startswith("verifier timed out after 0.5 s")
    good = episode(env, mv_task(), [A("x", call("mv", src="ab.txt", dst="ef.txt")), A("done")])
    assert env.verify(good).reward == 1.0 and env.verify(good).info["verifier_outcome"] == "ok"
    with pytest.raises(ValueError, match="verifier_timeout_s"):
        PCStateEnv(verifier_timeout_s=0)


def _malicious(victim):
    v = str(victim)
    # program -> the AST gate's reason (its first disallowed node, outermost first); each program gets past the
    # pure builtins in the child: `len.__self__` is the builtins module
    return {
        f"len.__self__.open({v!r}, 'w').write('pwned') > 0": "disallowed attribute 'write'",  # writes a file
        f"len.__self__.__import__('os').remove({v!r}) is None": "disallowed attribute 'remove'",  # imports os
        ("[c for c in ().__class__.__base__.__subclasses__() if c.__name__ == '_wrap_close'][0]"
         f".__init__.__globals__['system']('rm -f {v}') == 0"): "disallowed attribute '__globals__'",  # a shell
        f"len.__self__.open({v + '.new'!r}, 'x') is None": "disallowed attribute 'open'",  # creates a file
        "len.__self__.__import__('socket') is None": "disallowed attribute '__import__'",  # a module not loaded yet
    }


def test_malicious_verifiers_are_rejected_by_the_gate_and_confined_in_the_child(sandbox, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    before = _snapshot(tmp_path, Path.cwd() / "lckernels_rl" / "envs" / "pc_state")
    st = PCState.from_dict(INIT)
    # what each program attempts first, by hand: `os` is already loaded in the child, so importing it again raises
    # no "import" event -- its `remove` is what is refused; `socket` is not loaded, so its import is refused
    events = iter(["open", "os.remove", "os.system", "open", "import"])
    for prog, why in _malicious(victim).items():
        r = run_verifier(prog, st, sandbox=sandbox)  # the first gate: the AST whitelist
        assert (r.passed, r.kind, r.error) == (False, "rejected", f"rejected program: ValueError: {why}")
        starts = sandbox.starts
        res = sandbox.run(prog, st.to_dict())  # the gate bypassed: the child's audit hook refuses the operation
        event = next(events)
        assert (res.passed, res.kind, res.denied) == (False, "forbidden", [event]), (prog, res)
        assert res.error == f"verifier raised RuntimeError: forbidden operation in a verifier: {event}"
        assert sandbox.run("True", {}).passed and sandbox.starts == starts + 1  # a probing child is not reused
    assert _snapshot(tmp_path, Path.cwd() / "lckernels_rl" / "envs" / "pc_state") == before
    assert victim.read_text() == "keep"


def test_kernel_layers_alone_make_the_writes_impossible(tmp_path):
    """Audit hook off: Landlock (or, without it, the dropped root uid / RLIMIT_NOFILE) still stops every write."""
    from lckernels_rl.envs.pc_state.sandbox import VerifierSandbox

    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    before = _snapshot(tmp_path)
    with VerifierSandbox(timeout_s=2.0, audit_hook=False) as sb:
        first = sb.run("True", {})
        assert first.passed and sb.layers["audit_hook"] == "off"
        if not str(sb.layers.get("landlock", "")).startswith("abi"):
            pytest.skip(f"no Landlock here: {sb.layers}")
        # by hand: a new descriptor is refused by RLIMIT_NOFILE (errno 24) before Landlock sees the open; a path
        # operation (unlink) by Landlock (errno 13); a process by RLIMIT_NPROC after the uid drop (os.system's
        # fork fails: a non-zero status, so the program is False; os.fork raises EAGAIN)
        expected = ["[Errno 24] Too many open files", "[Errno 13] Permission denied", None,
                    "[Errno 24] Too many open files", "[Errno 24] Too many open files"]
        progs = list(_malicious(victim)) + ["len.__self__.__import__('os').fork() > 0"]
        expected.append("verifier raised BlockingIOError: [Errno 11] Resource temporarily unavailable")
        for prog, err in zip(progs, expected):
            res = sb.run(prog, {})
            assert not res.passed and res.kind == ("ok" if err is None else "raised"), (prog, res)
            assert err is None and res.error is None or err in res.error, (prog, res.error)
    assert _snapshot(tmp_path) == before


def test_a_misbehaving_worker_is_a_zero_with_its_reason():
    import sys

    from lckernels_rl.envs.pc_state.sandbox import VerifierSandbox

    py = [sys.executable, "-I", "-c"]
    ready = "import sys; print('{\"ready\": true}', flush=True); sys.stdin.readline(); "
    cases = [
        (ready + "print('lol', flush=True); sys.stdin.readline()", "garbage",
         "verifier process replied garbage: b'lol'"),
        (ready + "print('{\"id\": 99, \"passed\": true}', flush=True); sys.stdin.readline()", "garbage",
         "verifier process replied garbage: b'{\"id\": 99, \"passed\": true}'"),
        (ready + "import os; os._exit(3)", "crashed", "verifier process ended without a verdict (exit code 3)"),
        ("print('hello', flush=True)", "unavailable",
         "verifier sandbox unavailable: the worker's first line is not a ready message: b'hello'"),
    ]
    for code, kind, reason in cases:
        with VerifierSandbox(timeout_s=2.0, worker_argv=py + [code]) as sb:
            res = sb.run("True", {})
            assert (res.passed, res.kind, res.error) == (False, kind, reason), code


def test_fresh_child_per_job_mode_and_bad_arguments():
    from lckernels_rl.envs.pc_state.sandbox import VerifierSandbox

    with VerifierSandbox(reuse=False) as sb:
        assert sb.run("s['files'].get('a') == 'x'", {"files": {"a": "x"}}).passed
        assert not sb.run("answer == 'done'", {}, "no").passed
        assert sb.starts == 2 and sb._proc is None
    for kw, name in (({"timeout_s": 0}, "timeout_s"), ({"memory_mb": 1}, "memory_mb"),
                     ({"start_timeout_s": "x"}, "start_timeout_s")):
        with pytest.raises(ValueError, match=name):
            VerifierSandbox(**kw)


def test_generated_tasks_are_memoized_without_changing_stats_or_sharing_objects():
    g = TaskGenerator(hints=("save",), flaw_rate=1.0, max_drafts=4)
    t1 = g.generate(5)
    once = dict(g.stats)
    t1.initial["files"]["zz.txt"] = "edited"  # the caller's copy only
    t2 = g.generate(5)
    assert "zz.txt" not in t2.initial["files"] and t2.verifier == t1.verifier
    assert dict(g.stats) == {k: 2 * v for k, v in once.items()}
    assert once["drafted"] == 4 and once["accepted"] == 1  # flaw_rate 1: three flawed drafts, then the good one
