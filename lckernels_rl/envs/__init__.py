"""Environments (gymnasium-style ``reset`` / ``step``)."""

from __future__ import annotations

from .arithmetic import ArithmeticEnv
from .base import Env

ENVS: dict[str, type[Env]] = {"arithmetic": ArithmeticEnv}


def list_envs() -> list[str]:
    return sorted(ENVS)


def make_env(name: str, **kwargs) -> Env:
    """The environment registered as ``name`` built with ``kwargs``; ``ValueError`` listing the names otherwise."""
    if name not in ENVS:
        raise ValueError(f"unknown environment {name!r}; available: {', '.join(list_envs())}")
    return ENVS[name](**kwargs)


__all__ = ["Env", "ArithmeticEnv", "ENVS", "list_envs", "make_env"]
