"""Tool domains (issue 13 §1): generated tools and dependency graph, task growth invariants, τ²-style rewards on
hand-made episodes (expected values written by hand), the scripted user, bad input, determinism, trainer smoke."""

from __future__ import annotations

import copy

import pytest

from lckernels_rl.agents import Message
from lckernels_rl.agents.parsers import get_parser
from lckernels_rl.envs import make_tool_env
from lckernels_rl.envs.tool_domains import (DOMAIN_SPECS, NoiseWrapper, Task, TaskGenerator, ToolDomainEnv,
                                            get_domain)

P = get_parser("compact")

DB = {"customer": {"c1": {"name": "ana", "status": "new", "tier": "std"},
                   "c2": {"name": "bob", "status": "new", "tier": "gold"}},
      "order": {"o1": {"customer": "c1", "status": "new", "eta": "am"},
                "o2": {"customer": "c2", "status": "open", "eta": "pm"}},
      "parcel": {}, "courier": {}}
TOOLS = ["find_customer", "find_order", "get_customer", "get_order", "set_order_eta", "set_order_status",
         "cancel_order", "set_customer_tier", "set_customer_status", "cancel_customer"]


def _task(kind="write", value="pm", fld="eta") -> Task:
    gold = [["find_customer", {"name": "ana"}], ["find_order", {"customer": "c1"}]]
    if kind == "write":
        gold.append(["set_order_eta", {"order": "o1", "value": value}])
        desc = f"customer ana: order eta={value}"
    elif kind == "read":
        gold.append(["get_order", {"order": "o1"}])
        desc, value = "customer ana: order eta?", None
    else:
        gold.append(["cancel_order", {"order": "o1"}])
        desc, value, fld = "customer ana: order cancel", None, None
    return Task(domain="delivery", db=copy.deepcopy(DB), kind=kind, path=["customer", "order"], field=fld,
                value=value, profile={"role": "customer", "name": "ana"},
                chain=["find_customer", "find_order", gold[-1][0]], gold=gold, outputs=["am"] if kind == "read" else [],
                goal_digest="", tools=TOOLS, description=desc)


def _play(env, texts, task=None, seed=None):
    """Reset, then step hand-written assistant texts (parsed in the compact format); returns the messages."""
    msgs, _ = env.reset(seed=seed, task=task)
    convo = list(msgs)
    for i, text in enumerate(texts):
        turn = Message("assistant", text, tool_calls=P.parse(text, turn=i).calls)
        convo.append(turn)
        res = env.step(turn)
        convo += res.messages
        if res.terminated:
            break
    return convo


GOLD_WRITE = ["@find_customer(name=ana)", "@find_order(customer=c1)", "@set_order_eta(order=o1, value=pm)", "done"]


def _solve(env, seed, max_turns=16):
    """The scripted demonstrations played from reset(seed) until the episode ends: (verdict, info, conversation)."""
    msgs, info = env.reset(seed=seed)
    convo = list(msgs)
    for i in range(max_turns):
        text = env.demonstration(convo)
        turn = Message("assistant", text, tool_calls=P.parse(text, turn=i).calls)
        convo.append(turn)
        res = env.step(turn)
        convo += res.messages
        if res.terminated:
            break
    return env.verify(), info, convo


def test_gold_replay_scores_one_and_messages_are_compact():
    env = ToolDomainEnv()
    convo = _play(env, GOLD_WRITE, task=_task())
    assert [m.content for m in convo] == ["customer ana: order eta=pm", GOLD_WRITE[0], "ana:c1", GOLD_WRITE[1],
                                          "c1:o1", GOLD_WRITE[2], "ok", "done"]
    v = env.verify()
    assert v.reward == 1.0
    assert v.components == {"done": 1.0, "state": 1.0, "outputs": 1.0, "actions": 1.0, "procedural": 0.0}
    assert env.db["order"]["o1"]["eta"] == "pm" and env.db["order"]["o2"]["eta"] == "pm"


