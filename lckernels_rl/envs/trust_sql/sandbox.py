"""The SQL sandbox of ``trust_sql``: arbitrary SQL from a policy against a SQLite file that stays byte-identical.

Writes are impossible rather than refused by a string check; the layers, outermost first:

* a courtesy check: the statement (after leading whitespace and comments) must start with ``SELECT``, ``PRAGMA`` or
  ``EXPLAIN`` (the public TRUST-SQL code's ``ALLOWED_SQL_PREFIXES``), else kind ``"not_read_only"``;
* the file is opened ``file:<path>?mode=ro`` (SQLite cannot write it, nor create it or a journal next to it) with
  ``PRAGMA query_only=1``, extension loading off and ``SQLITE_LIMIT_ATTACHED = 0`` (``ATTACH`` and ``VACUUM INTO``,
  which would otherwise create files even from a read-only connection, fail);
* an authorizer that allows only reads (``SQLITE_SELECT``, ``SQLITE_READ``, ``SQLITE_RECURSIVE``), functions not in
  :data:`DENIED_FUNCTIONS`, and the pragmas in :attr:`SQLSandbox.READ_PRAGMAS` (decided by the pragma's name); every
  other action (``INSERT``/``UPDATE``/``DELETE``, ``CREATE_*``/``DROP_*``, ``ALTER_TABLE``, ``ATTACH``/``DETACH``,
  ``TRANSACTION``, ``SAVEPOINT``, ``ANALYZE``, ``REINDEX``, ``CREATE_VTABLE``, any other pragma) is denied at prepare
  time, so it is never run -- not even compiled by ``EXPLAIN``;
* one statement per call (SQLite's own parser decides; a ``;`` inside a string literal is fine);
* a progress handler that aborts a statement after ``max_steps`` virtual-machine steps or ``time_limit_s`` seconds,
  counted over the statement's execution and the fetch of its rows (at most ``max_rows + 1`` rows are fetched), and a
  cap of :data:`MAX_VALUE_BYTES` on any string or blob (``zeroblob(2e9)`` is an error, not 2 GB of memory).

Everything the policy can type comes back as a :class:`QueryResult` (``ok=False`` with a ``kind`` and a message);
only programming errors (a non-``str`` query, a bad ``max_rows``, a closed sandbox) raise.

SQLite quirk handled at open time: the first use on a connection of a virtual table (the table-valued pragmas such
as ``pragma_table_info('t')``, ``json_each``, FTS tables declared in the file) makes SQLite run the authorizer for an
internal ``UPDATE`` of ``sqlite_master`` columns (seen on SQLite 3.40), which the authorizer denies.  The sandbox
therefore touches those virtual tables once before installing the authorizer; a virtual table not warmed that way
is denied, never written.  FTS5 queries stay denied even when warmed: FTS5 runs ``PRAGMA data_version`` itself on
every query, and that pragma is not in ``READ_PRAGMAS``.  ``EXPLAIN VACUUM [INTO ...]`` compiles (VACUUM has no
authorizer action at prepare time) but EXPLAIN only lists the program; run, its internal ATTACH is denied and fails
the ATTACH limit.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import os
import re
import sqlite3
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Optional

__all__ = ["QueryResult", "SQLSandbox", "file_digest", "DENIED_FUNCTIONS", "MAX_VALUE_BYTES", "KINDS"]

#: the ``kind`` of a failed :class:`QueryResult`
KINDS = ("syntax", "denied", "not_read_only", "multiple_statements", "timeout", "empty", "sqlite")

#: SQL functions the authorizer denies: they touch files, load code or expose engine pointers
#: (``fts3_tokenizer`` returns/accepts a C pointer in builds with ``ENABLE_FTS3_TOKENIZER``, such as CPython's).
DENIED_FUNCTIONS = frozenset({
    "load_extension", "readfile", "writefile", "edit", "fts3_tokenizer", "zipfile", "fts5",
    "sqlite_attach", "sqlite_detach",
})

#: SQLITE_LIMIT_LENGTH of a sandbox connection: the largest string or blob a query may produce or read (bytes)
MAX_VALUE_BYTES = 10_000_000

# authorizer action codes (sqlite3.h; stable across versions)
_ACTIONS = {
    0: "COPY", 1: "CREATE_INDEX", 2: "CREATE_TABLE", 3: "CREATE_TEMP_INDEX", 4: "CREATE_TEMP_TABLE",
    5: "CREATE_TEMP_TRIGGER", 6: "CREATE_TEMP_VIEW", 7: "CREATE_TRIGGER", 8: "CREATE_VIEW", 9: "DELETE",
    10: "DROP_INDEX", 11: "DROP_TABLE", 12: "DROP_TEMP_INDEX", 13: "DROP_TEMP_TABLE", 14: "DROP_TEMP_TRIGGER",
    15: "DROP_TEMP_VIEW", 16: "DROP_TRIGGER", 17: "DROP_VIEW", 18: "INSERT", 19: "PRAGMA", 20: "READ",
    21: "SELECT", 22: "TRANSACTION", 23: "UPDATE", 24: "ATTACH", 25: "DETACH", 26: "ALTER_TABLE", 27: "REINDEX",
    28: "ANALYZE", 29: "CREATE_VTABLE", 30: "DROP_VTABLE", 31: "FUNCTION", 32: "SAVEPOINT", 33: "RECURSIVE",
}
_READ, _SELECT, _RECURSIVE, _FUNCTION, _PRAGMA = 20, 21, 33, 31, 19
_DML = (9, 18, 23)  # DELETE, INSERT, UPDATE: arg1 is the table
_OK, _DENY = sqlite3.SQLITE_OK, sqlite3.SQLITE_DENY

_SQL_SPACE = " \t\n\f\r"
_FIRST_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MULTI = "one statement at a time"


def file_digest(path) -> str:
    """The SHA-256 (hex) of the bytes of the file at ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cell(v) -> str:
    return "NULL" if v is None else str(v)


