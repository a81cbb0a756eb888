"""``pc_state``: a personal-computing environment scored by a validated verifier program on the final state.

STAGE-Claw (arXiv:2606.10394) -- VERIFIED from its abstract: performance is the correctness of the final system
state, not the textual response; tasks come with validated verification programs.  The acceptance rule and the
templated drafts are INFERRED (see :mod:`.tasks`).

Episode: the user message is the task's short command (``mv ab.txt cd.txt``, ``cancel d3``, ...); the agent calls
the tools of :mod:`.tools` in the compact format (``@mv(src=ab.txt, dst=cd.txt)``), and a turn without calls is its
final answer (the episode ends).  A malformed call, an unknown tool or a tool that raises is answered with an
``error: ...`` tool message (the agent layer's :func:`run_tool_calls`); the episode goes on.

Reward (:meth:`PCStateEnv.verify`): the task's accepted verifier on the **final state** with the final answer text
(``""`` when the episode ended without one: the state is scored whatever the stop reason).  1.0 when it passes, else
0.0.  The verifier runs behind the AST whitelist in a confined child process with a wall-time limit
(:mod:`.sandbox`); one that raises, hangs, exhausts its memory, attempts a forbidden operation, kills its process
or replies garbage gives 0.0 with ``components["verifier_error"] = 1``, the reason in ``info["reason"]`` and the
outcome (``raised`` / ``timeout`` / ``forbidden`` / ``crashed`` / ``garbage`` / ``rejected`` / ``unavailable``) in
``info["verifier_outcome"]``; the run goes on.  Components: ``verified`` (the reward), ``state_changed`` (the
final digest differs from the initial one), ``claimed`` (the final answer contains ``done``), ``false_claim``
(claimed and not verified), ``verifier_error``.  (Task generation validates drafts with the default limits.)
"""

from __future__ import annotations

import string
from typing import Any, ClassVar, Optional, Sequence

from lckernels_rl.agents.types import Message

from ..tool_env import StepResult, ToolEnv, Verdict
from .state import PCState
from .tasks import CLAIM_TEXT, HINTS, Task, TaskGenerator, run_verifier
from .tools import make_tools

__all__ = ["PCStateEnv"]


