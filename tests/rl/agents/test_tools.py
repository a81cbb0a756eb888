"""Tools: schemas from signatures and docstrings, validation messages, invocation, running a turn's calls."""

from __future__ import annotations

import doctest
import json
import threading
import time
from typing import Any, Literal, Optional

import pytest

import lckernels_rl.agents.tools
from lckernels_rl.agents.parsers import get_parser
from lckernels_rl.agents.tools import Tool, ToolResult, as_tool_map, run_tool_calls, tool, tool_specs
from lckernels_rl.agents.types import Message, ToolCall, ToolSpec


@tool
def search(query: str, tags: list[str], mode: Literal["fast", "exact"] = "fast", limit: Optional[int] = None,
           weights: dict[str, float] | None = None, scale: float = 1.0, point: tuple[int, int] = (0, 0),
           verbose: bool = False) -> list:
    """Search the index
    for documents.

    A longer explanation that is not part of the description.

    Args:
        query: the text to look for.
        tags (list[str]): tags every hit must carry,
            all of them.
        mode: how to match.
        limit: at most this many hits.

    Returns:
        the hits.
    """
    return [query, tags, mode, limit, weights, scale, point, verbose]


SEARCH_PARAMETERS = {
    "type": "object",
    "properties": {
        "query": {"type": "string", "description": "the text to look for."},
        "tags": {"type": "array", "items": {"type": "string"},
                 "description": "tags every hit must carry, all of them."},
        "mode": {"type": "string", "enum": ["fast", "exact"], "description": "how to match.", "default": "fast"},
        "limit": {"type": ["integer", "null"], "description": "at most this many hits.", "default": None},
        "weights": {"type": ["object", "null"], "additionalProperties": {"type": "number"}, "default": None},
        "scale": {"type": "number", "default": 1.0},
        "point": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "integer"}], "minItems": 2,
                  "maxItems": 2, "default": [0, 0]},
        "verbose": {"type": "boolean", "default": False},
    },
    "required": ["query", "tags"],
    "additionalProperties": False,
}


@tool
def lookup(key: str) -> str:
    """Look a key up."""
    return {"a": "alpha", "b": "beta"}[key]


@tool
def add(a: int, b: int = 1) -> int:
    """Add two integers."""
    return a + b


def test_docstring_examples():
    result = doctest.testmod(lckernels_rl.agents.tools, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# ---------------------------------------------------------------------------------------------------- schemas


def test_schema_of_a_decorated_function():
    assert isinstance(search, Tool)
    assert search.name == "search"
    assert search.spec == ToolSpec(name="search", description="Search the index for documents.",
                                   parameters=SEARCH_PARAMETERS)
    assert search.spec.parameters == SEARCH_PARAMETERS  # literal, key by key
    assert search.description == "Search the index for documents."


def test_scalars_lists_any_and_no_docstring():
    @tool
    def f(i: int, x: float, s: str, b: bool, xs: list[int], ys: list, t: tuple[str, ...], d: dict, a: Any,
          la: list[Any], da: dict[str, Any], lit: Literal[1, 2], mixed: Literal["a", 1],
          opt_lit: Optional[Literal["x", "y"]] = None, nested: list[Optional[int]] = ()):
        pass

    assert f.spec.description == ""
    assert f.spec.parameters["properties"] == {
        "i": {"type": "integer"}, "x": {"type": "number"}, "s": {"type": "string"}, "b": {"type": "boolean"},
        "xs": {"type": "array", "items": {"type": "integer"}}, "ys": {"type": "array"},
        "t": {"type": "array", "items": {"type": "string"}}, "d": {"type": "object"}, "a": {},
        "la": {"type": "array", "items": {}}, "da": {"type": "object"},
        "lit": {"type": "integer", "enum": [1, 2]}, "mixed": {"enum": ["a", 1]},
        "opt_lit": {"type": ["string", "null"], "enum": ["x", "y", None], "default": None},
        "nested": {"type": "array", "items": {"type": ["integer", "null"]}, "default": []},
    }
    assert f.spec.parameters["required"] == ["i", "x", "s", "b", "xs", "ys", "t", "d", "a", "la", "da", "lit",
                                             "mixed"]


def test_decorator_forms_and_direct_call():
    @tool(name="kv_get", description="Get a value.")
    def get(key: str) -> str:
        """Ignored description."""
        return key.upper()

    @tool()
    def noop() -> None:
        pass

    assert get.name == "kv_get" and get.spec.name == "kv_get" and get.spec.description == "Get a value."
    assert get(key="x") == "X" and get.fn("y") == "Y"
    assert get.fn.__name__ == "get"
    assert noop.name == "noop" and noop.spec.parameters == {"type": "object", "properties": {}, "required": [],
                                                            "additionalProperties": False}
    assert tool_specs([get]) == [{"type": "function", "function": {
        "name": "kv_get", "description": "Get a value.",
        "parameters": {"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"],
                       "additionalProperties": False}}}]


