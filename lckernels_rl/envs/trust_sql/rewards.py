"""TRUST-SQL's turn protocol checks and rewards, as the public code computes them.

Source: repo ``stulove123/TRUST-SQL-`` (authorship not confirmed), files ``TrustSQL/examples/nl2sql/
sql_reward_with_schema.py`` (``check_single_turn_format``, ``compute_schema_linking_score``, ``compute_score_sql_async``,
``extract_final_answer_sql``) and ``TrustSQL/examples/nl2sql/generate_sql_token.py`` (``postprocess_predictions``,
``compute_turn_level_format_scores``, ``reward_func``), read at commit 8cf260a.  What follows restates their rules;
the code is ours.

* **Turn format** (:func:`check_turn_format`): exactly one ``<think>`` and one ``</think>``; exactly one
  ``<action>...</action>`` naming one of ``explore_schema`` / ``propose_schema`` / ``generate_sql`` /
  ``confirm_answer``; the action's payload tag present (``<tool_call>``, ``<schema>``, ``<tool_call>``, ``<answer>``).
* **What a turn does** (:func:`turn_action`) does not depend on the format check, in the public code's order: an
  ``<answer>`` ends the episode; else a ``<schema>`` is a proposal; else a ``<tool_call>`` runs SQL (labelled by the
  ``<action>`` tag); else the turn is an invalid-format turn.
* **Format bonus** (:func:`format_bonus`): 0.1 iff every turn passes the format check, all four actions occurred in
  turns that passed it without error feedback, and no feedback contains ``"Invalid format"``, ``"try again"`` or
  ``"syntax error"``.
* **Schema score** (:func:`schema_linking_score`): 0.4 * table metric + 0.6 * column metric over lower-cased table
  names and ``table.column`` names; metric modes ``totalmatch`` (alias ``truematch``, ``allmatch``), ``f1``,
  ``precision``, ``recall``, ``recall_then_precision``, ``recall_then_precision_strict``.  Both sets empty: P = R =
  F1 = 1; one empty: 0.
* **SQL score** (:func:`sql_score`): 1.0 when the predicted rows equal the gold rows as sets, 0.2 when the prediction
  executes but differs, 0.0 when it does not execute or there is no answer.  The public code compares the first 30
  fetched rows of each query (``fetchmany(max_rows=30)``); ``compare_rows`` keeps that default.
"""

from __future__ import annotations

import json
import re
from typing import Any, Optional, Sequence

__all__ = ["ACTIONS", "SCHEMA_MODES", "check_turn_format", "turn_action", "extract_answer_sql", "parse_schema",
           "schema_linking_score", "format_bonus", "sql_score", "ERROR_MARKERS", "FORMAT_BONUS", "SQL_CORRECT",
           "SQL_EXECUTABLE", "TABLE_WEIGHT", "COLUMN_WEIGHT"]

ACTIONS = {"explore_schema": "<tool_call>", "propose_schema": "<schema>", "generate_sql": "<tool_call>",
           "confirm_answer": "<answer>"}
SCHEMA_MODES = ("totalmatch", "truematch", "allmatch", "f1", "precision", "recall", "recall_then_precision",
                "recall_then_precision_strict")
ERROR_MARKERS = ("Invalid format", "try again", "syntax error")
FORMAT_BONUS = 0.1
SQL_CORRECT, SQL_EXECUTABLE = 1.0, 0.2
TABLE_WEIGHT, COLUMN_WEIGHT = 0.4, 0.6

_ACTION_RE = re.compile(r"<action>(.*?)</action>", re.DOTALL)
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_SCHEMA_RE = re.compile(r"<schema>(.*?)</schema>", re.DOTALL)


