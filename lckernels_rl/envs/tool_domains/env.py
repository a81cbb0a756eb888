"""``tool_domains``: multi-turn tool use in generated domains (LongCat-Flash-Thinking-2601 §3.1.1 environment
scaling; τ²-style verification; a scripted user).

An episode: the user's opening message (``customer ana: order eta?``); the agent calls the environment's tools in
the compact format (``@find_customer(name=ana)`` -> ``ana:c3``; ``@find_order(customer=c3)`` -> ``c3:o7``;
``@get_order(order=o7)`` -> ``o7 status=new eta=20``); a turn without tool calls is a message to the user (see
:mod:`.user_sim`); ``done ...`` ends the episode (``done 20``).  Malformed calls, unknown tools, bad arguments and
raising tools are visible tool errors (the agent layer's :meth:`Tool.invoke`); the episode continues.

Reward: :func:`.verify.verify_episode` (product of ``components``; ``procedural=True`` adds the
confirm-before-write rule and makes the demonstrations confirm).  ``reset(seed)`` takes domain
``domains[seed % len(domains)]`` and task ``seed // len(domains)`` of that domain's :class:`.tasks.TaskGenerator`.

``noise={...}`` (env_args) returns the environment wrapped in :class:`.noise.NoiseWrapper` (``ToolDomainEnv.__new__``
does it, so the registered name ``tool_domains`` reaches the wrapper through the trainer's ``task.env_args``).
"""

from __future__ import annotations

import copy
import re
import string
from typing import Any, ClassVar, Optional, Sequence

from lckernels_rl.agents.types import Message

from ..tool_env import StepResult, ToolEnv, Verdict
from .domains import DOMAIN_SPECS, HELDOUT_DOMAINS, TRAIN_DOMAINS, Domain, ToolDef, canonical_digest, get_domain
from .tasks import Task, TaskGenerator
from .user_sim import ScriptedUser
from .verify import DEFAULT_COMPONENTS, CallRecord, check_components, verify_episode

__all__ = ["ToolDomainEnv", "scripted_turn", "resolve_domains"]


def resolve_domains(domains) -> list[str]:
    """``"train"`` / ``"heldout"`` / ``"all"`` / a comma list / a list of names -> names (checked)."""
    if isinstance(domains, str):
        domains = {"train": list(TRAIN_DOMAINS), "heldout": list(HELDOUT_DOMAINS),
                   "all": list(DOMAIN_SPECS)}.get(domains, domains.split(","))
    if not isinstance(domains, (list, tuple)) or not domains:
        raise ValueError(f"`domains` must be a non-empty list of names or train/heldout/all; got {domains!r}")
    out = [str(d).strip() for d in domains]
    bad = [d for d in out if d not in DOMAIN_SPECS]
    if bad:
        raise ValueError(f"`domains`: unknown {bad}; available: {', '.join(DOMAIN_SPECS)}")
    return out


