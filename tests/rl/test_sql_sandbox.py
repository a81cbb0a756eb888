"""The trust_sql SQL sandbox: writes are impossible (file byte-identical, no journal / attached / vacuumed files), step
and time limits, one statement per call, error kinds and the observation text; on a small database built here."""

from __future__ import annotations

import os
import sqlite3
import threading
import time

import pytest

from lckernels_rl.envs.trust_sql.sandbox import KINDS, QueryResult, SQLSandbox, file_digest

N_T = 300  # rows of t: t a, t b, t c is a 2.7e7-row cross join
DEPTS = [(1, "eng"), (2, "ops"), (3, "sales"), (4, "legal")]
SIDE_SUFFIXES = ("-journal", "-wal", "-shm")


def _emp_rows():
    return [(i, f"emp{i}", 1 + i % 4, 1000.0 + 10 * i, None if i % 3 else f"note {i}") for i in range(1, 201)]


@pytest.fixture
def db(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    path = d / "bench.db"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE dept (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
        CREATE TABLE emp (id INTEGER PRIMARY KEY, name TEXT NOT NULL, dept_id INTEGER REFERENCES dept(id),
                          salary REAL, note TEXT);
        CREATE INDEX emp_dept ON emp(dept_id);
        CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT);
    """)
    conn.executemany("INSERT INTO dept VALUES (?, ?)", DEPTS)
    conn.executemany("INSERT INTO emp VALUES (?, ?, ?, ?, ?)", _emp_rows())
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"b{i}") for i in range(1, N_T + 1)])
    conn.commit()
    conn.close()
    return path


@pytest.fixture
def sb(db):
    s = SQLSandbox(db, time_limit_s=0.5)
    yield s
    s.close()


def _dir_state(db):
    return sorted(os.listdir(db.parent))


def _assert_untouched(db, digest, extra_absent=()):
    assert file_digest(db) == digest
    names = _dir_state(db)
    assert names == [db.name], names  # no -journal / -wal / -shm, nothing attached or vacuumed next to it
    assert not any(n.endswith(SIDE_SUFFIXES) for n in names)
    for p in extra_absent:
        assert not os.path.exists(p), p


def _assert_failed(res: QueryResult, kinds):
    assert not res.ok, res
    assert res.kind in KINDS and res.kind in kinds, res
    assert res.columns == () and res.rows == ()
    prefix = "SQLite error: " if res.kind in ("syntax", "sqlite") else f"{res.kind}: "
    assert res.error.startswith(prefix), res.error
    assert res.text() == "Error: " + res.error


# ---------------------------------------------------------------------------------------------- writes are impossible
def _write_attempts(tmp):
    x, copy = os.path.join(tmp, "x.db"), os.path.join(tmp, "copy.db")
    return [
        ("DELETE FROM t", {"not_read_only"}, ()),
        ("UPDATE t SET b = 'x'", {"not_read_only"}, ()),
        ("INSERT INTO t VALUES (1000, 'x')", {"not_read_only"}, ()),
        ("DROP TABLE t", {"not_read_only"}, ()),
        ("CREATE TABLE u (a)", {"not_read_only"}, ()),
        ("ALTER TABLE t ADD COLUMN c", {"not_read_only"}, ()),
        (f"ATTACH DATABASE '{x}' AS x", {"not_read_only"}, (x,)),
        ("PRAGMA writable_schema=1", {"denied"}, ()),
        ("PRAGMA journal_mode=WAL", {"denied"}, ()),
        ("PRAGMA query_only=0", {"denied"}, ()),
        ("PRAGMA main.journal_mode = DELETE", {"denied"}, ()),
        ("PRAGMA user_version = 7", {"denied"}, ()),
        ("SELECT load_extension('x')", {"denied", "sqlite"}, ()),
        ("SELECT readfile('/etc/passwd')", {"denied", "sqlite"}, ()),
        (f"SELECT writefile('{copy}', 'x')", {"denied", "sqlite"}, (copy,)),
        ("SELECT fts3_tokenizer('simple')", {"denied", "sqlite"}, ()),
        ("VACUUM", {"not_read_only"}, ()),
        (f"VACUUM INTO '{copy}'", {"not_read_only"}, (copy,)),
        ("BEGIN; DELETE FROM t", {"not_read_only"}, ()),
        ("SELECT 1; DELETE FROM t", {"multiple_statements"}, ()),
        ("SELECT 1; DELETE FROM t;", {"multiple_statements"}, ()),
        ("EXPLAIN DELETE FROM t", {"denied"}, ()),
        ("EXPLAIN INSERT INTO t VALUES (1000, 'x')", {"denied"}, ()),
        (f"EXPLAIN ATTACH '{x}' AS x", {"denied"}, (x,)),
        ("EXPLAIN BEGIN IMMEDIATE", {"denied"}, ()),
        ("WITH x AS (SELECT 1) DELETE FROM t", {"not_read_only"}, ()),
        ("  /* hi */ -- there\n  delete from t", {"not_read_only"}, ()),
    ]


def test_write_attempts_fail_and_leave_the_file_untouched(sb, db, tmp_path):
    digest = file_digest(db)
    for sql, kinds, absent in _write_attempts(str(tmp_path)):
        res = sb.execute(sql)
        _assert_failed(res, kinds)
        _assert_untouched(db, digest, absent)
    assert sb.execute("SELECT count(*) FROM t").rows == ((N_T,),)  # nothing deleted, connection usable


def test_explain_vacuum_only_lists_the_program(sb, db, tmp_path):
    """VACUUM has no authorizer action at prepare time, so EXPLAIN VACUUM [INTO] compiles; EXPLAIN only lists the
    bytecode (the ATTACH inside VACUUM would be denied at run time, and fails the ATTACH limit anyway)."""
    copy = tmp_path / "copy.db"
    digest = file_digest(db)
    for sql in [f"EXPLAIN VACUUM INTO '{copy}'", "EXPLAIN VACUUM"]:
        res = sb.execute(sql)
        assert res.ok and "Vacuum" in [r[1] for r in res.rows]
        _assert_untouched(db, digest, (copy,))


def test_denied_messages_name_the_action(sb, tmp_path):
    x = tmp_path / "x.db"
    assert sb.execute(f"EXPLAIN ATTACH '{x}' AS x").error == "denied: ATTACH is not allowed in the sandbox"
    assert "DELETE" in sb.execute("EXPLAIN DELETE FROM t").error
    assert "PRAGMA writable_schema" in sb.execute("PRAGMA writable_schema=1").error
    assert "load_extension" in sb.execute("SELECT load_extension('x')").error
    assert "'DELETE'" in sb.execute("DELETE FROM t").error
    assert "'WITH'" in sb.execute("WITH x AS (SELECT 1) DELETE FROM t").error


def test_writes_are_denied_beyond_the_prefix_check(db, tmp_path):
    """With the courtesy prefix check switched off, the authorizer denies every write statement."""
    x, copy = tmp_path / "x.db", tmp_path / "copy.db"
    digest = file_digest(db)
    with SQLSandbox(db, time_limit_s=0.5) as s:
        s.ALLOWED_PREFIXES = ("SELECT", "PRAGMA", "EXPLAIN", "DELETE", "UPDATE", "INSERT", "REPLACE", "DROP",
                              "CREATE", "ALTER", "ATTACH", "DETACH", "VACUUM", "BEGIN", "COMMIT", "ROLLBACK",
                              "SAVEPOINT", "RELEASE", "ANALYZE", "REINDEX", "WITH")
        for sql in ["DELETE FROM t", "UPDATE t SET b = 'x'", "INSERT INTO t VALUES (1000, 'x')",
                    "REPLACE INTO t VALUES (1, 'x')", "DROP TABLE t", "DROP INDEX emp_dept", "CREATE TABLE u (a)",
                    "CREATE TEMP TABLE u (a)", "CREATE INDEX i ON t(b)", "CREATE VIEW v AS SELECT 1",
                    "CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END", "ALTER TABLE t RENAME TO u",
                    f"ATTACH '{x}' AS x", "DETACH main", "VACUUM", f"VACUUM INTO '{copy}'", "BEGIN",
                    "BEGIN IMMEDIATE", "COMMIT", "ROLLBACK", "SAVEPOINT a", "RELEASE a", "ANALYZE", "REINDEX",
                    "WITH x AS (SELECT 1) DELETE FROM t", "CREATE VIRTUAL TABLE v USING fts5(a)"]:
            res = s.execute(sql)
            _assert_failed(res, {"denied"})
            _assert_untouched(db, digest, (x, copy))
        assert s.execute("SELECT count(*) FROM t").rows == ((N_T,),)


def test_read_only_open_holds_without_the_authorizer(db, tmp_path):
    """Belt and braces: with the authorizer removed, the mode=ro open, query_only and the ATTACH limit still stop
    every write (and ATTACH / VACUUM INTO, which would create files even from a read-only connection)."""
    x, copy = tmp_path / "x.db", tmp_path / "copy.db"
    digest = file_digest(db)
    with SQLSandbox(db, time_limit_s=0.5) as s:
        s._conn.set_authorizer(None)
        s.ALLOWED_PREFIXES = ("SELECT", "PRAGMA", "EXPLAIN", "DELETE", "INSERT", "CREATE", "ATTACH", "VACUUM",
                              "BEGIN", "DROP")
        for sql in ["DELETE FROM t", "INSERT INTO t VALUES (1000, 'x')", "CREATE TABLE u (a)", "DROP TABLE t",
                    "CREATE TEMP TABLE u (a)", f"ATTACH '{x}' AS x", f"VACUUM INTO '{copy}'", "VACUUM",
                    "BEGIN IMMEDIATE", "PRAGMA journal_mode=WAL"]:
            _assert_failed(s.execute(sql), {"sqlite"})
            _assert_untouched(db, digest, (x, copy))
        assert s.execute("PRAGMA query_only").rows == ((1,),)


# ---------------------------------------------------------------------------------------------------------- limits
def test_endless_recursive_cte_times_out_quickly(sb, db):
    digest = file_digest(db)
    t0 = time.monotonic()
    res = sb.execute("SELECT * FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) "
                     "SELECT max(x) FROM c)")
    elapsed = time.monotonic() - t0
    _assert_failed(res, {"timeout"})
    assert res.error.startswith("timeout: the query exceeded the step/time limit")
    assert elapsed < 5.0, elapsed
    _assert_untouched(db, digest)
    assert sb.execute("SELECT 1").rows == ((1,),)  # counters reset: the next query runs


def test_time_limit_alone_stops_a_query(db):
    with SQLSandbox(db, max_steps=10**15, time_limit_s=0.3) as s:
        t0 = time.monotonic()
        res = s.execute("SELECT count(*) FROM t a, t b, t c, t d")
        elapsed = time.monotonic() - t0
        _assert_failed(res, {"timeout"})
        assert elapsed < 3.0, elapsed
        assert s.execute("SELECT count(*) FROM dept").rows == ((4,),)


def test_step_limit_alone_stops_a_query(db):
    with SQLSandbox(db, max_steps=20_000, time_limit_s=60.0, progress_every=100) as s:
        t0 = time.monotonic()
        _assert_failed(s.execute("SELECT count(*) FROM t a, t b"), {"timeout"})
        assert time.monotonic() - t0 < 2.0
        assert s.execute("SELECT count(*) FROM t").rows == ((N_T,),)  # small queries fit the budget


def test_limits_count_the_fetch_too(sb):
    """The first row comes at once, the second never: the fetch of max_rows + 1 rows must hit the limit."""
    t0 = time.monotonic()
    res = sb.execute("SELECT x FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT x FROM c) "
                     "WHERE x = 1 OR x < 0", max_rows=1)
    _assert_failed(res, {"timeout"})
    assert time.monotonic() - t0 < 5.0


def test_cross_join_returns_capped_rows_quickly(sb, db):
    digest = file_digest(db)
    t0 = time.monotonic()
    res = sb.execute("SELECT * FROM t a, t b, t c", max_rows=50)
    elapsed = time.monotonic() - t0
    assert res.ok and res.truncated and len(res.rows) == 50, res.error
    assert res.columns == ("a", "b", "a", "b", "a", "b")
    assert res.rows[0] == (1, "b1", 1, "b1", 1, "b1")
    assert elapsed < 1.0, elapsed
    _assert_failed(sb.execute("SELECT COUNT(*) FROM t a, t b, t c"), {"timeout"})
    _assert_untouched(db, digest)


def test_huge_values_are_errors(sb):
    t0 = time.monotonic()
    _assert_failed(sb.execute("SELECT zeroblob(2000000000)"), {"sqlite"})
    _assert_failed(sb.execute("SELECT length(randomblob(500000000))"), {"sqlite"})
    assert time.monotonic() - t0 < 2.0
    assert sb.execute("SELECT length(zeroblob(1000))").rows == ((1000,),)


# ---------------------------------------------------------------------------------------------------- what works
def test_reads_work(sb, db):
    digest = file_digest(db)
    assert sb.execute("SELECT 'a;b'").rows == (("a;b",),)
    assert sb.execute("SELECT 'a;b';").rows == (("a;b",),)
    assert sb.execute("SELECT 'x -- y', '/* z */'").rows == (("x -- y", "/* z */"),)
    assert sb.execute("-- a comment\n/* another\n one */  select count(*) from emp -- trailing").rows == ((200,),)
    assert sb.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name").rows == \
        (("dept",), ("emp",), ("t",))
    res = sb.execute("SELECT d.name, count(*), round(avg(e.salary), 1) FROM emp e JOIN dept d ON d.id = e.dept_id "
                     "GROUP BY d.id ORDER BY d.id")
    assert res.ok and res.rows[0][0] == "eng" and sum(r[1] for r in res.rows) == 200
    assert sb.execute("SELECT x'00ff', 1.5, NULL, 7").rows == ((b"\x00\xff", 1.5, None, 7),)
    assert sb.execute("EXPLAIN QUERY PLAN SELECT * FROM emp WHERE dept_id = 2").ok
    assert sb.execute("EXPLAIN SELECT 1").ok
    assert sb.execute("SELECT * FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c LIMIT 5) "
                      "SELECT sum(x) FROM c)").rows == ((15,),)
    assert sb.execute("SELECT CAST(x'ff' AS TEXT)").rows == (("\ufffd",),)  # invalid UTF-8 is not an error
    assert sb.execute("SELECT * FROM t WHERE 0").rows == ()
    _assert_untouched(db, digest)


def test_read_pragmas_work(sb):
    res = sb.execute("PRAGMA table_info(emp)")
    assert res.ok and res.columns[:3] == ("cid", "name", "type")
    assert [r[1] for r in res.rows] == ["id", "name", "dept_id", "salary", "note"]
    fk = sb.execute("PRAGMA foreign_key_list(emp)")
    assert fk.ok and len(fk.rows) == 1
    row = dict(zip(fk.columns, fk.rows[0]))
    assert (row["table"], row["from"], row["to"]) == ("dept", "dept_id", "id")
    assert sb.execute("pragma INDEX_LIST('emp')").rows[0][1] == "emp_dept"
    assert [r[2] for r in sb.execute("PRAGMA index_info(emp_dept)").rows] == ["dept_id"]
    assert sb.execute("PRAGMA main.table_xinfo(t)").ok
    assert {r[1] for r in sb.execute("PRAGMA table_list").rows} >= {"dept", "emp", "t"}
    # the table-valued forms too (virtual tables set up before the authorizer)
    assert [r[0] for r in sb.execute("SELECT name FROM pragma_table_info('dept')").rows] == ["id", "name"]
    assert sb.execute("SELECT count(*) FROM json_each('[1, 2, 3]')").rows == ((3,),)
    _assert_failed(sb.execute("SELECT * FROM pragma_journal_mode"), {"denied"})
    _assert_failed(sb.execute("PRAGMA compile_options"), {"denied"})


# ----------------------------------------------------------------------------------------------------------- errors
def test_error_kinds(sb):
    res = sb.execute("SELECT * FROM t WHERE a = = 1")
    _assert_failed(res, {"syntax"})
    assert "syntax error" in res.text() and res.text().startswith("Error: SQLite error: near")
    res = sb.execute("SELECT * FROM nope")
    _assert_failed(res, {"sqlite"})
    assert res.error == "SQLite error: no such table: nope"
    for sql in ["", "   \n\t", "-- only a comment", "/* c */ ;", ";;", "/* unterminated"]:
        _assert_failed(sb.execute(sql), {"empty"})
    _assert_failed(sb.execute("SELECTX 1"), {"not_read_only"})
    _assert_failed(sb.execute("VALUES (1)"), {"not_read_only"})
    _assert_failed(sb.execute("SELECT 1; SELECT 2"), {"multiple_statements"})
    _assert_failed(sb.execute("SELECT 'a\x00b'"), {"sqlite"})
    _assert_failed(sb.execute("SELECT '\ud800'"), {"sqlite"})
    assert sb.execute("SELECT count(*) FROM dept").rows == ((4,),)  # usable after every error


def test_trailing_semicolons_and_comments(sb):
    assert sb.execute("SELECT 1;").rows == ((1,),)
    assert sb.execute("SELECT 1;;  ; \n").rows == ((1,),)
    assert sb.execute("SELECT 1; -- done").rows == ((1,),)


def test_programming_errors_raise(sb, db):
    with pytest.raises(TypeError, match="sql"):
        sb.execute(b"SELECT 1")
    with pytest.raises(TypeError, match="sql"):
        sb.execute(None)
    with pytest.raises(ValueError, match="max_rows"):
        sb.execute("SELECT 1", max_rows=-1)
    with pytest.raises(TypeError, match="max_rows"):
        sb.execute("SELECT 1", max_rows=1.5)
    sb.close()
    sb.close()  # idempotent
    with pytest.raises(RuntimeError, match="close"):
        sb.execute("SELECT 1")
    with SQLSandbox(db) as s:
        assert s.execute("SELECT 1").ok
    with pytest.raises(RuntimeError):
        s.execute("SELECT 1")


@pytest.mark.parametrize("kwargs, exc, name", [
    ({"max_steps": 0}, ValueError, "max_steps"),
    ({"max_steps": -5}, ValueError, "max_steps"),
    ({"max_steps": 1.5}, TypeError, "max_steps"),
    ({"max_steps": True}, TypeError, "max_steps"),
    ({"time_limit_s": 0}, ValueError, "time_limit_s"),
    ({"time_limit_s": -1.0}, ValueError, "time_limit_s"),
    ({"time_limit_s": float("nan")}, ValueError, "time_limit_s"),
    ({"time_limit_s": float("inf")}, ValueError, "time_limit_s"),
    ({"time_limit_s": "2"}, TypeError, "time_limit_s"),
    ({"progress_every": 0}, ValueError, "progress_every"),
    ({"progress_every": None}, TypeError, "progress_every"),
])
def test_bad_constructor_args(db, kwargs, exc, name):
    with pytest.raises(exc, match=name):
        SQLSandbox(db, **kwargs)


def test_bad_paths(tmp_path):
    missing = tmp_path / "nope.db"
    with pytest.raises(FileNotFoundError):
        SQLSandbox(missing)
    assert not missing.exists() and os.listdir(tmp_path) == []
    with pytest.raises(TypeError, match="db_path"):
        SQLSandbox(42)
    with pytest.raises(ValueError, match="db_path"):
        SQLSandbox(tmp_path)  # a directory
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 100)
    digest = file_digest(junk)
    with pytest.raises(ValueError, match="db_path"):
        SQLSandbox(junk)
    assert file_digest(junk) == digest


def test_odd_characters_in_the_path(tmp_path):
    d = tmp_path / "a dir?#%"
    d.mkdir()
    path = d / "my db.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE z (a)")
    conn.execute("INSERT INTO z VALUES (3)")
    conn.commit()
    conn.close()
    with SQLSandbox(str(path)) as s:
        assert s.execute("SELECT a FROM z").rows == ((3,),)
    assert sorted(os.listdir(d)) == ["my db.sqlite"]


# -------------------------------------------------------------------------------------------------- the observation
def test_text_written_out():
    two = QueryResult(ok=True, columns=("id", "name", "score"), rows=((1, "ann", 2.5), (2, None, -1)))
    assert two.text() == "id\tname\tscore\n1\tann\t2.5\n2\tNULL\t-1"
    assert two.text(max_rows=1) == "id\tname\tscore\n1\tann\t2.5\n... (more rows not shown)"
    cut = QueryResult(ok=True, columns=("a",), rows=((1,), (2,)), truncated=True)
    assert cut.text() == "a\n1\n2\n... (more rows not shown)"
    assert QueryResult(ok=True, columns=("a",)).text() == "Query executed successfully. No results returned."
    assert QueryResult(ok=True).text() == "Query executed successfully. No results returned."
    err = QueryResult(ok=False, error='SQLite error: near "SELEC": syntax error', kind="syntax")
    assert err.text() == 'Error: SQLite error: near "SELEC": syntax error'


def test_text_of_executed_queries(sb):
    res = sb.execute("SELECT id, name, note FROM emp WHERE id IN (3, 4) ORDER BY id")
    assert res.ok and not res.truncated
    assert res.text() == "id\tname\tnote\n3\temp3\tnote 3\n4\temp4\tNULL"
    res = sb.execute("SELECT a, b FROM t ORDER BY a", max_rows=3)
    assert res.ok and res.truncated and res.rows == ((1, "b1"), (2, "b2"), (3, "b3"))
    assert res.text() == "a\tb\n1\tb1\n2\tb2\n3\tb3\n... (more rows not shown)"
    assert res.text(max_rows=2) == "a\tb\n1\tb1\n2\tb2\n... (more rows not shown)"
    exact = sb.execute("SELECT a FROM t WHERE a <= 3 ORDER BY a", max_rows=3)
    assert exact.ok and not exact.truncated and exact.text() == "a\n1\n2\n3"
    assert sb.execute("SELECT * FROM emp WHERE id < 0").text() == "Query executed successfully. No results returned."
    zero = sb.execute("SELECT a FROM t", max_rows=0)
    assert zero.ok and zero.rows == () and zero.truncated


# ------------------------------------------------------------------------------------------------------- threads
def test_concurrent_execute_from_threads(sb, db):
    digest = file_digest(db)
    by_dept = {d: (sum(1 for r in _emp_rows() if r[2] == d), min(r[0] for r in _emp_rows() if r[2] == d))
               for d, _ in DEPTS}
    errors: list = []
    barrier = threading.Barrier(4)

    def worker(k: int):
        try:
            barrier.wait()
            for i in range(40):
                d = 1 + (k + i) % 4
                res = sb.execute(f"SELECT count(*), min(id) FROM emp WHERE dept_id = {d}")
                assert res.ok and res.rows == (by_dept[d],), res
                res = sb.execute(f"SELECT b FROM t WHERE a = {k * 50 + i + 1}")
                assert res.rows == ((f"b{k * 50 + i + 1}",),), res
                if i == 3 * k:  # one error and one timeout per thread, between the good queries
                    assert sb.execute("SELECT * FROM nope").kind == "sqlite"
                    assert sb.execute("SELECT COUNT(*) FROM t a, t b, t c").kind == "timeout"
        except BaseException as e:  # noqa: BLE001 -- reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not any(th.is_alive() for th in threads)
    assert errors == []
    _assert_untouched(db, digest)
