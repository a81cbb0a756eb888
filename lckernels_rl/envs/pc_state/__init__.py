"""``pc_state``: state-based verification (STAGE-Claw, arXiv:2606.10394) and agent-as-judge (AJ-Bench,
arXiv:2604.18240) over a simulated personal computer (files, calendar, notes).

* :mod:`.state` -- :class:`PCState` (dicts, canonical digest, frozen views);
* :mod:`.tools` -- ``@tool`` tools over it, read-only ones marked;
* :mod:`.tasks` -- the task generator with verifier programs validated by the acceptance rule;
* :mod:`.sandbox` -- :class:`VerifierSandbox`: verifier programs run in a confined child process
  (:mod:`._verifier_worker`) with a wall-time limit;
* :mod:`.env` -- :class:`PCStateEnv` (registered as ``pc_state``);
* :mod:`.judge` -- a transcript-only judge and an agent judge with read-only state access, and their F1.
"""

from .env import PCStateEnv
from .sandbox import SandboxResult, VerifierSandbox, default_sandbox
from .state import PCState, freeze
from .tasks import HINTS, Task, TaskGenerator, accept_verifier, generate_task, run_verifier
from .tools import READ_ONLY_TOOLS, WRITE_TOOLS, make_tools

__all__ = ["PCStateEnv", "PCState", "freeze", "HINTS", "Task", "TaskGenerator", "accept_verifier", "generate_task",
           "run_verifier", "make_tools", "READ_ONLY_TOOLS", "WRITE_TOOLS", "VerifierSandbox", "SandboxResult",
           "default_sandbox"]
