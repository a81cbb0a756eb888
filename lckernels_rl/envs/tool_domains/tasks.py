"""Tasks grown from a domain's tool dependency graph (LongCat-Flash-Thinking-2601, arXiv 2601.16725, §3.1.1).

The procedure (INFERRED from third-party summaries of the report -- "solvable-path-first": sample a tool-call chain
as the anchor, fill the database so the chain is executable, then a controlled BFS expansion that keeps the
dependencies consistent; the report text itself and any code were not readable here):

1. **Seed chain.**  A goal tool (a read ``get_<T>``, a write ``set_<T>_<F>`` or ``cancel_<T>``) is drawn with weight
   ``1 / (1 + uses)`` -- tools already used by earlier tasks of the same block are less likely (*preferring unused
   tools*) -- among goals whose chain length is in ``[min_chain, max_chain]`` (a *moderate* chain).  The chain is
   the goal's dependency path: ``find_<root>(name)`` -> ``find_<child>(<root>)`` -> ... -> goal.
2. **State filled so every dependency holds.**  One record per chain table, linked by foreign keys, plus distractor
   records (other people and their own records), so each chain call has exactly one right answer.
3. **The task** = description (the opening user message), user profile (``role``, ``name``, the write's
   ``value``), goal state (the database after the gold actions, and its digest), required outputs (a read's value).
4. **BFS expansion of the environment's tool set.**  From the chain's tools, along graph edges, a tool is added only
   when every table it consumes is instantiated (has records); when the frontier is exhausted below
   ``min_tools`` (20), a table whose parent is instantiated is instantiated (records linked to existing ones) and
   the expansion continues.  A domain that cannot reach ``min_tools`` raises ``ValueError``.

Determinism: task ``k`` of a domain belongs to block ``k // block`` (``block`` tasks generated in sequence from the
seed sequence ``(seed, domain, block)``, sharing the usage counts); equal arguments give equal tasks.

Opening messages (compact, table names reused so forms transfer across domains)::

    customer ana: order eta?          read: the answer is "done 20"
    customer ana: order parcel size=l write
    guest bo: trip cancel             cancel
"""

from __future__ import annotations

import copy
import functools
import zlib
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from .domains import NAMES, Domain, canonical_digest, get_domain

__all__ = ["Task", "TaskGenerator", "generate_task", "describe"]


@dataclass
class Task:
    """A generated task (JSON-serializable; ``Task.from_dict(t.to_dict()) == t``)."""

    domain: str
    db: dict
    kind: str  # read / write / cancel
    path: list  # tables root -> target
    field: Optional[str]
    value: Optional[str]  # the write's value
    profile: dict  # {"role": root table, "name": ...}
    chain: list  # tool names of the seed chain
    gold: list  # [[tool, args], ...] on the initial db
    outputs: list  # values the final message must contain
    goal_digest: str
    tools: list  # the environment's tool set (BFS-expanded)
    description: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Task":
        if isinstance(d, Task):
            return d
        if not isinstance(d, dict):
            raise TypeError(f"Task.from_dict: expected a dict; got {type(d).__name__}")
        missing = [k for k in cls.__dataclass_fields__ if k not in d and k != "description"]
        if missing:
            raise ValueError(f"Task.from_dict: missing keys {missing}")
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    @property
    def target(self) -> str:
        return self.path[-1]


def describe(kind: str, path, name: Optional[str], fld: Optional[str], value: Optional[str]) -> str:
    """The opening message; ``name=None`` / ``value=None`` withhold that slot (``customer: ...`` / ``size=?``)."""
    head = path[0] if name is None else f"{path[0]} {name}"
    rest = " ".join(path[1:])
    rest = (rest + " ") if rest else ""
    if kind == "read":
        return f"{head}: {rest}{fld}?"
    if kind == "cancel":
        return f"{head}: {rest}cancel"
    return f"{head}: {rest}{fld}={'?' if value is None else value}"


