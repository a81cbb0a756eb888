"""A personal-computing state -- files, a calendar, notes -- as plain dicts with a canonical digest.

STAGE-Claw (Liang et al., arXiv:2606.10394, abstract) evaluates personal agents by the correctness of the *final
system state* of a personal-computing environment (calendar events, emails, notes, files) rather than their textual
response.  VERIFIED (abstract, read via the paper's arXiv listing): the state kinds (calendar, notes, files) and the
idea that the final state, not the reply, is scored.  INFERRED (no code of the authors was found; the paper's body
was not readable here): the concrete representation below -- three flat dicts, no email, no directories.

* ``files``: ``{path: text}`` (a path is a short name such as ``ab.txt``);
* ``calendar``: ``{title: day}`` (one event per title; a day is ``d1`` .. ``d7``);
* ``notes``: ``{title: text}``.

:meth:`PCState.digest` is the SHA-256 of the canonical JSON (sorted keys, no whitespace), so two states are equal
exactly when their digests are.  :func:`freeze` returns a read-only deep view (``MappingProxyType`` all the way
down) that verifier programs and judges receive: writing through it raises ``TypeError``.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

__all__ = ["PCState", "freeze", "SECTIONS"]

SECTIONS = ("files", "calendar", "notes")


def _check_section(name: str, value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise TypeError(f"PCState: `{name}` must be a dict of str -> str; got {type(value).__name__}")
    out = {}
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"PCState: `{name}` must map str -> str; got {k!r}: {v!r}")
        out[k] = v
    return out


@dataclass
class PCState:
    """Files, calendar and notes of one simulated user (all three ``dict[str, str]``)."""

    files: dict[str, str] = field(default_factory=dict)
    calendar: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        for name in SECTIONS:
            setattr(self, name, _check_section(name, getattr(self, name)))

    @classmethod
    def from_dict(cls, d: Mapping) -> "PCState":
        if not isinstance(d, Mapping):
            raise TypeError(f"PCState.from_dict: expected a dict with {SECTIONS}; got {type(d).__name__}")
        unknown = set(d) - set(SECTIONS)
        if unknown:
            raise ValueError(f"PCState.from_dict: unknown sections {sorted(unknown)} (expected {SECTIONS})")
        return cls(**{k: dict(d.get(k, {})) for k in SECTIONS})

    def to_dict(self) -> dict[str, dict[str, str]]:
        return {k: dict(getattr(self, k)) for k in SECTIONS}

    def copy(self) -> "PCState":
        return PCState(**copy.deepcopy(self.to_dict()))

    def digest(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()


def freeze(value: Any) -> Any:
    """A read-only deep copy: dicts become ``MappingProxyType``, lists/tuples/sets tuples/frozensets."""
    if isinstance(value, PCState):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return frozenset(freeze(v) for v in value)
    return value
