"""Renderers: hand-written renderings, deltas after an assistant turn, and the append-only self test."""

from __future__ import annotations

import string

import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("transformers")

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from lckernels_rl.agents.renderer import (CHATML_TEMPLATE, PLAIN_CHAT_TOKENS, HFChatRenderer,  # noqa: E402
                                          PlainChatRenderer, RawRenderer, Renderer, TemplateError, make_renderer)
from lckernels_rl.agents.types import Message, ToolSpec  # noqa: E402
from lckernels_rl.models import build_char_tokenizer  # noqa: E402

BASE = ("<pad>", "<s>", "</s>", "<unk>")


# ------------------------------------------------------------------ tokenizers built here
def word_tokenizer():
    """Whitespace word-level tokenizer; the plain chat tokens are special tokens 4..8."""
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3,
             "<|system|>": 4, "<|user|>": 5, "<|assistant|>": 6, "<|tool|>": 7, "<|end|>": 8,
             "be": 9, "brief": 10, "hi": 11, "hello": 12, "bye": 13, "ok": 14}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.add_special_tokens(list(BASE) + list(PLAIN_CHAT_TOKENS))
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def char_tokenizer(specials, eos):
    """Character-level over string.printable, ``specials`` first (ids 0..); returns (tokenizer, vocab)."""
    vocab = {t: i for i, t in enumerate(specials)}
    for c in string.printable:
        vocab.setdefault(c, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=dict(vocab), unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tk.add_special_tokens(list(specials))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token=eos, unk_token="<unk>",
                                  clean_up_tokenization_spaces=False)
    return tok, vocab


def plain_char_tokenizer():
    return char_tokenizer(BASE + PLAIN_CHAT_TOKENS, "</s>")[0]


CHATML_SPECIALS = ("<pad>", "<|endoftext|>", "<unk>", "<|im_start|>", "<|im_end|>")
PAD, EOT, UNK, IM_START, IM_END = range(5)

# ChatML as in Qwen2.5 (tools listed in the system message, each turn closed by "<|im_end|>\n"): the library's own
# template for its tokenizers, used here as the input format under test
CHATML = CHATML_TEMPLATE

