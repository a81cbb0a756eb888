"""Python functions as agent tools: :func:`tool`, :class:`Tool`, :func:`run_tool_calls`, :func:`tool_specs`.

``@tool`` turns a typed function into a :class:`Tool` whose :class:`~lckernels_rl.agents.types.ToolSpec` (the OpenAI
function schema the model is shown) is read from the function itself:

* the description is the docstring's first paragraph (lines joined by single spaces); each parameter's
  ``description`` is its entry under a Google-style ``Args:`` section (``name: text`` or ``name (type): text``,
  continuation lines indented deeper);
* the JSON schema of each parameter comes from its annotation: ``int`` -> ``integer``, ``float`` -> ``number``
  (ints accepted), ``str`` -> ``string``, ``bool`` -> ``boolean``, ``list[T]`` / ``tuple[T, ...]`` -> ``array``
  with ``items``, ``tuple[A, B]`` -> a fixed-length ``array`` (``prefixItems``), ``dict`` / ``dict[str, T]`` ->
  ``object``, ``Literal[...]`` -> ``enum``, ``Optional[T]`` / ``T | None`` -> ``T``'s schema that also accepts
  ``null``, ``Any`` -> any value.  A parameter with a default is not ``required`` (a JSON-serializable default is
  shown as ``default``); unknown arguments are rejected (``additionalProperties: false``);
* an unannotated parameter, an annotation outside that list, a positional-only parameter or ``*args`` /
  ``**kwargs`` raise ``TypeError`` at decoration time, naming the parameter.

:meth:`Tool.invoke` never raises: arguments are validated with ``jsonschema`` first and the first problem is
reported as a message naming the argument (``missing required argument 'key'``, ``unknown argument 'foo' (lookup
accepts: key)``, ``argument 'n': expected integer, got "abc"``); a tool that raises yields an error result holding
the exception and its traceback.  Validated arguments are passed with light coercion to the annotation (an int for a
``float`` parameter becomes a float, an integral float for an ``int`` parameter an int, a list for a ``tuple``
parameter a tuple).  A result that is not a ``str`` is sent to the model as JSON; ``None`` as the empty string.

:func:`run_tool_calls` answers the parsed calls of one assistant turn with one ``tool`` message each, in call order:
a call that failed to parse and a call to an unknown tool are answered with an error message without running
anything; the others run concurrently in a thread pool.

>>> @tool
... def add(a: int, b: int = 1) -> int:
...     '''Add two integers.
...
...     Args:
...         a: the first term.
...         b: the second term.
...     '''
...     return a + b
>>> add.spec.parameters["required"]
['a']
>>> add.invoke({"a": 2, "b": 3}).content
'5'
>>> add.invoke({"a": "two"}).content
'error: argument \\'a\\': expected integer, got "two"'
"""

from __future__ import annotations

import functools
import inspect
import json
import re
import traceback as _traceback
import types
import typing
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal, Mapping, Optional, Union

import jsonschema

from .types import Message, ToolCall, ToolSpec

__all__ = ["Tool", "ToolResult", "tool", "run_tool_calls", "tool_specs", "as_tool_map"]

_NONE = type(None)
_UNION_TYPES = (Union, types.UnionType) if hasattr(types, "UnionType") else (Union,)
_SCALARS = {int: "integer", float: "number", str: "string", bool: "boolean"}


# ---------------------------------------------------------------------------------------------------- results


@dataclass
class ToolResult:
    """The outcome of one tool invocation.

    Attributes:
        content: the text sent back to the model (``error: ...`` for an error).
        is_error: whether the call failed (bad arguments, or the tool raised).
        traceback: the formatted traceback when the tool raised (``None`` otherwise).
    """

    content: str
    is_error: bool = False
    traceback: Optional[str] = None


# ---------------------------------------------------------------------------------------------------- schemas


