"""Seeded SQLite databases and templated questions for the TRUST-SQL environment (arXiv 2603.16448).

Each database holds one real table for each of five concepts (customers, products, orders, departments, employees;
fixed columns, declared foreign keys) and a majority of distractor tables: stale copies of the concepts (a strict
subset of the rows, some values perturbed) under noisy names -- a concept synonym with a mark such as ``_bak`` or
``tmp_`` -- and unrelated operational tables (``audit_log``, ``etl_jobs``, ...).  A concept's real table is one of
its synonyms, unmarked, drawn per database, so an agent that is not shown the schema has to explore to find it; the
names stay regular (fixed columns, few synonyms and marks) because the policy that learns this is tiny.

Questions come from seven templates over one or two real tables; they name concepts by their canonical plural
(``customers``), never by the database's table name, and quote literal values as stored.  Gold SQL is in one
canonical style (``SELECT COUNT(*) FROM clients WHERE city = 'Berlin'``; joins as ``... FROM a AS T1 JOIN b AS T2 ON
T1.x = T2.y WHERE T2.c = v``) and returns a non-empty, informative result on its database.  Everything derives from
the seed through ``numpy.random.default_rng``; train and held-out databases are drawn from different seeds.  Files
are cached under one folder per parameter set and written atomically (temporary name, then ``os.replace``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import numpy as np

__all__ = ["SQLTask", "SQLBenchmark", "GENERATOR_VERSION", "TEMPLATES", "SPLITS", "SYNONYMS", "CONCEPT_COLUMNS",
           "NOISE_SUFFIXES", "NOISE_PREFIXES", "UNRELATED_TABLES"]

GENERATOR_VERSION = 1
TEMPLATES = ("count_filter", "list_filter", "aggregate", "group_by", "order_limit", "join_count", "join_list")
SPLITS = ("train", "heldout")
NOISE_SUFFIXES = ("_bak", "_old", "_tmp", "_2019", "_copy", "_archive", "_staging")
NOISE_PREFIXES = ("tmp_", "old_")
ROWS = (20, 80)  # rows per real table (inclusive)
MAX_TABLES = 120
MAX_DBS = 1000  # db ids are <split>_<3 digits>
MAX_QUESTIONS = 512
SMALL_RESULT = 10  # list templates prefer results of at most this many rows


# ----------------------------------------------------------------------------------------------- vocabularies
CITIES = ("Berlin", "Paris", "London", "Madrid", "Rome", "Vienna", "Oslo", "Lisbon", "Prague", "Dublin")
_FIRST = ("Anna", "Ben", "Carla", "David", "Elena", "Felix", "Grace", "Hugo", "Iris", "Jonas", "Karin", "Leo",
          "Maria", "Nils", "Olga", "Paul")
_LAST = ("Adler", "Brandt", "Costa", "Dietz", "Evans", "Fischer", "Garcia", "Hoffmann", "Ivanov", "Jensen")
PEOPLE = tuple(f"{f} {l}" for f in _FIRST for l in _LAST)
PRODUCT_NAMES = tuple(f"{a} {n}" for a in ("Basic", "Deluxe", "Eco", "Mini", "Pro", "Smart", "Classic", "Ultra",
                                            "Compact", "Super")
                      for n in ("Lamp", "Chair", "Kettle", "Radio", "Clock", "Drill", "Guitar", "Backpack", "Camera",
                                "Blender"))
DEPARTMENT_NAMES = tuple(f"{a} {r}" for a in ("Sales", "Marketing", "Finance", "Engineering", "Support", "Legal",
                                               "Research", "Operations", "Logistics", "Purchasing")
                         for r in ("North", "South", "East", "West", "Central", "Pacific", "Atlantic", "Alpine"))
CATEGORIES = ("electronics", "books", "toys", "garden", "sports", "kitchen", "music", "office")
STATUSES = ("pending", "shipped", "delivered", "cancelled", "returned")
TITLES = ("engineer", "analyst", "manager", "clerk", "designer", "technician")


@dataclass(frozen=True)
class _Col:
    name: str
    type: str  # SQLite type: INTEGER / TEXT / REAL
    role: str  # pk | label | cat | year | measure | fk
    values: tuple = ()  # label / cat vocabulary
    lo: float = 0
    hi: float = 0
    step: float = 1  # measure / year grid: lo, lo + step, ..., hi
    unique: bool = False  # measure values distinct within the table (ORDER BY ... LIMIT has no ties)
    ref: str = ""  # fk: the referenced concept

    def ddl(self, real: dict[str, str]) -> str:
        if self.role == "pk":
            return f"{self.name} INTEGER PRIMARY KEY"
        if self.role == "fk":
            return f"{self.name} INTEGER REFERENCES {real[self.ref]}(id)"
        return f"{self.name} {self.type}"


@dataclass(frozen=True)
class _Concept:
    name: str  # canonical plural, the word questions use
    singular: str
    synonyms: tuple
    columns: tuple
    label: str  # the column list / top-k questions select

    def col(self, name: str) -> _Col:
        return next(c for c in self.columns if c.name == name)

    @property
    def filters(self) -> list[str]:
        return [c.name for c in self.columns if c.role in ("cat", "year")]

    @property
    def measures(self) -> list[str]:
        return [c.name for c in self.columns if c.role == "measure"]

    @property
    def ranked(self) -> list[str]:
        return [c.name for c in self.columns if c.role == "measure" and c.unique]


_ID = _Col("id", "INTEGER", "pk")
_CONCEPTS: tuple[_Concept, ...] = (
    _Concept("customers", "customer", ("customers", "clients", "customer_accounts"), (
        _ID, _Col("name", "TEXT", "label", PEOPLE), _Col("city", "TEXT", "cat", CITIES),
        _Col("signup_year", "INTEGER", "year", lo=2015, hi=2024),
        _Col("credit_limit", "REAL", "measure", lo=500, hi=20000, step=50, unique=True)), "name"),
    _Concept("products", "product", ("products", "items", "catalog_items"), (
        _ID, _Col("name", "TEXT", "label", PRODUCT_NAMES), _Col("category", "TEXT", "cat", CATEGORIES),
        _Col("price", "REAL", "measure", lo=1, hi=999.99, step=0.01, unique=True),
        _Col("stock", "INTEGER", "measure", lo=0, hi=500)), "name"),
    _Concept("departments", "department", ("departments", "divisions", "business_units"), (
        _ID, _Col("name", "TEXT", "label", DEPARTMENT_NAMES), _Col("city", "TEXT", "cat", CITIES),
        _Col("budget", "REAL", "measure", lo=50000, hi=2000000, step=1000, unique=True)), "name"),
    _Concept("orders", "order", ("orders", "purchases", "sales_orders"), (
        _ID, _Col("customer_id", "INTEGER", "fk", ref="customers"), _Col("product_id", "INTEGER", "fk", ref="products"),
        _Col("status", "TEXT", "cat", STATUSES), _Col("quantity", "INTEGER", "measure", lo=1, hi=10),
        _Col("amount", "REAL", "measure", lo=5, hi=5000, step=0.01, unique=True),
        _Col("order_year", "INTEGER", "year", lo=2018, hi=2024)), "id"),
    _Concept("employees", "employee", ("employees", "staff", "personnel"), (
        _ID, _Col("name", "TEXT", "label", PEOPLE), _Col("department_id", "INTEGER", "fk", ref="departments"),
        _Col("title", "TEXT", "cat", TITLES),
        _Col("salary", "REAL", "measure", lo=30000, hi=150000, step=100, unique=True),
        _Col("hire_year", "INTEGER", "year", lo=2010, hi=2024)), "name"),
)  # parents before children
_BY_NAME = {c.name: c for c in _CONCEPTS}
# (child, fk column, parent, how the child relates to the parent in a question)
_FKS = (("orders", "customer_id", "customers", "were placed by"), ("orders", "product_id", "products", "include"),
        ("employees", "department_id", "departments", "work in"))

SYNONYMS: dict[str, tuple[str, ...]] = {c.name: c.synonyms for c in _CONCEPTS}
CONCEPT_COLUMNS: dict[str, tuple[str, ...]] = {c.name: tuple(col.name for col in c.columns) for c in _CONCEPTS}


def _cat(name, values):
    return _Col(name, "TEXT", "cat", tuple(values))


def _int(name, lo, hi):
    return _Col(name, "INTEGER", "measure", lo=lo, hi=hi)


def _real(name, lo, hi):
    return _Col(name, "REAL", "measure", lo=lo, hi=hi, step=0.01)


_UNRELATED: dict[str, tuple[_Col, ...]] = {
    "audit_log": (_cat("event", ("login", "logout", "update", "delete", "export")),
                  _cat("actor", ("admin", "system", "etl", "api")), _int("event_year", 2018, 2024)),
    "etl_jobs": (_cat("job_name", ("load_orders", "sync_clients", "nightly_backup", "refresh_stats")),
                 _cat("status", ("ok", "failed", "running")), _real("duration", 1, 600)),
    "app_settings": (_cat("setting", ("theme", "locale", "timezone", "page_size", "currency")),
                     _cat("value", ("dark", "light", "en", "de", "UTC", "50", "EUR"))),
    "schema_migrations": (_int("version", 1, 60), _int("applied_year", 2016, 2024)),
    "user_sessions": (_cat("user_name", PEOPLE), _cat("city", CITIES), _real("duration", 1, 240)),
    "error_events": (_int("code", 400, 599), _cat("message", ("timeout", "not found", "bad request", "conflict")),
                     _cat("service", ("api", "web", "worker"))),
    "feature_flags": (_cat("flag", ("new_checkout", "beta_search", "dark_mode", "fast_export")),
                      _int("enabled", 0, 1)),
    "job_queue": (_cat("task", ("send_mail", "rebuild_index", "resize_images", "purge_cache")),
                  _int("priority", 1, 5), _cat("status", ("queued", "running", "done", "failed"))),
    "notifications": (_cat("channel", ("email", "sms", "push")), _cat("status", ("sent", "failed", "queued")),
                      _int("sent_year", 2019, 2024)),
    "report_runs": (_cat("report", ("monthly_sales", "churn", "inventory", "payroll")), _int("rows_out", 0, 5000),
                    _real("runtime", 0.5, 90)),
    "system_metrics": (_cat("metric", ("cpu", "memory", "disk", "latency")), _real("value", 0, 100),
                       _cat("host", ("db1", "db2", "web1", "web2"))),
    "login_attempts": (_cat("user_name", PEOPLE), _int("success", 0, 1), _int("attempt_year", 2019, 2024)),
    "email_templates": (_cat("template_name", ("welcome", "reset_password", "invoice", "newsletter")),
                        _cat("language", ("en", "de", "fr", "es"))),
    "cache_entries": (_cat("cache_key", ("home", "search", "cart", "profile", "catalog")), _int("hits", 0, 1000),
                      _real("size_kb", 0.1, 512)),
    "import_batches": (_cat("source", ("csv", "api", "sftp")), _cat("status", ("ok", "failed", "partial")),
                       _int("rows_in", 0, 10000)),
}
UNRELATED_TABLES: tuple[str, ...] = tuple(_UNRELATED)
_COPY_NAMES: dict[str, tuple[str, ...]] = {
    c.name: tuple(sorted([s + m for s in c.synonyms for m in NOISE_SUFFIXES]
                         + [m + s for s in c.synonyms for m in NOISE_PREFIXES])) for c in _CONCEPTS}
_MIN_TABLES = 2 * len(_CONCEPTS) + 1  # the real tables plus a strict majority of distractors
_MAX_DISTRACTORS = sum(len(v) for v in _COPY_NAMES.values()) + len(_UNRELATED)
assert MAX_TABLES - len(_CONCEPTS) <= _MAX_DISTRACTORS


# ----------------------------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class SQLTask:
    """One question over one generated database.

    ``gold_schema`` is ``{"tables": [...], "columns": {table: [...]}}``: every real table and column the gold SQL
    references (join keys included; ``COUNT(*)`` references no column), lists sorted."""

    db_id: str
    db_path: str
    question: str
    gold_sql: str
    gold_schema: dict
    template: str

    def __hash__(self) -> int:  # gold_schema is a dict; it is determined by the SQL
        return hash((self.db_id, self.db_path, self.question, self.gold_sql, self.template))

    def to_dict(self) -> dict:
        return {"db_id": self.db_id, "db_path": self.db_path, "question": self.question, "gold_sql": self.gold_sql,
                "gold_schema": _copy_schema(self.gold_schema), "template": self.template}

    @classmethod
    def from_dict(cls, d: dict) -> "SQLTask":
        if not isinstance(d, dict):
            raise TypeError(f"SQLTask.from_dict: `d` must be a dict; got {type(d).__name__}")
        keys = ("db_id", "db_path", "question", "gold_sql", "gold_schema", "template")
        missing = [k for k in keys if k not in d]
        if missing:
            raise ValueError(f"SQLTask.from_dict: missing keys {missing}")
        return cls(**{k: (_copy_schema(d[k]) if k == "gold_schema" else d[k]) for k in keys})


def _copy_schema(s: dict) -> dict:
    return {"tables": list(s.get("tables", [])), "columns": {t: list(c) for t, c in s.get("columns", {}).items()}}


def _schema(cols: dict[str, set]) -> dict:
    return {"tables": sorted(cols), "columns": {t: sorted(cols[t]) for t in sorted(cols)}}


# ----------------------------------------------------------------------------------------------- rows
def _grid(col: _Col) -> int:
    return int(round((col.hi - col.lo) / col.step)) + 1


def _grid_value(col: _Col, k: int):
    v = col.lo + int(k) * col.step
    return round(float(v), 2) if col.type == "REAL" else int(round(v))


def _column(col: _Col, n: int, rng: np.random.Generator, parents: dict[str, int]) -> list:
    if col.role == "pk":
        return list(range(1, n + 1))
    if col.role == "label":
        return [col.values[int(i)] for i in rng.choice(len(col.values), size=n, replace=False)]
    if col.role == "cat":
        return [col.values[int(i)] for i in rng.integers(0, len(col.values), size=n)]
    if col.role == "fk":
        return [int(i) for i in rng.integers(1, parents[col.ref] + 1, size=n)]
    return [_grid_value(col, k) for k in rng.choice(_grid(col), size=n, replace=not col.unique)]  # year / measure


def _rows(columns: tuple, n: int, rng: np.random.Generator, parents: dict[str, int]) -> list[tuple]:
    return list(zip(*[_column(c, n, rng, parents) for c in columns]))


def _redraw(col: _Col, old, rng: np.random.Generator, taken: set):
    """A value of ``col`` other than ``old`` (and, for a unique column, not in ``taken``)."""
    for _ in range(1000):
        if col.role == "cat":
            v = col.values[int(rng.integers(len(col.values)))]
        else:
            v = _grid_value(col, int(rng.integers(_grid(col))))
        if v != old and not (col.unique and v in taken):
            return v
    return old


def _stale_copy(concept: _Concept, rows: list[tuple], rng: np.random.Generator) -> list[tuple]:
    """A strict subset of ``rows`` (50-95 %) with about a quarter of the kept rows changed in one value; ids and
    foreign keys are kept, so the copy's references stay valid."""
    n = len(rows)
    keep = sorted(int(i) for i in rng.choice(n, size=int(rng.integers(n // 2, n)), replace=False))
    out = [list(rows[i]) for i in keep]
    editable = [j for j, c in enumerate(concept.columns) if c.role in ("cat", "year", "measure")]
    for r in out:
        if rng.random() < 0.25:
            j = editable[int(rng.integers(len(editable)))]
            r[j] = _redraw(concept.columns[j], r[j], rng, {x[j] for x in out})
    return [tuple(r) for r in out]


# ----------------------------------------------------------------------------------------------- one database
def _draw_layout(rng: np.random.Generator, n_tables: int) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """The real table name of each concept and the distractors as ``(name, kind, concept)``, kind ``copy`` or
    ``unrelated``.  Every concept gets at least one copy; further distractors are unrelated with probability 0.3."""
    real = {c.name: c.synonyms[int(rng.integers(len(c.synonyms)))] for c in _CONCEPTS}
    free = {c: list(names) for c, names in _COPY_NAMES.items()}
    unrelated = list(UNRELATED_TABLES)
    out: list[tuple[str, str, str]] = []

    def take(pool: list) -> str:
        return pool.pop(int(rng.integers(len(pool))))

    for c in _CONCEPTS:
        out.append((take(free[c.name]), "copy", c.name))
    while len(out) < n_tables - len(_CONCEPTS):
        copies = [(name, c) for c in free for name in free[c]]
        if unrelated and (not copies or rng.random() < 0.3):
            name = take(unrelated)
            out.append((name, "unrelated", ""))
        else:
            name, c = copies[int(rng.integers(len(copies)))]
            free[c].remove(name)
            out.append((name, "copy", c))
    return real, out


def _lit(v) -> str:
    return "'" + v.replace("'", "''") + "'" if isinstance(v, str) else str(v)


def _words(col: str) -> str:
    return col.replace("_", " ")


def _informative(rows: list) -> bool:
    """Non-empty, and not a single row of NULL / 0 (an empty aggregate or a zero count)."""
    return bool(rows) and not (len(rows) == 1 and all(v is None or v == 0 for v in rows[0]))


@dataclass(frozen=True)
class _Cand:
    template: str
    question: str
    sql: str
    schema: dict


def _candidates(conn: sqlite3.Connection, real: dict[str, str]) -> dict[str, list[_Cand]]:
    """Every question each template can ask on this database (values drawn from the real tables' data)."""

    def distinct(concept: str, col: str) -> list:
        return [r[0] for r in conn.execute(f"SELECT DISTINCT {col} FROM {real[concept]} ORDER BY {col}")]

    fn_words = (("AVG", "average"), ("SUM", "total"), ("MAX", "maximum"), ("MIN", "minimum"))
    out: dict[str, list[_Cand]] = {t: [] for t in TEMPLATES}
    for c in _CONCEPTS:
        t, p, lab = real[c.name], c.name, c.label
        for f in c.filters:
            for v in distinct(c.name, f):
                w, x = _words(f), _lit(v)
                out["count_filter"].append(_Cand("count_filter", f"How many {p} have {w} {x}?",
                                                 f"SELECT COUNT(*) FROM {t} WHERE {f} = {x}", _schema({t: {f}})))
                out["list_filter"].append(_Cand("list_filter", f"List the {lab}s of {p} with {w} {x}.",
                                                f"SELECT {lab} FROM {t} WHERE {f} = {x}", _schema({t: {lab, f}})))
                for m in c.measures:
                    for fn, fw in fn_words:
                        out["aggregate"].append(_Cand(
                            "aggregate", f"What is the {fw} {_words(m)} of {p} with {w} {x}?",
                            f"SELECT {fn}({m}) FROM {t} WHERE {f} = {x}", _schema({t: {m, f}})))
            out["group_by"].append(_Cand("group_by", f"How many {p} are there for each {_words(f)}?",
                                         f"SELECT {f}, COUNT(*) FROM {t} GROUP BY {f}", _schema({t: {f}})))
        for m in c.ranked:
            for direction, word in (("DESC", "highest"), ("ASC", "lowest")):
                for k in (1, 3, 5):
                    q = (f"What is the {lab} of the {c.singular} with the {word} {_words(m)}?" if k == 1 else
                         f"List the {lab}s of the {k} {p} with the {word} {_words(m)}.")
                    out["order_limit"].append(_Cand("order_limit", q,
                                                    f"SELECT {lab} FROM {t} ORDER BY {m} {direction} LIMIT {k}",
                                                    _schema({t: {lab, m}})))
    for child, fk, parent, link in _FKS:
        ct, pt = real[child], real[parent]
        cl, pl = _BY_NAME[child].label, _BY_NAME[parent].label
        for f in _BY_NAME[parent].filters:  # filter on the parent
            for v in distinct(parent, f):
                w, x = _words(f), _lit(v)
                join = f"FROM {ct} AS T1 JOIN {pt} AS T2 ON T1.{fk} = T2.id WHERE T2.{f} = {x}"
                out["join_count"].append(_Cand("join_count", f"How many {child} {link} {parent} with {w} {x}?",
                                               f"SELECT COUNT(*) {join}", _schema({ct: {fk}, pt: {"id", f}})))
                out["join_list"].append(_Cand(
                    "join_list", f"List the {cl}s of {child} that {link} {parent} with {w} {x}.",
                    f"SELECT T1.{cl} {join}", _schema({ct: {cl, fk}, pt: {"id", f}})))
        for f in _BY_NAME[child].filters:  # filter on the child
            for v in distinct(child, f):
                w, x = _words(f), _lit(v)
                out["join_list"].append(_Cand(
                    "join_list", f"List the {pl}s of {parent} that have {child} with {w} {x}.",
                    f"SELECT T1.{pl} FROM {pt} AS T1 JOIN {ct} AS T2 ON T1.id = T2.{fk} WHERE T2.{f} = {x}",
                    _schema({pt: {pl, "id"}, ct: {fk, f}})))
    return out


def _pool(conn: sqlite3.Connection, cands: list[_Cand], rng: np.random.Generator) -> Iterator[_Cand]:
    """The candidates in a random order, those whose gold SQL is not informative dropped; list templates first
    yield the ones with at most :data:`SMALL_RESULT` rows."""
    small_first = bool(cands) and cands[0].template in ("list_filter", "join_list")
    deferred = []
    for i in rng.permutation(len(cands)):
        c = cands[int(i)]
        rows = conn.execute(c.sql).fetchall()
        if not _informative(rows):
            continue
        if small_first and len(rows) > SMALL_RESULT:
            deferred.append(c)
            continue
        yield c
    yield from deferred


def _questions(conn: sqlite3.Connection, real: dict[str, str], rng: np.random.Generator, n: int,
               db_id: str) -> list[_Cand]:
    cands = _candidates(conn, real)
    pools = [_pool(conn, cands[t], rng) for t in TEMPLATES]
    out: list[_Cand] = []
    seen: set = set()
    while len(out) < n and pools:
        for pool in list(pools):
            c = next(pool, None)
            while c is not None and (c.question in seen or c.sql in seen):
                c = next(pool, None)
            if c is None:
                pools.remove(pool)
                continue
            seen.update((c.question, c.sql))
            out.append(c)
            if len(out) == n:
                break
    if len(out) < n:
        raise ValueError(f"questions_per_db={n}: database {db_id} supports only {len(out)} distinct questions")
    return out


def _build_db(path: Path, db_id: str, seed_seq: np.random.SeedSequence, tables: tuple[int, int],
              questions_per_db: int) -> dict:
    """Write database ``db_id`` to ``path`` (which must not exist) and return its metadata with its tasks."""
    rng = np.random.default_rng(seed_seq)
    n_tables = int(rng.integers(tables[0], tables[1] + 1))
    real, distractors = _draw_layout(rng, n_tables)
    rows: dict[str, list[tuple]] = {}
    counts: dict[str, int] = {}
    for c in _CONCEPTS:  # parents first: foreign keys draw from existing ids
        counts[c.name] = int(rng.integers(ROWS[0], ROWS[1] + 1))
        rows[c.name] = _rows(c.columns, counts[c.name], rng, counts)
    content: dict[str, tuple[tuple, list[tuple]]] = {real[c.name]: (c.columns, rows[c.name]) for c in _CONCEPTS}
    meta_tables = {real[c.name]: {"kind": "real", "concept": c.name} for c in _CONCEPTS}
    for name, kind, concept in distractors:
        if kind == "copy":
            content[name] = (_BY_NAME[concept].columns, _stale_copy(_BY_NAME[concept], rows[concept], rng))
        else:
            cols = (_ID,) + _UNRELATED[name]
            content[name] = (cols, _rows(cols, int(rng.integers(5, 31)), rng, counts))
        meta_tables[name] = {"kind": kind, "concept": concept}
    order = [list(content)[int(i)] for i in rng.permutation(len(content))]

    conn = sqlite3.connect(str(path))
    try:
        for name in order:
            cols, _ = content[name]
            conn.execute(f"CREATE TABLE {name} ({', '.join(c.ddl(real) for c in cols)})")
        for name in order:
            cols, data = content[name]
            if data:
                conn.executemany(f"INSERT INTO {name} VALUES ({', '.join('?' * len(cols))})", data)
        conn.commit()
        bad = conn.execute("PRAGMA foreign_key_check").fetchall()
        if bad:
            raise RuntimeError(f"dbgen: foreign key violations in {db_id}: {bad[:5]}")
        cands = _questions(conn, real, rng, questions_per_db, db_id)
    finally:
        conn.close()
    return {"generator_version": GENERATOR_VERSION, "db_id": db_id, "real_tables": real, "tables": meta_tables,
            "tasks": [{"question": c.question, "gold_sql": c.sql, "gold_schema": c.schema, "template": c.template}
                      for c in cands]}


# ----------------------------------------------------------------------------------------------- the benchmark
def _default_root() -> Path:
    env = os.environ.get("LCK_CACHE_DIR")
    return (Path(env) if env else Path.home() / ".cache" / "lckernels") / "trust_sql"


def _check_int(name: str, v, lo: int, hi: Optional[int] = None) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"SQLBenchmark: `{name}` must be an int; got {type(v).__name__} {v!r}")
    if v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"SQLBenchmark: `{name}` must be {rng}; got {v!r}")
    return int(v)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _write_json(path: Path, obj: Any) -> None:
    tmp = _tmp_name(path)
    try:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class SQLBenchmark:
    """Generated TRUST-SQL databases and questions, split by database into ``train`` and ``heldout``.

    Args:
        root: folder for the files (``None``: ``$LCK_CACHE_DIR/trust_sql``, else ``~/.cache/lckernels/trust_sql``);
            each parameter set gets its own sub-folder (:attr:`cache_dir`), reused when it is complete.
        n_train_dbs / n_heldout_dbs: databases per split (``train_000``, ..., ``heldout_000``, ...).
        tables: ``(lo, hi)``: each database has between lo and hi tables (inclusive); ``lo >= 11`` so that the five
            real tables are a minority, ``hi <= 120``.
        questions_per_db: tasks per database, round-robin over :data:`TEMPLATES`.
        seed: database ``i`` of a split is drawn from ``SeedSequence([seed, split index, i])``.
    """

    def __init__(self, root: Union[str, os.PathLike, None] = None, *, n_train_dbs: int = 8, n_heldout_dbs: int = 4,
                 tables: tuple[int, int] = (20, 50), questions_per_db: int = 64, seed: int = 0):
        if root is not None and not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"SQLBenchmark: `root` must be a path or None; got {type(root).__name__}")
        n_train_dbs = _check_int("n_train_dbs", n_train_dbs, 0, MAX_DBS)
        n_heldout_dbs = _check_int("n_heldout_dbs", n_heldout_dbs, 0, MAX_DBS)
        questions_per_db = _check_int("questions_per_db", questions_per_db, 1, MAX_QUESTIONS)
        seed = _check_int("seed", seed, 0)
        if (not isinstance(tables, (tuple, list)) or len(tables) != 2
                or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in tables)):
            raise TypeError(f"SQLBenchmark: `tables` must be a (lo, hi) pair of ints; got {tables!r}")
        lo, hi = int(tables[0]), int(tables[1])
        if not 2 <= lo <= hi:
            raise ValueError(f"SQLBenchmark: `tables` must be (lo, hi) with 2 <= lo <= hi; got {tables!r}")
        if lo < _MIN_TABLES:
            raise ValueError(f"SQLBenchmark: `tables` lo must be >= {_MIN_TABLES} (the {len(_CONCEPTS)} concept tables "
                             f"plus a majority of distractors); got {tables!r}")
        if hi > MAX_TABLES:
            raise ValueError(f"SQLBenchmark: `tables` hi must be <= {MAX_TABLES}; got {tables!r}")
        self.params = {"generator_version": GENERATOR_VERSION, "n_train_dbs": n_train_dbs,
                       "n_heldout_dbs": n_heldout_dbs, "tables": [lo, hi], "questions_per_db": questions_per_db,
                       "seed": seed}
        digest = hashlib.sha256(json.dumps(self.params, sort_keys=True).encode()).hexdigest()[:12]
        self.root = (Path(root) if root is not None else _default_root()).expanduser().resolve()
        self.cache_dir = self.root / f"v{GENERATOR_VERSION}-{digest}"
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        if not (self.cache_dir / "params.json").exists():
            _write_json(self.cache_dir / "params.json", self.params)
        self._tasks: dict[str, list[SQLTask]] = {}
        self._paths: dict[str, list[str]] = {}
        self._meta: dict[str, dict] = {}
        self._db_path: dict[str, str] = {}
        for s, (split, n) in enumerate(zip(SPLITS, (n_train_dbs, n_heldout_dbs))):
            self._tasks[split], self._paths[split] = [], []
            for i in range(n):
                db_id = f"{split}_{i:03d}"
                path, meta = self._ensure(db_id, np.random.SeedSequence([seed, s, i]), (lo, hi), questions_per_db)
                self._meta[db_id], self._db_path[db_id] = meta, str(path)
                self._paths[split].append(str(path))
                self._tasks[split] += [SQLTask(db_id=db_id, db_path=str(path), question=t["question"],
                                               gold_sql=t["gold_sql"], gold_schema=_copy_schema(t["gold_schema"]),
                                               template=t["template"]) for t in meta["tasks"]]

    def _ensure(self, db_id: str, seed_seq, tables, questions_per_db) -> tuple[Path, dict]:
        """The database file and metadata of ``db_id``: read when both exist and parse, built otherwise (the db
        first, then its metadata: metadata on disk implies a complete db)."""
        path, meta_path = self.cache_dir / f"{db_id}.sqlite", self.cache_dir / f"{db_id}.json"
        if path.exists() and meta_path.exists():
            try:
                meta = json.loads(meta_path.read_text())
                if meta.get("db_id") == db_id and meta.get("generator_version") == GENERATOR_VERSION:
                    return path, meta
            except (OSError, ValueError):
                pass
        tmp = _tmp_name(path)
        try:
            meta = _build_db(tmp, db_id, seed_seq, tables, questions_per_db)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
            Path(str(tmp) + "-journal").unlink(missing_ok=True)
        _write_json(meta_path, meta)
        return path, meta

    def _split(self, split: str) -> str:
        if split not in SPLITS:
            raise ValueError(f"SQLBenchmark: `split` must be one of {SPLITS}; got {split!r}")
        return split

    def tasks(self, split: str) -> list[SQLTask]:
        """The tasks of ``split`` (``"train"`` or ``"heldout"``), database by database."""
        return list(self._tasks[self._split(split)])

    def databases(self, split: str) -> list[str]:
        """The database paths of ``split``."""
        return list(self._paths[self._split(split)])

    def table_names(self, db_id: str) -> list[str]:
        """The tables of database ``db_id``, sorted (read from the file)."""
        if db_id not in self._db_path:
            raise ValueError(f"SQLBenchmark: unknown `db_id` {db_id!r}; have {sorted(self._db_path)}")
        conn = sqlite3.connect(Path(self._db_path[db_id]).as_uri() + "?mode=ro", uri=True)
        try:
            return [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        finally:
            conn.close()

    def _real_tables(self, db_id: str) -> dict[str, str]:
        """Concept -> real table name of ``db_id`` (from the metadata)."""
        return dict(self._meta[db_id]["real_tables"])

    def concept_of(self, db_id: str, table: str) -> str | None:
        """The concept (e.g. ``"orders"``) whose real table in ``db_id`` is ``table``; ``None`` for a distractor."""
        return next((c for c, t in self._meta[db_id]["real_tables"].items() if t == table), None)
