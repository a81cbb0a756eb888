"""τ²-style verification of a tool-domain episode: replay the gold actions, compare state digests, and more.

τ²-bench (Barres et al., arXiv 2506.07982) scores an episode by replaying the gold actions on a fresh copy of the
initial database and comparing the final database with the agent's (plus communicated information and action
checks); the reward is the *product* of the enabled components.  Outcome-only checks pass agents that break
procedural rules (sierra-research/tau2-bench issue #298 as cited by issue 13 -- the thread itself was not found in
the searchable index here, so its content is INFERRED: a policy rule such as "confirm before a write" is invisible
to the state comparison), so this module offers a ``procedural`` component, off by default.  INFERRED (from the
τ²-bench paper's description, its code not read here): the replay + compare + product structure; ours: the
component definitions.

Components (each 0.0 / 1.0; ``reward`` = product of those listed in ``components``):

* ``done``: the agent ended the conversation (a final message starting with ``done``).
* ``state``: canonical digest of the final database == digest of ``replay(initial db, gold actions)``.
* ``outputs``: every required output (a read's value) is a whitespace/punctuation-separated token of the final
  message -- an agent that read the value but did not say it gets 0 ("claimed but not communicated").
* ``actions``: every successful write targeted a (tool, record) of the gold writes (no unrequested writes, even if
  later undone; a repeated or corrected write of the same target is allowed).
* ``procedural`` (optional): every successful write was preceded by a user's ``yes`` to an agent's ``confirm``
  message since the previous write.

A verifier that raises gives reward 0 with the reason in ``info["verify_error"]`` (the caller catches).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence

from .domains import Domain, canonical_digest

__all__ = ["COMPONENTS", "DEFAULT_COMPONENTS", "CallRecord", "verify_episode", "check_components"]

COMPONENTS = ("done", "state", "outputs", "actions", "procedural")
DEFAULT_COMPONENTS = ("done", "state", "outputs", "actions")
_TOKEN = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass
class CallRecord:
    """One successful tool call in the environment (writes carry ``confirmed``: a confirmation preceded it)."""

    name: str
    args: dict
    write: bool
    confirmed: bool = False


def check_components(components) -> tuple[str, ...]:
    comps = tuple(components)
    bad = [c for c in comps if c not in COMPONENTS]
    if bad or not comps:
        raise ValueError(f"`components` must be a non-empty subset of {COMPONENTS}; got {list(components)!r}")
    return comps


def _target(dom: Domain, name: str, args: dict) -> tuple:
    td = dom.tooldefs[name]
    return (name, args.get(td.table))


def verify_episode(dom: Domain, initial_db: dict, gold: Sequence, final_db: dict, calls: Sequence[CallRecord],
                   final_text: Optional[str], outputs: Sequence[str], components=DEFAULT_COMPONENTS) -> dict:
    """The components and reward of an episode: ``{"reward": r, "components": {...}}``.

    Args:
        dom: the domain; initial_db: the task's database; gold: the gold actions ``[(tool, args)]``;
        final_db: the environment's database at the end; calls: the successful calls, in order;
        final_text: the agent's final message (``None``: never ended); outputs: required output values;
        components: the components multiplied into the reward.
    """
    comps = check_components(components)
    expected = canonical_digest(dom.replay(initial_db, gold))
    writes = [c for c in calls if c.write]
    gold_targets = {_target(dom, n, a) for n, a in gold if dom.tooldefs[n].write}
    said = set(_TOKEN.findall(final_text or ""))
    values = {
        "done": float(final_text is not None),
        "state": float(canonical_digest(final_db) == expected),
        "outputs": float(final_text is not None and all(str(o) in said for o in outputs)),
        "actions": float(all(_target(dom, c.name, c.args) in gold_targets for c in writes)),
        "procedural": float(all(c.confirmed for c in writes)),
    }
    reward = 1.0
    for c in comps:
        reward *= values[c]
    return {"reward": reward, "components": values}