def _json_schema(ann: Any, where: str) -> dict:
    """The JSON schema of annotation ``ann``; ``where`` names the parameter for the ``TypeError``."""
    if ann is Any:
        return {}
    if ann in _SCALARS:
        return {"type": _SCALARS[ann]}
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Annotated:  # get_type_hints strips these; keep robust when handed one directly
        return _json_schema(args[0], where)
    if origin in _UNION_TYPES:
        members = [a for a in args if a is not _NONE]
        if len(members) == 1 and len(members) < len(args):
            return _nullable(_json_schema(members[0], where))
        raise TypeError(f"{where}: unsupported annotation {_ann_name(ann)} (only Optional[T] / T | None unions "
                        f"are supported)")
    if origin is Literal:
        if not args or not all(a is None or type(a) in (str, int, bool) for a in args):
            raise TypeError(f"{where}: Literal values must be str, int, bool or None; got {_ann_name(ann)}")
        values = [a for a in args if a is not None]
        schema: dict = {}
        kinds = {type(a) for a in values}
        if len(kinds) == 1:
            schema["type"] = _SCALARS[kinds.pop()]
        schema["enum"] = list(values)
        return _nullable(schema) if None in args else schema
    if ann is list or origin is list:
        if not args:
            return {"type": "array"}
        return {"type": "array", "items": _json_schema(args[0], where)}
    if ann is tuple or origin is tuple:
        if not args or args == ((),):
            return {"type": "array"} if not args else {"type": "array", "maxItems": 0}
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": _json_schema(args[0], where)}
        return {"type": "array", "prefixItems": [_json_schema(a, where) for a in args], "minItems": len(args),
                "maxItems": len(args)}
    if ann is dict or origin is dict:
        if not args:
            return {"type": "object"}
        if args[0] is not str:
            raise TypeError(f"{where}: dict keys must be str (JSON object keys); got {_ann_name(ann)}")
        value = _json_schema(args[1], where)
        return {"type": "object"} if value == {} else {"type": "object", "additionalProperties": value}
    raise TypeError(f"{where}: unsupported annotation {_ann_name(ann)} (supported: int, float, str, bool, list[T], "
                    f"tuple, dict[str, T], Literal[...], Optional[T], Any)")


def _nullable(schema: dict) -> dict:
    """``schema`` that also accepts ``null``."""
    if not schema:
        return schema
    out = dict(schema)
    if "type" in out:
        t = out["type"]
        out["type"] = (list(t) if isinstance(t, list) else [t]) + ["null"]
    if "enum" in out:
        out["enum"] = list(out["enum"]) + [None]
    return out


def _ann_name(ann: Any) -> str:
    if isinstance(ann, type):
        return ann.__name__
    return repr(ann).replace("typing.", "")


