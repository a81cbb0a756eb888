"""TRUST-SQL (issue 12): the protocol checks and rewards on hand-made episodes over a hand-built database (expected
rewards written by hand), the write-attempt suite through the environment, the loop's masks and schema span, the
scripted demonstrations on generated databases."""

from __future__ import annotations

import json
import sqlite3
import types

import pytest

pytest.importorskip("transformers")

from lckernels_rl.agents import AgentLoop, Budget, Message  # noqa: E402
from lckernels_rl.agents.parsers import get_parser  # noqa: E402
from lckernels_rl.agents.renderer import PLAIN_CHAT_TOKENS, make_renderer  # noqa: E402
from lckernels_rl.envs import make_tool_env  # noqa: E402
from lckernels_rl.envs.trust_sql import TrustSQLEnv  # noqa: E402
from lckernels_rl.envs.trust_sql import rewards as R  # noqa: E402
from lckernels_rl.envs.trust_sql.dbgen import SQLTask  # noqa: E402
from lckernels_rl.envs.trust_sql.sandbox import file_digest  # noqa: E402
from lckernels_rl.models import build_char_tokenizer  # noqa: E402
from lckernels_rl.rollout.engine import ScriptedEngine  # noqa: E402

GOLD = "SELECT COUNT(*) FROM clients WHERE city = 'Berlin'"  # 2 on the hand-built database
GOLD_SCHEMA = {"tables": ["clients"], "columns": {"clients": ["city"]}}
LIST = "SELECT name FROM sqlite_master WHERE type = 'table'"  # the demonstrations list them another way


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("hand") / "hand.sqlite"
    con = sqlite3.connect(path)
    con.executescript("""
        CREATE TABLE clients (id INTEGER PRIMARY KEY, name TEXT, city TEXT);
        INSERT INTO clients VALUES (1, 'Ann', 'Berlin'), (2, 'Bob', 'Paris'), (3, 'Cid', 'Berlin');
        CREATE TABLE clients_bak (id INTEGER PRIMARY KEY, name TEXT, city TEXT);
        INSERT INTO clients_bak VALUES (1, 'Ann', 'Berlin');
    """)
    con.commit()
    con.close()
    return str(path)


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("bench"))


def _env(bench_root, **kw):
    return TrustSQLEnv(root=bench_root, n_train_dbs=2, n_heldout_dbs=1, tables=(20, 24), questions_per_db=14, **kw)


def _task(db):
    return SQLTask(db_id="hand", db_path=db, question="How many customers are in 'Berlin'?", gold_sql=GOLD,
                   gold_schema=GOLD_SCHEMA, template="count_filter")


def T(action, payload, think="t"):
    return f"<think>{think}</think><action>{action}</action>{payload}"


def call(sql):
    return "<tool_call>" + json.dumps({"name": "execute_sql", "arguments": {"sql": sql}}) + "</tool_call>"


EXPLORE = T("explore_schema", call(LIST))
PROPOSE = T("propose_schema", "<schema>" + json.dumps(GOLD_SCHEMA) + "</schema>")
GENERATE = T("generate_sql", call(GOLD))
CONFIRM = T("confirm_answer", f"<answer>{GOLD}</answer>")


def run(env, db, turns):
    """Step ``env`` through hand-written turns (the tool calls parsed as the loop does); the verdict and messages."""
    msgs, _ = env.reset(task=_task(db))
    conv = list(msgs)
    for text in turns:
        turn = Message("assistant", text, tool_calls=get_parser("hermes").parse(text).calls)
        conv.append(turn)
        res = env.step(turn)
        conv += res.messages
        if res.terminated:
            break
    return env.verify(types.SimpleNamespace(messages=conv)), conv


# ----------------------------------------------------------------------------------------------- rules, by hand
@pytest.mark.parametrize("text,ok,why", [
    (EXPLORE, True, None),
    ("<action>explore_schema</action>" + call(LIST), False, "Invalid <think> tags: 0 opening, 0 closing"),
    ("<think>a</think><think>b</think><action>generate_sql</action>" + call(GOLD), False, "2 opening"),
    (T("explore_schema", call(LIST)) + "<action>generate_sql</action>", False, "found 2"),
    (T("run_sql", call(LIST)), False, "Unknown action type: run_sql"),
    (T("propose_schema", "tables: clients"), False, "propose_schema requires <schema>"),
])
def test_turn_format(text, ok, why):
    valid, err = R.check_turn_format(text)
    assert valid is ok and (why is None or why in err)


