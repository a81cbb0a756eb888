"""``mixture``: several registered environments behind one :class:`~lckernels_rl.envs.ToolEnv` -- multi-environment
training with a weight per environment.

Paper: Xi, Guo, Liu et al. 2026, *Can RL Improve Generalization of LLM Agents? An Empirical Study* (arXiv
2603.12011).  Source status:

* VERIFIED (abstract, read on arxiv.org/abs/2603.12011): the study trains agents by RL fine-tuning in several
  multi-turn environments that differ in background knowledge, observation space and action interface, along three
  axes -- within-environment generalization across task difficulty, cross-environment transfer, and sequential
  multi-environment training (transfer and forgetting) -- and compares it with *mixture* training across environments.
* INFERRED (the authors' training code was not read): how a mixture is drawn.  Here each task seed picks one
  environment with probability proportional to its ``weight`` (a deterministic draw from the seed, independent of the
  sub-environment's own task generation), and the sub-environment then generates the task from the *same* seed, so a
  seed's task is the one a single-environment run would see (the held-out evaluation seeds of every environment stay
  the single-environment ones).

``MixtureEnv(envs=[{"env": name, "args": {...}, "weight": 1.0, "oversample": 1.0, "name": label}, ...])``:

* ``reset(seed)`` picks the sub-environment :meth:`domain_of` ``(seed)`` (only specs with ``weight > 0``; ``only``
  forces one, e.g. ``task.eval_env_args: {only: kv_lookup}`` to evaluate one environment) and delegates everything
  to it: messages, tools, ``step`` / ``answer``, ``verify``, ``demonstration``, ``state``, ``close``.  The reset info
  and :class:`~lckernels_rl.envs.Verdict` ``info`` gain ``"domain": <label>``; rewards, components and spans are the
  sub-environment's, unchanged.
* The tokenizer inputs -- :meth:`tokenizer_corpus`, ``protocol_tokens``, ``alphabet`` -- are the union over *all*
  specs, weight-0 ones included, so one spec list gives one character tokenizer whatever the weights (the stages of a
  sequential curriculum share it).  A BPE tokenizer also sees the trainer's own 256 opening prompts of the mixture,
  which follow the weights: stages warm-started with ``model.init_from`` reuse the first stage's tokenizer.
* One renderer and one tool-call parser serve every domain (the trainer picks them once from the probe env): the
  mixture is always a tool environment (rendered ``plain``; a text task inside it is a one-turn chat episode, and a
  response cut at the token budget is still scored, as in :class:`~lckernels_rl.envs.TextEnvAdapter`), and its
  ``tool_format`` is the one format its tool environments need.  Needed formats: a tool environment's
  ``tool_format``; ``hermes`` (the trainer's default) for one with tools and no ``tool_format``; none for a text
  environment or one without tools (both read the turn text themselves and ignore parsed calls).  Two different
  needed formats are a ``ValueError``.
* ``oversample`` is not used by the synchronous trainer; it is kept in :attr:`specs` for DORA's per-domain
  oversampling (:class:`~lckernels_rl.rollout.driver.Domain`: weight x oversample) -- :meth:`make_sub_env`,
  :attr:`labels` and :attr:`specs` build those domains.

Each spec is validated once per process (its environment built once; unknown names and bad arguments raise
``ValueError`` naming ``envs[i].<field>``); a :class:`MixtureEnv` is then cheap to build (one per episode) and builds
only the sub-environment a reset picks.
"""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Sequence, Union

import numpy as np

from lckernels_rl.agents.types import Message

from .tool_env import StepResult, TextEnvAdapter, ToolEnv, Verdict

__all__ = ["MixtureEnv", "DEFAULT_ENVS", "CORPUS_SEED_OFFSET"]

CORPUS_SEED_OFFSET = 10**7  # the trainer's tokenizer-corpus seeds (train/trainer.py): clear of train / eval seeds
_DOMAIN_SALT = 0x6D697874  # "mixt": the domain draw is a stream of its own, not the sub-env's default_rng(seed)
_SPEC_KEYS = ("env", "args", "weight", "oversample", "name")
DEFAULT_ENVS = ({"env": "arithmetic", "args": {"max_value": 9}}, {"env": "kv_lookup"})