@dataclass(frozen=True)
class QueryResult:
    """The outcome of :meth:`SQLSandbox.execute`.

    ``ok``: the statement ran; ``columns`` / ``rows``: its result (at most the ``max_rows`` asked for);
    ``truncated``: more rows existed than returned.  When not ``ok``: ``kind`` (one of :data:`KINDS`) and ``error``
    (a message starting with the kind, or ``"SQLite error: "`` followed by SQLite's own message for kinds ``syntax``
    and ``sqlite``).
    """

    ok: bool
    columns: tuple[str, ...] = ()
    rows: tuple[tuple, ...] = ()
    truncated: bool = False
    error: Optional[str] = None
    kind: Optional[str] = None

    def text(self, max_rows: int = 100) -> str:
        """The observation the agent sees: ``"Error: " + error``; or a tab-separated header line and up to
        ``max_rows`` rows (``None`` shown as ``NULL``), then ``... (more rows not shown)`` when rows were cut or the
        result was truncated; ``Query executed successfully. No results returned.`` for an empty result."""
        if not self.ok:
            return f"Error: {self.error}"
        if not self.rows and not self.truncated:
            return "Query executed successfully. No results returned."
        shown = self.rows[:max(int(max_rows), 0)]
        lines = ["\t".join(self.columns)]
        lines += ["\t".join(_cell(v) for v in row) for row in shown]
        if self.truncated or len(self.rows) > len(shown):
            lines.append("... (more rows not shown)")
        return "\n".join(lines)


def _fail(kind: str, error: str) -> QueryResult:
    return QueryResult(ok=False, error=error, kind=kind)


def _strip_leading(sql: str) -> str:
    """``sql`` without leading whitespace, ``--`` / ``/* */`` comments and empty statements (``;``)."""
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in _SQL_SPACE or c == ";":
            i += 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i + 2)
            i = n if j < 0 else j + 1
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            i = n if j < 0 else j + 2
        else:
            break
    return sql[i:]


def _decode_text(b: bytes) -> str:
    # a policy can make invalid UTF-8 text (CAST(x'ff' AS TEXT)); show U+FFFD instead of failing the fetch
    return b.decode("utf-8", "replace")


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


