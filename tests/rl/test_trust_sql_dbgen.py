"""The TRUST-SQL database and question generator (lckernels_rl/envs/trust_sql/dbgen.py)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3

import pytest

from lckernels_rl.envs.trust_sql.dbgen import UNRELATED_TABLES, SQLBenchmark, SQLTask

PARAMS = dict(n_train_dbs=2, n_heldout_dbs=1, questions_per_db=14, seed=0)  # tables: the default (20, 50)

# written out from the brief, not taken from the generator
SYNONYMS = {"customers": ("customers", "clients", "customer_accounts"),
            "products": ("products", "items", "catalog_items"),
            "orders": ("orders", "purchases", "sales_orders"),
            "departments": ("departments", "divisions", "business_units"),
            "employees": ("employees", "staff", "personnel")}
SUFFIXES = ("_bak", "_old", "_tmp", "_2019", "_copy", "_archive", "_staging")
PREFIXES = ("tmp_", "old_")
ALL_SYNONYMS = {s: c for c, syns in SYNONYMS.items() for s in syns}
TEMPLATES = {"count_filter", "list_filter", "aggregate", "group_by", "order_limit", "join_count", "join_list"}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return SQLBenchmark(tmp_path_factory.mktemp("bench"), **PARAMS)


@contextlib.contextmanager
def _connect(path):
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        yield conn
    finally:
        conn.close()


def _all_dbs(bench):
    return [(split, p) for split in ("train", "heldout") for p in bench.databases(split)]


def _db_id(path):
    return os.path.basename(path)[: -len(".sqlite")]


def _columns(conn, table):
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def _real_tables(names):
    """concept -> its real table: the one table named by an unmarked synonym."""
    real = {}
    for n in names:
        if n in ALL_SYNONYMS:
            assert ALL_SYNONYMS[n] not in real, f"two unmarked tables for {ALL_SYNONYMS[n]}: {n}, {real}"
            real[ALL_SYNONYMS[n]] = n
    return real


def _stem(name):
    """The synonym under a noise mark, or None when the name carries no mark."""
    for s in SUFFIXES:
        if name.endswith(s):
            return name[: -len(s)]
    for p in PREFIXES:
        if name.startswith(p):
            return name[len(p):]
    return None


def test_table_counts_and_names(bench):
    for _, path in _all_dbs(bench):
        names = bench.table_names(_db_id(path))
        with _connect(path) as conn:
            assert names == sorted(r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'"))
        assert 20 <= len(names) <= 50
        real = _real_tables(names)
        assert sorted(real) == sorted(SYNONYMS), f"missing real tables: {real}"
        distractors = [n for n in names if n not in real.values()]
        assert len(distractors) > len(names) / 2
        for n in distractors:
            assert n not in ALL_SYNONYMS
            assert n in UNRELATED_TABLES or _stem(n) in ALL_SYNONYMS, f"distractor {n!r} is neither noisy nor unrelated"
        # each concept has at least one noisy copy
        assert {ALL_SYNONYMS[_stem(n)] for n in distractors if n not in UNRELATED_TABLES} == set(SYNONYMS)
    assert {"customers", "clients"} <= set(ALL_SYNONYMS)
    assert "audit_log" in UNRELATED_TABLES and not set(UNRELATED_TABLES) & set(ALL_SYNONYMS)


def test_foreign_keys_declared_and_valid(bench):
    for _, path in _all_dbs(bench):
        with _connect(path) as conn:
            assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
            real = _real_tables(bench.table_names(_db_id(path)))
            fks = {(r[3], r[2], r[4]) for r in conn.execute(f"PRAGMA foreign_key_list({real['orders']})")}
            assert fks == {("customer_id", real["customers"], "id"), ("product_id", real["products"], "id")}
            fks = {(r[3], r[2], r[4]) for r in conn.execute(f"PRAGMA foreign_key_list({real['employees']})")}
            assert fks == {("department_id", real["departments"], "id")}
            # and the references resolve to rows (not only NULLs)
            n = conn.execute(f"SELECT COUNT(*) FROM {real['orders']} AS o JOIN {real['customers']} AS c "
                             f"ON o.customer_id = c.id").fetchone()[0]
            assert n == conn.execute(f"SELECT COUNT(*) FROM {real['orders']}").fetchone()[0] >= 20
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_gold_sql_runs_and_schema_exists(bench):
    for split in ("train", "heldout"):
        tasks = bench.tasks(split)
        assert len(tasks) == PARAMS["questions_per_db"] * len(bench.databases(split))
        for path in bench.databases(split):
            mine = [t for t in tasks if t.db_path == path]
            assert {t.template for t in mine} == TEMPLATES
            assert len({t.question for t in mine}) == len(mine) and len({t.gold_sql for t in mine}) == len(mine)
            real = set(_real_tables(bench.table_names(_db_id(path))).values())
            with _connect(path) as conn:
                for t in mine:
                    rows = conn.execute(t.gold_sql).fetchall()
                    assert rows and rows[0][0] not in (None, 0), t
                    s = t.gold_schema
                    assert s["tables"] == sorted(s["tables"]) and sorted(s["columns"]) == s["tables"]
                    assert set(s["tables"]) <= real, (t, real)
                    for table, cols in s["columns"].items():
                        assert cols == sorted(cols) and set(cols) <= set(_columns(conn, table)), (t, table)
                    for table in s["tables"]:  # the question names the concept, not the table
                        if table not in SYNONYMS:
                            assert not re.search(rf"\b{table}\b", t.question), t


_LIT = r"('[^']*'|\d+)"
_STRUCTURE = {  # template -> (SQL pattern, expected schema from the groups)
    "count_filter": (rf"SELECT COUNT\(\*\) FROM (\w+) WHERE (\w+) = {_LIT}",
                     lambda t, c, v: {t: [c]}),
    "list_filter": (rf"SELECT (\w+) FROM (\w+) WHERE (\w+) = {_LIT}",
                    lambda a, t, c, v: {t: sorted({a, c})}),
    "aggregate": (rf"SELECT (?:AVG|SUM|MAX|MIN)\((\w+)\) FROM (\w+) WHERE (\w+) = {_LIT}",
                  lambda m, t, c, v: {t: sorted({m, c})}),
    "group_by": (r"SELECT (\w+), COUNT\(\*\) FROM (\w+) GROUP BY (\w+)",
                 lambda c, t, c2: {t: [c]} if c == c2 else None),
    "order_limit": (r"SELECT (\w+) FROM (\w+) ORDER BY (\w+) (?:ASC|DESC) LIMIT (\d+)",
                    lambda a, t, m, k: {t: sorted({a, m})}),
    "join_count": (rf"SELECT COUNT\(\*\) FROM (\w+) AS T1 JOIN (\w+) AS T2 ON T1\.(\w+) = T2\.(\w+) "
                   rf"WHERE T2\.(\w+) = {_LIT}",
                   lambda t1, t2, k1, k2, c, v: {t1: [k1], t2: sorted({k2, c})}),
    "join_list": (rf"SELECT T1\.(\w+) FROM (\w+) AS T1 JOIN (\w+) AS T2 ON T1\.(\w+) = T2\.(\w+) "
                  rf"WHERE T2\.(\w+) = {_LIT}",
                  lambda a, t1, t2, k1, k2, c, v: {t1: sorted({a, k1}), t2: sorted({k2, c})}),
}


def test_gold_sql_structure_and_schema(bench):
    for t in bench.tasks("train") + bench.tasks("heldout"):
        pattern, expect = _STRUCTURE[t.template]
        m = re.fullmatch(pattern, t.gold_sql)
        assert m, t
        cols = expect(*m.groups())
        assert t.gold_schema == {"tables": sorted(cols), "columns": {k: cols[k] for k in sorted(cols)}}, t
        lit = m.groups()[-1] if t.template not in ("group_by", "order_limit") else None
        if lit is not None:
            assert lit in t.question, t  # the literal is quoted exactly as in the SQL
        if t.template.startswith("join"):  # the ON clause pairs a foreign key with the other table's id
            k1, k2 = m.groups()[-4:-2]
            assert (k1 == "id") != (k2 == "id") and (k2 if k1 == "id" else k1).endswith("_id"), t


def test_pinned_tasks(bench):
    """Written out by hand from one generated database (train_000 of PARAMS)."""
    tasks = [t for t in bench.tasks("train") if t.db_id == "train_000"]
    t = tasks[0]
    assert (t.template, t.question, t.gold_sql) == (
        "count_filter", "How many orders have status 'delivered'?",
        "SELECT COUNT(*) FROM orders WHERE status = 'delivered'")
    assert t.gold_schema == {"tables": ["orders"], "columns": {"orders": ["status"]}}
    with _connect(t.db_path) as conn:
        statuses = [r[0] for r in conn.execute("SELECT status FROM orders")]
        assert conn.execute(t.gold_sql).fetchone()[0] == statuses.count("delivered") > 0
    t = tasks[6]
    assert (t.template, t.question, t.gold_sql) == (
        "join_list", "List the ids of orders that include products with category 'electronics'.",
        "SELECT T1.id FROM orders AS T1 JOIN items AS T2 ON T1.product_id = T2.id WHERE T2.category = 'electronics'")
    assert t.gold_schema == {"tables": ["items", "orders"],
                             "columns": {"items": ["category", "id"], "orders": ["id", "product_id"]}}
    with _connect(t.db_path) as conn:
        electronics = {r[0] for r in conn.execute("SELECT id FROM items WHERE category = 'electronics'")}
        want = sorted(r[0] for r in conn.execute("SELECT id, product_id FROM orders") if r[1] in electronics)
        assert sorted(r[0] for r in conn.execute(t.gold_sql)) == want and 0 < len(want) <= 10
    t = tasks[2]
    assert (t.template, t.gold_sql) == ("aggregate", "SELECT AVG(price) FROM items WHERE category = 'electronics'")
    assert t.gold_schema == {"tables": ["items"], "columns": {"items": ["category", "price"]}}


def test_distractor_copies_are_stale(bench):
    differs = 0
    for _, path in _all_dbs(bench):
        db_id = _db_id(path)
        names = bench.table_names(db_id)
        real = _real_tables(names)
        with _connect(path) as conn:
            copies = {}
            for concept, table in real.items():
                cols = _columns(conn, table)
                copies[table] = [n for n in names if n != table and _columns(conn, n) == cols]
                assert copies[table], f"no copy of {table}"
                rows = set(conn.execute(f"SELECT * FROM {table}"))
                ids = {r[0] for r in rows}
                for c in copies[table]:
                    crows = set(conn.execute(f"SELECT * FROM {c}"))
                    assert {r[0] for r in crows} < ids and crows != rows  # a strict subset of the entities
            for t in bench.tasks(db_id.split("_")[0]):
                if t.db_id != db_id or t.template.startswith("join"):
                    continue
                table = t.gold_schema["tables"][0]
                gold = sorted(conn.execute(t.gold_sql).fetchall(), key=repr)
                for c in copies[table]:
                    stale = sorted(conn.execute(t.gold_sql.replace(f"FROM {table} ", f"FROM {c} ")).fetchall(),
                                   key=repr)
                    differs += stale != gold
    assert differs > 0


def _dump(path):
    with _connect(path) as conn:
        return list(conn.iterdump())


def _strip(tasks):
    return [{k: v for k, v in t.to_dict().items() if k != "db_path"} for t in tasks]


def test_deterministic_and_seed_dependent(bench, tmp_path):
    other = SQLBenchmark(tmp_path / "again", **PARAMS)
    assert other.cache_dir != bench.cache_dir
    for split in ("train", "heldout"):
        assert [_dump(p) for p in other.databases(split)] == [_dump(p) for p in bench.databases(split)]
        assert _strip(other.tasks(split)) == _strip(bench.tasks(split))
    changed = SQLBenchmark(tmp_path / "seed1", **{**PARAMS, "seed": 1, "n_train_dbs": 1, "n_heldout_dbs": 0})
    assert _dump(changed.databases("train")[0]) != _dump(bench.databases("train")[0])
    assert _strip(changed.tasks("train")) != _strip(bench.tasks("train")[:PARAMS["questions_per_db"]])


def test_reuse_does_not_rewrite(bench):
    files = sorted(os.listdir(bench.cache_dir))
    assert all(not f.endswith((".tmp", "-journal", "-wal")) for f in files), files
    mtimes = {f: os.stat(bench.cache_dir / f).st_mtime_ns for f in files}
    again = SQLBenchmark(bench.root, **PARAMS)
    assert again.cache_dir == bench.cache_dir
    assert {f: os.stat(bench.cache_dir / f).st_mtime_ns for f in sorted(os.listdir(bench.cache_dir))} == mtimes
    assert again.tasks("train") == bench.tasks("train") and again.tasks("heldout") == bench.tasks("heldout")


def test_default_root_uses_cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("LCK_CACHE_DIR", str(tmp_path))
    b = SQLBenchmark(n_train_dbs=1, n_heldout_dbs=0, questions_per_db=7, tables=(11, 12))
    assert b.cache_dir.parent == (tmp_path / "trust_sql").resolve()
    assert 11 <= len(b.table_names("train_000")) <= 12 and b.tasks("heldout") == []
    assert {t.template for t in b.tasks("train")} == TEMPLATES


def test_splits_are_disjoint(bench):
    train, held = bench.tasks("train"), bench.tasks("heldout")
    assert not {t.db_id for t in train} & {t.db_id for t in held}
    assert not set(bench.databases("train")) & set(bench.databases("heldout"))
    assert {t.db_id for t in held} == {"heldout_000"} and {t.db_id for t in train} == {"train_000", "train_001"}
    assert all(os.path.isabs(p) and os.path.exists(p) for p in bench.databases("train") + bench.databases("heldout"))


@pytest.mark.parametrize("kwargs, exc, name", [
    (dict(tables=(1, 30)), ValueError, "tables"),
    (dict(tables=(30, 20)), ValueError, "tables"),
    (dict(tables=(5, 8)), ValueError, "tables"),  # too few for the concepts and a majority of distractors
    (dict(tables=(20, 1000)), ValueError, "tables"),
    (dict(tables=(20,)), TypeError, "tables"),
    (dict(tables=(20.0, 30)), TypeError, "tables"),
    (dict(n_train_dbs=-1), ValueError, "n_train_dbs"),
    (dict(n_heldout_dbs=1.5), TypeError, "n_heldout_dbs"),
    (dict(questions_per_db=0), ValueError, "questions_per_db"),
    (dict(questions_per_db=10**6), ValueError, "questions_per_db"),
    (dict(questions_per_db=True), TypeError, "questions_per_db"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(root=123), TypeError, "root"),
])
def test_bad_arguments(tmp_path, kwargs, exc, name):
    kwargs = {"root": tmp_path, **kwargs}
    with pytest.raises(exc, match=name):
        SQLBenchmark(**kwargs)
    assert not any(tmp_path.iterdir())  # nothing written


def test_bad_lookups(bench):
    with pytest.raises(ValueError, match="split"):
        bench.tasks("test")
    with pytest.raises(ValueError, match="split"):
        bench.databases("valid")
    with pytest.raises(ValueError, match="db_id"):
        bench.table_names("train_999")


def test_task_dict_roundtrip(bench):
    for t in bench.tasks("train")[:14] + bench.tasks("heldout")[:3]:
        d = json.loads(json.dumps(t.to_dict()))
        assert SQLTask.from_dict(d) == t and hash(SQLTask.from_dict(d)) == hash(t)
    with pytest.raises(ValueError, match="gold_sql"):
        SQLTask.from_dict({k: v for k, v in t.to_dict().items() if k != "gold_sql"})
