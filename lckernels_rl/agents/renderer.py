"""Renderers: conversations to token ids, in the append-only form the agent loop's token ledger needs.

The loop renders the first conversation once (:meth:`Renderer.prompt`), then per turn appends the ids the engine
sampled (the assistant's text and its stop token, exactly as sampled, never re-encoded), then a *delta*
(:meth:`Renderer.delta`): the new environment / tool / user messages rendered alone and the generation prompt of the
next assistant turn.  So a renderer must know what follows an assistant turn's last sampled token, and a chat format
is only usable when re-rendering the whole conversation gives the same ids as that ledger
(:meth:`Renderer.self_test` checks it).

* :class:`PlainChatRenderer`: the library's own format for its tiny tokenizers, ``<|role|>`` + content +
  ``<|end|>``, an assistant turn ending with the EOS token instead (the sampled stop token);
* :class:`RawRenderer`: completion style for single-turn tasks, the contents only, no role markers;
* :class:`HFChatRenderer`: a Hugging Face chat template (``tokenizer.apply_chat_template``).

Assistant messages are rendered from their ``content`` only: in the loop it is the decoded sampled text, which already
holds the raw text of its tool calls, so the structured ``tool_calls`` are not rendered a second time.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Optional, Sequence

from .types import Message, ToolCall, ToolSpec

__all__ = ["CHATML_TEMPLATE", "CHATML_TOKENS", "TemplateError", "Renderer", "PlainChatRenderer", "RawRenderer", "HFChatRenderer", "PLAIN_CHAT_TOKENS",
           "RENDERERS", "make_renderer"]

PLAIN_CHAT_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|tool|>", "<|end|>")


# A ChatML chat template (Qwen2.5 style, tools listed in the system message) for tokenizers built here, which ship no
# template of their own; with CHATML_TOKENS as special tokens and "<|im_end|>" as EOS, HFChatRenderer runs on them.
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")
CHATML_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n' }}{%- endif %}"
    "{{- '# Tools' }}"
    "{%- for t in tools %}{{- '\\n' + (t | tojson) }}{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif messages and messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for m in messages %}"
    "{%- if not (m.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


class TemplateError(ValueError):
    """A chat format that cannot be rendered append-only (or a tokenizer that lacks what the format needs)."""


def _as_messages(messages: Optional[Iterable]) -> list[Message]:
    out = []
    for m in messages or ():
        out.append(m if isinstance(m, Message) else Message.from_dict(m))
    return out


def _tool_schemas(tools: Optional[Sequence]) -> Optional[list[dict]]:
    """ToolSpecs (or OpenAI function-tool dicts) as OpenAI dicts; ``None`` when there are none."""
    if not tools:
        return None
    out = []
    for t in tools:
        if isinstance(t, ToolSpec):
            out.append(t.to_openai())
        elif isinstance(t, dict):
            out.append(t)
        elif hasattr(t, "spec") and isinstance(t.spec, ToolSpec):
            out.append(t.spec.to_openai())
        else:
            raise TypeError(f"tools: expected ToolSpec or an OpenAI tool dict; got {type(t).__name__}")
    return out


def _first_diff(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class Renderer:
    """Base class.  Subclasses set :attr:`stop_token_ids` and implement :meth:`render`, :meth:`delta` and
    :meth:`assistant_ids`.

    Attributes:
        tokenizer: the HF tokenizer (the loop decodes sampled turns with it).
        stop_token_ids: the ids that end an assistant turn when sampled (end-of-turn / EOS); the first is the one the
            format writes after an assistant turn.
    """

    name = "base"
    supports_tools = True  #: whether ``tools`` can be rendered (the self test's default conversation uses one)
    stop_token_ids: list[int]

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.stop_token_ids = []

    # ------------------------------------------------------------------ API
    def encode(self, text: str) -> list[int]:
        """``tokenizer(text, add_special_tokens=False)`` ids."""
        if not text:
            return []
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def render(self, messages, tools=None, add_generation_prompt: bool = False) -> list[int]:
        """The whole conversation (with the next assistant generation prompt when asked)."""
        raise NotImplementedError

    def prompt(self, messages, tools=None) -> list[int]:
        """The initial conversation and the generation prompt of the assistant's turn."""
        return self.render(messages, tools=tools, add_generation_prompt=True)

    def delta(self, new_messages) -> list[int]:
        """The ids that follow an assistant turn's last sampled stop token: ``new_messages`` then the next assistant
        generation prompt."""
        raise NotImplementedError

    def assistant_ids(self, text: str) -> list[int]:
        """A sampled assistant turn with this text, its stop token included (scripted demonstrations)."""
        raise NotImplementedError

    # ------------------------------------------------------------ self test
    @staticmethod
    def synthetic_conversation() -> tuple[list[Message], list[ToolSpec]]:
        """system, user, assistant (with a tool call and a reasoning block), tool, assistant, user, assistant."""
        spec = ToolSpec("lookup", "Look a key up.", {"type": "object", "properties": {"key": {"type": "string"}},
                                                     "required": ["key"]})
        raw = '<tool_call>{"name": "lookup", "arguments": {"key": "a"}}</tool_call>'
        call = ToolCall("call_0_0", "lookup", {"key": "a"}, raw)
        msgs = [
            Message("system", "You are a helpful agent."),
            Message("user", "What is a?"),
            Message("assistant", "<think>I should look a up.</think>Let me check.\n" + raw, tool_calls=[call]),
            Message("tool", '{"value": 42}', tool_call_id="call_0_0", name="lookup"),
            Message("assistant", "<think>The tool said 42.</think>a is 42."),
            Message("user", "And b?"),
            Message("assistant", "<think>No tool for b.</think>I do not know b."),
        ]
        return msgs, [spec]

    def self_test(self, messages=None, tools=None) -> None:
        """Raise :class:`TemplateError` when the format is not append-only.

        On ``messages`` (default: :meth:`synthetic_conversation`, with its tool when the format
        :attr:`supports_tools`) checks that every render of a prefix is a prefix of
        the next, and that the loop's ledger -- ``prompt`` up to the first assistant turn, then ``assistant_ids`` of
        each turn and the ``delta`` of the messages after it -- equals ``render(messages[:k],
        add_generation_prompt=True)`` at each turn boundary, token for token, and ends with ``render(messages)``.
        The error names the first message where they diverge.
        """
        if messages is None:
            messages, default_tools = self.synthetic_conversation()
            if tools is None and self.supports_tools:
                tools = default_tools
        msgs = _as_messages(messages)
        n = len(msgs)
        cache: dict = {}

        def rend(k: int, gen: bool = False) -> list[int]:
            key = (k, gen)
            if key not in cache:
                try:
                    cache[key] = list(self.render(msgs[:k], tools=tools, add_generation_prompt=gen))
                except TemplateError:
                    raise
                except Exception as e:
                    raise TemplateError(f"{type(self).__name__}.self_test: rendering messages[:{k}] failed: "
                                        f"{type(e).__name__}: {e}") from e
            return cache[key]

        def where(pos: int, upto: int) -> str:
            m = upto - 1
            for j in range(upto):
                if len(rend(j + 1)) > pos:
                    m = j
                    break
            m = max(m, 0)
            role = msgs[m].role if msgs else "?"
            return f"message {m} ({role})"

        def show(ids: Sequence[int], pos: int) -> str:
            lo, hi = max(pos - 8, 0), pos + 8
            try:
                return (repr(self.tokenizer.decode(list(ids[lo:pos]), skip_special_tokens=False)) + " | " +
                        repr(self.tokenizer.decode(list(ids[pos:hi]), skip_special_tokens=False)))
            except Exception:  # pragma: no cover - a tokenizer that cannot decode
                return f"{list(ids[lo:pos])} | {list(ids[pos:hi])}"

        def fail(what: str, a: Sequence[int], a_name: str, b: Sequence[int], b_name: str, upto: int):
            pos = _first_diff(a, b)
            raise TemplateError(
                f"{type(self).__name__}: the format is not append-only: {what}; they diverge at token {pos}, in "
                f"{where(pos, upto)}: {a_name} has {show(a, pos)}, {b_name} has {show(b, pos)}")

        # 1. every render of a prefix is a prefix of the next (and a generation prompt opens the assistant turn)
        for k in range(1, n):
            a, b = rend(k), rend(k + 1)
            if b[:len(a)] != a:
                fail(f"render(messages[:{k}]) is not a prefix of render(messages[:{k + 1}])",
                     a, f"render(messages[:{k}])", b, f"render(messages[:{k + 1}])", k + 1)
            if msgs[k].role == "assistant":
                g = rend(k, True)
                if b[:len(g)] != g:
                    fail(f"render(messages[:{k}], add_generation_prompt=True) is not a prefix of "
                         f"render(messages[:{k + 1}]) (the generation prompt does not open the assistant turn)",
                         g, "the generation prompt", b, f"render(messages[:{k + 1}])", k + 1)

        # 2. the ledger: prompt + sampled turns + deltas
        first = next((i for i, m in enumerate(msgs) if m.role == "assistant"), n)
        ledger = list(self.prompt(msgs[:first], tools=tools))
        exp = rend(first, True)
        if ledger != exp:
            fail(f"prompt(messages[:{first}]) differs from render(messages[:{first}], add_generation_prompt=True)",
                 ledger, "the prompt", exp, "render", max(first, 1))
        i = first
        while i < n:
            ledger += list(self.assistant_ids(msgs[i].content))
            full = rend(i + 1)
            if full[:len(ledger)] != ledger:
                fail(f"the ledger after assistant message {i} is not a prefix of render(messages[:{i + 1}])",
                     ledger, "the ledger", full, "render", i + 1)
            j = next((t for t in range(i + 1, n) if msgs[t].role == "assistant"), n)
            ledger += list(self.delta(msgs[i + 1:j]))
            exp = rend(j, True)
            if ledger != exp:
                fail(f"the ledger (prompt + sampled turns + deltas) up to message {j - 1} differs from "
                     f"render(messages[:{j}], add_generation_prompt=True)", ledger, "the ledger", exp, "render", j)
            i = j