def _coerce(value: Any, ann: Any) -> Any:
    """``value`` (valid for ``ann``'s schema) adapted to the Python annotation: int<->float, list->tuple."""
    if value is None or ann is Any:
        return value
    if ann is float:
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if ann is int:
        return int(value) if isinstance(value, float) and value.is_integer() else value
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Annotated:
        return _coerce(value, args[0])
    if origin in _UNION_TYPES:
        members = [a for a in args if a is not _NONE]
        return _coerce(value, members[0]) if len(members) == 1 else value
    if (ann is list or origin is list) and isinstance(value, list):
        return [_coerce(v, args[0]) for v in value] if args else list(value)
    if (ann is tuple or origin is tuple) and isinstance(value, (list, tuple)):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0]) for v in value)
        if args and args != ((),) and len(args) == len(value):
            return tuple(_coerce(v, a) for v, a in zip(value, args))
        return tuple(value)
    if origin is dict and isinstance(value, dict) and args:
        return {k: _coerce(v, args[1]) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------------------------------- docstrings

_ARGS_HEADER = re.compile(r"^(\s*)(Args|Arguments|Parameters|Params)\s*:\s*$")
_ARG_ENTRY = re.compile(r"^\s*\**([A-Za-z_]\w*)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def _parse_docstring(doc: Optional[str]) -> tuple[str, dict[str, str]]:
    """(first paragraph, {parameter: description}) of a Google-style docstring."""
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    first: list[str] = []
    for line in lines:
        if not line.strip() or _ARGS_HEADER.match(line):
            if first or _ARGS_HEADER.match(line):
                break
            continue
        first.append(line.strip())
    params: dict[str, str] = {}
    for i, line in enumerate(lines):
        m = _ARGS_HEADER.match(line)
        if not m:
            continue
        header_indent = len(m.group(1))
        entry_indent = None
        current = None
        for body in lines[i + 1:]:
            if not body.strip():
                continue
            indent = len(body) - len(body.lstrip())
            if indent <= header_indent:
                break
            if entry_indent is None:
                entry_indent = indent
            e = _ARG_ENTRY.match(body) if indent == entry_indent else None
            if e:
                current = e.group(1)
                params[current] = e.group(2).strip()
            elif current is not None and indent > entry_indent:
                params[current] = (params[current] + " " + body.strip()).strip()
        break
    return " ".join(first), params


# ---------------------------------------------------------------------------------------------------- validation

def _render(value: Any, limit: int = 60) -> str:
    try:
        s = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        s = repr(value)
    return s if len(s) <= limit else s[:limit - 3] + "..."


def _expected(t: Any) -> str:
    return " or ".join(t) if isinstance(t, list) else str(t)


def _where(path: list) -> str:
    """``argument 'xs'`` / ``argument 'xs', item 2`` / ``argument 'opts', key "k"``."""
    s = f"argument {path[0]!r}"
    for p in path[1:]:
        s += f", item {p}" if isinstance(p, int) else f", key {json.dumps(p, ensure_ascii=False)}"
    return s


# ---------------------------------------------------------------------------------------------------- Tool


class Tool:
    """A Python function exposed to the model as a tool (build it with :func:`tool`).

    Attributes:
        name: the tool's name (the function's name unless given).
        spec: the :class:`ToolSpec` (OpenAI function schema) shown to the model.
        fn: the undecorated function.
    """

    def __init__(self, fn: Callable, *, name: Optional[str] = None, description: Optional[str] = None):
        if isinstance(fn, Tool):
            fn = fn.fn
        if not callable(fn):
            raise TypeError(f"tool: expected a function; got {type(fn).__name__}")
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.name = name if name is not None else getattr(fn, "__name__", None)
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"tool: the name must be an identifier; got {self.name!r}")
        doc_description, doc_params = _parse_docstring(inspect.getdoc(fn))
        try:
            hints = typing.get_type_hints(fn)
        except Exception as e:  # an unresolvable string annotation
            raise TypeError(f"tool {self.name!r}: could not resolve the annotations: {e}") from e
        properties: dict[str, dict] = {}
        required: list[str] = []
        self._annotations: dict[str, Any] = {}
        for p in inspect.signature(fn).parameters.values():
            where = f"tool {self.name!r}, parameter {p.name!r}"
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise TypeError(f"{where}: *args / **kwargs are not supported (a tool's arguments are a fixed set "
                                f"of named parameters)")
            if p.kind is p.POSITIONAL_ONLY:
                raise TypeError(f"{where}: positional-only parameters are not supported (tools are called with "
                                f"keyword arguments)")
            if p.name not in hints:
                raise TypeError(f"{where}: missing type annotation (the JSON schema is built from it)")
            ann = hints[p.name]
            schema = _json_schema(ann, where)
            if p.name in doc_params and doc_params[p.name]:
                schema = {**schema, "description": doc_params[p.name]}
            if p.default is p.empty:
                required.append(p.name)
            else:
                default = list(p.default) if isinstance(p.default, tuple) else p.default
                try:
                    if json.loads(json.dumps(default)) == default:
                        schema = {**schema, "default": default}
                except (TypeError, ValueError):
                    pass
            properties[p.name] = schema
            self._annotations[p.name] = ann
        parameters = {"type": "object", "properties": properties, "required": required,
                      "additionalProperties": False}
        jsonschema.Draft202012Validator.check_schema(parameters)
        self.spec = ToolSpec(name=self.name, description=description if description is not None
                             else doc_description, parameters=parameters)
        self._validator = jsonschema.Draft202012Validator(parameters)

    @property
    def description(self) -> str:
        return self.spec.description

    def __call__(self, *args, **kwargs):
        """Call the function directly (no validation, exceptions propagate)."""
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"

    def validate(self, arguments: Any) -> Optional[str]:
        """``None`` when ``arguments`` fit the schema, else a message naming the first offending argument."""
        if not isinstance(arguments, dict):
            return f"arguments must be a JSON object, got {_render(arguments)}"
        errors = list(self._validator.iter_errors(arguments))
        if not errors:
            return None
        order = {name: i for i, name in enumerate(self.spec.parameters["properties"])}

        def rank(e: jsonschema.ValidationError):
            path = list(e.absolute_path)
            if not path:
                return (0 if e.validator == "additionalProperties" else 1 if e.validator == "required" else 2, 0, 0,
                        0)
            return (3, order.get(path[0], len(order)), len(path),
                    0 if e.validator == "enum" else 1 if e.validator == "type" else 2)

        return self._message(min(errors, key=rank))

    def _message(self, e: jsonschema.ValidationError) -> str:
        path = list(e.absolute_path)
        props = self.spec.parameters["properties"]
        if not path and e.validator == "additionalProperties":
            unknown = [k for k in e.instance if k not in props]
            accepts = f"{self.name} accepts: {', '.join(props)}" if props else f"{self.name} accepts no arguments"
            word = "argument" if len(unknown) == 1 else "arguments"
            return f"unknown {word} {', '.join(repr(k) for k in unknown)} ({accepts})"
        if not path and e.validator == "required":
            missing = [k for k in e.validator_value if k not in e.instance]
            word = "argument" if len(missing) == 1 else "arguments"
            return f"missing required {word} {', '.join(repr(k) for k in missing)}"
        where = _where(path) if path else "arguments"
        if e.validator == "type":
            return f"{where}: expected {_expected(e.validator_value)}, got {_render(e.instance)}"
        if e.validator == "enum":
            options = ", ".join(_render(v) for v in e.validator_value)
            return f"{where}: expected one of {options}, got {_render(e.instance)}"
        if e.validator in ("minItems", "maxItems") and isinstance(e.instance, list):
            lo, hi = e.schema.get("minItems"), e.schema.get("maxItems")
            n = f"exactly {lo}" if lo == hi else f"at least {lo}" if e.validator == "minItems" else f"at most {hi}"
            return f"{where}: expected {n} items, got {len(e.instance)}"
        return f"{where}: {e.message}"

    def invoke(self, arguments: Optional[Mapping] = None) -> ToolResult:
        """Validate ``arguments``, call the tool, and return its result; never raises an ``Exception``."""
        if arguments is None:
            arguments = {}
        problem = self.validate(arguments)
        if problem is not None:
            return ToolResult(content=f"error: {problem}", is_error=True)
        kwargs = {k: _coerce(v, self._annotations[k]) for k, v in arguments.items()}
        try:
            result = self.fn(**kwargs)
        except Exception as e:
            msg = str(e)
            return ToolResult(content=f"error: {type(e).__name__}: {msg}" if msg else f"error: {type(e).__name__}",
                              is_error=True, traceback=_traceback.format_exc())
        if result is None:
            return ToolResult(content="")
        if isinstance(result, str):
            return ToolResult(content=result)
        try:
            return ToolResult(content=json.dumps(result, ensure_ascii=False))
        except (TypeError, ValueError) as e:
            return ToolResult(content=f"error: tool {self.name!r} returned a value that is not JSON serializable: "
                                      f"{e}", is_error=True, traceback=_traceback.format_exc())


def tool(fn: Optional[Callable] = None, *, name: Optional[str] = None,
         description: Optional[str] = None) -> Union[Tool, Callable[[Callable], Tool]]:
    """Decorator: ``@tool`` or ``@tool(name=..., description=...)`` turns a typed function into a :class:`Tool`.

    Args:
        fn: the function (when used bare).
        name: the tool's name (default: the function's name).
        description: the tool's description (default: the docstring's first paragraph).
    """
    if fn is None:
        return lambda f: Tool(f, name=name, description=description)
    return Tool(fn, name=name, description=description)


# ---------------------------------------------------------------------------------------------------- running


def as_tool_map(tools: Union[Mapping[str, Tool], Iterable[Tool]]) -> dict[str, Tool]:
    """``{name: Tool}`` from a mapping or a list of tools (plain functions are wrapped with :func:`tool`)."""
    if isinstance(tools, Mapping):
        return {k: v if isinstance(v, Tool) else Tool(v, name=k) for k, v in tools.items()}
    out: dict[str, Tool] = {}
    for t in tools:
        t = t if isinstance(t, Tool) else Tool(t)
        if t.name in out:
            raise ValueError(f"two tools are named {t.name!r}")
        out[t.name] = t
    return out


def tool_specs(tools: Union[Mapping[str, Tool], Iterable[Tool]]) -> list[dict]:
    """The OpenAI function-tool schemas of ``tools`` (in their order)."""
    return [t.spec.to_openai() for t in as_tool_map(tools).values()]


def run_tool_calls(tools: Union[Mapping[str, Tool], Iterable[Tool]], calls: Iterable[ToolCall], *,
                   concurrent: bool = True, max_workers: int = 8) -> list[Message]:
    """Answer each call with a ``tool`` message, in call order.

    A call that failed to parse (``error`` set) is answered ``error: could not parse tool call: <error>`` and a call
    to an unknown tool ``error: unknown tool 'x'; available: a, b``; neither runs.  The others run through
    :meth:`Tool.invoke` (in a thread pool of up to ``max_workers`` when ``concurrent`` and there are several).
    """
    if max_workers < 1:
        raise ValueError(f"run_tool_calls: max_workers must be >= 1; got {max_workers}")
    table = as_tool_map(tools)
    calls = list(calls)
    results: list[Optional[ToolResult]] = [None] * len(calls)
    todo: list[tuple[int, Tool, Any]] = []
    for i, call in enumerate(calls):
        if call.error is not None:
            results[i] = ToolResult(content=f"error: could not parse tool call: {call.error}", is_error=True)
        elif call.name not in table:
            available = ", ".join(sorted(table)) or "(none)"
            results[i] = ToolResult(content=f"error: unknown tool {call.name!r}; available: {available}",
                                    is_error=True)
        else:
            todo.append((i, table[call.name], call.arguments))
    if concurrent and len(todo) > 1:
        with ThreadPoolExecutor(max_workers=min(max_workers, len(todo))) as pool:
            futures = [(i, pool.submit(t.invoke, args)) for i, t, args in todo]
            for i, f in futures:
                results[i] = f.result()
    else:
        for i, t, args in todo:
            results[i] = t.invoke(args)
    return [Message(role="tool", content=r.content, tool_call_id=c.id, name=c.name, is_error=r.is_error)
            for c, r in zip(calls, results)]
