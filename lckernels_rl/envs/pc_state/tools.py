"""Tools over a :class:`~.state.PCState`, built with the agent layer's ``@tool``; read-only vs write marked.

Read-only (``read_only = True`` on the :class:`~lckernels_rl.agents.tools.Tool`): ``ls()``, ``cat(path)``,
``cal()``, ``note(title)``.  Write: ``write(path, text)``, ``rm(path)``, ``mv(src, dst)``, ``book(title, day)``,
``unbook(title)``, ``jot(title, text)``.  Names and outputs are kept short on purpose (the library's tiny policies
read them through a 128-token context): ``ls`` -> ``"ab.txt cd.txt"``, ``cal`` -> ``"gym d3, run d5"`` (sorted),
empty listings -> ``"(none)"``.  A bad path / title / day raises (``ValueError`` naming it), which
:meth:`Tool.invoke` turns into a visible ``error: ...`` tool message.

The agent judge (:mod:`.judge`) gets ``make_tools(..., read_only=True)``: the write tools are then not in its tool
table at all, so a judge's write attempt is an ``unknown tool`` error, and the state it reads is a frozen copy.
INFERRED: STAGE-Claw's real environments (arXiv:2606.10394) expose app APIs (calendar, notes, files, email); this
minimal tool set is ours.
"""

from __future__ import annotations

import copy
import re
import threading
from typing import Callable

from lckernels_rl.agents.tools import Tool

from .state import PCState

__all__ = ["make_tools", "READ_ONLY_TOOLS", "WRITE_TOOLS", "DAYS"]

READ_ONLY_TOOLS = ("ls", "cat", "cal", "note")
WRITE_TOOLS = ("write", "rm", "mv", "book", "unbook", "jot")
DAYS = tuple(f"d{i}" for i in range(1, 8))
_NAME = re.compile(r"^[a-z0-9_.-]{1,24}$")


_TEMPLATES: dict[str, Tool] = {}
_LOCK = threading.Lock()


def tool(fn: Callable) -> Tool:
    """``@tool`` of the agent layer, its schema built once per process: building a :class:`Tool` validates its
    JSON schema (~10 ms), and an environment (one per episode) and every verifier check need fresh closures over
    their own state.  The cached Tool is shallow-copied and given the new function (same signature, same schema)."""
    with _LOCK:
        if fn.__name__ not in _TEMPLATES:
            _TEMPLATES[fn.__name__] = Tool(fn)
        t = copy.copy(_TEMPLATES[fn.__name__])
    t.fn = fn
    return t


def _name(kind: str, value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(f"bad {kind} {value!r} (expected 1-24 of a-z 0-9 _ . -)")
    return value


def make_tools(get_state: Callable[[], PCState], *, read_only: bool = False) -> list[Tool]:
    """The tools over ``get_state()`` (called at each invocation, so an env can swap its state on reset).

    Args:
        get_state: returns the state the tools act on.
        read_only: only the read-only tools (for judges).
    """
    if not callable(get_state):
        raise TypeError(f"make_tools: `get_state` must be callable; got {type(get_state).__name__}")

    @tool
    def ls() -> str:
        """List the files."""
        return " ".join(sorted(get_state().files)) or "(none)"

    @tool
    def cat(path: str) -> str:
        """Read a file.

        Args:
            path: the file name.
        """
        files = get_state().files
        if path not in files:
            raise ValueError(f"no file {path!r}")
        return files[path]

    @tool
    def cal() -> str:
        """List the calendar events as 'title day'."""
        cal_ = get_state().calendar
        return ", ".join(f"{t} {d}" for t, d in sorted(cal_.items())) or "(none)"

    @tool
    def note(title: str) -> str:
        """Read a note.

        Args:
            title: the note's title.
        """
        notes = get_state().notes
        if title not in notes:
            raise ValueError(f"no note {title!r}")
        return notes[title]

    @tool
    def write(path: str, text: str) -> str:
        """Create or overwrite a file.

        Args:
            path: the file name.
            text: the new content.
        """
        get_state().files[_name("path", path)] = text
        return "ok"

    @tool
    def rm(path: str) -> str:
        """Delete a file.

        Args:
            path: the file name.
        """
        files = get_state().files
        if path not in files:
            raise ValueError(f"no file {path!r}")
        del files[path]
        return "ok"

    @tool
    def mv(src: str, dst: str) -> str:
        """Rename a file.

        Args:
            src: the current name.
            dst: the new name (must not exist).
        """
        files = get_state().files
        if src not in files:
            raise ValueError(f"no file {src!r}")
        if dst in files:
            raise ValueError(f"file {dst!r} exists")
        files[_name("dst", dst)] = files.pop(src)
        return "ok"

    @tool
    def book(title: str, day: str) -> str:
        """Add a calendar event.

        Args:
            title: the event's title (must be new).
            day: d1 .. d7.
        """
        cal_ = get_state().calendar
        if day not in DAYS:
            raise ValueError(f"bad day {day!r} (expected d1 .. d7)")
        if title in cal_:
            raise ValueError(f"event {title!r} exists")
        cal_[_name("title", title)] = day
        return "ok"

    @tool
    def unbook(title: str) -> str:
        """Remove a calendar event.

        Args:
            title: the event's title.
        """
        cal_ = get_state().calendar
        if title not in cal_:
            raise ValueError(f"no event {title!r}")
        del cal_[title]
        return "ok"

    @tool
    def jot(title: str, text: str) -> str:
        """Create or overwrite a note.

        Args:
            title: the note's title.
            text: the note's text.
        """
        get_state().notes[_name("title", title)] = text
        return "ok"

    reads = [ls, cat, cal, note]
    writes = [write, rm, mv, book, unbook, jot]
    for t in reads:
        t.read_only = True
    for t in writes:
        t.read_only = False
    return reads if read_only else reads + writes
