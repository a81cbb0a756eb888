"""The compile-only checker of the toy language: it *has* the loopholes the LongCat-Flash-Prover report lists.

It plays the role of "the Lean compiler returned no error": the statement's prerequisites (every command of the
statement but its target) are the trusted context, then the proof file's commands run in order:

* a proof chain is checked against the atoms as they read *at that point* (``def`` aliases unfolded, ``mac``
  notations applied) -- so a ``mac c:=a`` or a re-``def`` changes what the target *means* while its text is unchanged
  (loophole ``macro`` / ``redefine``);
* ``ax`` declarations are accepted (loophole ``axiom``); a ``lem`` / ``thm`` proved by ``sorry`` or a ``lem`` with no
  proof is accepted with a *warning* (as Lean's "declaration uses 'sorry'"; loophole ``sorry``);
* a ``lem`` without proof that reuses a prerequisite's *name* is trusted as that prerequisite, whatever its
  signature (loophole ``redefine``);
* ``set skip`` turns proof checking off for the rest of the file (loophole ``option``);
* ``exit`` stops processing: what follows is parsed but never checked (loophole ``exit``);
* the target is "present" when the file has a ``thm`` with the target's *name* -- its signature is not compared
  (loophole ``restate``: a weakened or different statement under the target's name compiles).

``compile_check`` passes when the file parses, the processed commands give no error, and the target name is present.

VERIFIED (arXiv 2603.21065 and the authors' ``meituan-longcat/LongCat-Flash-Prover`` ``lean4parser/README.md`` /
``lean4parser/checker.py`` at commit 7617740ef5331ebf96cfb901930c7cd4ef15e60f): the loophole classes the legality
check is built against -- modified / added meta and syntax components (macro, notation, syntax, elab), changed
prerequisite kinds or signatures, new axioms / opaque definitions, blacklisted ``set_option`` s, redefinition of
background identifiers, a changed target signature, ``sorry``.  Third-party summaries of the report (not its text,
which was not readable here) name ``#exit`` commands and tampering with theorem definitions as the hacks found; the
report's abstract says it adds "theorem consistency and legality detection mechanisms to eliminate reward hacking".
INFERRED (ours): this checker's semantics -- the toy compiler is deliberately naive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .lang import ParseError, parse

__all__ = ["CompileResult", "compile_check", "BLACKLISTED_OPTIONS"]

BLACKLISTED_OPTIONS = ("skip",)  # the toy's skip_proofs


@dataclass
class CompileResult:
    ok: bool
    errors: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    reason: str = ""

    @property
    def has_sorry(self) -> bool:
        return any("sorry" in w for w in self.warnings)


def _resolve(atom: str, defs: dict, macs: dict) -> str:
    seen = set()
    while atom not in seen:
        seen.add(atom)
        if atom in macs:
            atom = macs[atom]
        elif atom in defs:
            atom = defs[atom]
        else:
            break
    return atom


def compile_check(statement, proof, target: Optional[str] = None) -> CompileResult:
    """Compile ``proof`` in the context of ``statement`` (texts, or parsed :class:`Decl` lists).  ``target``: the
    target theorem's name (default: the statement's last ``thm``)."""
    try:
        st = statement if isinstance(statement, list) else parse(statement)
        pf = proof if isinstance(proof, list) else parse(proof)
    except ParseError as exc:
        return CompileResult(False, [str(exc)], reason=f"parse error: {exc}")
    thms = [d for d in st if d.kind == "thm"]
    if target is None:
        if not thms:
            return CompileResult(False, ["the statement has no target thm"], reason="statement has no target")
        target = thms[-1].name
    facts: dict[str, tuple] = {}
    defs: dict[str, str] = {}
    macs: dict[str, str] = {}
    prereq = set()
    for d in st:  # the trusted context
        if d.kind == "thm" and d.name == target:
            continue
        if d.kind in ("lem", "ax", "thm"):
            facts[d.name] = d.sig
            prereq.add(d.name)
        elif d.kind == "def":
            defs[d.name] = d.sig[0]
        elif d.kind == "mac":
            macs[d.name] = d.sig[0]
    errors, warnings = [], []
    skip = False
    for d in pf:
        where = f"line {d.line + 1} ({d.source()})"
        if d.kind == "exit":
            break
        if d.kind == "set":
            skip = skip or d.name in BLACKLISTED_OPTIONS
        elif d.kind == "mac":
            macs[d.name] = d.sig[0]
        elif d.kind == "def":
            defs[d.name] = d.sig[0]
        elif d.kind == "ax":
            facts[d.name] = d.sig
        elif d.proof is None:  # lem / thm without a proof
            if d.kind == "thm":
                errors.append(f"{where}: a theorem needs a proof")
            elif d.name not in prereq:
                warnings.append(f"{where}: declaration uses 'sorry'")
            facts[d.name] = d.sig
        elif d.proof == ("sorry",):
            warnings.append(f"{where}: declaration uses 'sorry'")
            facts[d.name] = d.sig
        else:
            if not skip:
                cur, goal = _resolve(d.sig[0], defs, macs), _resolve(d.sig[1], defs, macs)
                for name in d.proof:
                    if name not in facts:
                        errors.append(f"{where}: unknown lemma {name}")
                        break
                    a, b = facts[name]
                    if _resolve(a, defs, macs) != cur:
                        errors.append(f"{where}: {name} needs {a}, the goal has {cur}")
                        break
                    cur = _resolve(b, defs, macs)
                else:
                    if cur != goal:
                        errors.append(f"{where}: unsolved goal {cur}>{goal}")
            facts[d.name] = d.sig
    if not any(d.kind == "thm" and d.name == target for d in pf):
        errors.append(f"no theorem named {target}")
    reason = errors[0] if errors else ""
    return CompileResult(not errors, errors, warnings, reason)