# like Qwen3: assistant turns before the last user query lose their <think> block
CHATML_STRIP_THINK = (
    "{%- set ns = namespace(last_query=-1) %}"
    "{%- for m in messages %}{%- if m.role == 'user' %}{%- set ns.last_query = loop.index0 %}{%- endif %}"
    "{%- endfor %}"
    "{%- for m in messages %}"
    "{%- set c = m.content %}"
    "{%- if m.role == 'assistant' and loop.index0 < ns.last_query and '</think>' in c %}"
    "{%- set c = c.split('</think>')[-1] %}"
    "{%- endif %}"
    "{{- '<|im_start|>' + m.role + '\\n' + c + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# renders the last message differently when it is a tool result
CHATML_LAST_TOOL = CHATML.replace(
    "{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}",
    "{%- if loop.last and m.role == 'tool' %}{{- '<|im_start|>tool\\n[latest] ' + m.content + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endif %}")

# marks the last message, whatever its role (so the generation prompt no longer opens the assistant turn)
CHATML_LAST_ANY = CHATML.replace("m.content + '<|im_end|>", "m.content + (' (last)' if loop.last else '') "
                                                            "+ '<|im_end|>")


def chatml_tokenizer(template=CHATML):
    tok, vocab = char_tokenizer(CHATML_SPECIALS, "<|endoftext|>")
    tok.chat_template = template
    return tok, vocab


SPEC = ToolSpec("f", "d", {"type": "object"})
SPEC_JSON = '{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}'


def chars(vocab, text):
    """The test's own char -> id map (not the tokenizer under test)."""
    return [vocab[c] for c in text]


# ------------------------------------------------------------------ plain
def test_plain_hand_written_ids():
    r = PlainChatRenderer(word_tokenizer())
    msgs = [Message("system", "be brief"), Message("user", "hi"), Message("assistant", "hello")]
    assert r.stop_token_ids == [2]
    assert r.render(msgs) == [4, 9, 10, 8, 5, 11, 8, 6, 12, 2]
    assert r.render(msgs, add_generation_prompt=True) == [4, 9, 10, 8, 5, 11, 8, 6, 12, 2, 6]
    assert r.prompt(msgs[:2]) == [4, 9, 10, 8, 5, 11, 8, 6]
    assert r.assistant_ids("hello") == [12, 2]
    # dicts are accepted as messages too
    assert r.render([m.to_dict() for m in msgs]) == [4, 9, 10, 8, 5, 11, 8, 6, 12, 2]


def test_plain_delta_after_assistant_turn():
    r = PlainChatRenderer(word_tokenizer())
    assert r.delta([Message("user", "bye")]) == [5, 13, 8, 6]
    assert r.delta([Message("tool", "ok", tool_call_id="call_0_0", name="f", is_error=True)]) == [7, 14, 8, 6]
    assert r.delta([Message("tool", "ok"), Message("user", "bye")]) == [7, 14, 8, 5, 13, 8, 6]
    assert r.delta([]) == [6]
    # the ledger: prompt + sampled turn + delta = the whole conversation's render
    msgs = [Message("system", "be brief"), Message("user", "hi"), Message("assistant", "hello"),
            Message("user", "bye")]
    ledger = r.prompt(msgs[:2]) + r.assistant_ids("hello") + r.delta(msgs[3:])
    assert ledger == [4, 9, 10, 8, 5, 11, 8, 6, 12, 2, 5, 13, 8, 6]


def test_plain_tools_in_system_message():
    tok = plain_char_tokenizer()
    r = PlainChatRenderer(tok)
    ids = r.prompt([Message("system", "S"), Message("user", "hi")], tools=[SPEC])
    assert tok.decode(ids) == f"<|system|>S\n{SPEC_JSON}<|end|><|user|>hi<|end|><|assistant|>"
    ids = r.prompt([Message("user", "hi")], tools=[SPEC, SPEC.to_openai()])
    assert tok.decode(ids) == f"<|system|>{SPEC_JSON}\n{SPEC_JSON}<|end|><|user|>hi<|end|><|assistant|>"
    # each marker is one id
    assert ids[0] == 4 and ids[-1] == 6


def test_plain_missing_tokens():
    with pytest.raises(TemplateError) as e:
        PlainChatRenderer(build_char_tokenizer("abc"))
    for t in PLAIN_CHAT_TOKENS:
        assert t in str(e.value)
    tok, _ = char_tokenizer(BASE + ("<|system|>", "<|user|>", "<|assistant|>"), "</s>")
    with pytest.raises(TemplateError, match=r"<\|tool\|>.*<\|end\|>"):
        PlainChatRenderer(tok)


def test_plain_self_test_passes():
    PlainChatRenderer(plain_char_tokenizer()).self_test()
    PlainChatRenderer(word_tokenizer()).self_test()


# ------------------------------------------------------------------ raw
def test_raw_reproduces_plain_tokenization():
    tok = build_char_tokenizer("0123456789+=")
    r = RawRenderer(tok)
    ids = r.prompt([Message("user", "12+3=")])
    assert ids == [5, 6, 14, 7, 15]
    assert ids == tok("12+3=", add_special_tokens=False)["input_ids"]
    assert r.stop_token_ids == [2]
    assert r.assistant_ids("15") == [5, 9, 2]
    assert r.delta([Message("user", "4")]) == [8]
    assert r.prompt([Message("system", "1"), Message("user", "2")]) == [5, 6]
    assert r.render([Message("user", "1+1="), Message("assistant", "2")]) == [5, 14, 5, 15, 6, 2]


def test_raw_self_test_and_tools():
    r = RawRenderer(build_char_tokenizer(string.printable))
    r.self_test()  # the synthetic conversation, without its tool (raw cannot list tools)
    r.self_test(Renderer.synthetic_conversation()[0], tools=[])
    with pytest.raises(TemplateError, match="tools"):
        r.self_test(tools=[SPEC])
    with pytest.raises(TemplateError, match="tools"):
        r.prompt([Message("user", "x")], tools=[SPEC])


# ------------------------------------------------------------------ HF chat templates
def test_hf_chatml_render_and_stop_tokens():
    tok, vocab = chatml_tokenizer()
    r = HFChatRenderer(tok)
    nl = vocab["\n"]
    assert r.stop_token_ids == [IM_END, EOT]
    assert r.turn_suffix == [IM_END]
    assert r.close_ids == [nl]
    msgs = [Message("system", "S"), Message("user", "hi"), Message("assistant", "yo")]
    assert (r.render(msgs) == [IM_START] + chars(vocab, "system\nS") + [IM_END, nl, IM_START]
            + chars(vocab, "user\nhi") + [IM_END, nl, IM_START] + chars(vocab, "assistant\nyo") + [IM_END, nl])
    assert r.assistant_ids("yo") == chars(vocab, "yo") + [IM_END]
    assert r.prompt(msgs[:2])[-11:] == [IM_START] + chars(vocab, "assistant\n")


def test_hf_delta_starts_with_close_text():
    tok, vocab = chatml_tokenizer()
    r = HFChatRenderer(tok)
    nl = vocab["\n"]
    gen = [IM_START] + chars(vocab, "assistant\n")
    assert r.delta([Message("user", "hi")]) == [nl, IM_START] + chars(vocab, "user\nhi") + [IM_END, nl] + gen
    assert r.delta([]) == [nl] + gen
    assert tok.decode(r.delta([Message("tool", "42", tool_call_id="c", name="f")])) == \
        "\n<|im_start|>tool\n42<|im_end|>\n<|im_start|>assistant\n"
    # the ledger of a two-turn conversation equals the template's render
    msgs = [Message("user", "a"), Message("assistant", "b"), Message("user", "c")]
    ledger = r.prompt(msgs[:1]) + r.assistant_ids("b") + r.delta(msgs[2:])
    assert tok.decode(ledger) == ("<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n"
                                  "<|im_start|>user\nc<|im_end|>\n<|im_start|>assistant\n")


def test_hf_tools_through_template():
    tok, _ = chatml_tokenizer()
    r = HFChatRenderer(tok)
    ids = r.prompt([Message("user", "hi")], tools=[SPEC])
    assert tok.decode(ids) == (f"<|im_start|>system\n# Tools\n{SPEC_JSON}<|im_end|>\n"
                               "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_hf_self_test_passes_chatml():
    tok, _ = chatml_tokenizer()
    HFChatRenderer(tok).self_test()


def test_hf_self_test_fails_when_earlier_think_is_dropped():
    tok, _ = chatml_tokenizer(CHATML_STRIP_THINK)
    r = HFChatRenderer(tok)  # the base conversation has no <think>: construction succeeds
    with pytest.raises(TemplateError, match=r"not append-only.*message 2 \(assistant\)"):
        r.self_test()


def test_hf_self_test_fails_when_last_message_renders_differently():
    tok, _ = chatml_tokenizer(CHATML_LAST_TOOL)
    r = HFChatRenderer(tok)
    with pytest.raises(TemplateError, match=r"not append-only.*message 3 \(tool\)"):
        r.self_test()
    tok, _ = chatml_tokenizer(CHATML_LAST_ANY)
    with pytest.raises(TemplateError, match="generation prompt"):
        HFChatRenderer(tok).self_test()


def test_hf_needs_a_template():
    tok, _ = char_tokenizer(CHATML_SPECIALS, "<|endoftext|>")
    with pytest.raises(TemplateError, match="chat_template"):
        HFChatRenderer(tok)
    HFChatRenderer(tok, chat_template=CHATML).self_test()  # an explicit template works


# ------------------------------------------------------------------ factory
def test_make_renderer():
    assert isinstance(make_renderer("plain", word_tokenizer()), PlainChatRenderer)
    assert isinstance(make_renderer("raw", word_tokenizer()), RawRenderer)
    assert isinstance(make_renderer("hf", chatml_tokenizer()[0]), HFChatRenderer)
    with pytest.raises(ValueError, match=r"'hf', 'plain', 'raw'"):
        make_renderer("chatml", word_tokenizer())
    assert issubclass(TemplateError, ValueError)
