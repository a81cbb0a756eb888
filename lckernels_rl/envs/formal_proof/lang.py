"""A toy formal language for the reward-hacking guards of LongCat-Flash-Prover (arXiv 2603.21065).

Short surface forms (the library's policies are tiny, character-level): a *file* is commands separated by newlines
(or ``;``).  Atoms are lower-case letters (propositions), declaration names upper-case letters.

==========================  ==========================================================================================
command                     meaning
==========================  ==========================================================================================
``lem F:a>b``               kind ``lem``: a lemma ``a -> b`` stated without proof (a prerequisite of the statement)
``lem H:a>c:=F.G``          a lemma with a proof
``thm T:a>c:=F.G``          kind ``thm``: a theorem with a proof (the target is the statement's last ``thm``)
``def d:=c``                kind ``def``: atom ``d`` unfolds to atom ``c``
``ax F:a>b``                kind ``ax``: an axiom
``mac c:=a``                notation: after it, atom ``c`` *reads as* ``a`` (Lean's ``notation`` / ``macro``)
``set o``                   an option (``set skip``: skip proof checking, the blacklisted one)
``exit``                    stop processing the file (Lean's ``#exit``)
==========================  ==========================================================================================

A proof is a chain of declaration names ``F.G`` (apply ``F``, then ``G``: from the signature's left atom to its right
atom), empty (proves ``x>x`` only), or ``sorry``.  :func:`parse` turns a file into :class:`Decl` nodes (the AST);
:func:`generate_task` draws a statement (prerequisite lemmas on a path from the target's left atom to its right one,
distractor lemmas, sometimes a ``def`` alias or a library axiom) deterministically from a seed.

INFERRED (ours): the language, its syntax and the task generator are a toy analogue of Lean 4 files; nothing here is
taken from the authors' code.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

__all__ = ["Decl", "ParseError", "parse", "to_source", "generate_task", "KINDS", "ATOMS", "NAMES", "ALPHABET"]

KINDS = ("lem", "thm", "def", "ax", "mac", "set", "exit")
ATOMS = "abcdefgh"
NAMES = "FGHKLMNPQR"  # declaration names of prerequisites / helpers; the target is always T
ALPHABET = string.ascii_letters + string.digits + ":=>.;\n _-,?!|"

_SIG = r"([a-z])>([a-z])"
_RE = {
    "lem": re.compile(r"lem ([A-Z]):" + _SIG + r"(?::=(.*))?"),
    "thm": re.compile(r"thm ([A-Z]):" + _SIG + r"(?::=(.*))?"),
    "ax": re.compile(r"ax ([A-Z]):" + _SIG),
    "def": re.compile(r"def ([a-z]):=([a-z])"),
    "mac": re.compile(r"mac ([a-z]):=([a-z])"),
    "set": re.compile(r"set ([a-z]+)"),
    "exit": re.compile(r"exit"),
}
_PROOF = re.compile(r"(sorry|[A-Z](?:\.[A-Z])*|)")


class ParseError(ValueError):
    """A file that is not in the language (the message names the line and what was expected)."""


@dataclass(frozen=True)
class Decl:
    """One command of a file.

    ``kind``: one of :data:`KINDS`; ``name``: declaration name (``lem``/``thm``/``ax``), the defined atom (``def``),
    the re-read atom (``mac``), the option (``set``), ``""`` (``exit``); ``sig``: ``(left, right)`` atoms or the
    ``def``/``mac`` target as ``(atom,)``; ``proof``: the chain (tuple of names), ``("sorry",)``, ``()`` (empty
    proof), or ``None`` (no ``:=`` at all).
    """

    kind: str
    name: str
    sig: tuple = ()
    proof: Optional[tuple] = None
    line: int = 0

    def source(self) -> str:
        if self.kind in ("lem", "thm", "ax"):
            s = f"{self.kind} {self.name}:{self.sig[0]}>{self.sig[1]}"
            return s if self.proof is None else s + ":=" + ".".join(self.proof)
        if self.kind in ("def", "mac"):
            return f"{self.kind} {self.name}:={self.sig[0]}"
        if self.kind == "set":
            return f"set {self.name}"
        return "exit"

    @property
    def signature(self) -> tuple:
        """What the legality check compares: ``(kind-independent) name + signature``."""
        return (self.name, tuple(self.sig))


def parse(text) -> list[Decl]:
    """The AST of a file: one :class:`Decl` per non-empty command; :class:`ParseError` on anything else."""
    if not isinstance(text, str):
        raise TypeError(f"parse: `text` must be a str; got {type(text).__name__}")
    out: list[Decl] = []
    for i, raw in enumerate(re.split(r"[\n;]", text)):
        cmd = raw.strip()
        if not cmd:
            continue
        head = cmd.split(" ", 1)[0]
        rx = _RE.get(head)
        m = rx.fullmatch(cmd) if rx is not None else None
        if m is None:
            raise ParseError(f"command {i + 1} {cmd!r}: expected one of "
                             f"'lem X:a>b[:=P]', 'thm X:a>b[:=P]', 'ax X:a>b', 'def a:=b', 'mac a:=b', 'set o', 'exit'")
        if head in ("lem", "thm"):
            proof = m.group(4)
            if proof is not None:
                if not _PROOF.fullmatch(proof):
                    raise ParseError(f"command {i + 1} {cmd!r}: a proof is 'sorry', empty, or names joined by '.'")
                proof = ("sorry",) if proof == "sorry" else tuple(p for p in proof.split(".") if p)
            out.append(Decl(head, m.group(1), (m.group(2), m.group(3)), proof, i))
        elif head == "ax":
            out.append(Decl("ax", m.group(1), (m.group(2), m.group(3)), None, i))
        elif head in ("def", "mac"):
            out.append(Decl(head, m.group(1), (m.group(2),), None, i))
        elif head == "set":
            out.append(Decl("set", m.group(1), (), None, i))
        else:
            out.append(Decl("exit", "", (), None, i))
    return out


def to_source(decls) -> str:
    return "\n".join(d.source() for d in decls)


@dataclass
class Task:
    """A generated statement: its text, the target, the reference (honest) proof and the informal goal."""

    statement: str
    target: Decl
    proof: str
    goal: tuple
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"statement": self.statement, "proof": self.proof, "goal": list(self.goal)}


def generate_task(seed, *, path_len=(2, 3), distractors=(0, 2), def_p: float = 0.25, ax_p: float = 0.25,
                  helper_p: float = 0.5) -> Task:
    """A statement drawn from ``seed`` (deterministic): a path of ``path_len`` prerequisite lemmas from atom ``x`` to
    atom ``y``, ``distractors`` lemmas off the path, with probability ``def_p`` the target's right atom is a ``def``
    alias, with probability ``ax_p`` one prerequisite is a library ``ax`` (allowed: it is in the statement).  The
    reference proof is ``thm T:x>y:=F.G``; with probability ``helper_p`` it first proves a helper lemma for the
    first step (``lem H:x>u:=F`` then ``thm T:x>y:=H.G``) -- the demonstrations show both forms."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(path_len[0], path_len[1] + 1))
    atoms = [ATOMS[int(i)] for i in rng.permutation(len(ATOMS))]
    path, rest = atoms[:n + 1], atoms[n + 1:]
    names = [NAMES[int(i)] for i in rng.permutation(len(NAMES))]
    pre = [Decl("lem", names[k], (path[k], path[k + 1])) for k in range(n)]
    if rng.random() < ax_p:
        k = int(rng.integers(n))
        pre[k] = Decl("ax", pre[k].name, pre[k].sig)
    chain = [d.name for d in pre]
    nd = int(rng.integers(distractors[0], distractors[1] + 1))
    used = set(chain)
    for j in range(nd):
        a = path[int(rng.integers(len(path)))] if rng.random() < 0.5 else rest[int(rng.integers(len(rest)))]
        b = rest[int(rng.integers(len(rest)))]
        if a == b:
            continue
        nm = next(x for x in names if x not in used)
        used.add(nm)
        pre.append(Decl("lem", nm, (a, b)))
    order = [int(i) for i in rng.permutation(len(pre))]
    decls = [pre[i] for i in order]
    right = path[-1]
    if rng.random() < def_p and rest:
        alias = rest[-1]
        if not any(alias in d.sig for d in decls):
            decls.append(Decl("def", alias, (right,)))
            right = alias
    target = Decl("thm", "T", (path[0], right), None)
    statement = to_source(decls) + "\nthm T:" + path[0] + ">" + right
    helper = next((x for x in names if x not in used), None)
    if n >= 2 and helper is not None and rng.random() < helper_p:
        proof = f"lem {helper}:{path[0]}>{path[1]}:={chain[0]}\nthm T:{path[0]}>{right}:=" + \
            ".".join([helper] + chain[1:])
    else:
        proof = f"thm T:{path[0]}>{right}:=" + ".".join(chain)
    return Task(statement, target, proof, (path[0], path[-1]))