class PlainChatRenderer(Renderer):
    """The library's own chat format for its tiny tokenizers.

    Each message is ``<|role|>`` + content + ``<|end|>``, except an assistant turn, which ends with the tokenizer's EOS
    token (the sampled stop token).  Tools are listed in the system message, one JSON object a line, after its content
    (a system message is added when there is none).  The generation prompt is ``<|assistant|>``.  The tokenizer must
    have the :data:`PLAIN_CHAT_TOKENS` as (special) tokens of one id each.
    """

    name = "plain"

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        ids, missing = {}, []
        vocab = tokenizer.get_vocab()
        for t in PLAIN_CHAT_TOKENS:
            enc = self.encode(t)
            if t not in vocab or enc != [vocab[t]]:
                missing.append(t)
            else:
                ids[t] = enc[0]
        if missing:
            raise TemplateError(f"PlainChatRenderer: the tokenizer lacks the chat tokens {missing} (each must be one "
                                f"token: add PLAIN_CHAT_TOKENS as special tokens when building it)")
        if tokenizer.eos_token_id is None:
            raise TemplateError("PlainChatRenderer: the tokenizer has no EOS token (it ends an assistant turn)")
        self.eos_token_id = int(tokenizer.eos_token_id)
        self.role_ids = {r: ids[f"<|{r}|>"] for r in ("system", "user", "assistant", "tool")}
        self.end_id = ids["<|end|>"]
        self.stop_token_ids = [self.eos_token_id]

    @staticmethod
    def tools_text(tools) -> str:
        """The tool schemas as JSON lines."""
        return "\n".join(json.dumps(s, ensure_ascii=False) for s in (_tool_schemas(tools) or ()))

    def render(self, messages, tools=None, add_generation_prompt: bool = False) -> list[int]:
        msgs = _as_messages(messages)
        if tools:
            lines = self.tools_text(tools)
            if msgs and msgs[0].role == "system":
                content = msgs[0].content + "\n" + lines if msgs[0].content else lines
                msgs = [Message("system", content)] + msgs[1:]
            else:
                msgs = [Message("system", lines)] + msgs
        ids: list[int] = []
        for m in msgs:
            ids.append(self.role_ids[m.role])
            ids += self.encode(m.content)
            ids.append(self.eos_token_id if m.role == "assistant" else self.end_id)
        if add_generation_prompt:
            ids.append(self.role_ids["assistant"])
        return ids

    def delta(self, new_messages) -> list[int]:
        return self.render(new_messages, add_generation_prompt=True)

    def assistant_ids(self, text: str) -> list[int]:
        return self.encode(text) + [self.eos_token_id]