class SQLSandbox:
    """Read-only, limited execution of untrusted SQL against one SQLite file.

    Args:
        db_path: an existing SQLite file (never created).
        max_steps: virtual-machine steps a statement may take (execution and fetch together).
        time_limit_s: seconds a statement may take (execution and fetch together).
        progress_every: steps between two checks of the limits (the limits are enforced to this granularity).

    Thread-safe: calls are serialized by a lock.  A context manager; :meth:`close` is idempotent.

    Example:
        >>> with SQLSandbox("db.sqlite", time_limit_s=1.0) as sb:       # doctest: +SKIP
        ...     print(sb.execute("SELECT name FROM sqlite_master", max_rows=5).text())
    """

    ALLOWED_PREFIXES = ("SELECT", "PRAGMA", "EXPLAIN")
    READ_PRAGMAS = frozenset({"table_info", "table_xinfo", "foreign_key_list", "index_list", "index_info",
                              "index_xinfo", "table_list"})
    # eponymous virtual tables touched before the authorizer is installed (see the module docstring)
    _WARM_VTABS = ("json_each('[]')", "json_tree('[]')")

    def __init__(self, db_path, *, max_steps: int = 2_000_000, time_limit_s: float = 2.0,
                 progress_every: int = 1000):
        if not isinstance(db_path, (str, os.PathLike)):
            raise TypeError(f"db_path must be a str or os.PathLike, got {type(db_path).__name__}")
        self.max_steps = _check_int("max_steps", max_steps, 1)
        self.progress_every = _check_int("progress_every", progress_every, 1)
        if isinstance(time_limit_s, bool) or not isinstance(time_limit_s, numbers.Real):
            raise TypeError(f"time_limit_s must be a number, got {type(time_limit_s).__name__}")
        if not (math.isfinite(time_limit_s) and time_limit_s > 0):
            raise ValueError(f"time_limit_s must be a finite number > 0, got {time_limit_s}")
        self.time_limit_s = float(time_limit_s)
        path = os.path.abspath(os.fspath(db_path))
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not os.path.exists(path):
            raise FileNotFoundError(2, "no such SQLite database (the sandbox never creates one)", path)
        if not os.path.isfile(path):
            raise ValueError(f"db_path must be a SQLite file, got {path!r} (not a regular file)")
        self.db_path = path

        self._lock = threading.Lock()
        self._steps = 0
        self._deadline: Optional[float] = None
        self._aborted = False
        self._denied: Optional[str] = None
        self._conn: Optional[sqlite3.Connection] = None

        uri = "file:" + urllib.parse.quote(path, safe="/") + "?mode=ro"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        try:
            self._harden(conn)
        except sqlite3.DatabaseError as e:
            conn.close()
            raise ValueError(f"db_path {path!r} could not be opened as a SQLite database: {e}") from e
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    # ------------------------------------------------------------------ setup
    def _harden(self, conn: sqlite3.Connection) -> None:
        conn.text_factory = _decode_text
        if hasattr(conn, "enable_load_extension"):
            conn.enable_load_extension(False)
        if hasattr(conn, "setlimit"):  # Python >= 3.11
            conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
            conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
        conn.execute("PRAGMA query_only = 1").close()
        # reads the schema: a file that is not a database fails here (sqlite3.DatabaseError)
        vtabs = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND sql LIKE 'CREATE VIRTUAL TABLE%'")]
        warm = [f"pragma_{p}('')" for p in sorted(self.READ_PRAGMAS)] + list(self._WARM_VTABS)
        warm += ['"' + v.replace('"', '""') + '"' for v in vtabs]
        for src in warm:
            try:
                conn.execute(f"SELECT * FROM {src} LIMIT 0").close()
            except sqlite3.Error:
                pass  # a module missing from this build, a pragma SQLite does not have: then it stays unusable
        conn.set_authorizer(self._authorize)
        conn.set_progress_handler(self._progress, self.progress_every)

    def _deny(self, what: str) -> int:
        if self._denied is None:
            self._denied = what
        return _DENY

    def _authorize(self, action, arg1, arg2, dbname, source):
        if action in (_SELECT, _READ, _RECURSIVE):
            return _OK
        if action == _FUNCTION:
            name = (arg2 or "").lower()
            return self._deny(f"function {name}()") if name in DENIED_FUNCTIONS else _OK
        if action == _PRAGMA:
            # for PRAGMA table_info(t), arg1 is the pragma's name and arg2 its argument "t": decide by the name
            name = (arg1 or "").lower()
            return _OK if name in self.READ_PRAGMAS else self._deny(f"PRAGMA {name}")
        what = _ACTIONS.get(action, f"action {action}")
        if action in _DML and arg1:
            what += f" on {arg1}"
        return self._deny(what)

    def _progress(self) -> int:
        self._steps += self.progress_every
        if self._steps > self.max_steps or (self._deadline is not None and time.monotonic() > self._deadline):
            self._aborted = True
            return 1
        return 0

    # ------------------------------------------------------------------ queries
    def execute(self, sql: str, *, max_rows: int = 100) -> QueryResult:
        """Run one read-only statement; at most ``max_rows`` rows come back (``truncated`` when more existed).

        Never raises for anything in ``sql``; ``TypeError`` when ``sql`` is not a ``str``, ``TypeError`` /
        ``ValueError`` for a bad ``max_rows``, ``RuntimeError`` after :meth:`close`.
        """
        if not isinstance(sql, str):
            raise TypeError(f"sql must be a str, got {type(sql).__name__}")
        max_rows = _check_int("max_rows", max_rows, 0)
        body = _strip_leading(sql).rstrip(_SQL_SPACE + ";")
        if not body:
            return _fail("empty", "empty: the query is empty (nothing but whitespace, comments or ';')")
        m = _FIRST_WORD.match(body)
        word = m.group(0) if m else body.split(None, 1)[0][:32]
        if word.upper() not in self.ALLOWED_PREFIXES:
            return _fail("not_read_only", f"not_read_only: only {', '.join(self.ALLOWED_PREFIXES)} statements are "
                                          f"allowed in the sandbox, got {word!r}")
        with self._lock:
            conn = self._conn
            if conn is None:
                raise RuntimeError("SQLSandbox.execute called after close()")
            self._steps, self._aborted, self._denied = 0, False, None
            self._deadline = time.monotonic() + self.time_limit_s
            cur = None
            try:
                cur = conn.cursor()
                cur.execute(body)
                if cur.description is None:
                    return QueryResult(ok=True)
                columns = tuple(d[0] for d in cur.description)
                got = cur.fetchmany(max_rows + 1)
                return QueryResult(ok=True, columns=columns, rows=tuple(tuple(r) for r in got[:max_rows]),
                                   truncated=len(got) > max_rows)
            except (sqlite3.Error, sqlite3.Warning, ValueError) as e:
                return self._error(e)
            finally:
                if cur is not None:
                    try:
                        cur.close()
                    except sqlite3.Error:
                        pass
                self._deadline = None

    def _error(self, e: BaseException) -> QueryResult:
        msg = str(e)
        if self._aborted:
            return _fail("timeout", "timeout: the query exceeded the step/time limit "
                                    f"({self.max_steps} steps, {self.time_limit_s:g} s)")
        if self._denied is not None:
            hint = ""
            if self._denied.startswith("UPDATE on sqlite_"):
                hint = " (SQLite also reports this for a virtual table or table-valued function the sandbox lacks)"
            return _fail("denied", f"denied: {self._denied} is not allowed in the sandbox{hint}")
        if _MULTI in msg:
            return _fail("multiple_statements", "multiple_statements: only one statement at a time is allowed")
        if isinstance(e, UnicodeError):
            return _fail("sqlite", f"SQLite error: the query is not valid UTF-8 text ({msg})")
        return _fail("syntax" if "syntax error" in msg else "sqlite", f"SQLite error: {msg}")

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Close the connection (idempotent); :meth:`execute` raises ``RuntimeError`` afterwards."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    @property
    def closed(self) -> bool:
        return self._conn is None

    def __enter__(self) -> "SQLSandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else "open"
        return (f"SQLSandbox({self.db_path!r}, max_steps={self.max_steps}, time_limit_s={self.time_limit_s:g}, "
                f"{state})")
