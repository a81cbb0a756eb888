"""Tool-call parsers: the hermes and compact formats, malformed calls kept with their errors, round trips, registry."""

from __future__ import annotations

import doctest
import json

import pytest

import lckernels_rl.agents.parsers
from lckernels_rl.agents.parsers import (CompactParser, HermesParser, ParsedTurn, ToolParser, get_parser,
                                         list_parsers, register_parser)
from lckernels_rl.agents.types import ToolCall


def test_docstring_examples():
    result = doctest.testmod(lckernels_rl.agents.parsers, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# ---------------------------------------------------------------------------------------------------- registry


def test_registry():
    assert {"hermes", "compact"} <= set(list_parsers())
    assert list_parsers() == sorted(list_parsers())
    assert isinstance(get_parser("hermes"), HermesParser) and isinstance(get_parser("compact"), CompactParser)
    with pytest.raises(ValueError, match=r"unknown tool-call parser 'xml'; registered: .*compact.*hermes"):
        get_parser("xml")
    p = CompactParser()
    assert get_parser(p) is p


def test_register_a_parser():
    @register_parser
    class Upper(ToolParser):
        name = "test_upper_xyz"

        def parse(self, text, *, turn=0):
            return ParsedTurn(content=text.upper())

        def format_calls(self, calls):
            return ""

    assert "test_upper_xyz" in list_parsers()
    assert get_parser("test_upper_xyz").parse("ab").content == "AB"

    class Other(ToolParser):
        name = "test_upper_xyz"

    with pytest.raises(ValueError, match="already registered"):
        register_parser(Other)

    class Nameless(ToolParser):
        pass

    with pytest.raises(ValueError, match="no `name`"):
        register_parser(Nameless)
    with pytest.raises(TypeError):
        register_parser(object)


# ---------------------------------------------------------------------------------------------------- hermes


def hermes(text, turn=0):
    return get_parser("hermes").parse(text, turn=turn)


def test_hermes_one_call_and_content():
    text = 'I will look it up.\n<tool_call>\n{"name": "lookup", "arguments": {"key": "a"}}\n</tool_call>'
    turn = hermes(text, turn=3)
    assert turn.content == "I will look it up."
    assert turn.calls == [ToolCall(id="call_3_0", name="lookup", arguments={"key": "a"},
                                   raw='<tool_call>\n{"name": "lookup", "arguments": {"key": "a"}}\n</tool_call>')]
    assert turn.calls[0].ok and turn.errors == []


def test_hermes_no_calls():
    assert hermes("  just text, no calls  ") == ParsedTurn(content="just text, no calls", calls=[])
    assert hermes("") == ParsedTurn(content="", calls=[])


def test_hermes_nested_arguments():
    text = ('<tool_call>{"name": "plan", "arguments": {"steps": [{"op": "add", "args": [1, 2]}, '
            '{"op": "neg", "args": [{"ref": 0}]}], "meta": {"deep": {"deeper": null}}}}</tool_call>')
    (call,) = hermes(text).calls
    assert call.ok and call.name == "plan"
    assert call.arguments == {"steps": [{"op": "add", "args": [1, 2]}, {"op": "neg", "args": [{"ref": 0}]}],
                              "meta": {"deep": {"deeper": None}}}


def test_hermes_closing_tag_inside_a_string_argument():
    text = ('<tool_call>{"name": "write", "arguments": {"text": "a </tool_call> b <tool_call> c"}}</tool_call> '
            'done')
    turn = hermes(text)
    assert len(turn.calls) == 1
    assert turn.calls[0].ok and turn.calls[0].arguments == {"text": "a </tool_call> b <tool_call> c"}
    assert turn.content == "done"


def test_hermes_two_calls_in_one_turn():
    text = ('First <tool_call>{"name": "a", "arguments": {"x": 1}}</tool_call> middle '
            '<tool_call>{"name": "b", "arguments": {}}</tool_call> last')
    turn = hermes(text, turn=1)
    assert [(c.id, c.name, c.arguments, c.error) for c in turn.calls] == [
        ("call_1_0", "a", {"x": 1}, None), ("call_1_1", "b", {}, None)]
    assert turn.content == "First  middle  last"


def test_hermes_arguments_as_a_json_string_and_missing_arguments():
    turn = hermes('<tool_call>{"name": "a", "arguments": "{\\"x\\": [1]}"}</tool_call>'
                  '<tool_call>{"name": "b"}</tool_call>')
    assert [(c.name, c.arguments, c.error) for c in turn.calls] == [("a", {"x": [1]}, None), ("b", {}, None)]


def test_hermes_truncated_json():
    text = 'Calling <tool_call>{"name": "lookup", "arguments": {"key": "a"'
    turn = hermes(text)
    (call,) = turn.calls
    assert call.id == "call_0_0" and call.name is None and call.arguments is None
    assert call.raw == '<tool_call>{"name": "lookup", "arguments": {"key": "a"'
    assert call.error == "invalid JSON in <tool_call>: Expecting ',' delimiter (end of text)"
    assert turn.content == "Calling"


def test_hermes_invalid_json_with_closing_tag_then_a_good_call():
    text = ('<tool_call>{"name": "a", "arguments": {x: 1}}</tool_call> and '
            '<tool_call>{"name": "b", "arguments": {"y": 2}}</tool_call>')
    turn = hermes(text)
    bad, good = turn.calls
    assert bad.raw == '<tool_call>{"name": "a", "arguments": {x: 1}}</tool_call>'
    assert bad.error == ("invalid JSON in <tool_call>: Expecting property name enclosed in double quotes "
                         "(char 28 of the JSON)")
    assert (good.id, good.name, good.arguments, good.error) == ("call_0_1", "b", {"y": 2}, None)
    assert turn.content == "and"


def test_hermes_truncated_block_followed_by_another():
    text = ('<tool_call>{"name": "a", "arguments": {"x": 1\n'
            '<tool_call>{"name": "b", "arguments": {}}</tool_call>')
    bad, good = hermes(text).calls
    assert bad.raw == '<tool_call>{"name": "a", "arguments": {"x": 1'
    assert bad.error.startswith("invalid JSON in <tool_call>: Expecting ',' delimiter")
    assert good.ok and good.name == "b"


def test_hermes_non_object_json():
    turn = hermes('<tool_call>["lookup", {"key": "a"}]</tool_call><tool_call>"lookup"</tool_call>'
                  '<tool_call>42</tool_call>')
    assert [(c.name, c.arguments, c.error) for c in turn.calls] == [
        (None, None, "a tool call must be a JSON object; got an array"),
        (None, None, "a tool call must be a JSON object; got a string"),
        (None, None, "a tool call must be a JSON object; got a number")]
    assert [c.raw for c in turn.calls] == ['<tool_call>["lookup", {"key": "a"}]</tool_call>',
                                           '<tool_call>"lookup"</tool_call>', '<tool_call>42</tool_call>']


def test_hermes_missing_name_and_bad_arguments():
    turn = hermes('<tool_call>{"arguments": {"k": 1}}</tool_call>'
                  '<tool_call>{"name": "", "arguments": {}}</tool_call>'
                  '<tool_call>{"name": "f", "arguments": [1, 2]}</tool_call>'
                  '<tool_call>{"name": "f", "arguments": "[1, 2]"}</tool_call>'
                  '<tool_call>{"name": "f", "arguments": "{oops"}</tool_call>'
                  '<tool_call>{"name": "f", "arguments": null}</tool_call>')
    assert [(c.name, c.arguments, c.error) for c in turn.calls] == [
        (None, {"k": 1}, "missing 'name' in the tool call"),
        (None, {}, "'name' must be a non-empty string; got \"\""),
        ("f", None, "'arguments' must be a JSON object; got an array"),
        ("f", None, "'arguments' is a string that does not decode to an object (holds an array)"),
        ("f", None, "'arguments' is a string that does not decode to an object (invalid JSON: Expecting property "
                    "name enclosed in double quotes)"),
        ("f", None, "'arguments' must be a JSON object; got null")]
    assert [c.id for c in turn.calls] == [f"call_0_{k}" for k in range(6)]


def test_hermes_missing_closing_tag():
    turn = hermes('<tool_call>{"name": "a", "arguments": {"x": 1}}\nThen I wait.')
    (call,) = turn.calls
    assert call.raw == '<tool_call>{"name": "a", "arguments": {"x": 1}}'
    assert call.error == "missing </tool_call> after the JSON object (found 'Then I wait.')"
    assert (call.name, call.arguments) == ("a", {"x": 1})  # recovered, but never executed
    assert turn.content == "Then I wait."

    (call,) = hermes('<tool_call>{"name": "a", "arguments": {}}').calls
    assert call.error == "missing </tool_call> after the JSON object (found the end of the text)"

    # junk between the object and a later closing tag: the block runs to the tag
    turn = hermes('<tool_call>{"name": "a", "arguments": {}} junk</tool_call> after')
    assert turn.calls[0].raw == '<tool_call>{"name": "a", "arguments": {}} junk</tool_call>'
    assert turn.calls[0].error == "missing </tool_call> after the JSON object (found 'junk</tool_call> aft')"
    assert turn.content == "after"

    # a closing tag missing before the next call does not swallow it
    a, b = hermes('<tool_call>{"name": "a", "arguments": {}}\n<tool_call>{"name": "b"}</tool_call>').calls
    assert a.error.startswith("missing </tool_call>") and a.raw == '<tool_call>{"name": "a", "arguments": {}}'
    assert b.ok and b.name == "b"


def test_hermes_every_opening_marker_is_a_call():
    text = "<tool_call><tool_call></tool_call><tool_call>"
    calls = hermes(text).calls
    assert [c.raw for c in calls] == ["<tool_call>", "<tool_call></tool_call>", "<tool_call>"]
    assert all(c.error.startswith("invalid JSON in <tool_call>: Expecting value") for c in calls)


def test_hermes_format_calls_round_trip():
    p = get_parser("hermes")
    calls = [("lookup", {"key": "a"}), ("write", {"text": "x </tool_call> é", "n": [1, {"k": None}]})]
    text = p.format_calls(calls)
    assert text == ('<tool_call>\n{"name": "lookup", "arguments": {"key": "a"}}\n</tool_call>\n'
                    '<tool_call>\n{"name": "write", "arguments": {"text": "x </tool_call> é", "n": [1, {"k": null}]}}'
                    '\n</tool_call>')
    turn = p.parse("Thinking.\n" + text)
    assert [(c.name, c.arguments, c.error) for c in turn.calls] == [(n, a, None) for n, a in calls]
    assert turn.content == "Thinking."
    with pytest.raises(ValueError, match="must be a dict"):
        p.format_calls([("f", [1])])


# ---------------------------------------------------------------------------------------------------- compact


def compact(text, turn=0):
    return get_parser("compact").parse(text, turn=turn)


def test_compact_values():
    text = ('Let me see @f(s="x, y) z", n=3, neg=-2, x=1.5, e=1e+3, t=true, f=false, z=null, w=hello_world, '
            'v=v1.2-rc, d=2024-01-01, lead=007, esc="a\\"b\\n\\u00e9") then')
    turn = compact(text, turn=4)
    (call,) = turn.calls
    assert call.ok and call.id == "call_4_0" and call.name == "f"
    assert call.arguments == {"s": "x, y) z", "n": 3, "neg": -2, "x": 1.5, "e": 1000.0, "t": True, "f": False,
                              "z": None, "w": "hello_world", "v": "v1.2-rc", "d": "2024-01-01", "lead": "007",
                              "esc": 'a"b\né'}
    assert type(call.arguments["n"]) is int and type(call.arguments["x"]) is float
    assert call.raw == text[len("Let me see "):-len(" then")]
    assert turn.content == "Let me see  then"


def test_compact_no_arguments_spacing_and_containers():
    turn = compact("@ping() @g( a = 1 ,b=two ) @h(xs=[1, 2], o={\"k\": \"v\"})")
    assert [(c.name, c.arguments, c.error) for c in turn.calls] == [
        ("ping", {}, None), ("g", {"a": 1, "b": "two"}, None), ("h", {"xs": [1, 2], "o": {"k": "v"}}, None)]
    assert [c.id for c in turn.calls] == ["call_0_0", "call_0_1", "call_0_2"]
    assert turn.content == ""


def test_compact_plain_at_signs():
    for text in ["mail me@example.com", "@ alone", "@name without parens", "@ f(x=1)", "@f (x=1)", "@1abc(x=1)",
                 "@(x=1)", "@@"]:
        assert compact(text) == ParsedTurn(content=text, calls=[]), text
    turn = compact("cc @team: @notify(who=team)")
    assert turn.content == "cc @team:" and [c.arguments for c in turn.calls] == [{"who": "team"}]


def test_compact_marker_inside_a_string_is_not_a_call():
    (call,) = compact('@say(text="use @other(x=1) here")').calls
    assert call.ok and call.arguments == {"text": "use @other(x=1) here"}


def test_compact_unterminated_paren():
    turn = compact("@f(a=1, b=2")
    (call,) = turn.calls
    assert (call.name, call.arguments, call.raw) == ("f", None, "@f(a=1, b=2")
    assert call.error == "unterminated '(' in call to 'f'"
    turn = compact("@f(a=1\nThe answer follows.")
    assert turn.calls[0].raw == "@f(a=1" and turn.calls[0].error == "unterminated '(' in call to 'f'"
    assert turn.content == "The answer follows."
    assert compact("@f(").calls[0].error == "unterminated '(' in call to 'f'"
    assert compact("@f(a=").calls[0].error == "unterminated '(': missing value for argument 'a'"


def test_compact_duplicate_key():
    turn = compact("@f(a=1, b=2, a=3) rest")
    (call,) = turn.calls
    assert call.error == "duplicate argument 'a' in call to 'f'"
    assert (call.name, call.arguments, call.raw) == ("f", None, "@f(a=1, b=2, a=3)")
    assert turn.content == "rest"


def test_compact_missing_equals():
    turn = compact("@f(a 1) rest")
    assert turn.calls[0].error == "missing '=' after argument 'a' in call to 'f'"
    assert turn.calls[0].raw == "@f(a 1)" and turn.content == "rest"
    assert compact("@f(a)").calls[0].error == "missing '=' after argument 'a' in call to 'f'"


def test_compact_bad_values():
    cases = {
        "@f(a=)": ("bad value for argument 'a': expected a number, true/false/null, a \"string\" or a bare word; "
                   "found nothing"),
        "@f(a=$x)": ("bad value for argument 'a': expected a number, true/false/null, a \"string\" or a bare word; "
                     "found '$'"),
        '@f(a="unterminated)': "bad value for argument 'a': unterminated string",
        '@f(a="bad \\q escape")': "bad value for argument 'a': Invalid \\escape (char 5 of the value)",
        "@f(a=[1, 2)": "bad value for argument 'a': Expecting ',' delimiter (char 5 of the value)",
        "@f(a=1 b=2)": "expected ',' or ')' after argument 'a' in call to 'f'; found 'b'",
        '@f(a="x"y)': "expected ',' or ')' after argument 'a' in call to 'f'; found 'y'",
        "@f(a=1,)": "expected an argument name in call to 'f'; found ')'",
        "@f(=1)": "expected an argument name in call to 'f'; found '='",
    }
    for text, error in cases.items():
        (call,) = compact(text).calls
        assert call.error == error, text
        assert (call.name, call.arguments, call.raw) == ("f", None, text), text


def test_compact_malformed_call_then_a_good_one():
    turn = compact('@f(a=1 @g(b=2) and @h(x="no end\n@k()')
    assert [(c.name, c.raw, c.error is None) for c in turn.calls] == [
        ("f", "@f(a=1", False), ("g", "@g(b=2)", True), ("h", '@h(x="no end', False), ("k", "@k()", True)]
    assert [c.id for c in turn.calls] == [f"call_0_{k}" for k in range(4)]
    assert turn.content == "and"
    # the end of a malformed call is the first ')' outside quotes
    (call,) = compact('@f(a b="x)y") tail').calls
    assert call.raw == '@f(a b="x)y")' and call.error == "missing '=' after argument 'a' in call to 'f'"


def test_compact_format_calls():
    p = get_parser("compact")
    calls = [("lookup", {"key": "a"}),
             ("f", {"w": "hello_world", "v": "v1.2-rc", "s": "x, y)", "num_str": "3", "float_str": "1.5",
                    "lit_str": "true", "null_str": "null", "lead": "007", "empty": "", "uni": "é", "n": 3,
                    "x": -1.5, "big": 1e16, "t": True, "z": None, "xs": [1, "a"], "o": {"k": None}}),
             ("ping", {})]
    text = p.format_calls(calls)
    assert text == ('@lookup(key=a)\n'
                    '@f(w=hello_world, v=v1.2-rc, s="x, y)", num_str="3", float_str="1.5", lit_str="true", '
                    'null_str="null", lead=007, empty="", uni="é", n=3, x=-1.5, big=1e+16, t=true, z=null, '
                    'xs=[1, "a"], o={"k": null})\n'
                    '@ping()')
    turn = p.parse(text, turn=2)
    assert [(c.name, c.arguments, c.error) for c in turn.calls] == [(n, a, None) for n, a in calls]
    assert type(turn.calls[1].arguments["big"]) is float and turn.calls[1].arguments["num_str"] == "3"
    assert turn.content == ""


def test_compact_format_calls_errors():
    p = get_parser("compact")
    with pytest.raises(ValueError, match="identifier"):
        p.format_calls([("bad-name", {})])
    with pytest.raises(ValueError, match="identifier"):
        p.format_calls([("f", {"bad key": 1})])
    with pytest.raises(ValueError, match="no JSON form"):
        p.format_calls([("f", {"x": float("nan")})])
    with pytest.raises(ValueError, match="no JSON form"):
        p.format_calls([("f", {"x": {1, 2}})])


def test_compact_round_trip_of_awkward_strings():
    p = get_parser("compact")
    strings = ["", " ", "a b", "-", "--x", "1", "-0", "1e5", "1.", ".5", "0x1F", "true", "True", "null", "NaN",
               'q"uote', "back\\slash", "new\nline", "tab\t", ")", ",", "@g(x=1)", "=", "ünï", "a.b_c-d"]
    calls = [("f", {f"k{i}": s}) for i, s in enumerate(strings)]
    text = p.format_calls(calls)
    assert "\n" not in text.replace("\n@f(", "")  # one call per line
    parsed = p.parse(text).calls
    assert [c.arguments for c in parsed] == [a for _, a in calls]
    assert all(isinstance(list(c.arguments.values())[0], str) for c in parsed)
    assert json.dumps([c.error for c in parsed]) == json.dumps([None] * len(strings))