@dataclass(frozen=True)
class _SpecInfo:
    """What a spec's environment is, learnt by building it once."""

    is_text: bool
    needs_format: Optional[str]
    tool_format: Optional[str]
    alphabet: str
    protocol_tokens: tuple
    blocking: bool


_INFO: dict[str, _SpecInfo] = {}  # canonical spec JSON -> info (process-wide: a spec is built once)


def _canon(spec: dict) -> str:
    return json.dumps({"env": spec["env"], "args": spec["args"]}, sort_keys=True, default=repr)


def _ordered_union(parts) -> list:
    seen, out = set(), []
    for part in parts:
        for x in part:
            if x not in seen:
                seen.add(x)
                out.append(x)
    return out


def _build(name: str, args: dict) -> ToolEnv:
    from . import make_tool_env

    return make_tool_env(name, **args)


def _probe(i: int, spec: dict) -> _SpecInfo:
    key = _canon(spec)
    if key in _INFO:
        return _INFO[key]
    try:
        env = _build(spec["env"], spec["args"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"MixtureEnv: envs[{i}].args: {spec['env']} rejected its arguments: {exc}") from None
    try:
        is_text = isinstance(env, TextEnvAdapter)
        fmt = None if is_text else getattr(env, "tool_format", None)
        tools = list(getattr(env, "tools", ()) or ())
        needs = None if is_text else (fmt if fmt else ("hermes" if tools else None))
        info = _SpecInfo(is_text=is_text, needs_format=needs, tool_format=fmt,
                         alphabet=str(getattr(env, "alphabet", "") or ""),
                         protocol_tokens=tuple(getattr(env, "protocol_tokens", ()) or ()),
                         blocking=bool(getattr(env, "blocking", True)))
    finally:
        env.close()
    _INFO[key] = info
    return info


def _normalise(envs) -> list[dict]:
    from . import ENVS, list_envs

    if not isinstance(envs, (list, tuple)) or not envs:
        raise ValueError(f"MixtureEnv: `envs` must be a non-empty list of {{env, args, weight, ...}} dicts; "
                         f"got {envs!r}")
    out, labels = [], set()
    for i, s in enumerate(envs):
        if isinstance(s, str):
            s = {"env": s}
        if not isinstance(s, dict):
            raise ValueError(f"MixtureEnv: envs[{i}] must be a dict with 'env' (and 'args', 'weight', 'oversample', "
                             f"'name'); got {type(s).__name__}")
        extra = sorted(set(s) - set(_SPEC_KEYS))
        if extra:
            raise ValueError(f"MixtureEnv: envs[{i}]: unknown field(s) {extra}; valid fields: {', '.join(_SPEC_KEYS)}")
        name = s.get("env")
        if not isinstance(name, str) or name not in ENVS:
            raise ValueError(f"MixtureEnv: envs[{i}].env: unknown environment {name!r}; available: "
                             f"{', '.join(n for n in list_envs() if n != 'mixture')}")
        if name == "mixture":
            raise ValueError(f"MixtureEnv: envs[{i}].env: a mixture cannot contain a mixture (list its environments)")
        args = s.get("args") or {}
        if not isinstance(args, dict):
            raise ValueError(f"MixtureEnv: envs[{i}].args must be a dict of the environment's arguments; got "
                             f"{type(args).__name__}")
        spec = {"env": name, "args": dict(args)}
        for field, default in (("weight", 1.0), ("oversample", 1.0)):
            v = s.get(field, default)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"MixtureEnv: envs[{i}].{field} must be a finite number >= 0; got {v!r}")
            spec[field] = float(v)
        label = s.get("name")
        if label is None:
            label = name if name not in labels else f"{name}#{i}"
        if not isinstance(label, str) or not label:
            raise ValueError(f"MixtureEnv: envs[{i}].name must be a non-empty str; got {label!r}")
        if label in labels:
            raise ValueError(f"MixtureEnv: envs[{i}].name: label {label!r} is used twice; labels must be unique")
        labels.add(label)
        spec["name"] = label
        out.append(spec)
    return out