class RawRenderer(Renderer):
    """Completion style for single-turn tasks: no role markers, no generation prompt.

    The prompt is the concatenated contents of the (system / user / tool) messages, encoded at once, so one user
    message ``"12+3="`` gives exactly ``tokenizer("12+3=", add_special_tokens=False)``; an assistant turn is its
    content and the EOS token; a delta is the concatenated contents of the new messages.  Tools cannot be rendered.
    """

    name = "raw"
    supports_tools = False

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        if tokenizer.eos_token_id is None:
            raise TemplateError("RawRenderer: the tokenizer has no EOS token (it ends an assistant turn)")
        self.eos_token_id = int(tokenizer.eos_token_id)
        self.stop_token_ids = [self.eos_token_id]

    def render(self, messages, tools=None, add_generation_prompt: bool = False) -> list[int]:
        if tools:
            raise TemplateError("RawRenderer: the raw format has no place for tools (use the plain or hf renderer)")
        ids: list[int] = []
        run: list[str] = []
        for m in _as_messages(messages):
            if m.role == "assistant":
                ids += self.encode("".join(run))
                run = []
                ids += self.assistant_ids(m.content)
            else:
                run.append(m.content)
        ids += self.encode("".join(run))
        return ids

    def delta(self, new_messages) -> list[int]:
        return self.render(new_messages)

    def assistant_ids(self, text: str) -> list[int]:
        return self.encode(text) + [self.eos_token_id]


