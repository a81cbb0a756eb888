"""``trust_sql``: text-to-SQL over an unknown schema (TRUST-SQL, arXiv 2603.16448), the public code's protocol.

The agent is not shown the schema.  Each turn is one ``<think>...</think>`` and one ``<action>...</action>`` with its
payload:

==================  =====================================================================  =========================
action              payload                                                                environment answers
==================  =====================================================================  =========================
``explore_schema``  ``<tool_call>{"name": "execute_sql", "arguments": {"sql": ...}}</tool_call>``  the rows (tool message)
``propose_schema``  ``<schema>{"tables": [...], "columns": {table: [...]}}</schema>``       ``Schema acknowledged: ...``
``generate_sql``    a ``<tool_call>`` as for explore                                        the rows
``confirm_answer``  ``<answer>SQL</answer>`` (or a fenced ```` ```sql ``` ```` block)        ends the episode
==================  =====================================================================  =========================

SQL runs in :class:`~lckernels_rl.envs.trust_sql.sandbox.SQLSandbox` (read-only open, authorizer, step and time
limits; errors come back as ``Error: ...`` tool messages); at most ``max_rows`` rows are shown and the agent loop caps
the observation at ``agent.max_tool_output_tokens`` before tokenizing; tool-output tokens are never trained.  The
turn limit is the agent loop's ``agent.max_turns`` (10 in the public code).

Verdict (rules in :mod:`~lckernels_rl.envs.trust_sql.rewards`): ``reward`` = SQL score (1.0 / 0.2 / 0) + format bonus
(0.1) -- the answer track, paid at the last sampled token; components ``sql``, ``exec_correct``, ``format``,
``schema`` (the schema track's reward: the schema-linking score of the last proposal times ``schema_weight``;
with ``schema_mode="truematch"`` or ``"recall_then_precision_strict"`` kept only when the SQL score is 1.0),
``schema_score`` (ungated), ``proposed``, ``table_precision``, ``column_precision``, ``table_recall``,
``column_recall``; span ``schema``: the assistant turns up to the end of the last Propose turn (the public code's
``schema_end_position``), or, without a proposal, up to the last explore turn with schema reward 0 (its "dummy
schema"); no span when neither occurred.

Deviations from the public code (ours): the tool is ``execute_sql(sql)`` (the public ``execute_sql_query`` also takes a
``db_id``, which would let an agent read another database); only a turn's first tool call runs, further ones are
answered with an error instead of being ignored; the invalid-format feedback is one line (it keeps the
``Invalid format`` marker); a proposal that is not ``{"tables": [...], "columns": {...}}`` gets an ``Error: ...``
feedback (the public code acknowledges any JSON object); modes ``f1`` / ``precision`` / ``recall`` /
``recall_then_precision`` pay the schema reward ungated (the public ``reward_func`` pays none for them).

Tasks: :class:`~lckernels_rl.envs.trust_sql.dbgen.SQLBenchmark` (generated SQLite databases with noisy distractor
tables, split by database); ``reset(seed)`` takes task ``seed % n`` of ``split``.
"""

from __future__ import annotations

import functools
import json
from typing import Any, ClassVar, Optional, Sequence

import numpy as np

from lckernels_rl.agents.types import Message

from ..tool_env import StepResult, ToolEnv, Verdict
from . import rewards as R

__all__ = ["TrustSQLEnv", "INSTRUCTIONS", "LIST_TABLES_SQL"]

LIST_TABLES_SQL = "SELECT DISTINCT tbl_name FROM sqlite_master"  # no quoted literal: nothing for a copy to latch on
INSTRUCTIONS = (
    "Answer the question with one SQLite query. The database schema is not given: explore it. Every turn: "
    "<think>reasoning</think> then exactly one <action>explore_schema|propose_schema|generate_sql|confirm_answer"
    "</action> with its payload: explore_schema and generate_sql: <tool_call>{\"name\": \"execute_sql\", "
    "\"arguments\": {\"sql\": \"...\"}}</tool_call> (read-only SQL); propose_schema: <schema>{\"tables\": [...], "
    "\"columns\": {\"table\": [\"column\", ...]}}</schema>; confirm_answer: <answer>SQL</answer> (ends the task).")
INVALID_FORMAT = ("Invalid format detected: {reason}. Each turn: <think>...</think> then one <action> "
                  "(explore_schema, propose_schema, generate_sql, confirm_answer) with its <tool_call>, <schema> or "
                  "<answer>.")
SPLITS = ("train", "heldout")