def test_schema_linking_modes_by_hand():
    """pred: tables {clients, clients_bak}, columns {clients.city, clients.name}; gold: {clients}, {clients.city}.
    Tables P = 1/2, R = 1, F1 = 2/3; columns P = 1/2, R = 1, F1 = 2/3."""
    pred = {"tables": ["clients", "CLIENTS_BAK"], "columns": {"clients": ["city", "Name"]}}
    score = lambda mode: R.schema_linking_score(pred, GOLD_SCHEMA, mode)["total"]  # noqa: E731
    assert score("precision") == pytest.approx(0.4 * 0.5 + 0.6 * 0.5)
    assert score("recall") == pytest.approx(1.0)
    assert score("f1") == pytest.approx(2 / 3)
    assert score("totalmatch") == score("truematch") == 0.0
    assert score("recall_then_precision") == pytest.approx(0.5)
    assert score("recall_then_precision_strict") == pytest.approx(0.1)  # weighted precision 0.5 < 0.6: bucket 0.1
    assert R.schema_linking_score(GOLD_SCHEMA, GOLD_SCHEMA, "totalmatch")["total"] == pytest.approx(1.0)
    assert R.schema_linking_score({"tables": []}, {"tables": []}, "f1")["total"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="mode"):
        R.schema_linking_score(pred, GOLD_SCHEMA, "exact")


def test_answer_extraction():
    assert R.extract_answer_sql("<answer>```sql\nSELECT 1\n```</answer>") == "SELECT 1"
    assert R.extract_answer_sql("<answer>a</answer> x <answer> SELECT 2 </answer>") == "SELECT 2"
    assert R.extract_answer_sql("<answer> </answer>") is None and R.extract_answer_sql("SELECT 1") is None


# ------------------------------------------------------------------------------------- hand-made episodes
def test_perfect_episode(bench_root, db):
    v, conv = run(_env(bench_root), db, [EXPLORE, PROPOSE, GENERATE, CONFIRM])
    assert v.reward == pytest.approx(1.1)  # 1.0 correct rows + 0.1 format
    assert v.components["schema"] == 1.0 and v.components["proposed"] == 1.0 and v.components["format"] == 0.1
    assert v.spans == {"schema": [(0, 0, None), (1, 0, None)]}  # turns up to the end of Propose
    tools = [m for m in conv if m.role == "tool"]
    assert tools[0].content.split("\n") == ["name", "clients", "clients_bak"]
    assert tools[1].content == "Schema acknowledged: 1 table(s), 1 column(s). You may now proceed to generate SQL."
    assert tools[2].content == "COUNT(*)\n2"


def test_wrong_rows_score_0_2_and_truematch_gates_the_schema(bench_root, db):
    wrong = "SELECT COUNT(*) FROM clients_bak WHERE city = 'Berlin'"  # the stale copy: 1 row, not 2
    turns = [EXPLORE, PROPOSE, T("generate_sql", call(wrong)), T("confirm_answer", f"<answer>{wrong}</answer>")]
    v, _ = run(_env(bench_root), db, turns)
    assert v.reward == pytest.approx(0.3)  # 0.2 executes-but-differs + 0.1 format
    assert v.components["schema"] == 0.0 and v.components["schema_score"] == 1.0  # truematch: SQL not correct
    v, _ = run(_env(bench_root, schema_mode="totalmatch"), db, turns)
    assert v.components["schema"] == 1.0  # totalmatch pays the schema regardless


def test_schema_modes_through_the_env(bench_root, db):
    over = T("propose_schema", '<schema>{"tables": ["clients", "clients_bak"], "columns": {"clients": ["city", '
                               '"name"]}}</schema>')
    for mode, expected in (("truematch", 0.0), ("precision", 0.5), ("recall", 1.0), ("f1", 2 / 3)):
        v, _ = run(_env(bench_root, schema_mode=mode, schema_weight=0.5), db, [EXPLORE, over, GENERATE, CONFIRM])
        assert v.reward == pytest.approx(1.1)
        assert v.components["schema"] == pytest.approx(0.5 * expected), mode
        assert v.components["table_precision"] == 0.5 and v.components["column_recall"] == 1.0