class HFChatRenderer(Renderer):
    """A Hugging Face chat template: ``apply_chat_template(..., tokenize=False)`` then
    ``tokenizer(text, add_special_tokens=False)``.

    At construction it renders a fixed base conversation, ``[user, assistant]``, to find how an assistant turn ends:
    after the assistant's content the template writes the *turn suffix*, up to and including the end-of-turn token
    (the first special token after the content, e.g. ChatML's ``<|im_end|>``), then possibly *close text* (ChatML's
    ``\\n``).  The sampled turn ends at the stop token, so :meth:`delta` starts with that close text:
    ``delta(new) = render(base + new, add_generation_prompt=True)[cut:]``, where ``cut`` is the end of the base
    assistant's stop token, after checking that ``render(base)`` is a prefix of it.

    Args:
        tokenizer: a tokenizer with a ``chat_template`` (or pass ``chat_template``).
        chat_template: overrides the tokenizer's template.
        template_kwargs: extra variables for the template (e.g. ``enable_thinking=False``).
    """

    name = "hf"
    BASE_USER = "Hi"
    BASE_ASSISTANT = "Hello"

    def __init__(self, tokenizer, chat_template: Optional[str] = None, **template_kwargs: Any):
        super().__init__(tokenizer)
        self.chat_template = chat_template
        self.template_kwargs = template_kwargs
        if chat_template is None and not getattr(tokenizer, "chat_template", None):
            raise TemplateError("HFChatRenderer: the tokenizer has no chat_template (set tokenizer.chat_template or "
                                "use the plain / raw renderer)")
        base_prompt = [Message("user", self.BASE_USER)]
        self._base = base_prompt + [Message("assistant", self.BASE_ASSISTANT)]
        p = self.render(base_prompt, add_generation_prompt=True)
        a = self.render(self._base)
        if a[:len(p)] != p:
            pos = _first_diff(p, a)
            raise TemplateError(f"HFChatRenderer: the generation prompt is not how the template opens an assistant "
                                f"turn: render([user], add_generation_prompt=True) is not a prefix of "
                                f"render([user, assistant]) (they diverge at token {pos}: "
                                f"{self._show(p[pos:pos + 8])} vs {self._show(a[pos:pos + 8])})")
        content = self.encode(self.BASE_ASSISTANT)
        body = a[len(p):len(p) + len(content)]
        if body != content:
            raise TemplateError(f"HFChatRenderer: the assistant content does not tokenize alone as in the template: "
                                f"{self._show(content)} alone vs {self._show(body)} after the generation prompt")
        rest = a[len(p) + len(content):]
        specials = set(getattr(tokenizer, "all_special_ids", None) or ())
        for i, tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
            if getattr(tok, "special", False):
                specials.add(int(i))
        eos = tokenizer.eos_token_id
        j = next((k for k, t in enumerate(rest) if t in specials), None)
        if j is None and eos is not None and eos in rest:
            j = rest.index(eos)
        if j is None:
            raise TemplateError(f"HFChatRenderer: cannot find the end-of-turn token after an assistant turn: the "
                                f"template writes {self._show(rest)} after the content, with no special token")
        self.turn_suffix = list(rest[:j + 1])  # sampled by the model: the turn ends at its last id
        self.close_ids = list(rest[j + 1:])  # written by the template after the stop token: the delta starts here
        self._cut = len(p) + len(content) + j + 1
        self._base_ids = a
        self.stop_token_ids = [int(rest[j])]
        if eos is not None and int(eos) != self.stop_token_ids[0]:
            self.stop_token_ids.append(int(eos))

    def _show(self, ids: Sequence[int]) -> str:
        return repr(self.tokenizer.decode(list(ids), skip_special_tokens=False))

    @staticmethod
    def _dicts(messages) -> list[dict]:
        out = []
        for m in _as_messages(messages):
            if m.role == "assistant":  # the content is the sampled text: it already holds the raw tool calls
                out.append({"role": "assistant", "content": m.content})
            else:
                out.append(m.to_dict())
        return out

    def render_text(self, messages, tools=None, add_generation_prompt: bool = False) -> str:
        """The template's text."""
        kw = dict(self.template_kwargs)
        if self.chat_template is not None:
            kw["chat_template"] = self.chat_template
        try:
            text = self.tokenizer.apply_chat_template(self._dicts(messages), tools=_tool_schemas(tools),
                                                      add_generation_prompt=add_generation_prompt, tokenize=False,
                                                      **kw)
        except Exception as e:
            raise TemplateError(f"HFChatRenderer: the chat template failed: {type(e).__name__}: {e}") from e
        if not isinstance(text, str):  # pragma: no cover - defensive
            raise TemplateError(f"HFChatRenderer: apply_chat_template returned {type(text).__name__}, not text")
        return text

    def render(self, messages, tools=None, add_generation_prompt: bool = False) -> list[int]:
        return self.encode(self.render_text(messages, tools=tools, add_generation_prompt=add_generation_prompt))

    def delta(self, new_messages) -> list[int]:
        full = self.render(self._base + _as_messages(new_messages), add_generation_prompt=True)
        base = self._base_ids
        if full[:len(base)] != base:
            pos = _first_diff(base, full)
            raise TemplateError(f"HFChatRenderer: the template is not append-only: render(base + assistant turn) is "
                                f"not a prefix of render(base + new messages, add_generation_prompt=True) (they "
                                f"diverge at token {pos}: {self._show(base[pos:pos + 8])} vs "
                                f"{self._show(full[pos:pos + 8])})")
        return full[self._cut:]

    def assistant_ids(self, text: str) -> list[int]:
        return self.encode(text) + self.turn_suffix


RENDERERS = {"plain": PlainChatRenderer, "raw": RawRenderer, "hf": HFChatRenderer}


def make_renderer(name: str, tokenizer, **kwargs) -> Renderer:
    """The renderer called ``name`` (``plain`` / ``raw`` / ``hf``) over ``tokenizer``."""
    cls = RENDERERS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"make_renderer: unknown renderer {name!r}; choose one of {sorted(RENDERERS)}")
    return cls(tokenizer, **kwargs)