@functools.lru_cache(maxsize=8)
def _benchmark(root, n_train_dbs, n_heldout_dbs, tables, questions_per_db, seed):
    from .dbgen import SQLBenchmark

    return SQLBenchmark(root, n_train_dbs=n_train_dbs, n_heldout_dbs=n_heldout_dbs, tables=tables,
                        questions_per_db=questions_per_db, seed=seed)


def _turn(think: str, action: str, payload: str) -> str:
    return f"<think>{think}</think><action>{action}</action>{payload}"


def _call(sql: str) -> str:
    return "<tool_call>" + json.dumps({"name": "execute_sql", "arguments": {"sql": sql}}) + "</tool_call>"


class TrustSQLEnv(ToolEnv):
    """The TRUST-SQL environment.

    Args:
        split: ``"train"`` or ``"heldout"`` databases.
        n_train_dbs / n_heldout_dbs / tables / questions_per_db / db_seed / root: the generated benchmark (see
            :class:`~lckernels_rl.envs.trust_sql.dbgen.SQLBenchmark`; ``root=None``: the cache directory).
        schema_mode: schema-linking metric (:data:`~lckernels_rl.envs.trust_sql.rewards.SCHEMA_MODES`);
            ``truematch`` as the public training script ``TrustSQL/submit_training.sh`` sets it (totalmatch metric,
            paid only when the SQL is correct).
        schema_weight: multiplier of the schema score in the ``schema`` component (the public
            ``schema_token_weight``, default 1.0).
        compare_rows: rows compared by the SQL score (public code: 30; ``None``: all).
        max_rows: rows shown per query (100).
        time_limit_s / max_steps: per-statement limits of the sandbox.
        instructions: put the protocol description (:data:`INSTRUCTIONS`) in a system message (off for tiny
            policies: the demonstrations teach the protocol).
        recover_p: probability that a demonstration first explores a distractor table before the real one.
        typo_p: probability that a demonstration's first generated query has a syntax error it then fixes.
    """

    name: ClassVar[str] = "trust_sql"
    blocking = True  # SQLite
    concurrent_tools = False
    tool_format: ClassVar[str] = "hermes"
    protocol_tokens: ClassVar[tuple[str, ...]] = (
        "<think>", "</think>", "<action>", "</action>", "<tool_call>", "</tool_call>", "<schema>", "</schema>",
        "<answer>", "</answer>", "explore_schema", "propose_schema", "generate_sql", "confirm_answer")

    def __init__(self, split: str = "train", *, n_train_dbs: int = 8, n_heldout_dbs: int = 4,
                 tables: Sequence[int] = (20, 50), questions_per_db: int = 64, db_seed: int = 0,
                 root: Optional[str] = None, schema_mode: str = "truematch", schema_weight: float = 1.0,
                 compare_rows: Optional[int] = 30, max_rows: int = 100, time_limit_s: float = 2.0,
                 max_steps: int = 2_000_000, instructions: bool = False, recover_p: float = 0.25,
                 typo_p: float = 0.1):
        if split not in SPLITS:
            raise ValueError(f"TrustSQLEnv: `split` must be one of {SPLITS}; got {split!r}")
        if schema_mode not in R.SCHEMA_MODES:
            raise ValueError(f"TrustSQLEnv: `schema_mode` must be one of {R.SCHEMA_MODES}; got {schema_mode!r}")
        for n, v in (("schema_weight", schema_weight), ("recover_p", recover_p), ("typo_p", typo_p)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"TrustSQLEnv: `{n}` must be a number >= 0; got {v!r}")
        if recover_p > 1 or typo_p > 1:
            raise ValueError("TrustSQLEnv: `recover_p` and `typo_p` are probabilities (<= 1)")
        if compare_rows is not None and (isinstance(compare_rows, bool) or not isinstance(compare_rows, int)
                                         or compare_rows < 1):
            raise ValueError(f"TrustSQLEnv: `compare_rows` must be a positive int or None; got {compare_rows!r}")
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
            raise ValueError(f"TrustSQLEnv: `max_rows` must be a positive int; got {max_rows!r}")
        if not (isinstance(tables, (list, tuple)) and len(tables) == 2):
            raise ValueError(f"TrustSQLEnv: `tables` must be (min, max); got {tables!r}")
        self.split = split
        self._init = dict(n_train_dbs=n_train_dbs, n_heldout_dbs=n_heldout_dbs, tables=tuple(tables),
                          questions_per_db=questions_per_db, db_seed=db_seed, root=root, schema_mode=schema_mode,
                          schema_weight=schema_weight, compare_rows=compare_rows, max_rows=max_rows,
                          time_limit_s=time_limit_s, max_steps=max_steps, instructions=instructions,
                          recover_p=recover_p, typo_p=typo_p)
        self.bench = _benchmark(None if root is None else str(root), n_train_dbs, n_heldout_dbs,
                                (int(tables[0]), int(tables[1])), questions_per_db, db_seed)
        self.schema_mode, self.schema_weight = schema_mode, float(schema_weight)
        self.compare_rows, self.max_rows = compare_rows, max_rows
        self.time_limit_s, self.max_steps = float(time_limit_s), int(max_steps)
        self.instructions = bool(instructions)
        self.recover_p, self.typo_p = float(recover_p), float(typo_p)
        self._sandbox = None
        self._sandbox_path = None
        self.task = None
        self.seed: Optional[int] = None
        self.feedbacks: list[Optional[str]] = []  # per assistant turn: the environment's answer (None: none)
        self._plan: Optional[list[str]] = None

        from lckernels_rl.agents.tools import tool

        @tool
        def execute_sql(sql: str) -> str:
            """Run one read-only SQLite query (SELECT, PRAGMA or EXPLAIN) on the task's database.

            Args:
                sql: the query.
            """
            res = self.sandbox().execute(sql, max_rows=self.max_rows)
            if not res.ok:
                raise SQLError(res.error)
            return res.text(self.max_rows)

        self.tools = [execute_sql]

    # ------------------------------------------------------------------ tasks and the sandbox
    def tasks(self) -> list:
        return self.bench.tasks(self.split)

    def sandbox(self):
        from .sandbox import SQLSandbox

        if self._sandbox is None or self._sandbox_path != self.task.db_path:
            if self._sandbox is not None:
                self._sandbox.close()
            self._sandbox = SQLSandbox(self.task.db_path, max_steps=self.max_steps, time_limit_s=self.time_limit_s)
            self._sandbox_path = self.task.db_path
        return self._sandbox

    def reset(self, seed: Optional[int] = None, task: Any = None) -> tuple[list[Message], dict]:
        from .dbgen import SQLTask

        if task is None:
            tasks = self.tasks()
            task = tasks[(0 if seed is None else int(seed)) % len(tasks)]
        elif isinstance(task, dict):
            task = SQLTask.from_dict(task)
        if not isinstance(task, SQLTask):
            raise TypeError(f"TrustSQLEnv.reset: `task` must be an SQLTask or its dict; got {type(task).__name__}")
        self.task, self.seed = task, seed
        self.feedbacks, self._plan = [], None
        msgs = ([Message("system", INSTRUCTIONS)] if self.instructions else []) + [Message("user", task.question)]
        return msgs, {"db_id": task.db_id, "template": task.template, "gold_sql": task.gold_sql}

    # ------------------------------------------------------------------ one turn
    def step(self, turn: Message) -> StepResult:
        action, content = R.turn_action(turn.content)
        if action == "answer":
            self.feedbacks.append(None)
            return StepResult(terminated=True, info={"action": "confirm_answer"})
        if action == "schema":
            schema, err = R.parse_schema(content)
            if err is not None:
                text = f"Error: {err}. Expected format: {{\"tables\": [...], \"columns\": {{...}}}}"
            else:
                ncol = sum(len(v) for v in schema["columns"].values())
                text = (f"Schema acknowledged: {len(schema['tables'])} table(s), {ncol} column(s). "
                        "You may now proceed to generate SQL.")
            self.feedbacks.append(text)
            return StepResult(messages=[Message("tool", text, is_error=err is not None)],
                              info={"action": "propose_schema"})
        if action is not None and turn.tool_calls:
            from lckernels_rl.agents.tools import run_tool_calls

            first, rest = turn.tool_calls[0], turn.tool_calls[1:]
            out = run_tool_calls(self.tools, [first], concurrent=False)
            out += [Message("tool", "error: only one tool call per turn; this call was not run",
                            tool_call_id=c.id, name=c.name, is_error=True) for c in rest]
            self.feedbacks.append("\n".join(m.content for m in out))
            return StepResult(messages=out, info={"action": action})
        reason = R.check_turn_format(turn.content)[1] or "no <answer>, <schema> or <tool_call>"
        text = INVALID_FORMAT.format(reason=reason)
        self.feedbacks.append(text)
        return StepResult(messages=[Message("tool", text, is_error=True)], info={"action": None})

    # ------------------------------------------------------------------ the verdict
    def verify(self, trajectory) -> Verdict:
        turns = [m.content for m in trajectory.messages if m.role == "assistant"]
        fmt = R.format_bonus(turns, self.feedbacks)
        predicted = R.extract_answer_sql("\n".join(turns))
        sql = R.sql_score(self.sandbox(), predicted, self.task.gold_sql, compare_rows=self.compare_rows)
        schema_turn = explore_turn = None
        proposal = None
        for i, text in enumerate(turns):
            action, content = R.turn_action(text)
            if action == "schema":
                schema_turn, proposal = i, content
            elif action == "explore_schema":
                explore_turn = i
        parsed = R.parse_schema(proposal)[0] if proposal is not None else None
        comps = {"sql": sql["score"], "exec_correct": sql["correct"], "executable": sql["executable"],
                 "format": fmt, "proposed": float(parsed is not None)}
        score = {"total": 0.0}
        if parsed is not None:
            score = R.schema_linking_score(parsed, self.task.gold_schema, self.schema_mode)
            for k in ("table_precision", "column_precision", "table_recall", "column_recall"):
                comps[k] = score[k]
        gated = self.schema_mode in ("truematch", "recall_then_precision_strict") and sql["score"] != R.SQL_CORRECT
        comps["schema_score"] = score["total"]
        comps["schema"] = 0.0 if gated else score["total"] * self.schema_weight
        end = schema_turn if schema_turn is not None else explore_turn
        spans = {"schema": [(t, 0, None) for t in range(end + 1)]} if end is not None else {}
        return Verdict(reward=sql["score"] + fmt, components=comps, spans=spans,
                       info={"predicted_sql": predicted, "schema_turn": schema_turn})

    def state(self) -> dict:
        return {"task": None if self.task is None else self.task.to_dict(), "feedbacks": self.feedbacks}

    # ------------------------------------------------------------------ demonstrations
    def _demo_plan(self) -> list[str]:
        t = self.task
        rng = np.random.default_rng([0 if self.seed is None else abs(int(self.seed)), 7])
        gold = list(t.gold_schema["tables"])
        concepts = [self.bench.concept_of(t.db_id, g) or g for g in gold]
        plan = [_turn(f"find {' and '.join(concepts)}", "explore_schema", _call(LIST_TABLES_SQL))]
        if rng.random() < self.recover_p:
            names = self.bench.table_names(t.db_id)
            lures = [n for n in names if n not in gold and any(g[:3] in n for g in gold)] or \
                [n for n in names if n not in gold]
            if lures:
                lure = lures[int(rng.integers(len(lures)))]
                plan.append(_turn(f"inspect {lure}", "explore_schema", _call(f"SELECT * FROM {lure} LIMIT 1")))
        for g in gold:
            plan.append(_turn(f"inspect {g}", "explore_schema", _call(f"SELECT * FROM {g} LIMIT 1")))
        plan.append(_turn("relevant schema", "propose_schema",
                          "<schema>" + json.dumps(t.gold_schema, separators=(", ", ": ")) + "</schema>"))
        if rng.random() < self.typo_p and " FROM " in t.gold_sql:  # "FOM": SQLite reports a syntax error
            plan.append(_turn(t.question, "generate_sql", _call(t.gold_sql.replace(" FROM ", " FOM ", 1))))
            plan.append(_turn("fix the syntax error", "generate_sql", _call(t.gold_sql)))
        else:  # the question restated right before the query: its values are then a short copy away
            plan.append(_turn(t.question, "generate_sql", _call(t.gold_sql)))
        plan.append(_turn("the query is verified", "confirm_answer", f"<answer>{t.gold_sql}</answer>"))
        return plan

    def demonstration(self, messages: Sequence[Message]) -> Optional[str]:
        if self.task is None:
            return None
        if self._plan is None:
            self._plan = self._demo_plan()
        k = sum(1 for m in messages if m.role == "assistant")
        return self._plan[k] if k < len(self._plan) else None

    def tokenizer_corpus(self, n: int = 64) -> list[str]:
        """Questions, demonstrated turns and the observations they get, over train and held-out databases (a
        tokenizer trained on these covers table names of both splits and the SQL vocabulary)."""
        out = [INSTRUCTIONS, INVALID_FORMAT]
        for split in SPLITS:
            tasks = self.bench.tasks(split)
            for i in range(min(n, len(tasks))):
                env = TrustSQLEnv(split, **self._init)
                env.reset(task=tasks[(i * 7919) % len(tasks)], seed=i)
                for turn in env._demo_plan():
                    out.append(turn)
                    res = env.step(Message("assistant", turn, tool_calls=_parse(turn)))
                    out += [m.content for m in res.messages]
                out.append(env.task.question)
                env.close()
        return out

    def close(self) -> None:
        if self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None


class SQLError(Exception):
    """A query the sandbox refused or SQLite rejected (its message is the tool's error text)."""


def _parse(text: str):
    from lckernels_rl.agents.parsers import get_parser

    return get_parser("hermes").parse(text).calls