def test_wrong_writes_zero_the_state_component():
    env = ToolDomainEnv()
    _play(env, GOLD_WRITE[:2] + ["@set_order_eta(order=o2, value=pm)", "done"], task=_task())  # the wrong order
    v = env.verify()
    assert (v.reward, v.components["state"], v.components["actions"]) == (0.0, 0.0, 0.0)
    _play(env, GOLD_WRITE[:2] + ["@set_order_eta(order=o1, value=eve)", "done"], task=_task())  # the wrong value
    v = env.verify()
    assert (v.reward, v.components["state"], v.components["actions"]) == (0.0, 0.0, 1.0)
    # an extra write later undone: the state is right, the action constraint is not
    _play(env, GOLD_WRITE[:2] + ["@set_order_status(order=o1, value=hold)", "@set_order_status(order=o1, value=new)",
                                 GOLD_WRITE[2], "done"], task=_task())
    v = env.verify()
    assert (v.reward, v.components["state"], v.components["actions"]) == (0.0, 1.0, 0.0)
    _play(env, GOLD_WRITE[:3], task=_task())  # never said done
    assert (env.verify().reward, env.verify().components["done"]) == (0.0, 0.0)


def test_rule_breaker_is_caught_only_by_the_procedural_component():
    loose, strict = ToolDomainEnv(), ToolDomainEnv(procedural=True)
    _play(loose, GOLD_WRITE, task=_task())
    _play(strict, GOLD_WRITE, task=_task())
    assert loose.verify().reward == 1.0  # outcome-only: the rule breaker passes (tau2-bench#298)
    v = strict.verify()
    assert (v.reward, v.components["procedural"], v.components["state"]) == (0.0, 0.0, 1.0)
    convo = _play(strict, GOLD_WRITE[:2] + ["confirm eta=pm", GOLD_WRITE[2], "done"], task=_task())
    assert "yes" in [m.content for m in convo if m.role == "user"]
    assert strict.verify().reward == 1.0
    # the confirmation is used up by the first write: a second write needs a new one
    _play(strict, GOLD_WRITE[:2] + ["confirm", GOLD_WRITE[2], GOLD_WRITE[2], "done"], task=_task())
    assert strict.verify().components["procedural"] == 0.0


def test_outputs_must_be_communicated():
    env = ToolDomainEnv()
    base = ["@find_customer(name=ana)", "@find_order(customer=c1)", "@get_order(order=o1)"]
    convo = _play(env, base + ["done"], task=_task("read"))
    assert "o1 status=new eta=am" in [m.content for m in convo]
    v = env.verify()
    assert (v.reward, v.components["outputs"], v.components["state"]) == (0.0, 0.0, 1.0)  # read it, never said it
    _play(env, base + ["done am"], task=_task("read"))
    assert env.verify().reward == 1.0
    _play(env, ["done am"], task=_task("read"))  # guessed without tools: the outcome is what is scored
    assert env.verify().reward == 1.0
    _play(env, base + ["done pm"], task=_task("read"))
    assert env.verify().reward == 0.0


def test_cancel_task():
    env = ToolDomainEnv()
    _play(env, ["@find_customer(name=ana)", "@find_order(customer=c1)", "@cancel_order(order=o1)", "done"],
          task=_task("cancel"))
    assert env.verify().reward == 1.0 and env.db["order"]["o1"]["status"] == "void"
    _play(env, ["@find_customer(name=ana)", "@find_order(customer=c1)", "@set_order_status(order=o1, value=void)",
                "done"], task=_task("cancel"))
    v = env.verify()  # same state, but set_order_status is not the gold write's tool
    assert (v.components["state"], v.components["actions"], v.reward) == (1.0, 0.0, 0.0)


def test_bad_calls_are_visible_errors_and_the_episode_goes_on():
    env = ToolDomainEnv()
    bad = ["@find_customer(name=", "@fly(to=mars)", "@find_customer(nm=ana)", "@get_order(order=o9)",
           "@set_order_eta(order=o1, value=soon)", "@find_parcel(order=o1)"]
    convo = _play(env, bad + GOLD_WRITE, task=_task())
    errs = [m for m in convo if m.role == "tool" and m.is_error]
    assert len(errs) == 6
    text = " || ".join(m.content for m in errs)
    assert "could not parse tool call" in text
    assert "unknown tool 'fly'" in text
    assert "unknown argument 'nm'" in text
    assert "error: LookupError: no order o9" in text
    assert "argument 'value': expected one of" in text
    assert "unknown tool 'find_parcel'" in text  # a domain tool outside this task's environment
    assert env.verify().reward == 1.0