def test_syntax_error_feedback_voids_the_format_bonus(bench_root, db):
    bad = T("generate_sql", call("SELECT COUNT(*) FOM clients"))
    v, conv = run(_env(bench_root), db, [EXPLORE, PROPOSE, bad, GENERATE, CONFIRM])
    err = [m for m in conv if m.role == "tool"][2]
    assert err.is_error and "syntax error" in err.content
    assert v.reward == pytest.approx(1.0) and v.components["format"] == 0.0


@pytest.mark.parametrize("turns,reward,span", [
    ([EXPLORE, GENERATE, CONFIRM], 1.0, [(0, 0, None)]),        # no Propose: format 0, span to the last explore
    ([CONFIRM], 1.0, None),                                     # straight to the answer: no span
    ([EXPLORE, PROPOSE, GENERATE, T("confirm_answer", "<answer>SELECT nope FROM x</answer>")], 0.1,
     [(0, 0, None), (1, 0, None)]),                             # the answer does not execute: 0 + format 0.1
    ([EXPLORE, PROPOSE, GENERATE], 0.0, [(0, 0, None), (1, 0, None)]),  # never answered
])
def test_incomplete_episodes(bench_root, db, turns, reward, span):
    v, _ = run(_env(bench_root), db, turns)
    assert v.reward == pytest.approx(reward)
    assert v.spans == ({} if span is None else {"schema": span})
    assert v.components["proposed"] == float(PROPOSE in turns)


@pytest.mark.parametrize("bad", [
    "<action>explore_schema</action>" + call(LIST),                            # missing <think>
    T("explore_schema", call(LIST)).replace("</action>", "</action><action>generate_sql</action>", 1),
    T("run_sql", call(LIST)),                                                  # unknown action tag
])
def test_malformed_turn_costs_the_format_bonus_only(bench_root, db, bad):
    """A malformed turn that still holds a tool call runs it (as the public code does) but pays no format bonus."""
    v, conv = run(_env(bench_root), db, [bad, PROPOSE, GENERATE, CONFIRM])
    assert [m for m in conv if m.role == "tool"][0].content.startswith("name\n")
    assert v.reward == pytest.approx(1.0) and v.components["format"] == 0.0


def test_invalid_format_and_bad_schema_feedback(bench_root, db):
    v, conv = run(_env(bench_root), db, [T("explore_schema", "SELECT 1"), T("propose_schema", "<schema>[1, 2]"
                                                                            "</schema>"), GENERATE, CONFIRM])
    tools = [m for m in conv if m.role == "tool"]
    assert tools[0].is_error and tools[0].content.startswith("Invalid format detected")
    assert tools[1].is_error and "the schema must be a JSON object" in tools[1].content
    assert v.components["proposed"] == 0.0 and v.components["schema_score"] == 0.0
    assert v.reward == pytest.approx(1.0)  # "Invalid format" feedback: no bonus


def test_one_tool_call_per_turn(bench_root, db):
    two = T("explore_schema", call(LIST) + call("SELECT 1"))
    _, conv = run(_env(bench_root), db, [two])
    tools = [m for m in conv if m.role == "tool"]
    assert len(tools) == 2 and not tools[0].is_error
    assert tools[1].is_error and "only one tool call per turn" in tools[1].content


WRITES = ["DELETE FROM clients", "UPDATE clients SET city = 'x'", "INSERT INTO clients VALUES (9, 'z', 'z')",
          "DROP TABLE clients", "ATTACH DATABASE 'other.db' AS o", "PRAGMA writable_schema=1",
          "SELECT load_extension('x')", "SELECT 1; DELETE FROM clients", "EXPLAIN DELETE FROM clients",
          "SELECT * FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c)",
          "SELECT COUNT(*) FROM clients a, clients b, clients c, clients d, clients e, clients f, clients g, "
          "clients h, clients i, clients j, clients k, clients l, clients m, clients n, clients o"]