class MixtureEnv(ToolEnv):
    """A weighted mixture of registered environments (see the module docstring).

    Args:
        envs: the specs (``None``: :data:`DEFAULT_ENVS`, arithmetic + kv_lookup): ``{"env": registered name, "args": {...}, "weight": 1.0, "oversample": 1.0, "name": label}``
            (a bare name is ``{"env": name}``); weights >= 0, at least one > 0.
        only: a label (or index) that every reset picks -- one environment of the mixture, e.g. to evaluate it alone
            (``task.eval_env_args: {only: <label>}``); its weight may be 0.
        weights: per-label weights that replace the specs' (``{label: w}``; labels left out keep theirs), e.g. the
            stage of a curriculum; the tokenizer inputs stay those of all specs.

    Example:
        >>> env = MixtureEnv(envs=[{"env": "arithmetic", "args": {"max_value": 9}}, {"env": "kv_lookup"}])
        >>> env.labels, env.domain_of(0) == env.domain_of(0)
        (['arithmetic', 'kv_lookup'], True)
        >>> msgs, info = env.reset(seed=0)
        >>> info["domain"] == env.labels[env.domain_of(0)]
        True
    """

    name: ClassVar[str] = "mixture"

    def __init__(self, envs: Optional[Sequence[Union[dict, str]]] = None, only: Optional[Union[str, int]] = None,
                 weights: Optional[dict] = None):
        if envs is None:
            envs = DEFAULT_ENVS
        self.specs = _normalise(list(envs) if isinstance(envs, (list, tuple)) else envs)
        self.labels = [s["name"] for s in self.specs]
        if weights is not None:
            if not isinstance(weights, dict):
                raise ValueError(f"MixtureEnv: `weights` must be a dict {{label: weight}}; got {weights!r}")
            for lab, w in weights.items():
                if lab not in self.labels:
                    raise ValueError(f"MixtureEnv: weights.{lab}: no env labelled {lab!r}; labels: "
                                     f"{', '.join(self.labels)}")
                if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                    raise ValueError(f"MixtureEnv: weights.{lab} must be a finite number >= 0; got {w!r}")
                self.specs[self.labels.index(lab)]["weight"] = float(w)
        self.only: Optional[int] = None
        if only is not None:
            if isinstance(only, bool) or not isinstance(only, (str, int)):
                raise ValueError(f"MixtureEnv: `only` must be a label or an index; got {only!r}")
            if isinstance(only, int):
                if not 0 <= only < len(self.specs):
                    raise ValueError(f"MixtureEnv: `only` index {only} out of range [0, {len(self.specs)})")
                self.only = only
            elif only not in self.labels:
                raise ValueError(f"MixtureEnv: `only`: no env labelled {only!r}; labels: {', '.join(self.labels)}")
            else:
                self.only = self.labels.index(only)
        w = np.asarray([s["weight"] for s in self.specs], dtype=np.float64)
        if self.only is None and not w.sum() > 0:
            raise ValueError("MixtureEnv: envs[*].weight: every weight is 0; at least one environment needs weight > 0")
        self._cum = np.cumsum(w) / w.sum() if w.sum() > 0 else np.zeros_like(w)
        self._info = [_probe(i, s) for i, s in enumerate(self.specs)]
        needed: dict[str, int] = {}
        for i, info in enumerate(self._info):
            if info.needs_format is None:
                continue
            if needed and info.needs_format not in needed:
                j, other = next(iter(needed.values())), next(iter(needed))
                takes = "tool_format" in inspect.signature(self._sub_class(i).__init__).parameters
                field = "args.tool_format" if takes else "env"
                raise ValueError(
                    f"MixtureEnv: envs[{i}].{field}: {self.specs[i]['env']} needs the {info.needs_format!r} tool-call "
                    f"parser but envs[{j}] ({self.specs[j]['env']}) needs {other!r}; one parser serves the whole "
                    "mixture (set the same `tool_format` in both envs' args, or train them apart)")
            needed.setdefault(info.needs_format, i)
        self.tool_format = next(iter(needed), None)  # type: ignore[misc]
        self.protocol_tokens = tuple(_ordered_union(i.protocol_tokens for i in self._info))  # type: ignore[misc]
        self.alphabet = "".join(_ordered_union(i.alphabet for i in self._info))
        self._subs: dict[int, ToolEnv] = {}
        self.current: Optional[int] = None

    # ------------------------------------------------------------------ the mixture
    def _sub_class(self, i: int):
        from . import ENVS

        return ENVS[self.specs[i]["env"]]

    @property
    def weights(self) -> list[float]:
        return [s["weight"] for s in self.specs]

    def domain_of(self, seed: Optional[int]) -> int:
        """The index of the spec that task ``seed`` runs (deterministic per seed; ``None``: a fresh random draw)."""
        if self.only is not None:
            return self.only
        rng = np.random.default_rng(None if seed is None else [abs(int(seed)), int(seed < 0), _DOMAIN_SALT])
        u = float(rng.random())
        return int(min(np.searchsorted(self._cum, u, side="right"), len(self.specs) - 1))

    def make_sub_env(self, i: int) -> ToolEnv:
        """A fresh environment of spec ``i`` (as a :class:`ToolEnv`; text tasks wrapped in TextEnvAdapter)."""
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(self.specs):
            raise ValueError(f"MixtureEnv.make_sub_env: `i` must be an index in [0, {len(self.specs)}); got {i!r}")
        return _build(self.specs[i]["env"], self.specs[i]["args"])

    def _sub(self, i: int) -> ToolEnv:
        if i not in self._subs:
            self._subs[i] = self.make_sub_env(i)
        return self._subs[i]

    @property
    def env(self) -> ToolEnv:
        """The sub-environment of the current episode."""
        if self.current is None:
            raise RuntimeError("MixtureEnv: call reset() first")
        return self._subs[self.current]

    @property
    def domain(self) -> Optional[str]:
        return None if self.current is None else self.labels[self.current]

    # ------------------------------------------------------------------ delegation
    @property
    def tools(self):  # type: ignore[override]
        return self.env.tools if self.current is not None else ()

    @property
    def blocking(self) -> bool:  # type: ignore[override]
        if self.current is not None:
            return bool(getattr(self.env, "blocking", True))
        return any(i.blocking for i in self._info)

    @property
    def concurrent_tools(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.env, "concurrent_tools", True)) if self.current is not None else True

    @property
    def steps_cut_turns(self) -> bool:
        """A text sub-environment scores a response cut at the token budget (TextEnvAdapter's rule)."""
        return bool(getattr(self.env, "steps_cut_turns", False)) if self.current is not None else False

    def reset(self, seed: Optional[int] = None, task: Any = None) -> tuple[list[Message], dict]:
        i = self.domain_of(seed)
        self.current = i
        msgs, info = self._sub(i).reset(seed=seed, task=task)
        info = dict(info or {})
        info["domain"] = self.labels[i]
        return msgs, info

    def step(self, turn: Message) -> StepResult:
        return self.env.step(turn)

    def answer(self, turn: Message) -> StepResult:
        return self.env.answer(turn)

    def verify(self, trajectory) -> Verdict:
        v = self.env.verify(trajectory)
        return Verdict(reward=v.reward, components=dict(v.components), spans=dict(v.spans),
                       info={**dict(v.info or {}), "domain": self.labels[self.current]})

    def state(self) -> Any:
        return {"domain": self.domain, "state": self.env.state()} if self.current is not None else None

    def demonstration(self, messages: Sequence[Message]) -> Optional[str]:
        return self.env.demonstration(messages)

    def tokenizer_corpus(self, n: int = 64) -> list[str]:
        """Every spec's texts (weight 0 included): its own ``tokenizer_corpus(n)`` plus the opening messages and the
        first demonstrated turn of ``n`` tasks (seeds from 10**7 on, what the trainer adds for a single env)."""
        out: list[str] = []
        for i in range(len(self.specs)):
            env = self.make_sub_env(i)
            try:
                out += [t for t in env.tokenizer_corpus(n) if t]
                for k in range(n):
                    msgs, _ = env.reset(seed=CORPUS_SEED_OFFSET + k)
                    out += [m.content for m in msgs if m.content]
                    demo = env.demonstration(msgs)
                    if demo:
                        out.append(demo)
            finally:
                env.close()
        return out

    def close(self) -> None:
        for env in self._subs.values():
            env.close()
        self._subs.clear()