def _goals(dom: Domain, min_chain: int, max_chain: int) -> list[tuple[str, str, Optional[str]]]:
    """(goal tool, kind, field) whose chain length (path + goal) is in range."""
    out = []
    for td in dom.tooldefs.values():
        if td.kind == "find":
            continue
        n = len(dom.path(td.table)) + 1
        if min_chain <= n <= max_chain:
            out.append((td.name, {"get": "read", "set": "write", "cancel": "cancel"}[td.kind], td.field))
    return out


class TaskGenerator:
    """Tasks of one domain, in blocks of ``block`` sharing tool-usage counts.

    Args:
        domain: a domain name or :class:`Domain`.
        seed: the generator's seed.
        block: tasks per block (coverage is preferred within a block).
        min_chain / max_chain: chain length range (tools, the goal included).
        min_tools / max_tools: the environment's tool-set size after the BFS expansion.
        distractors: extra root records (other people with their own records).
    """

    def __init__(self, domain, seed: int = 0, *, block: int = 16, min_chain: int = 2, max_chain: int = 4,
                 min_tools: int = 20, max_tools: int = 60, distractors: int = 2):
        self.domain = get_domain(domain) if isinstance(domain, str) else domain
        if not isinstance(self.domain, Domain):
            raise TypeError(f"TaskGenerator: `domain` must be a name or a Domain; got {type(domain).__name__}")
        for n, v, lo in (("block", block, 1), ("min_chain", min_chain, 2), ("max_chain", max_chain, 2),
                         ("min_tools", min_tools, 1), ("max_tools", max_tools, 1), ("distractors", distractors, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"TaskGenerator: `{n}` must be an int >= {lo}; got {v!r}")
        if min_chain > max_chain or min_tools > max_tools:
            raise ValueError("TaskGenerator: need min_chain <= max_chain and min_tools <= max_tools")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"TaskGenerator: `seed` must be an int; got {type(seed).__name__}")
        self.seed, self.block = int(seed), block
        self.min_chain, self.max_chain, self.min_tools, self.max_tools = min_chain, max_chain, min_tools, max_tools
        self.distractors = distractors
        self.goals = _goals(self.domain, min_chain, max_chain)
        if not self.goals:
            raise ValueError(f"TaskGenerator: no goal tool of {self.domain.name!r} has a chain of {min_chain}.."
                             f"{max_chain} tools")
        self._blocks = functools.lru_cache(maxsize=64)(self._make_block)

    def task(self, index: int) -> Task:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
            raise ValueError(f"TaskGenerator.task: `index` must be an int >= 0; got {index!r}")
        return Task.from_dict(copy.deepcopy(self._blocks(int(index) // self.block)[int(index) % self.block]))

    def _make_block(self, b: int) -> list[dict]:
        salt = zlib.crc32(self.domain.name.encode())
        rng = np.random.default_rng([self.seed, salt, b])
        uses: dict[str, int] = {}
        return [self._one(rng, uses).to_dict() for _ in range(self.block)]

    # ------------------------------------------------------------------ one task
    def _one(self, rng: np.random.Generator, uses: dict) -> Task:
        dom = self.domain
        w = np.array([1.0 / (1 + uses.get(g, 0)) for g, _, _ in self.goals])
        goal, kind, fld = self.goals[int(rng.choice(len(self.goals), p=w / w.sum()))]
        td = dom.tooldefs[goal]
        path = dom.path(td.table)
        chain = [f"find_{t}" for t in path] + [goal]
        for t in chain:
            uses[t] = uses.get(t, 0) + 1

        db = dom.empty_db()
        used_ids: set[str] = set()

        def new_id(table: str) -> str:
            while True:
                i = f"{dom.tables[table].prefix}{int(rng.integers(1, 10))}"
                if i not in used_ids:
                    used_ids.add(i)
                    return i

        def record(table: str, parent_id: Optional[str], name: Optional[str] = None) -> str:
            spec = dom.tables[table]
            rid = new_id(table)
            rec = {}
            if name is not None:
                rec["name"] = name
            if spec.parent is not None:
                rec[spec.parent] = parent_id
            for f, vals in spec.all_fields.items():
                choices = [v for v in vals if v != "void"] if f == "status" else list(vals)
                rec[f] = str(choices[int(rng.integers(len(choices)))])
            db[table][rid] = rec
            return rid

        names = [NAMES[int(i)] for i in rng.choice(len(NAMES), size=1 + self.distractors, replace=False)]
        ids = {}
        parent = None
        for t in path:  # the chain's records: every dependency of the chain holds
            ids[t] = record(t, parent, names[0] if parent is None else None)
            parent = ids[t]
        for nm in names[1:]:  # distractors: other people, each with their own records down the same path
            p = None
            for t in path:
                p = record(t, p, nm if p is None else None)

        # the gold actions on the initial db
        gold = [[f"find_{path[0]}", {"name": names[0]}]]
        for a, b in zip(path, path[1:]):
            gold.append([f"find_{b}", {a: ids[a]}])
        target = path[-1]
        value = None
        outputs: list[str] = []
        if kind == "read":
            fld = sorted(dom.tables[target].all_fields)[int(rng.integers(len(dom.tables[target].all_fields)))]
            gold.append([goal, {target: ids[target]}])
            outputs = [db[target][ids[target]][fld]]
        elif kind == "cancel":
            gold.append([goal, {target: ids[target]}])
        else:
            cur = db[target][ids[target]][fld]
            vals = [v for v in dom.tables[target].all_fields[fld] if v != cur]
            value = str(vals[int(rng.integers(len(vals)))])
            gold.append([goal, {target: ids[target], "value": value}])

        tools = self._expand(db, chain, record, rng)
        goal_db = dom.replay(db, gold)
        return Task(domain=dom.name, db=db, kind=kind, path=list(path), field=fld, value=value,
                    profile={"role": path[0], "name": names[0]}, chain=chain, gold=gold, outputs=outputs,
                    goal_digest=canonical_digest(goal_db), tools=tools,
                    description=describe(kind, path, names[0], fld, value))

    def _expand(self, db: dict, chain: list[str], record, rng) -> list[str]:
        """BFS from the chain's tools: add a tool only when every table it consumes has records; instantiate a new
        table (linked to existing records) when the frontier runs dry below ``min_tools``."""
        dom = self.domain
        inst = {t for t, rows in db.items() if rows}
        tools = list(dict.fromkeys(chain))
        seen = set(tools)
        queue = list(tools)

        def ready(name: str) -> bool:
            td = dom.tooldefs[name]
            need = td.consumes | ({td.table} if td.kind == "find" else set())  # a find needs rows to find
            return need <= inst

        while True:
            while queue and len(tools) < self.max_tools:
                a = queue.pop(0)
                nxt = dom.edges[a] + sorted(n for n, td in dom.tooldefs.items() if td.table == dom.tooldefs[a].table)
                for b in nxt:
                    if b not in seen and ready(b):
                        seen.add(b)
                        tools.append(b)
                        queue.append(b)
            if len(tools) >= self.min_tools or len(tools) >= self.max_tools:
                break
            cands = [t for t in dom.tables if t not in inst and (dom.tables[t].parent is None
                                                                  or dom.tables[t].parent in inst)]
            if not cands:
                break
            t = cands[int(rng.integers(len(cands)))]
            spec = dom.tables[t]
            if spec.parent is None:
                record(t, None, NAMES[int(rng.integers(len(NAMES)))] + "x")  # a name no task uses
            else:
                for pid in sorted(db[spec.parent]):
                    record(t, pid)
            inst.add(t)
            entry = f"find_{t}"
            if entry not in seen:
                seen.add(entry)
                tools.append(entry)
            queue.append(entry)
        if len(tools) < self.min_tools:
            raise ValueError(f"TaskGenerator: domain {dom.name!r} reached only {len(tools)} tools "
                             f"(min_tools={self.min_tools})")
        return tools


@functools.lru_cache(maxsize=32)
def _generator(domain: str, seed: int, kwargs: tuple) -> TaskGenerator:
    return TaskGenerator(domain, seed, **dict(kwargs))


def generate_task(domain: str, index: int, seed: int = 0, **kwargs) -> Task:
    """Task ``index`` of ``domain`` (generators cached per arguments)."""
    return _generator(domain, int(seed), tuple(sorted(kwargs.items()))).task(index)