def check_turn_format(text: str) -> tuple[bool, Optional[str]]:
    """``(valid, error)`` of one assistant turn under the protocol's per-turn format rules."""
    n_open, n_close = text.count("<think>"), text.count("</think>")
    if n_open != 1 or n_close != 1:
        return False, f"Invalid <think> tags: {n_open} opening, {n_close} closing"
    actions = _ACTION_RE.findall(text)
    if len(actions) != 1:
        return False, f"Expected exactly 1 <action> tag, found {len(actions)}"
    action = actions[0].strip()
    if action not in ACTIONS:
        return False, f"Unknown action type: {action}"
    if ACTIONS[action] not in text:
        return False, f"{action} requires {ACTIONS[action]}"
    return True, None


def turn_action(text: str) -> tuple[Optional[str], str]:
    """What the turn does, in the public code's order: ``("answer", content)``, ``("schema", content)``,
    ``(action tag or "sql", "")`` for a turn with a ``<tool_call>`` (its calls are parsed by the agent loop), or
    ``(None, "")`` (an invalid-format turn)."""
    m = _ANSWER_RE.search(text)
    if m:
        return "answer", m.group(1).strip()
    m = _SCHEMA_RE.search(text)
    if m:
        return "schema", m.group(1).strip()
    if "<tool_call>" in text:
        a = _ACTION_RE.search(text)
        tag = a.group(1).strip() if a else None
        return (tag if tag in ("explore_schema", "generate_sql") else "sql"), ""
    return None, ""


def extract_answer_sql(text: str) -> Optional[str]:
    """The SQL of the last ``<answer>`` in ``text`` (a fenced ```` ```sql ... ``` ```` block inside it when there is
    one); ``None`` when there is no non-empty answer."""
    found = _ANSWER_RE.findall(text)
    if not found or not found[-1].strip():
        return None
    content = found[-1].strip()
    for pat in (r"'''sql\s+(.*?)\s+'''", r"```sql\s+(.*?)\s+```"):
        m = re.search(pat, content, re.DOTALL | re.IGNORECASE)
        if m:
            return m.group(1).strip()
    return content


def parse_schema(content: str) -> tuple[Optional[dict], Optional[str]]:
    """``(schema, None)`` for a proposal ``{"tables": [str, ...], "columns": {table: [str, ...]}}``; ``(None, reason)``
    otherwise.  (The public code acknowledges any JSON object; a proposal that is not of this shape is an error here,
    and scores 0 there as well since its tables / columns cannot match.)"""
    try:
        obj = json.loads(content)
    except json.JSONDecodeError as e:
        return None, f"Invalid JSON in schema - {e}"
    if not isinstance(obj, dict):
        return None, f"the schema must be a JSON object, got {type(obj).__name__}"
    tables, columns = obj.get("tables", []), obj.get("columns", {})
    if not isinstance(tables, list) or not all(isinstance(t, str) for t in tables):
        return None, "`tables` must be a list of table names"
    if not isinstance(columns, dict) or not all(isinstance(k, str) and isinstance(v, list)
                                                and all(isinstance(c, str) for c in v) for k, v in columns.items()):
        return None, "`columns` must map table names to lists of column names"
    return {"tables": list(tables), "columns": {k: list(v) for k, v in columns.items()}}, None


def _prf(pred: set, gold: set) -> tuple[float, float, float]:
    if not pred and not gold:
        return 1.0, 1.0, 1.0
    if not pred or not gold:
        return 0.0, 0.0, 0.0
    hit = len(pred & gold)
    p, r = hit / len(pred), hit / len(gold)
    return p, r, (2 * p * r / (p + r) if p + r > 0 else 0.0)


def _columns(schema: dict) -> set:
    out = set()
    for table, cols in (schema.get("columns") or {}).items():
        for c in cols or ():
            name = c if isinstance(c, str) else (c.get("name") or c.get("column_name") or c.get("column")
                                                 if isinstance(c, dict) else str(c))
            if name:
                out.add(f"{str(table).lower()}.{str(name).lower()}")
    return out


