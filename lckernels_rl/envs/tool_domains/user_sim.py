"""A scripted, templated, goal-driven user simulator for tool-domain tasks (multi-turn).

τ²-bench's user is an LLM following a task's user instructions; ours is a small rule set so the library's tiny
policies can learn the dialogue (INFERRED design; templates ours).  The user knows the task's goal and profile and
answers the agent's messages (turns without tool calls):

==========================  ======================================================================
agent says                  user answers
==========================  ======================================================================
``done ...``                nothing: the conversation ends (the verifier reads this final message)
``ask name`` / ``ask value``  ``name ana`` / ``value l`` (the withheld or current slot)
``confirm`` (+ anything)    ``yes``
anything else (off-script)  ``please: <the task description>`` (never an exception)
==========================  ======================================================================

User noise hooks (set by :class:`~lckernels_rl.envs.tool_domains.noise.NoiseWrapper`; AgentNoiseBench's user
simulation guidelines for ambiguity / topic shift in ``tau2-bench-main/data/tau2/user_simulator/`` of
keven-cyber/agentnoisebench, commit d24517ce -- file names VERIFIED, the templated realisation INFERRED):

* ``withhold``: ``"name"`` or ``"value"`` -- the opening omits that slot until the agent asks (ambiguity);
* ``correction``: a new value for a write, announced after the ``correction_after``-th tool turn
  (``sorry, size=m``): the goal changes mid-dialogue (self-correction);
* ``topic_shift``: after the ``shift_after``-th tool turn the user adds an unrelated line (``btw ...``); the goal
  does not change.
"""

from __future__ import annotations

from typing import Optional

from .tasks import Task, describe

__all__ = ["ScriptedUser", "CHATTER"]

CHATTER = ("btw is it raining", "btw nice day", "btw any news", "btw i like tea")


class ScriptedUser:
    """The user of one task.

    Args:
        task: the task.
        withhold: ``None``, ``"name"`` or ``"value"`` (ambiguity noise).
        correction: ``None`` or a new write value (self-correction noise; writes only).
        correction_after: the tool turn after which the correction is said.
        topic_shift: ``None`` or a line of chatter.
        shift_after: the tool turn after which the chatter is said.
    """

    def __init__(self, task: Task, *, withhold: Optional[str] = None, correction: Optional[str] = None,
                 correction_after: int = 1, topic_shift: Optional[str] = None, shift_after: int = 1):
        if withhold not in (None, "name", "value"):
            raise ValueError(f"ScriptedUser: `withhold` must be None, 'name' or 'value'; got {withhold!r}")
        if withhold == "value" and task.kind != "write":
            raise ValueError("ScriptedUser: only a write task has a value to withhold")
        if correction is not None and task.kind != "write":
            raise ValueError("ScriptedUser: only a write task can be corrected")
        self.task = task
        self.withhold, self.correction, self.topic_shift = withhold, correction, topic_shift
        self.correction_after, self.shift_after = int(correction_after), int(shift_after)
        self.value = task.value  # the current goal value (changes on self-correction)
        self.corrected = False
        self.asked_confirm = False
        self.finished = False
        self.final_text: Optional[str] = None

    def opening(self) -> str:
        t = self.task
        return describe(t.kind, t.path, None if self.withhold == "name" else t.profile["name"], t.field,
                        None if self.withhold == "value" else t.value)

    def interject(self, tool_turn: int) -> list[str]:
        """What the user adds after the agent's ``tool_turn``-th turn with tool calls (1-based)."""
        out = []
        if self.topic_shift is not None and tool_turn == self.shift_after:
            out.append(self.topic_shift)
        if self.correction is not None and not self.corrected and tool_turn >= self.correction_after:
            self.corrected = True
            self.value = self.correction
            out.append(f"sorry, {self.task.field}={self.correction}")
        return out

    def reply(self, text) -> tuple[Optional[str], bool]:
        """``(user message or None, conversation over)`` for an agent message; never raises."""
        if not isinstance(text, str):
            text = "" if text is None else str(text)
        words = text.strip().split()
        head = words[0].lower() if words else ""
        if head == "done":
            self.finished, self.final_text = True, text.strip()
            return None, True
        if head == "ask" and len(words) >= 2 and words[1] in ("name", "value"):
            if words[1] == "name":
                return f"name {self.task.profile['name']}", False
            if self.task.kind == "write":
                return f"value {self.value}", False
            return "no value needed", False
        if head == "confirm":
            self.asked_confirm = True
            return "yes", False
        return f"please: {self.opening()}", False