def test_string_annotations_resolve():
    ns: dict = {}
    exec("from __future__ import annotations\nfrom typing import Optional\n"
         "def g(n: Optional[int] = None, xs: list[str] = ()) -> str:\n    return ''\n", ns)
    assert tool(ns["g"]).spec.parameters["properties"] == {
        "n": {"type": ["integer", "null"], "default": None},
        "xs": {"type": "array", "items": {"type": "string"}, "default": []}}


def test_decoration_errors_name_the_parameter():
    with pytest.raises(TypeError, match=r"parameter 'b'.*missing type annotation"):
        @tool
        def f1(a: int, b):
            pass
    with pytest.raises(TypeError, match=r"parameter 'items'.*unsupported annotation"):
        @tool
        def f2(items: set[int]):
            pass
    with pytest.raises(TypeError, match=r"parameter 'v'.*unsupported annotation"):
        @tool
        def f3(v: int | str):
            pass
    with pytest.raises(TypeError, match=r"parameter 'args'.*\*args"):
        @tool
        def f4(a: int, *args: int):
            pass
    with pytest.raises(TypeError, match=r"parameter 'kw'.*\*\*kwargs"):
        @tool
        def f5(**kw: int):
            pass
    with pytest.raises(TypeError, match=r"parameter 'd'.*dict keys must be str"):
        @tool
        def f6(d: dict[int, str]):
            pass
    with pytest.raises(TypeError, match=r"parameter 'p'.*positional-only"):
        @tool
        def f7(p: int, /):
            pass
    with pytest.raises(ValueError, match="identifier"):
        tool(lambda: None)  # named '<lambda>'


# ---------------------------------------------------------------------------------------------------- validation


def test_validation_messages():
    assert lookup.validate({"key": "a"}) is None
    assert lookup.validate({}) == "missing required argument 'key'"
    assert lookup.validate({"key": "a", "foo": 1}) == "unknown argument 'foo' (lookup accepts: key)"
    assert lookup.validate({"kye": "a"}) == "unknown argument 'kye' (lookup accepts: key)"  # unknown before missing
    assert lookup.validate({"key": 3}) == "argument 'key': expected string, got 3"
    assert lookup.validate([1]) == "arguments must be a JSON object, got [1]"
    assert add.validate({"a": "abc"}) == 'argument \'a\': expected integer, got "abc"'
    assert add.validate({"a": 1.5}) == "argument 'a': expected integer, got 1.5"
    assert add.validate({"a": 1, "b": None}) == "argument 'b': expected integer, got null"
    assert add.validate({}) == "missing required argument 'a'"
    assert add.validate({"a": 1, "c": 2, "d": 3}) == "unknown arguments 'c', 'd' (add accepts: a, b)"


def test_validation_messages_search():
    ok = {"query": "q", "tags": ["x"]}
    assert search.validate(ok) is None
    assert search.validate({}) == "missing required arguments 'query', 'tags'"
    assert search.validate({**ok, "scale": 2}) is None  # an int is a number
    assert search.validate({**ok, "limit": None, "weights": None}) is None  # Optional accepts null
    assert search.validate({**ok, "limit": 3, "weights": {"w": 0.5}}) is None
    assert search.validate({**ok, "tags": ["x", 3]}) == "argument 'tags', item 1: expected string, got 3"
    assert search.validate({**ok, "mode": "slow"}) == 'argument \'mode\': expected one of "fast", "exact", got "slow"'
    assert search.validate({**ok, "mode": 5}) == 'argument \'mode\': expected one of "fast", "exact", got 5'
    assert search.validate({**ok, "limit": "3"}) == 'argument \'limit\': expected integer or null, got "3"'
    assert search.validate({**ok, "weights": {"w": "heavy"}}) == 'argument \'weights\', key "w": expected number, ' \
                                                                 'got "heavy"'
    assert search.validate({**ok, "point": [1, 2, 3]}) == "argument 'point': expected exactly 2 items, got 3"
    assert search.validate({**ok, "point": [1, "y"]}) == 'argument \'point\', item 1: expected integer, got "y"'