def test_off_script_messages_get_a_templated_reply():
    env = ToolDomainEnv()
    convo = _play(env, ["hello there", "", "ask colour", GOLD_WRITE[0], "ask name"], task=_task())
    users = [m.content for m in convo if m.role == "user"]
    assert users == ["customer ana: order eta=pm", "please: customer ana: order eta=pm",
                     "please: customer ana: order eta=pm", "please: customer ana: order eta=pm", "name ana"]
    assert env.user.reply(None) == ("please: customer ana: order eta=pm", False)


def test_a_raising_verifier_is_a_zero_reward_with_its_reason():
    env = ToolDomainEnv()
    _play(env, GOLD_WRITE, task=_task())
    env.task.gold = [["teleport", {}]]
    v = env.verify()
    assert v.reward == 0.0 and "unknown tool 'teleport'" in v.info["verify_error"]


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="domains"):
        ToolDomainEnv(domains=["atlantis"])
    with pytest.raises(ValueError, match="components"):
        ToolDomainEnv(components=["vibes"])
    with pytest.raises(TypeError, match="procedural"):
        ToolDomainEnv(procedural="yes")
    with pytest.raises(ValueError, match="seed"):
        ToolDomainEnv().make_task(-1)
    with pytest.raises(TypeError, match="noise"):
        ToolDomainEnv(noise=[0.5])
    with pytest.raises(ValueError, match="min_chain"):
        TaskGenerator("delivery", min_chain=1)


def test_domains_tools_and_dependency_graph():
    for name in DOMAIN_SPECS:
        dom = get_domain(name)
        assert 20 <= len(dom.tooldefs) <= 60
    dom = get_domain("delivery")
    # parameter dependencies, written by hand: find_customer produces customer ids, consumed by find_order etc.
    assert dom.edges["find_customer"] == ["cancel_customer", "find_order", "get_customer", "set_customer_status",
                                          "set_customer_tier"]
    assert dom.edges["get_order"] == [] and dom.edges["set_order_eta"] == []
    assert dom.dependencies("find_parcel") == {"find_order"}
    t = {x.name: x for x in dom.make_tools(lambda td, a: "ok")}
    params = t["set_order_eta"].spec.parameters
    assert params["required"] == ["order", "value"]
    assert params["properties"]["value"]["enum"] == ["am", "pm", "eve"]


def test_generated_tasks_hold_their_dependencies_and_have_20_tools():
    for name in DOMAIN_SPECS:
        gen = TaskGenerator(name, seed=3)
        for k in range(24):
            t = gen.task(k)
            dom = get_domain(t.domain)
            assert len(t.tools) >= 20 and len(set(t.tools)) == len(t.tools)
            assert set(t.chain) <= set(t.tools) and 2 <= len(t.chain) <= 4
            assert t.chain == [g[0] for g in t.gold]
            for tool in t.tools:  # BFS invariant: every table a tool consumes has records
                assert all(t.db[c] for c in dom.tooldefs[tool].consumes), (name, k, tool)
            db = copy.deepcopy(t.db)
            prev = None
            for tool, args in t.gold:  # every chain call is executable and finds exactly the next id
                out = dom.tooldefs[tool].run(db, args)
                if prev is not None:
                    assert prev in args.values()
                prev = out.split(":")[1] if dom.tooldefs[tool].kind == "find" else None
                if dom.tooldefs[tool].kind == "find":
                    assert len(out.split()) == 1
            if t.kind == "read":
                assert t.outputs and t.outputs[0] in out


def test_prefers_unused_tools_within_a_block():
    gen = TaskGenerator("delivery", seed=0, block=16)
    goals = [gen.task(k).chain[-1] for k in range(16)]
    assert len(set(goals)) >= 10  # 16 goal tools: coverage, not repeats


