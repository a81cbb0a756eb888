"""Environments: the multi-turn tool protocol (:class:`ToolEnv`) and gymnasium-style text tasks (:class:`Env`).

``make_env(name)`` builds a registered environment as it is; ``make_tool_env(name)`` builds it as a
:class:`ToolEnv` (text tasks wrapped in :class:`TextEnvAdapter`), which is what the agent loop and the trainer run.
"""

from __future__ import annotations

from .arithmetic import ArithmeticEnv
from .base import Env
from .kv_lookup import KVLookupEnv
from .tool_env import StepResult, TextEnvAdapter, ToolEnv, Verdict
from .trust_sql import TrustSQLEnv

ENVS: dict[str, type] = {"arithmetic": ArithmeticEnv, "kv_lookup": KVLookupEnv, "trust_sql": TrustSQLEnv}


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


__all__ = ["Env", "ArithmeticEnv", "KVLookupEnv", "TrustSQLEnv", "ToolEnv", "TextEnvAdapter", "StepResult", "Verdict", "ENVS",
           "list_envs", "make_env", "make_tool_env"]