def test_bool_is_not_a_number():
    assert add.validate({"a": True}) == "argument 'a': expected integer, got true"
    assert search.validate({"query": "q", "tags": [], "scale": False}) == "argument 'scale': expected number, got " \
                                                                          "false"
    assert search.validate({"query": "q", "tags": [], "verbose": 1}) == "argument 'verbose': expected boolean, got 1"


# ---------------------------------------------------------------------------------------------------- invoke


def test_invoke_results_and_coercion():
    assert add.invoke({"a": 2, "b": 3}) == ToolResult(content="5", is_error=False, traceback=None)
    assert add.invoke({"a": 2.0}).content == "3"  # integral float -> int
    assert lookup.invoke({"key": "a"}) == ToolResult(content="alpha")  # a str as is (no JSON quotes)
    out = search.invoke({"query": "é", "tags": ["t"], "scale": 2, "point": [1, 2]})
    assert out.content == '["é", ["t"], "fast", null, null, 2.0, [1, 2], false]'  # json, ensure_ascii=False
    assert not out.is_error

    seen = {}

    @tool
    def kinds(x: float, p: tuple[int, int], xs: list[float] = ()) -> None:
        seen.update(x=x, p=p, xs=xs)

    assert kinds.invoke({"x": 2, "p": [1, 2], "xs": [1, 2.5]}) == ToolResult(content="")  # None -> ""
    assert seen == {"x": 2.0, "p": (1, 2), "xs": [1.0, 2.5]}
    assert type(seen["x"]) is float and type(seen["xs"][0]) is float and type(seen["p"]) is tuple


def test_invoke_validation_error():
    r = lookup.invoke({})
    assert r == ToolResult(content="error: missing required argument 'key'", is_error=True, traceback=None)
    r = add.invoke({"a": "abc"})
    assert r.is_error and r.content == 'error: argument \'a\': expected integer, got "abc"'


def test_raising_tool_becomes_an_error_result():
    @tool
    def divide(a: int, b: int) -> float:
        return a / b

    r = divide.invoke({"a": 1, "b": 0})
    assert r.is_error
    assert r.content == "error: ZeroDivisionError: division by zero"
    assert r.traceback.startswith("Traceback (most recent call last)")
    assert "in divide" in r.traceback and "return a / b" in r.traceback
    assert r.traceback.rstrip().endswith("ZeroDivisionError: division by zero")

    r = lookup.invoke({"key": "zzz"})
    assert r.is_error and r.content == "error: KeyError: 'zzz'" and "KeyError" in r.traceback

    @tool
    def bare() -> str:
        raise RuntimeError()

    assert bare.invoke({}).content == "error: RuntimeError"
    with pytest.raises(RuntimeError):
        bare()  # __call__ is the raw function


def test_non_json_result_is_an_error():
    @tool
    def odd() -> object:
        return {1, 2}

    r = odd.invoke({})
    assert r.is_error and r.content.startswith("error: tool 'odd' returned a value that is not JSON serializable")


# ---------------------------------------------------------------------------------------------------- run_tool_calls


def _call(i, name, arguments, error=None):
    return ToolCall(id=f"call_0_{i}", name=name, arguments=arguments, raw="...", error=error)


def test_run_tool_calls_messages_in_call_order():
    calls = [_call(0, "lookup", {"key": "b"}), _call(1, "add", {"a": 1}), _call(2, "nope", {}),
             _call(3, None, None, error="invalid JSON"), _call(4, "lookup", {})]
    for concurrent in (True, False):
        msgs = run_tool_calls([lookup, add], calls, concurrent=concurrent)
        assert msgs == [
            Message(role="tool", content="beta", tool_call_id="call_0_0", name="lookup", is_error=False),
            Message(role="tool", content="2", tool_call_id="call_0_1", name="add", is_error=False),
            Message(role="tool", content="error: unknown tool 'nope'; available: add, lookup",
                    tool_call_id="call_0_2", name="nope", is_error=True),
            Message(role="tool", content="error: could not parse tool call: invalid JSON", tool_call_id="call_0_3",
                    name=None, is_error=True),
            Message(role="tool", content="error: missing required argument 'key'", tool_call_id="call_0_4",
                    name="lookup", is_error=True),
        ]
    assert msgs[2].to_dict() == {"role": "tool", "content": "error: unknown tool 'nope'; available: add, lookup",
                                 "tool_call_id": "call_0_2", "name": "nope"}
    assert run_tool_calls({}, [_call(0, "x", {})])[0].content == "error: unknown tool 'x'; available: (none)"
    assert run_tool_calls([], []) == []


