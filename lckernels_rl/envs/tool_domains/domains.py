"""Tool domains: a domain spec -> 20-60 Python tools over a dict-of-tables state, and their dependency graph.

Environment scaling after the LongCat-Flash-Thinking-2601 report (arXiv 2601.16725, §3.1.1 "environment scaling";
the ScaleEnv idea): a concise domain definition is turned into an executable environment -- a database schema, tools
with JSON-schema arguments, and a *tool dependency graph* whose edges are parameter dependencies (an output of tool
A is an input of tool B).  What is VERIFIED and what is INFERRED:

* INFERRED (from third-party summaries of the report; the report PDF itself was not readable here, no code is
  released): "a full-stack environment graph from a concise domain definition", "about 60 tools per environment
  with complex dependency graphs", "database schemas, tool-call interfaces and validation logic" per environment.
* Ours (INFERRED design): the schema is a small forest of tables (a child table has a foreign key to its parent,
  named after the parent table); tools are generated from per-table templates:

  ======================  ==========================================  =================================
  template                arguments (JSON schema)                     result (compact text)
  ======================  ==========================================  =================================
  ``find_<T>`` (root)     ``name: string``                            ``ana:c3`` (``key:id`` entries)
  ``find_<T>`` (child)    ``<P>: string`` (a parent id)               ``c3:o7``
  ``get_<T>``             ``<T>: string``                             ``o7 status=new eta=20``
  ``set_<T>_<F>``         ``<T>: string``, ``value: enum of F``       ``ok`` (a write)
  ``cancel_<T>``          ``<T>: string``                             ``ok`` (a write: status=void)
  ======================  ==========================================  =================================

  An argument named after a table consumes an id of that table; ``find_<T>`` produces ids of ``T``.  The graph's
  edge ``A -> B`` holds iff a table produced by ``A`` is consumed by ``B``.  ``name`` / ``value`` are *slots* the
  user provides, not dependencies.

The surface forms are kept tiny (short table names, ids like ``o7``, one-line results) so the library's 2-layer
policies can learn them; cross-domain transfer is possible because the argument names and the opening message
reuse the table names (see ``tasks.py``).
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
from dataclasses import dataclass
from typing import Callable, Literal, Optional

__all__ = ["TableSpec", "DomainSpec", "ToolDef", "Domain", "DOMAIN_SPECS", "TRAIN_DOMAINS", "HELDOUT_DOMAINS",
           "get_domain", "canonical_digest", "NAMES"]

NAMES = ("ana", "bob", "cy", "dee", "eli", "fay", "gus", "hal", "ivy", "jo", "kai", "lu", "max", "ned", "ola", "pia",
         "rex", "sue", "tom", "uma")
STATUS = ("new", "open", "hold", "void")  # "void" = cancelled (cancel_<T> writes it)


@dataclass(frozen=True)
class TableSpec:
    """One table: ``name`` (also the argument name of its ids), ``prefix`` (id prefix, unique in the domain),
    ``parent`` (the table its foreign key points to; ``None``: a root, searched by ``name``), ``fields``
    (field -> allowed values; every table also has ``status``)."""

    name: str
    prefix: str
    parent: Optional[str] = None
    fields: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def all_fields(self) -> dict[str, tuple[str, ...]]:
        return {"status": STATUS, **dict(self.fields)}


@dataclass(frozen=True)
class DomainSpec:
    name: str
    tables: tuple[TableSpec, ...]


def _t(name, prefix, parent=None, **fields):
    return TableSpec(name, prefix, parent, tuple((k, tuple(v.split())) for k, v in fields.items()))


# Seeded domain definitions (the "concise domain definitions"); the tools and data are generated from them.  Field
# values are words, never bare numbers: the compact call format reads `3` as a number.
DOMAIN_SPECS: dict[str, DomainSpec] = {s.name: s for s in (
    DomainSpec("delivery", (_t("customer", "c", tier="std gold"), _t("order", "o", "customer", eta="am pm eve"),
                            _t("parcel", "p", "order", size="s m l"), _t("courier", "k", zone="n s e w"))),
    DomainSpec("travel", (_t("guest", "g", tier="std gold"), _t("trip", "t", "guest", days="one two few"),
                          _t("flight", "f", "trip", seat="a b c"), _t("hotel", "h", stars="low mid top"))),
    DomainSpec("clinic", (_t("patient", "p", plan="std gold"), _t("appt", "a", "patient", hour="am noon pm"),
                          _t("bill", "b", "appt", method="card cash"), _t("doctor", "d", room="r1 r2 r3"))),
    DomainSpec("store", (_t("shopper", "s", tier="std gold"), _t("cart", "c", "shopper", items="one two many"),
                         _t("line", "l", "cart", qty="one two few"), _t("product", "x", shelf="a b c d"))),
    DomainSpec("library", (_t("member", "m", plan="std gold"), _t("loan", "l", "member", weeks="one two few"),
                           _t("fine", "f", "loan", amount="low mid high"), _t("author", "a", era="old new"))),
    DomainSpec("garage", (_t("owner", "o", tier="std gold"), _t("car", "c", "owner", fuel="gas ev"),
                          _t("repair", "r", "car", part="tire brake oil"), _t("mechanic", "m", shift="am pm"))),
)}
TRAIN_DOMAINS = ("delivery", "travel", "clinic", "store")
HELDOUT_DOMAINS = ("library", "garage")


def canonical_digest(db: dict) -> str:
    """SHA-256 of the canonical JSON of a database (sorted keys, no whitespace)."""
    blob = json.dumps(db, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class ToolDef:
    """A generated tool: its template ``kind`` (find/get/set/cancel), the table (and field) it acts on, its
    parameters ``[(name, annotation, description)]``, the tables it consumes / produces, and whether it writes."""

    name: str
    kind: str
    table: str
    field: Optional[str]
    params: list[tuple[str, object, str]]
    description: str
    consumes: frozenset
    produces: frozenset
    write: bool

    def run(self, db: dict, args: dict) -> str:
        """Execute on ``db`` (mutated by writes); raises ``LookupError`` for a missing record."""
        t = self.table
        if self.kind == "find":
            if "name" in args:
                hits = [i for i, r in db[t].items() if r.get("name") == args["name"]]
                if not hits:
                    raise LookupError(f"no {t} named {args['name']}")
                return " ".join(f"{args['name']}:{i}" for i in sorted(hits))
            (parent, pid), = args.items()
            if pid not in db.get(parent, {}):
                raise LookupError(f"no {parent} {pid}")
            hits = [i for i, r in db[t].items() if r.get(parent) == pid]
            if not hits:
                raise LookupError(f"no {t} of {pid}")
            return " ".join(f"{pid}:{i}" for i in sorted(hits))
        rid = args[t]
        if rid not in db[t]:
            raise LookupError(f"no {t} {rid}")
        rec = db[t][rid]
        if self.kind == "get":
            return rid + " " + " ".join(f"{k}={v}" for k, v in rec.items() if k != "name" and not k.startswith("_")
                                        and k not in db)
        if self.kind == "set":
            rec[self.field] = args["value"]
            return "ok"
        if self.kind == "cancel":
            rec["status"] = "void"
            return "ok"
        raise AssertionError(self.kind)


def _tool_object(td: ToolDef, impl: Callable[[dict], str]):
    """A :class:`~lckernels_rl.agents.tools.Tool` for ``td`` whose function calls ``impl(arguments)`` (the schema is
    built by the agent layer's ``Tool`` from a synthesized keyword-only signature and Google-style docstring)."""
    from lckernels_rl.agents.tools import Tool

    def fn(**kwargs):
        return impl(kwargs)

    fn.__name__ = td.name
    fn.__signature__ = inspect.Signature([inspect.Parameter(p, inspect.Parameter.KEYWORD_ONLY, annotation=a)
                                          for p, a, _ in td.params])
    fn.__annotations__ = {p: a for p, a, _ in td.params}
    fn.__doc__ = td.description + "\n\nArgs:\n" + "".join(f"    {p}: {d}\n" for p, _, d in td.params)
    return Tool(fn, name=td.name)


class Domain:
    """The tools, schema and dependency graph generated from a :class:`DomainSpec`.

    Args:
        spec: the domain definition.

    Attributes:
        tables: ``{name: TableSpec}``; ``tooldefs``: ``{tool name: ToolDef}`` (20-60 of them, checked);
        ``edges``: the dependency graph ``{A: sorted successors}``.
    """

    def __init__(self, spec: DomainSpec, *, min_tools: int = 20, max_tools: int = 60):
        if not isinstance(spec, DomainSpec):
            raise TypeError(f"Domain: `spec` must be a DomainSpec; got {type(spec).__name__}")
        self.spec, self.name = spec, spec.name
        self.tables = {t.name: t for t in spec.tables}
        prefixes = [t.prefix for t in spec.tables]
        if len(set(prefixes)) != len(prefixes):
            raise ValueError(f"Domain {spec.name!r}: table id prefixes must be unique; got {prefixes}")
        for t in spec.tables:
            if t.parent is not None and t.parent not in self.tables:
                raise ValueError(f"Domain {spec.name!r}: table {t.name!r} has unknown parent {t.parent!r}")
        self.tooldefs: dict[str, ToolDef] = {}
        for t in spec.tables:
            self._add_table_tools(t)
        n = len(self.tooldefs)
        if not min_tools <= n <= max_tools:
            raise ValueError(f"Domain {spec.name!r}: generated {n} tools; expected between {min_tools} and "
                             f"{max_tools} (add or remove fields)")
        self.edges = {a.name: sorted(b.name for b in self.tooldefs.values() if a.produces & b.consumes)
                      for a in self.tooldefs.values()}

    def _add_table_tools(self, t: TableSpec) -> None:
        id_doc = f"a {t.name} id (e.g. {t.prefix}3)"
        if t.parent is None:
            self._def(f"find_{t.name}", "find", t.name, None, [("name", str, f"the {t.name}'s name")],
                      f"Find {t.name} ids by name.", set(), {t.name}, False)
        else:
            self._def(f"find_{t.name}", "find", t.name, None,
                      [(t.parent, str, f"a {t.parent} id")], f"Find the {t.name} ids of a {t.parent}.",
                      {t.parent}, {t.name}, False)
        self._def(f"get_{t.name}", "get", t.name, None, [(t.name, str, id_doc)], f"Read a {t.name} record.",
                  {t.name}, set(), False)
        for f, values in t.all_fields.items():
            self._def(f"set_{t.name}_{f}", "set", t.name, f,
                      [(t.name, str, id_doc), ("value", Literal[tuple(values)], f"the new {f}")],
                      f"Change the {f} of a {t.name}.", {t.name}, set(), True)
        self._def(f"cancel_{t.name}", "cancel", t.name, None, [(t.name, str, id_doc)], f"Cancel a {t.name}.",
                  {t.name}, set(), True)

    def _def(self, name, kind, table, fld, params, desc, consumes, produces, write):
        self.tooldefs[name] = ToolDef(name, kind, table, fld, params, desc, frozenset(consumes), frozenset(produces),
                                      write)

    # ------------------------------------------------------------------ structure
    def path(self, table: str) -> list[str]:
        """The tables from the root down to ``table``."""
        out = [table]
        while self.tables[out[0]].parent is not None:
            out.insert(0, self.tables[out[0]].parent)
        return out

    def children(self, table: Optional[str]) -> list[str]:
        return [t.name for t in self.spec.tables if t.parent == table]

    def dependencies(self, tool: str) -> set[str]:
        """Tools that produce an input of ``tool`` (its in-edges)."""
        return {a for a, succ in self.edges.items() if tool in succ}

    def empty_db(self) -> dict:
        return {t: {} for t in self.tables}

    def make_tools(self, run: Callable[[ToolDef, dict], str], names=None) -> list:
        """Tool objects for ``names`` (default all) whose calls go through ``run(tooldef, arguments)``."""
        names = list(self.tooldefs) if names is None else list(names)
        unknown = [n for n in names if n not in self.tooldefs]
        if unknown:
            raise ValueError(f"Domain {self.name!r}: unknown tools {unknown}")
        if not hasattr(self, "_protos"):  # schema building (jsonschema checks) once per domain, not per episode
            self._protos = {n: _tool_object(td, lambda args: None) for n, td in self.tooldefs.items()}
        out = []
        for n in names:
            t = copy.copy(self._protos[n])  # shares the spec and validator; its own function
            t.fn = (lambda td: (lambda **kwargs: run(td, kwargs)))(self.tooldefs[n])
            out.append(t)
        return out

    def replay(self, db: dict, actions) -> dict:
        """A deep copy of ``db`` with ``actions`` ``[(tool, args)]`` applied in order (a failing action raises)."""
        out = copy.deepcopy(db)
        for name, args in actions:
            if name not in self.tooldefs:
                raise ValueError(f"replay: unknown tool {name!r} in domain {self.name!r}")
            self.tooldefs[name].run(out, dict(args))
        return out


_CACHE: dict[str, Domain] = {}


def get_domain(name: str) -> Domain:
    """The generated :class:`Domain` of a seeded spec (cached; a domain is pure structure, no state)."""
    if name not in DOMAIN_SPECS:
        raise ValueError(f"unknown tool domain {name!r}; available: {', '.join(DOMAIN_SPECS)}")
    if name not in _CACHE:
        _CACHE[name] = Domain(DOMAIN_SPECS[name])
    return _CACHE[name]