def schema_linking_score(pred: dict, gold: dict, mode: str = "totalmatch") -> dict[str, float]:
    """Precision / recall / F1 of tables and columns and ``total`` = 0.4 * table metric + 0.6 * column metric."""
    if mode not in SCHEMA_MODES:
        raise ValueError(f"schema_linking_score: `mode` must be one of {SCHEMA_MODES}; got {mode!r}")
    if mode in ("truematch", "allmatch"):
        mode = "totalmatch"
    pt = {str(t).lower() for t in pred.get("tables", [])}
    gt = {str(t).lower() for t in gold.get("tables", [])}
    tp, tr, tf = _prf(pt, gt)
    cp, cr, cf = _prf(_columns(pred), _columns(gold))
    if mode == "precision":
        tm, cm = tp, cp
    elif mode == "recall":
        tm, cm = tr, cr
    elif mode == "f1":
        tm, cm = tf, cf
    elif mode == "totalmatch":
        tm = cm = 1.0 if (tp == tr == cp == cr == 1.0) else 0.0
    else:  # recall_then_precision(_strict): full recall required, then the weighted precision (bucketed)
        prec = TABLE_WEIGHT * tp + COLUMN_WEIGHT * cp
        if tr < 1.0 or cr < 1.0:
            tm = cm = 0.0
        elif mode == "recall_then_precision":
            tm = cm = prec
        else:
            tm = cm = next(v for lo, v in ((1.0, 1.0), (0.9, 0.8), (0.8, 0.6), (0.7, 0.4), (0.6, 0.2), (-1, 0.1))
                           if prec >= lo)
    return {"table_precision": tp, "table_recall": tr, "table_f1": tf, "column_precision": cp,
            "column_recall": cr, "column_f1": cf, "total": TABLE_WEIGHT * tm + COLUMN_WEIGHT * cm}


def format_bonus(turns: Sequence[str], feedbacks: Sequence[Optional[str]]) -> float:
    """0.1 iff every turn is well-formed, all four actions were carried out (a well-formed turn whose feedback
    reports no error) and no feedback carries an error marker; ``feedbacks[i]`` answers ``turns[i]`` (``None`` or
    missing: no feedback, e.g. the final answer)."""
    done = set()
    any_error = False
    all_valid = True
    names = {"explore_schema": "explore_schema", "schema": "propose_schema", "generate_sql": "generate_sql",
             "answer": "confirm_answer"}
    for i, text in enumerate(turns):
        valid, _ = check_turn_format(text)
        all_valid &= valid
        fb = feedbacks[i] if i < len(feedbacks) else None
        err = bool(fb) and any(mk in fb for mk in ERROR_MARKERS)
        any_error |= err
        if valid and not err:
            action, _ = turn_action(text)
            if action in names:
                done.add(names[action])
    return FORMAT_BONUS if (all_valid and len(done) == 4 and not any_error) else 0.0


def _rows_equal(a: Sequence[tuple], b: Sequence[tuple]) -> bool:
    try:
        return set(a) == set(b)
    except TypeError:  # unhashable values
        try:
            return sorted(a) == sorted(b)
        except TypeError:
            return False


def sql_score(sandbox: Any, predicted: Optional[str], gold: str, *, compare_rows: Optional[int] = 30) -> dict:
    """``{"score", "executable", "correct"}`` of a predicted query against the gold one, both run in ``sandbox``
    (a :class:`~lckernels_rl.envs.trust_sql.sandbox.SQLSandbox`); ``compare_rows``: rows of each result compared
    (the public code's 30; ``None``: all rows up to the sandbox limits)."""
    if not predicted:
        return {"score": 0.0, "executable": 0.0, "correct": 0.0}
    cap = compare_rows if compare_rows is not None else 10**6
    pred = sandbox.execute(predicted, max_rows=cap)
    if not pred.ok:
        return {"score": 0.0, "executable": 0.0, "correct": 0.0}
    ref = sandbox.execute(gold, max_rows=cap)
    if not ref.ok:
        raise RuntimeError(f"the gold SQL does not execute: {ref.error} ({gold})")
    correct = _rows_equal(pred.rows, ref.rows)
    return {"score": SQL_CORRECT if correct else SQL_EXECUTABLE, "executable": 1.0, "correct": float(correct)}
