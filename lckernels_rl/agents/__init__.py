"""The agent layer: messages and tools, tool-call parsers, renderers, the agent loop and its token ledger.

See :mod:`lckernels_rl.agents.loop` for the loop and its stop reasons, :mod:`~lckernels_rl.agents.trajectory` for
the ledger (:class:`Trajectory`) and the trainer's :class:`TrainSample`, :mod:`~lckernels_rl.agents.parsers` for the
tool-call formats and :mod:`~lckernels_rl.agents.renderer` for how messages become token ids.
"""

from .loop import AgentLoop, Budget, Episode
from .parsers import ParsedTurn, ToolParser, get_parser, list_parsers, register_parser
from .renderer import HFChatRenderer, PlainChatRenderer, RawRenderer, Renderer, TemplateError, make_renderer
from .tools import Tool, ToolResult, run_tool_calls, tool, tool_specs
from .trajectory import NOT_SAMPLED, STOP_REASONS, Segment, TrainSample, Trajectory
from .types import Message, ToolCall, ToolSpec

__all__ = ["Message", "ToolCall", "ToolSpec", "Tool", "ToolResult", "tool", "tool_specs", "run_tool_calls",
           "ParsedTurn", "ToolParser", "get_parser", "list_parsers", "register_parser", "Renderer", "RawRenderer",
           "PlainChatRenderer", "HFChatRenderer", "TemplateError", "make_renderer", "AgentLoop", "Budget", "Episode",
           "Segment", "Trajectory", "TrainSample", "STOP_REASONS", "NOT_SAMPLED"]