def test_generation_is_deterministic_per_seed():
    a, b = ToolDomainEnv(domains="train"), ToolDomainEnv(domains="train")
    for s in (0, 5, 1234, 10**6 + 3):
        assert a.make_task(s).to_dict() == b.make_task(s).to_dict()
        assert a.reset(seed=s)[0][0].content == b.reset(seed=s)[0][0].content
    assert a.make_task(0).to_dict() != a.make_task(4).to_dict()
    assert ToolDomainEnv(seed=1).make_task(0).to_dict() != ToolDomainEnv(seed=0).make_task(0).to_dict()
    assert Task.from_dict(a.make_task(7).to_dict()) == a.make_task(7)


@pytest.mark.parametrize("procedural", [False, True])
def test_scripted_demonstrations_solve_generated_tasks(procedural):
    env = ToolDomainEnv(domains="all", procedural=procedural)
    for s in range(36):
        _, _, convo = _solve(env, s, max_turns=10)
        assert env.verify().reward == 1.0, (s, [m.content for m in convo])
        assert env.state_digest() == env.task.goal_digest


def test_registry_and_noise_env_args():
    env = make_tool_env("tool_domains", domains=["clinic"])
    assert isinstance(env, ToolDomainEnv) and env.reset(seed=0)[0][0].content.startswith(("patient", "doctor"))
    wrapped = make_tool_env("tool_domains", domains=["clinic"], noise={"level": 0.5, "fraction": 0.5})
    assert isinstance(wrapped, NoiseWrapper) and isinstance(wrapped.env, ToolDomainEnv)
    assert wrapped.tool_format == "compact"
    corpus = env.tokenizer_corpus(4)
    assert any(c.startswith("@find_patient(") for c in corpus) and "Error 429 Too Many Requests" in corpus


def test_config_smoke_through_the_trainer(tmp_path):
    from lckernels_rl.train import load_config

    from .tiny import TINY_LONGCAT, fit_rl_rows

    cfg = load_config("tool_domains", [f"log.output_dir={tmp_path / 'run'}", "log.progress=false", "log.plots=false",
                                       "log.checkpoint_every=0", "log.eval_every=2",
                                       f"model.overrides={dict(TINY_LONGCAT, max_position_embeddings=1024)}",
                                       "task.train_size=8", "task.eval_size=2", "sft.steps=1", "sft.batch_size=2",
                                       "rl.steps=2", "rl.prompts_per_step=2", "rl.rollouts_per_step=4",
                                       "rl.max_new_tokens=8", "agent.max_turns=3"])
    rows = fit_rl_rows(cfg)
    assert [r["step"] for r in rows] == [2, 3]
    assert "eval_accuracy" in rows[-1]


def test_easy_preset_keeps_20_tools_and_two_tool_chains(tmp_path):
    """The demo preset (tool_domains_easy.yaml): seed chains of two tools, still >= 20 tools per environment, still
    solvable by the scripted agent; its config runs through the trainer."""
    from lckernels_rl.train import load_config

    from .tiny import TINY_LONGCAT, fit_rl_rows

    env_args = load_config("tool_domains_easy", []).task.env_args
    assert (env_args["max_chain"], env_args["distractors"], env_args["noise"]) == (2, 1, None)
    env = ToolDomainEnv(domains="all", max_chain=2, distractors=1)
    for s in range(24):
        t = env.make_task(s)
        assert len(t.chain) == 2 and len(t.tools) >= 20 and t.chain[0] == f"find_{t.path[0]}"
        v, _, _ = _solve(env, s, max_turns=6)
        assert v.reward == 1.0
    cfg = load_config("tool_domains_easy", [
        f"log.output_dir={tmp_path / 'run'}", "log.progress=false", "log.plots=false", "log.eval_every=2",
        f"model.overrides={dict(TINY_LONGCAT, max_position_embeddings=512)}", "task.train_size=8", "task.eval_size=2",
        "sft.steps=1", "sft.batch_size=2", "rl.steps=2", "rl.prompts_per_step=2", "rl.rollouts_per_step=4",
        "rl.max_new_tokens=8", "agent.max_turns=3"])
    rows = fit_rl_rows(cfg)
    assert [r["step"] for r in rows] == [2, 3] and "eval_accuracy" in rows[-1]
