"""The message types of the agent layer: :class:`Message`, :class:`ToolCall`, :class:`ToolSpec`.

They follow the OpenAI chat format (``role`` / ``content`` / ``tool_calls`` / ``tool_call_id``) so HF chat templates,
vLLM and the peers' environments read them directly (:meth:`Message.to_dict`).  A :class:`ToolCall` that could not be
parsed keeps its raw text and the parse error instead of being dropped: the environment answers it with a tool-error
message the agent sees, and the loop counts it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = ["ROLES", "Message", "ToolCall", "ToolSpec"]

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class ToolCall:
    """One tool call of an assistant turn.

    Attributes:
        id: unique within the episode (``call_<turn>_<k>``); the tool message answering it carries it as
            ``tool_call_id``.
        name: the tool's name (``None`` when it could not be parsed).
        arguments: the parsed arguments (``None`` when they could not be parsed).
        raw: the exact text of the call in the assistant turn.
        error: the parse error (``None`` for a well-formed call); a call with an error is never executed.
    """

    id: str
    name: Optional[str]
    arguments: Optional[dict]
    raw: str
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        """OpenAI ``tool_calls`` entry (arguments as a dict, as HF chat templates expect)."""
        return {"id": self.id, "type": "function",
                "function": {"name": self.name or "", "arguments": self.arguments if self.arguments is not None
                             else {}}}


@dataclass
class Message:
    """A chat message.

    Attributes:
        role: ``system`` / ``user`` / ``assistant`` / ``tool``.
        content: the text (for an assistant turn: the decoded sampled text, EOS excluded).
        tool_calls: the parsed calls of an assistant turn (malformed ones included, with ``error`` set).
        tool_call_id: for a ``tool`` message, the id of the call it answers.
        name: for a ``tool`` message, the tool's name.
        is_error: for a ``tool`` message, whether it reports an error (parse error, bad arguments, a raising tool).
    """

    role: str
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: Optional[str] = None
    name: Optional[str] = None
    is_error: bool = False

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"Message: `role` must be one of {ROLES}; got {self.role!r}")
        if not isinstance(self.content, str):
            raise TypeError(f"Message: `content` must be a str; got {type(self.content).__name__}")
        if self.tool_calls and self.role != "assistant":
            raise ValueError(f"Message: only assistant messages carry tool_calls (role {self.role!r})")

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI / HF chat-template dict of this message."""
        d: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            d["tool_calls"] = [c.to_dict() for c in self.tool_calls]
        if self.tool_call_id is not None:
            d["tool_call_id"] = self.tool_call_id
        if self.name is not None and self.role == "tool":
            d["name"] = self.name
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Message":
        if not isinstance(d, dict) or "role" not in d:
            raise TypeError(f"Message.from_dict: expected a dict with a 'role'; got {d!r}")
        return cls(role=d["role"], content=d.get("content") or "", tool_call_id=d.get("tool_call_id"),
                   name=d.get("name"))


@dataclass(frozen=True)
class ToolSpec:
    """An OpenAI function-tool schema: ``name``, ``description``, ``parameters`` (a JSON schema of an object)."""

    name: str
    description: str
    parameters: dict

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"ToolSpec: `name` must be an identifier; got {self.name!r}")
        if not isinstance(self.parameters, dict) or self.parameters.get("type") != "object":
            raise ValueError(f"ToolSpec {self.name!r}: `parameters` must be a JSON schema with type 'object'")

    def to_openai(self) -> dict:
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}
