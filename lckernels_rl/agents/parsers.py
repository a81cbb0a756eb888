r"""Tool-call parsers: read the calls out of an assistant turn's text, and write calls in the same format.

A parser (:class:`ToolParser`) has ``parse(text, *, turn=0) -> ParsedTurn`` and ``format_calls(calls) -> str``; the
registry (:func:`register_parser`, :func:`get_parser`, :func:`list_parsers`) finds one by name.  ``parse`` never
drops a call: every opening marker yields one :class:`~lckernels_rl.agents.types.ToolCall`, the malformed ones with
``error`` set and ``raw`` holding their exact text (``name`` / ``arguments`` are what could be recovered, else
``None``).  Call ids are ``call_<turn>_<k>``, ``k`` counting the turn's calls from 0.  :attr:`ParsedTurn.content`
is the text with the calls removed, stripped.  ``format_calls`` writes text that ``parse`` reads back (scripted
demonstrations are written with it).

``"hermes"`` (Qwen / Hermes chat templates)::

    <tool_call>
    {"name": "lookup", "arguments": {"key": "a"}}
    </tool_call>

At each ``<tool_call>`` exactly one JSON value is read (``json.JSONDecoder.raw_decode``), then optional whitespace
and ``</tool_call>`` are required: the block ends where its JSON object ends, so a literal ``</tool_call>`` inside a
string argument is part of the argument.  ``arguments`` may also be a JSON string holding the object (OpenAI style);
a missing ``arguments`` means no arguments.  Errors: invalid or truncated JSON, a value that is not an object, a
missing or non-string ``name``, ``arguments`` that are not an object, a missing closing tag.  A malformed block
extends to its ``</tool_call>`` when one comes before the next ``<tool_call>`` (else, for invalid JSON, up to the
next ``<tool_call>`` or the end of the text; for a well-formed object without its tag, to the end of the object),
and scanning resumes after it.

``"compact"`` (small enough for character-level models)::

    @lookup(key=a, n=3, note="x, y)")

A call is ``@`` + identifier + ``(`` anywhere in the text, arguments ``key=value`` separated by ``,`` on one line
(spaces and tabs allowed around tokens), ``@name()`` for none.  A value is a JSON number, ``true`` / ``false`` /
``null``, a double-quoted JSON string (escapes as in JSON; ``,`` and ``)`` inside are text), a JSON array or object,
or a bare word ``[A-Za-z0-9_.-]+`` taken as a string, except that a bare word that is exactly a JSON number is that
number (``3`` is 3, ``1.5`` is 1.5, ``007`` and ``2024-01-01`` are strings).  An ``@`` not followed by an
identifier and ``(`` is plain text.  Errors: an unterminated ``(`` (a newline or the end of the text before ``)``),
a duplicate key, a missing ``=``, a bad value, anything but ``,`` or ``)`` after a value.  A malformed call extends
from its ``@`` to the first ``)`` outside quotes after the point of the error, stopping earlier at a newline or at
the next call marker.  ``format_calls`` writes bare words where they read back as the same string and JSON
otherwise, one call per line.

>>> p = get_parser("compact")
>>> turn = p.parse('Checking. @lookup(key=a, n=3)', turn=1)
>>> turn.content, [(c.id, c.name, c.arguments) for c in turn.calls]
('Checking.', [('call_1_0', 'lookup', {'key': 'a', 'n': 3})])
>>> p.format_calls([("lookup", {"key": "x y", "n": 3})])
'@lookup(key="x y", n=3)'
>>> h = get_parser("hermes").parse('<tool_call>{"name": "f", "arguments": {"s": "</tool_call>"}}</tool_call>')
>>> h.calls[0].arguments
{'s': '</tool_call>'}
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import ClassVar, Optional, Union

from .types import ToolCall

__all__ = ["ParsedTurn", "ToolParser", "HermesParser", "CompactParser", "register_parser", "get_parser",
           "list_parsers"]


@dataclass
class ParsedTurn:
    """What a parser read from an assistant turn.

    Attributes:
        content: the text with the call blocks removed, stripped.
        calls: every call, in text order (malformed ones with ``error`` set).
    """

    content: str
    calls: list[ToolCall] = field(default_factory=list)

    @property
    def errors(self) -> list[ToolCall]:
        """The malformed calls."""
        return [c for c in self.calls if c.error is not None]


class ToolParser:
    """Base class of the tool-call formats; subclasses set ``name`` and implement both methods."""

    name: ClassVar[str] = ""

    def parse(self, text: str, *, turn: int = 0) -> ParsedTurn:
        raise NotImplementedError

    def format_calls(self, calls: list[tuple[str, dict]]) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


_PARSERS: dict[str, type[ToolParser]] = {}


def register_parser(cls: type[ToolParser]) -> type[ToolParser]:
    """Class decorator: make ``cls`` available as ``get_parser(cls.name)``."""
    if not (isinstance(cls, type) and issubclass(cls, ToolParser)):
        raise TypeError(f"register_parser: expected a ToolParser subclass; got {cls!r}")
    if not isinstance(cls.name, str) or not cls.name:
        raise ValueError(f"register_parser: {cls.__name__} has no `name`")
    other = _PARSERS.get(cls.name)
    if other is not None and other is not cls and (other.__module__, other.__qualname__) != (cls.__module__,
                                                                                               cls.__qualname__):
        raise ValueError(f"register_parser: a parser named {cls.name!r} is already registered ({other.__name__})")
    _PARSERS[cls.name] = cls
    return cls


def get_parser(name: Union[str, ToolParser]) -> ToolParser:
    """A parser instance by registered name (an instance is returned as is)."""
    if isinstance(name, ToolParser):
        return name
    cls = _PARSERS.get(name)
    if cls is None:
        raise ValueError(f"unknown tool-call parser {name!r}; registered: {', '.join(list_parsers())}")
    return cls()


def list_parsers() -> list[str]:
    """The registered parser names, sorted."""
    return sorted(_PARSERS)


def _check_call(name: object, arguments: object, identifier: bool) -> None:
    if not isinstance(name, str) or not name or (identifier and not _IDENT.fullmatch(name)):
        raise ValueError(f"format_calls: tool name must be {'an identifier' if identifier else 'a non-empty str'}; "
                         f"got {name!r}")
    if not isinstance(arguments, dict):
        raise ValueError(f"format_calls: arguments of {name!r} must be a dict; got {type(arguments).__name__}")


# ---------------------------------------------------------------------------------------------------- hermes


@register_parser
class HermesParser(ToolParser):
    """``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks (see the module docstring)."""

    name = "hermes"
    OPEN: ClassVar[str] = "<tool_call>"
    CLOSE: ClassVar[str] = "</tool_call>"

    def parse(self, text: str, *, turn: int = 0) -> ParsedTurn:
        decoder = json.JSONDecoder()
        pieces: list[str] = []
        calls: list[ToolCall] = []
        pos = 0
        while True:
            start = text.find(self.OPEN, pos)
            if start < 0:
                pieces.append(text[pos:])
                break
            pieces.append(text[pos:start])
            body = start + len(self.OPEN)
            j = _skip_ws(text, body)
            next_open = text.find(self.OPEN, body)
            limit = len(text) if next_open < 0 else next_open
            name = arguments = None
            try:
                obj, end = decoder.raw_decode(text, j)
            except json.JSONDecodeError as e:
                close = text.find(self.CLOSE, j, limit)
                if close >= 0:
                    stop = close + len(self.CLOSE)
                else:  # truncated: the block runs to the next <tool_call> (or the end), trailing blanks excluded
                    stop = limit
                    while stop > body and text[stop - 1] in " \t\r\n":
                        stop -= 1
                where = "end of text" if e.pos >= len(text) else f"char {e.pos - j} of the JSON"
                error = f"invalid JSON in <tool_call>: {e.msg} ({where})"
            else:
                k = _skip_ws(text, end)
                if text.startswith(self.CLOSE, k):
                    stop, tag_error = k + len(self.CLOSE), None
                else:
                    close = text.find(self.CLOSE, end, limit)
                    stop = end if close < 0 else close + len(self.CLOSE)
                    found = "the end of the text" if k >= len(text) else repr(text[k:k + 20])
                    tag_error = f"missing {self.CLOSE} after the JSON object (found {found})"
                name, arguments, error = self._fields(obj)
                error = error or tag_error
            raw = text[start:stop]
            calls.append(ToolCall(id=f"call_{turn}_{len(calls)}", name=name, arguments=arguments, raw=raw,
                                  error=error))
            pos = stop
        return ParsedTurn(content="".join(pieces).strip(), calls=calls)

    @staticmethod
    def _fields(obj: object) -> tuple[Optional[str], Optional[dict], Optional[str]]:
        """(name, arguments, error) of a decoded call object."""
        if not isinstance(obj, dict):
            return None, None, f"a tool call must be a JSON object; got {_json_kind(obj)}"
        name = obj.get("name")
        arguments = obj.get("arguments", {})
        if isinstance(arguments, str):
            try:
                decoded = json.loads(arguments)
            except json.JSONDecodeError as e:
                decoded = e
            if not isinstance(decoded, dict):
                reason = (f"invalid JSON: {decoded.msg}" if isinstance(decoded, json.JSONDecodeError)
                          else f"holds {_json_kind(decoded)}")
                arguments, args_error = None, f"'arguments' is a string that does not decode to an object ({reason})"
            else:
                arguments, args_error = decoded, None
        elif not isinstance(arguments, dict):
            arguments, args_error = None, f"'arguments' must be a JSON object; got {_json_kind(arguments)}"
        else:
            args_error = None
        if "name" not in obj:
            return None, arguments, "missing 'name' in the tool call"
        if not isinstance(name, str) or not name:
            return None, arguments, f"'name' must be a non-empty string; got {json.dumps(name, ensure_ascii=False)}"
        return name, arguments, args_error

    def format_calls(self, calls: list[tuple[str, dict]]) -> str:
        out = []
        for name, arguments in calls:
            _check_call(name, arguments, identifier=False)
            payload = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
            out.append(f"{self.OPEN}\n{payload}\n{self.CLOSE}")
        return "\n".join(out)


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _json_kind(v: object) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    return "an object" if isinstance(v, dict) else type(v).__name__


# ---------------------------------------------------------------------------------------------------- compact

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MARKER = re.compile(r"@([A-Za-z_][A-Za-z0-9_]*)\(")
_BARE = re.compile(r"[A-Za-z0-9_.\-]+")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_LITERALS = {"true": True, "false": False, "null": None}


class _CallError(Exception):
    """A malformed compact call: ``recover`` is where the scan for the end of the broken call starts."""

    def __init__(self, message: str, recover: int):
        super().__init__(message)
        self.recover = recover


def _parse_value(text: str, p: int, key: str) -> tuple[object, int]:
    """(value, end) of the compact value starting at ``p``."""
    c = text[p] if p < len(text) else ""
    if c and c in '"[{':
        try:
            if c == '"':
                return json.decoder.scanstring(text, p + 1, True)
            return json.JSONDecoder().raw_decode(text, p)
        except json.JSONDecodeError as e:
            if e.msg.startswith("Unterminated string") or text[e.pos:e.pos + 1] in ("\n", "\r"):
                detail = "unterminated string"
            else:
                detail = f"{e.msg.removesuffix(' at')} (char {e.pos - p} of the value)"
            raise _CallError(f"bad value for argument {key!r}: {detail}", p) from None
    word, number = _BARE.match(text, p), _NUMBER.match(text, p)
    if number and (word is None or number.end() >= word.end()):
        return json.loads(number.group()), number.end()
    if word:
        w = word.group()
        return (_LITERALS[w] if w in _LITERALS else w), word.end()
    if c in ("", "\n", "\r"):
        raise _CallError(f"unterminated '(': missing value for argument {key!r}", p)
    found = "nothing" if c in ",)" else repr(c)
    raise _CallError(f"bad value for argument {key!r}: expected a number, true/false/null, a \"string\" or a bare "
                     f"word; found {found}", p)


def _skip_blank(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t":
        i += 1
    return i


def _recover_end(text: str, p: int) -> int:
    """End of a malformed call: after the first ``)`` outside quotes from ``p``, or at a newline / next marker."""
    in_string = False
    while p < len(text):
        c = text[p]
        if c in "\r\n":
            return p
        if in_string:
            if c == "\\":
                p += 1
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c == ")":
            return p + 1
        elif c == "@" and _MARKER.match(text, p):
            return p
        p += 1
    return len(text)


@register_parser
class CompactParser(ToolParser):
    """``@name(key=value, ...)`` calls (see the module docstring)."""

    name = "compact"

    def parse(self, text: str, *, turn: int = 0) -> ParsedTurn:
        pieces: list[str] = []
        calls: list[ToolCall] = []
        pos = 0
        while True:
            m = _MARKER.search(text, pos)
            if m is None:
                pieces.append(text[pos:])
                break
            pieces.append(text[pos:m.start()])
            name = m.group(1)
            try:
                arguments, stop, error = self._arguments(text, m.end(), name)
            except _CallError as e:
                arguments, error = None, str(e)
                stop = max(_recover_end(text, e.recover), m.end())
                while stop > m.end() and text[stop - 1] in " \t":
                    stop -= 1
            calls.append(ToolCall(id=f"call_{turn}_{len(calls)}", name=name, arguments=arguments,
                                  raw=text[m.start():stop], error=error))
            pos = stop
        return ParsedTurn(content="".join(pieces).strip(), calls=calls)

    @staticmethod
    def _arguments(text: str, p: int, name: str) -> tuple[Optional[dict], int, Optional[str]]:
        """(arguments, end after ``)``, soft error) of the argument list starting at ``p`` (after ``(``)."""
        args: dict = {}
        duplicate: Optional[str] = None
        p = _skip_blank(text, p)
        if p < len(text) and text[p] == ")":
            return args, p + 1, None
        while True:
            p = _skip_blank(text, p)
            if p >= len(text) or text[p] in "\r\n":
                raise _CallError(f"unterminated '(' in call to {name!r}", p)
            key = _IDENT.match(text, p)
            if key is None:
                raise _CallError(f"expected an argument name in call to {name!r}; found {text[p]!r}", p)
            k = key.group()
            p = _skip_blank(text, key.end())
            if p >= len(text) or text[p] != "=":
                raise _CallError(f"missing '=' after argument {k!r} in call to {name!r}", key.end())
            if k in args and duplicate is None:
                duplicate = k
            value, p = _parse_value(text, _skip_blank(text, p + 1), k)
            args[k] = value
            end_of_value = p
            p = _skip_blank(text, p)
            if p >= len(text) or text[p] in "\r\n":
                raise _CallError(f"unterminated '(' in call to {name!r}", end_of_value)
            if text[p] == ")":
                p += 1
                break
            if text[p] != ",":
                raise _CallError(f"expected ',' or ')' after argument {k!r} in call to {name!r}; found {text[p]!r}",
                                 end_of_value)
            p += 1
        if duplicate is not None:
            return None, p, f"duplicate argument {duplicate!r} in call to {name!r}"
        return args, p, None

    def format_calls(self, calls: list[tuple[str, dict]]) -> str:
        out = []
        for name, arguments in calls:
            _check_call(name, arguments, identifier=True)
            parts = []
            for k, v in arguments.items():
                if not isinstance(k, str) or not _IDENT.fullmatch(k):
                    raise ValueError(f"format_calls: argument names must be identifiers; got {k!r} in {name!r}")
                parts.append(f"{k}={_format_value(v)}")
            out.append(f"@{name}({', '.join(parts)})")
        return "\n".join(out)


def _format_value(v: object) -> str:
    if isinstance(v, str) and _BARE.fullmatch(v) and v not in _LITERALS:
        number = _NUMBER.match(v)
        if not (number and number.end() == len(v)):
            return v
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"format_calls: {v!r} has no JSON form")
    try:
        return json.dumps(v, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"format_calls: {v!r} has no JSON form ({e})") from None