def test_parse_error_call_is_not_executed():
    ran = []

    @tool
    def mark(tag: str) -> str:
        ran.append(tag)
        return "ok"

    msgs = run_tool_calls({"mark": mark}, [_call(0, "mark", {"tag": "x"}, error="missing </tool_call>"),
                                           _call(1, "mark", {"tag": "y"})])
    assert ran == ["y"]
    assert [m.content for m in msgs] == ["error: could not parse tool call: missing </tool_call>", "ok"]


def test_concurrency_keeps_call_order():
    @tool
    def nap(seconds: float, tag: str) -> str:
        time.sleep(seconds)
        return tag

    delays = [0.4, 0.3, 0.2, 0.1, 0.0]
    calls = [_call(i, "nap", {"seconds": d, "tag": f"t{i}"}) for i, d in enumerate(delays)]
    t0 = time.perf_counter()
    msgs = run_tool_calls([nap], calls, max_workers=8)
    elapsed = time.perf_counter() - t0
    assert [m.content for m in msgs] == ["t0", "t1", "t2", "t3", "t4"]
    assert [m.tool_call_id for m in msgs] == ["call_0_0", "call_0_1", "call_0_2", "call_0_3", "call_0_4"]
    assert elapsed < 0.9  # sequential would take 1.0 s


def test_concurrent_calls_really_overlap():
    barrier = threading.Barrier(3, timeout=10)

    @tool
    def meet(tag: str) -> str:
        barrier.wait()  # only returns once three calls are in flight at the same time
        return tag

    msgs = run_tool_calls([meet], [_call(i, "meet", {"tag": str(i)}) for i in range(3)], max_workers=3)
    assert [m.content for m in msgs] == ["0", "1", "2"] and not any(m.is_error for m in msgs)

    threads = []

    @tool
    def where() -> str:
        threads.append(threading.get_ident())
        return ""

    run_tool_calls([where], [_call(i, "where", {}) for i in range(3)], concurrent=False)
    assert set(threads) == {threading.get_ident()}
    with pytest.raises(ValueError, match="max_workers"):
        run_tool_calls([where], [], max_workers=0)


def test_tool_maps():
    assert as_tool_map([lookup, add]) == {"lookup": lookup, "add": add}
    with pytest.raises(ValueError, match="two tools are named 'add'"):
        as_tool_map([add, add])

    def double(x: int) -> int:
        return 2 * x

    table = as_tool_map({"twice": double})  # a plain function is wrapped, named by its key
    assert table["twice"].name == "twice" and table["twice"].invoke({"x": 4}).content == "8"
    assert [s["function"]["name"] for s in tool_specs({"twice": double, "add": add})] == ["twice", "add"]


# ---------------------------------------------------------------------------------------------------- through a parser


def test_hermes_turn_through_run_tool_calls():
    text = ('Let me check. <tool_call>{"name": "lookup", "arguments": {"key": "a"}}</tool_call>\n'
            '<tool_call>{"name": "add", "arguments": {"a": "one"}}</tool_call>\n'
            '<tool_call>{"name": "delete_all", "arguments": {}}</tool_call>\n'
            '<tool_call>{"name": "add", "arguments": {"a": 1,</tool_call>')
    turn = get_parser("hermes").parse(text, turn=2)
    assert turn.content == "Let me check."
    msgs = run_tool_calls([lookup, add], turn.calls)
    assert [(m.tool_call_id, m.name, m.is_error) for m in msgs] == [
        ("call_2_0", "lookup", False), ("call_2_1", "add", True), ("call_2_2", "delete_all", True),
        ("call_2_3", None, True)]
    assert msgs[0].content == "alpha"
    assert msgs[1].content == 'error: argument \'a\': expected integer, got "one"'
    assert msgs[2].content == "error: unknown tool 'delete_all'; available: add, lookup"
    assert msgs[3].content.startswith("error: could not parse tool call: invalid JSON in <tool_call>: ")


def test_compact_turn_through_run_tool_calls():
    turn = get_parser("compact").parse("@add(a=2, b=40) @add(a=x) @lookup(key=b, extra=1)")
    msgs = run_tool_calls([lookup, add], turn.calls)
    assert [m.content for m in msgs] == [
        "42", 'error: argument \'a\': expected integer, got "x"',
        "error: unknown argument 'extra' (lookup accepts: key)"]
    assert [m.is_error for m in msgs] == [False, True, True]
    assert json.loads(msgs[0].content) == 42