def test_write_attempts_through_the_env_leave_the_file_identical(bench_root, db, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = file_digest(db)
    env = _env(bench_root, time_limit_s=0.5, max_steps=200_000)
    _, conv = run(env, db, [T("explore_schema", call(sql)) for sql in WRITES] + [CONFIRM])
    tools = [m for m in conv if m.role == "tool"]
    assert len(tools) == len(WRITES) and all(m.is_error and m.content.startswith("error: SQLError:") for m in tools)
    kinds = [m.content.split(": ")[2] for m in tools]
    assert kinds[-2:] == ["timeout", "timeout"] and "multiple_statements" in kinds
    cross = env.sandbox().execute("SELECT * FROM clients a, clients b, clients c, clients d, clients e, clients f, "
                                  "clients g, clients h, clients i, clients j, clients k, clients l, clients m, "
                                  "clients n, clients o", max_rows=100)  # 3^15 = 1.4e7 rows: cut, not fetched
    assert cross.ok and cross.truncated and len(cross.rows) == 100
    env.close()
    assert file_digest(db) == before and not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------- through the agent loop
def test_loop_masks_tool_output_and_maps_the_schema_span(bench_root, db):
    alphabet = "".join(chr(c) for c in range(32, 127)) + "\n\t"
    tok = build_char_tokenizer(alphabet, extra_special_tokens=PLAIN_CHAT_TOKENS)
    eos = tok.eos_token_id
    turns = [EXPLORE, PROPOSE, GENERATE, CONFIRM]
    engine = ScriptedEngine([tok(t, add_special_tokens=False)["input_ids"] + [eos] for t in turns],
                            stop_token_ids=[eos])
    env = _env(bench_root)
    loop = AgentLoop(engine, make_renderer("plain", tok), "hermes", Budget(max_turns=10, max_context_tokens=4096,
                                                                           max_new_tokens=512))
    traj = loop.run(env, task=_task(db))
    assert traj.stop_reason == "env_done" and traj.reward == pytest.approx(1.1)
    s = traj.to_sample()
    turn_segs = traj.turn_segments()
    offsets = traj.turn_offsets()
    # trained tokens are exactly the four sampled turns (text + stop token); the tool outputs are masked
    assert sum(s.loss_mask) == sum(len(t) + 1 for t in turns)
    for seg, off in zip(turn_segs, offsets):
        assert all(s.loss_mask[off:off + len(seg.ids)])
    # the schema span covers the first two turns (explore, propose) and nothing after
    assert s.spans["schema"] == [(offsets[0], offsets[0] + len(turn_segs[0].ids)),
                                 (offsets[1], offsets[1] + len(turn_segs[1].ids))]
    env.close()


# ------------------------------------------------------------------------------- demonstrations, registry
def test_demonstrations_solve_generated_tasks(bench_root):
    env = _env(bench_root, recover_p=0.5, typo_p=0.5)
    seen_recovery = seen_typo = False
    for seed in range(12):
        msgs, info = env.reset(seed=seed)
        conv = list(msgs)
        while (d := env.demonstration(conv)) is not None:
            turn = Message("assistant", d, tool_calls=get_parser("hermes").parse(d).calls)
            conv.append(turn)
            res = env.step(turn)
            conv += res.messages
        v = env.verify(types.SimpleNamespace(messages=conv))
        typo = any(m.is_error for m in conv if m.role == "tool")
        seen_typo |= typo
        seen_recovery |= sum("explore_schema" in m.content for m in conv if m.role == "assistant") > \
            1 + len(env.task.gold_schema["tables"])
        assert v.components["sql"] == 1.0 and v.components["schema"] == 1.0, info
        assert v.reward == pytest.approx(1.0 if typo else 1.1)
    assert seen_recovery and seen_typo
    env.close()


def test_registry_splits_and_bad_arguments(bench_root):
    train = make_tool_env("trust_sql", root=bench_root, n_train_dbs=2, n_heldout_dbs=1, tables=(20, 24),
                          questions_per_db=14)
    held = make_tool_env("trust_sql", split="heldout", root=bench_root, n_train_dbs=2, n_heldout_dbs=1,
                         tables=(20, 24), questions_per_db=14)
    assert {t.db_id for t in train.tasks()}.isdisjoint({t.db_id for t in held.tasks()})
    assert train.reset(seed=3)[1]["db_id"] != held.reset(seed=3)[1]["db_id"]
    for kw, name in (({"split": "test"}, "split"), ({"schema_mode": "exact"}, "schema_mode"),
                     ({"recover_p": 2.0}, "recover_p"), ({"compare_rows": 0}, "compare_rows")):
        with pytest.raises(ValueError, match=name):
            _env(bench_root, **kw)
    with pytest.raises(TypeError, match="task"):
        train.reset(task="SELECT 1")