class PCStateEnv(ToolEnv):
    """Files / calendar / notes tasks verified on the final state.

    Args:
        hints: the task hints to draw from (subset of :data:`~.tasks.HINTS`).
        flaw_rate: probability of each flawed verifier draft (validation rejects them).
        max_drafts: drafts per task before it is dropped and regenerated.
        tool_format: the tool-call format of the demonstrations (a registered parser name).
        verifier_timeout_s: wall-time limit of one verification in the sandbox process (:mod:`.sandbox`).
        verifier_memory_mb: address-space limit of the sandbox process.

    Example:
        >>> env = PCStateEnv(hints=("rm",))
        >>> msgs, info = env.reset(seed=0)
        >>> msgs[0].content.startswith("rm "), env.demonstration(msgs).startswith("@rm(path=")
        (True, True)
    """

    name: ClassVar[str] = "pc_state"
    blocking = False  # dict operations
    concurrent_tools = False  # writes to one state: keep call order
    protocol_tokens: ClassVar[tuple[str, ...]] = ()  # the compact format has no tags
    # every character a prompt, a call, a tool output or an answer can hold: the trainer's default character-level
    # tokenizer is built from it.  Without it (before issue 13 part 3's fix) that tokenizer held only the characters
    # of "[truncated]": "@", "(", "=", digits ... were <unk>, dropped when a turn was decoded, so no call could parse.
    alphabet: ClassVar[str] = string.ascii_letters + string.digits + string.punctuation + " \n"

    def __init__(self, hints: Sequence[str] = HINTS, flaw_rate: float = 0.5, max_drafts: int = 3,
                 tool_format: str = "compact", verifier_timeout_s: float = 2.0, verifier_memory_mb: int = 256):
        if isinstance(hints, str):
            hints = (hints,)
        from lckernels_rl.agents.parsers import get_parser

        if isinstance(verifier_timeout_s, bool) or not isinstance(verifier_timeout_s, (int, float)) \
                or not verifier_timeout_s > 0:
            raise ValueError(f"PCStateEnv: `verifier_timeout_s` must be a positive number; got {verifier_timeout_s!r}")
        if isinstance(verifier_memory_mb, bool) or not isinstance(verifier_memory_mb, int) or verifier_memory_mb < 64:
            raise ValueError(f"PCStateEnv: `verifier_memory_mb` must be an int >= 64; got {verifier_memory_mb!r}")
        self.verifier_limits = (float(verifier_timeout_s), int(verifier_memory_mb))

        self.generator = TaskGenerator(tuple(hints), flaw_rate=flaw_rate, max_drafts=max_drafts)
        self.tool_format = tool_format
        self._parser = get_parser(tool_format)
        self.pc = PCState()
        self.task: Optional[Task] = None
        self.initial_digest = self.pc.digest()
        self.tools = make_tools(lambda: self.pc)

    @property
    def sandbox(self):
        """The process-wide verifier sandbox with this env's limits (looked up at each use, not held: one child per
        process and limits, however many environments -- one per episode -- there are)."""
        from .sandbox import default_sandbox

        return default_sandbox(*self.verifier_limits)

    # ---------------------------------------------------------------- episode
    def reset(self, seed: Optional[int] = None, task: Any = None) -> tuple[list[Message], dict]:
        task = self.generator.generate(seed) if task is None else Task.from_dict(task)
        if not task.verifier:
            raise ValueError("PCStateEnv.reset: the task has no accepted verifier (`verifier` is empty)")
        self.task = task
        self.pc = PCState.from_dict(task.initial)
        self.initial_digest = self.pc.digest()
        return [Message("user", task.prompt)], {"task": task.to_dict(), "verifier": task.verifier}

    def answer(self, turn: Message) -> StepResult:
        return StepResult(terminated=True, info={"answer": turn.content.strip()})

    def verify(self, trajectory) -> Verdict:
        if self.task is None:
            raise RuntimeError("PCStateEnv.verify: call reset() first")
        last = trajectory.messages[-1] if trajectory.messages else None
        final = last.content.strip() if (last is not None and last.role == "assistant" and not last.tool_calls) \
            else ""
        res = run_verifier(self.task.verifier, self.pc, final, sandbox=self.sandbox)
        ok = float(res.passed)
        claimed = float(CLAIM_TEXT in final.lower())
        comps = {"verified": ok, "state_changed": float(self.pc.digest() != self.initial_digest),
                 "claimed": claimed, "false_claim": float(claimed and not ok),
                 "verifier_error": float(res.error is not None)}
        info = {"reason": res.error or ("verified" if ok else "final state fails the verifier"),
                "verifier": self.task.verifier, "verifier_outcome": res.kind}
        return Verdict(reward=ok, components=comps, info=info)

    def state(self) -> dict:
        return self.pc.to_dict()

    def state_digest(self) -> str:
        return self.pc.digest()

    # ---------------------------------------------------------------- warm-up
    def demonstration(self, messages: Sequence[Message]) -> Optional[str]:
        """The reference solution turn by turn (``k`` assistant turns so far -> turn ``k``), then ``done``."""
        if self.task is None:
            return None
        k = sum(1 for m in messages if m.role == "assistant")
        if k < len(self.task.reference):
            return self._parser.format_calls([(n, dict(a)) for n, a in self.task.reference[k]])
        return CLAIM_TEXT

    def tokenizer_corpus(self, n: int = 64) -> list[str]:
        from .tasks import apply_calls

        out = []
        for s in range(n):
            msgs, _ = self.reset(seed=10**7 + s)
            out.append(msgs[0].content)
            st = PCState.from_dict(self.task.initial)
            for turn in self.task.reference:
                out.append(self._parser.format_calls([(nm, dict(a)) for nm, a in turn]))
                out += apply_calls(st, turn)
            out += [CLAIM_TEXT, "error: ValueError: no file 'zz.txt'", "error: unknown tool 'zz'"]
        return out