class ToolDomainEnv(ToolEnv):
    """Tasks of generated tool domains with a scripted user and τ²-style verification.

    Args:
        domains: domain names (or ``"train"`` / ``"heldout"`` / ``"all"``).
        seed: the task generators' seed.
        components: the verdict components multiplied into the reward (default: done, state, outputs, actions).
        procedural: add the ``procedural`` component (confirm before every write) and confirm in demonstrations.
        tool_format: the tool-call format of the demonstrations.
        min_chain / max_chain / min_tools / max_tools / distractors / block: see :class:`.tasks.TaskGenerator`.
        noise: ``None`` or :class:`.noise.NoiseWrapper` keyword arguments (returns the wrapped environment).
    """

    name: ClassVar[str] = "tool_domains"
    blocking = False
    concurrent_tools = False  # writes in call order
    tool_format: ClassVar[str] = "compact"
    alphabet: ClassVar[str] = string.ascii_letters + string.digits + string.punctuation + " \n"

    def __new__(cls, *args, noise: Optional[dict] = None, **kwargs):
        if noise:
            if not isinstance(noise, dict):
                raise TypeError(f"ToolDomainEnv: `noise` must be a dict of NoiseWrapper arguments; got "
                                f"{type(noise).__name__}")
            from .noise import NoiseWrapper

            inner = super().__new__(cls)
            inner.__init__(*args, **kwargs)
            return NoiseWrapper(inner, **noise)
        return super().__new__(cls)

    def __init__(self, domains=("delivery",), *, seed: int = 0, components=DEFAULT_COMPONENTS,
                 procedural: bool = False, tool_format: str = "compact", min_chain: int = 2, max_chain: int = 4,
                 min_tools: int = 20, max_tools: int = 60, distractors: int = 2, block: int = 16,
                 noise: Optional[dict] = None):
        from lckernels_rl.agents.parsers import get_parser

        self.domains = resolve_domains(domains)
        if not isinstance(procedural, bool):
            raise TypeError(f"ToolDomainEnv: `procedural` must be a bool; got {procedural!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"ToolDomainEnv: `seed` must be an int; got {seed!r}")
        if isinstance(distractors, bool) or not isinstance(distractors, int) or not 0 <= distractors <= 4:
            raise ValueError(f"ToolDomainEnv: `distractors` must be an int in [0, 4]; got {distractors!r}")
        comps = list(check_components(components))
        if procedural and "procedural" not in comps:
            comps.append("procedural")
        self.components, self.procedural = tuple(comps), procedural
        self.tool_format = tool_format
        self._parser = get_parser(tool_format)
        gen_args = dict(min_chain=min_chain, max_chain=max_chain, min_tools=min_tools, max_tools=max_tools,
                        distractors=distractors, block=block)
        self.generators = {d: TaskGenerator(d, seed, **gen_args) for d in self.domains}
        self.task: Optional[Task] = None
        self.domain: Optional[Domain] = None
        self.db: dict = {}
        self.calls: list[CallRecord] = []
        self.tools = []
        self.user: Optional[ScriptedUser] = None
        self.tool_turns = 0
        self.confirmed = False
        self.final_text: Optional[str] = None

    # ------------------------------------------------------------------ episode
    def make_task(self, seed: int) -> Task:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"ToolDomainEnv: `seed` must be an int >= 0; got {seed!r}")
        d = self.domains[seed % len(self.domains)]
        return self.generators[d].task(seed // len(self.domains))

    def reset(self, seed: Optional[int] = None, task: Any = None, *,
              user_noise: Optional[dict] = None) -> tuple[list[Message], dict]:
        if task is None:
            task = self.make_task(0 if seed is None else int(seed))
        task = Task.from_dict(task)
        if task.domain not in DOMAIN_SPECS:
            raise ValueError(f"ToolDomainEnv.reset: unknown domain {task.domain!r}")
        self.task, self.domain = task, get_domain(task.domain)
        self.db = copy.deepcopy(task.db)
        self.calls, self.tool_turns, self.confirmed, self.final_text = [], 0, False, None
        self.user = ScriptedUser(task, **(user_noise or {}))
        self.tools = self.domain.make_tools(self._run, task.tools)
        info = {"domain": task.domain, "kind": task.kind, "n_tools": len(self.tools), "gold": task.gold,
                "outputs": task.outputs}
        return [Message("user", self.user.opening())], info

    def _run(self, td: ToolDef, args: dict) -> str:
        out = td.run(self.db, args)  # raises LookupError -> a visible tool error
        rec = CallRecord(td.name, dict(args), td.write, confirmed=self.confirmed if td.write else False)
        self.calls.append(rec)
        if td.write:
            self.confirmed = False
        return out

    def step(self, turn: Message) -> StepResult:
        if self.task is None:
            raise RuntimeError("ToolDomainEnv.step: call reset() first")
        if turn.tool_calls:
            from lckernels_rl.agents.tools import run_tool_calls

            msgs = run_tool_calls(self.tools, turn.tool_calls, concurrent=False)
            self.tool_turns += 1
            msgs += [Message("user", t) for t in self.user.interject(self.tool_turns)]
            return StepResult(messages=msgs, info={"tool_errors": sum(m.is_error for m in msgs)})
        return self.answer(turn)

    def answer(self, turn: Message) -> StepResult:
        reply, over = self.user.reply(turn.content)
        if over:
            self.final_text = self.user.final_text
            return StepResult(terminated=True, info={"final": self.final_text})
        if reply == "yes":
            self.confirmed = True
        return StepResult(messages=[Message("user", reply)], info={"off_script": reply.startswith("please:")})

    def effective_gold(self) -> list:
        """The gold actions for the user's current goal (a self-correction changes the write's value)."""
        gold = [[n, dict(a)] for n, a in self.task.gold]
        if self.task.kind == "write" and self.user is not None and self.user.value != self.task.value:
            gold[-1][1]["value"] = self.user.value
        return gold

    def verify(self, trajectory=None) -> Verdict:
        try:
            res = verify_episode(self.domain, self.task.db, self.effective_gold(), self.db, self.calls,
                                 self.final_text, self.task.outputs, self.components)
        except Exception as e:  # a verifier bug is a zero reward with its reason, never a crash of the run
            return Verdict(reward=0.0, components={"verify_error": 1.0},
                           info={"verify_error": f"{type(e).__name__}: {e}"})
        return Verdict(reward=res["reward"], components=res["components"], info={"domain": self.task.domain})

    def state(self) -> dict:
        return self.db

    def state_digest(self) -> str:
        return canonical_digest(self.db)

    # ------------------------------------------------------------------ demonstrations
    def demonstration(self, messages: Sequence[Message]) -> Optional[str]:
        if self.task is None:
            return None
        return scripted_turn(self.task, messages, procedural=self.procedural, parser=self._parser)

    def tokenizer_corpus(self, n: int = 64) -> list[str]:
        from .noise import FAILURE_ERRORS
        from .user_sim import CHATTER

        out = list(FAILURE_ERRORS) + list(CHATTER) + ["yes", "ask name", "ask value", "confirm", "please: ",
                                                       "error: LookupError: no x y"]
        for s in range(n):
            msgs, _ = self.reset(seed=10**7 + s)
            convo = list(msgs)
            for _ in range(8):
                text = self.demonstration(convo)
                out.append(text)
                turn = self._parser.parse(text)
                m = Message("assistant", text, tool_calls=turn.calls)
                convo.append(m)
                res = self.step(m)
                convo += res.messages
                out += [x.content for x in res.messages]
                if res.terminated:
                    break
            out.append(msgs[0].content)
        return [t for t in out if t]


# ---------------------------------------------------------------------------------------------- scripted agent
_NO_OF = re.compile(r"no (\w+) of (\S+)\s*$")
_NO_ID = re.compile(r"no (\w+) (\S+)\s*$")


def scripted_turn(task: Task, messages: Sequence[Message], *, procedural: bool = False, parser="compact") -> str:
    """The next turn of a robust scripted agent, read from the conversation alone (plus the task's structure:
    domain, path, goal kind and field).  Every id comes from a tool result whose key matches the query; an error
    (an HTTP-style failure, a missing record) or a result without the needed entry or field makes it call again
    (and a ``no <table> <id>`` error drops that id and everything found from it), so it recovers from the noise
    of :mod:`.noise` by retrying and asking.  Withheld slots are asked for (``ask name`` / ``ask value``); a
    self-correction (``sorry, f=v``) replaces the value."""
    from lckernels_rl.agents.parsers import get_parser

    p = get_parser(parser)
    dom = get_domain(task.domain)
    path, target, fld = task.path, task.target, task.field
    msgs = list(messages)
    opening = msgs[0].content if msgs else ""
    head, _, rest = opening.partition(":")
    name = head.split()[1] if len(head.split()) >= 2 else None
    value = None
    if task.kind == "write":
        m = re.search(r"=(\S+)\s*$", rest)
        value = m.group(1) if m and m.group(1) != "?" else None
    known: dict[str, str] = {}
    got: Optional[str] = None
    wrote: Optional[str] = None
    confirmed = asked = False
    pending: list = []

    def drop(table: str) -> None:
        nonlocal got
        for t in path[path.index(table):]:
            known.pop(t, None)
        got = None

    for m in msgs[1:]:
        if m.role == "assistant":
            pending = list(m.tool_calls or p.parse(m.content).calls)
            if not pending and m.content.strip().startswith("confirm"):
                asked = True
        elif m.role == "tool":
            c = pending.pop(0) if pending else None
            td = dom.tooldefs.get(c.name) if c is not None and c.name else None
            if td is None or not isinstance(c.arguments, dict):
                continue
            text = m.content.strip()
            if m.is_error or text.lower().startswith("error"):
                mo = _NO_OF.search(text)
                if mo:
                    t = next((t for t in path if known.get(t) == mo.group(2)), None)
                    if t is not None:
                        drop(t)
                    continue
                mo = _NO_ID.search(text)
                if mo and mo.group(1) in known and known[mo.group(1)] == mo.group(2):
                    drop(mo.group(1))
                continue
            if td.kind == "find":
                query = str(next(iter(c.arguments.values()), ""))
                hit = next((v for k, _, v in (e.partition(":") for e in text.split()) if k == query and v), None)
                if hit is not None and td.table in path:
                    known[td.table] = hit
            elif td.kind == "get" and td.table == target:
                for rec in text.split(" | "):
                    parts = rec.split()
                    if parts and parts[0] == c.arguments.get(target):
                        fields = dict(x.partition("=")[::2] for x in parts[1:])
                        if fld in fields and fields[fld]:
                            got = fields[fld]
            elif td.write and text == "ok":
                wrote = "void" if td.kind == "cancel" else c.arguments.get("value")
                confirmed = False
        elif m.role == "user":
            t = m.content.strip()
            if t.startswith("name "):
                name = t.split()[1] if len(t.split()) > 1 else name
            elif t.startswith("value "):
                value = t.split()[1] if len(t.split()) > 1 else value
            elif t.startswith("sorry,"):
                mo = re.search(r"=(\S+)\s*$", t)
                if mo:
                    value = mo.group(1)
            elif t == "yes" and asked:
                confirmed, asked = True, False

    if name is None:
        return "ask name"
    if task.kind == "write" and value is None:
        return "ask value"
    for i, t in enumerate(path):
        if t not in known:
            arg = {"name": name} if i == 0 else {path[i - 1]: known[path[i - 1]]}
            return p.format_calls([(f"find_{t}", arg)])
    tid = known[target]
    if task.kind == "read":
        if got is not None:
            return f"done {got}"
        return p.format_calls([(f"get_{target}", {target: tid})])
    want = "void" if task.kind == "cancel" else value
    if wrote == want:
        return "done"
    if procedural and not confirmed:
        return "confirm"
    if task.kind == "cancel":
        return p.format_calls([(f"cancel_{target}", {target: tid})])
    return p.format_calls([(f"set_{target}_{fld}", {target: tid, "value": value})])
