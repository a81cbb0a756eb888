"""Environments: the multi-turn tool protocol (:class:`ToolEnv`) and gymnasium-style text tasks (:class:`Env`).

``make_env(name)`` builds a registered environment as it is; ``make_tool_env(name)`` builds it as a
:class:`ToolEnv` (text tasks wrapped in :class:`TextEnvAdapter`), which is what the agent loop and the trainer run.

The registry maps a name to ``"module:Class"`` (relative to this package) and imports the module only when the
environment is built, so one environment's optional dependency (SQLite, BM25, ...) never slows or breaks another's.
:func:`register_env` adds a user's own environment class.
"""

from __future__ import annotations

import importlib

from .arithmetic import ArithmeticEnv
from .base import Env
from .kv_lookup import KVLookupEnv
from .tool_env import StepResult, TextEnvAdapter, ToolEnv, Verdict

# name -> "module:Class" (imported on first use) or the class itself (register_env)
_REGISTRY: dict[str, object] = {
    "arithmetic": ".arithmetic:ArithmeticEnv",
    "kv_lookup": ".kv_lookup:KVLookupEnv",
    "trust_sql": ".trust_sql:TrustSQLEnv",
    "vita_personal": ".memory.vita:VitaPersonalEnv",
    "mixture": ".mixture:MixtureEnv",
    "tool_domains": ".tool_domains:ToolDomainEnv",
    "pc_state": ".pc_state:PCStateEnv",
    "formal_proof": ".formal_proof:FormalProofEnv",
    "heavy_thinking": ".heavy_thinking:HeavyThinkingEnv",
    "amemgym": ".memory.amemgym:AMemGymEnv",
    "gru_mem": ".memory.gru_mem:GRUMemEnv",
    "memocr": ".memory.memocr:MemOCREnv",
    "autorefine": ".search.autorefine:AutoRefineEnv",
    "skill1": ".skills.skill1:Skill1Env",
    "skill0": ".skills.skill0:Skill0Env",
    "hipif_rooms": ".long_horizon.rooms:RoomsEnv",
    "duca_sales": ".long_horizon.sales:SalesEnv",
}


class _LazyEnvs(dict):
    """``ENVS[name]`` -> the class (imported on first access)."""

    def __getitem__(self, name):
        target = dict.__getitem__(self, name)
        if isinstance(target, str):
            mod, _, cls = target.partition(":")
            target = getattr(importlib.import_module(mod, __name__), cls)
            dict.__setitem__(self, name, target)
        return target

    def get(self, name, default=None):
        return self[name] if name in self else default

    def values(self):  # type: ignore[override]
        return [self[k] for k in self]

    def items(self):  # type: ignore[override]
        return [(k, self[k]) for k in self]


ENVS: dict[str, type] = _LazyEnvs(_REGISTRY)


def register_env(name: str, cls: type) -> None:
    """Register ``cls`` (a :class:`ToolEnv` or gymnasium-style :class:`Env` subclass) as ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_env: `name` must be a non-empty str; got {name!r}")
    if not isinstance(cls, type):
        raise TypeError(f"register_env: `cls` must be a class; got {type(cls).__name__}")
    dict.__setitem__(ENVS, name, cls)


def list_envs() -> list[str]:
    return sorted(ENVS)


def make_env(name: str, **kwargs):
    """The environment registered as ``name`` built with ``kwargs``; ``ValueError`` listing the names otherwise."""
    if name not in ENVS:
        raise ValueError(f"unknown environment {name!r}; available: {', '.join(list_envs())}")
    return ENVS[name](**kwargs)


def make_tool_env(name: str, **kwargs) -> ToolEnv:
    """``make_env(name, **kwargs)`` as a :class:`ToolEnv` (gymnasium-style text envs wrapped in
    :class:`TextEnvAdapter`)."""
    env = make_env(name, **kwargs)
    return env if isinstance(env, ToolEnv) else TextEnvAdapter(env)


def __getattr__(name):  # TrustSQLEnv without importing sqlite machinery at package import
    if name == "TrustSQLEnv":
        from .trust_sql import TrustSQLEnv

        return TrustSQLEnv
    raise AttributeError(name)


__all__ = ["Env", "ArithmeticEnv", "KVLookupEnv", "TrustSQLEnv", "ToolEnv", "TextEnvAdapter", "StepResult", "Verdict", "ENVS",
           "list_envs", "make_env", "make_tool_env", "register_env"]
