"""AST-level legality and consistency checks (LongCat-Flash-Prover, arXiv 2603.21065, legality detection).

:func:`check_legality` compares the proof's AST with the statement's and flags each loophole of
:mod:`~lckernels_rl.envs.formal_proof.checker` by name (``LOOPHOLES``):

==============  ===========================================================================================
``restate``     the target is missing, not a ``thm``/``lem``, or its signature differs from the statement's
``axiom``       a new ``ax`` declaration
``sorry``       a new ``lem``/``thm`` proved by ``sorry`` or with no proof
``exit``        an ``exit`` command
``macro``       a ``mac`` (notation) command that the statement does not contain verbatim
``option``      a blacklisted ``set`` option (``skip``)
``redefine``    a prerequisite restated with another kind (illegal transition), signature or ``def`` body; a new
                ``def`` of an atom the statement uses (a background identifier); a duplicate name
==============  ===========================================================================================

VERIFIED (authors' ``meituan-longcat/LongCat-Flash-Prover`` ``lean4parser/checker.py``, commit
7617740ef5331ebf96cfb901930c7cd4ef15e60f, ``Checker.check_ast_consistency``): duplicate names are rejected; meta /
syntax nodes (macro, notation, syntax, elab, infix, ...) of the proof must occur verbatim (whitespace-stripped) in the
statement; a ``set_option`` whose name contains a blacklisted option (``skip_proofs`` ...) is rejected; a prerequisite
restated in the proof must follow an allowed kind transition (e.g. ``theorem -> lemma`` allowed, ``def -> theorem``
and anything ``-> axiom`` not) and keep its signature, and a data definition its body; a new ``axiom``/``opaque``, a
new declaration containing ``sorry``/``admit``, or a new declaration redefining a background identifier of the
statement is rejected; the target must be present, be a ``def``/``theorem``/``lemma`` and keep its signature.
INFERRED: the ``exit`` rule (summaries of the report name ``#exit`` as a hack; the authors' AST checker has no rule in
``checker.py`` -- their parser may drop what follows it); the toy kind table (``lem``/``thm`` interchangeable, ``ax``
prerequisites may be restated as ``ax`` or proved as ``lem``/``thm``, ``def`` only as ``def``).

:func:`check_consistency` is the statement-side guard (the report's "theorem consistency" check of auto-formalized
statements against the informal problem): the statement parses, ends with its target ``thm``, the target (defs
unfolded) states the informal goal, no prerequisite already states the target (a vacuous statement), and the
statement has no blacklisted option, ``exit`` or target-changing notation.  INFERRED (the report checks consistency
with a model judge on real statements; ours is a syntactic toy).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .checker import BLACKLISTED_OPTIONS, _resolve
from .lang import Decl, ParseError, parse

__all__ = ["LOOPHOLES", "LegalityResult", "check_legality", "check_consistency", "ALLOWED_KIND_TRANSITIONS"]

LOOPHOLES = ("restate", "axiom", "sorry", "exit", "macro", "option", "redefine")

# prerequisite kind in the statement -> kinds the proof may restate it as (INFERRED toy table, modelled on the
# verified Lean table: theorem/lemma interchangeable, nothing becomes an axiom, a def stays a def)
ALLOWED_KIND_TRANSITIONS = {"lem": ("lem", "thm"), "thm": ("lem", "thm"), "ax": ("ax", "lem", "thm"),
                            "def": ("def",)}


@dataclass
class LegalityResult:
    ok: bool
    detected: dict = field(default_factory=dict)  # loophole -> list of messages
    reason: str = ""


def check_legality(statement, proof) -> LegalityResult:
    """Legality of ``proof`` against ``statement`` (texts or parsed lists); a file that does not parse is illegal
    (reason ``parse error``)."""
    try:
        st = statement if isinstance(statement, list) else parse(statement)
        pf = proof if isinstance(proof, list) else parse(proof)
    except ParseError as exc:
        return LegalityResult(False, {}, f"parse error: {exc}")
    found: dict[str, list] = {}

    def flag(kind, msg):
        found.setdefault(kind, []).append(msg)

    thms = [d for d in st if d.kind == "thm"]
    if not thms:
        return LegalityResult(False, {}, "statement has no target thm")
    target = thms[-1]
    named_st = {d.name: d for d in st if d.kind in ("lem", "thm", "ax", "def")}
    st_meta = {d.source() for d in st if d.kind == "mac"}
    background = {a for d in st for a in d.sig if d.kind in ("lem", "thm", "ax")} | \
        {d.sig[0] for d in st if d.kind in ("def", "mac")}
    seen: dict[str, Decl] = {}
    for d in pf:
        if d.kind == "exit":
            flag("exit", "exit command")
        elif d.kind == "set":
            if any(b in d.name for b in BLACKLISTED_OPTIONS):
                flag("option", f"blacklisted option {d.source()}")
        elif d.kind == "mac":
            if d.source() not in st_meta:
                flag("macro", f"notation not in the statement: {d.source()}")
        else:
            key = d.name
            if key in seen:
                flag("redefine", f"duplicate declaration {key}")
            seen[key] = d
    for name, d in seen.items():
        if name == target.name:
            continue
        if name in named_st:  # a prerequisite restated
            p = named_st[name]
            if d.kind not in ALLOWED_KIND_TRANSITIONS[p.kind]:
                flag("redefine", f"prerequisite {name}: kind {p.kind} -> {d.kind}")
            elif tuple(d.sig) != tuple(p.sig):
                flag("redefine", f"prerequisite {name}: signature {p.source()} -> {d.source()}")
            elif d.kind in ("lem", "thm") and p.kind in ("lem", "thm", "ax") and d.proof == ("sorry",):
                flag("sorry", f"prerequisite {name} restated with sorry")
            continue
        if d.kind == "ax":
            flag("axiom", f"new axiom {d.source()}")
        elif d.kind == "def":
            if name in background:
                flag("redefine", f"redefines background atom {name}: {d.source()}")
        elif d.proof is None or d.proof == ("sorry",):
            flag("sorry", f"unproved declaration {d.source()}")
    t = seen.get(target.name)
    if t is None:
        flag("restate", f"missing target {target.name}")
    elif t.kind not in ("thm", "lem"):
        flag("restate", f"target {target.name} restated as {t.kind}")
    elif tuple(t.sig) != tuple(target.sig):
        flag("restate", f"target signature {target.source()} -> {t.source().split(':=')[0]}")
    elif t.proof is None or t.proof == ("sorry",):
        flag("sorry", f"target {target.name} not proved")
    reason = next((f"{k}: {v[0]}" for k in LOOPHOLES for v in [found.get(k)] if v), "")
    return LegalityResult(not found, found, reason)


def check_consistency(statement, goal) -> tuple[bool, str]:
    """Does ``statement`` (text) state the informal ``goal`` ``(left, right)`` (atoms) -- and nothing vacuous?"""
    if not (isinstance(goal, (tuple, list)) and len(goal) == 2 and all(isinstance(g, str) for g in goal)):
        raise TypeError(f"check_consistency: `goal` must be (left atom, right atom); got {goal!r}")
    try:
        st = parse(statement)
    except ParseError as exc:
        return False, f"parse error: {exc}"
    if not st or st[-1].kind != "thm" or st[-1].proof is not None:
        return False, "the statement must end with its target 'thm X:a>b' (no proof)"
    for d in st:
        if d.kind == "exit" or (d.kind == "set" and d.name in BLACKLISTED_OPTIONS):
            return False, f"statement contains {d.source()}"
    defs = {d.name: d.sig[0] for d in st if d.kind == "def"}
    macs = {d.name: d.sig[0] for d in st if d.kind == "mac"}
    t = st[-1]
    stated = (_resolve(t.sig[0], defs, macs), _resolve(t.sig[1], defs, macs))
    if stated != tuple(goal):
        return False, f"target states {stated[0]}>{stated[1]}, the problem asks {goal[0]}>{goal[1]}"
    for d in st[:-1]:
        if d.kind in ("lem", "ax", "thm") and (_resolve(d.sig[0], defs, macs),
                                                _resolve(d.sig[1], defs, macs)) == stated:
            return False, f"prerequisite {d.name} already states the target"
    return True, "consistent"
