"""Name -> objective class registry: ``get_objective(name, **params)`` and ``list_objectives()``."""

from __future__ import annotations

from typing import Union

from .base import SOURCES, Objective

__all__ = ["register_objective", "get_objective", "list_objectives", "objective_sources"]

_REGISTRY: dict[str, type] = {}


def register_objective(cls):
    """Class decorator: make ``cls`` reachable as ``get_objective(cls.name)``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no `name`")
    if cls.source not in SOURCES:
        raise ValueError(f"{cls.__name__}.source must be one of {SOURCES}; got {cls.source!r}")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"objective {cls.name!r} is already registered by {_REGISTRY[cls.name].__name__}")
    _REGISTRY[cls.name] = cls
    return cls


def list_objectives() -> list[str]:
    """Registered objective names, sorted."""
    return sorted(_REGISTRY)


def objective_sources() -> dict[str, str]:
    """``{name: "verified" | "third-party" | "inferred"}`` (details in each module's docstring)."""
    return {name: _REGISTRY[name].source for name in list_objectives()}


def get_objective(name: Union[str, Objective], **params) -> Objective:
    """An objective instance by name, with its parameters overridden by ``params``.

    >>> from lckernels_rl.objectives import get_objective
    >>> get_objective("dapo").eps_high
    0.28
    """
    if isinstance(name, Objective):
        return name.replace(**params) if params else name
    cls = _REGISTRY.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown objective {name!r}; valid names: {', '.join(list_objectives())}")
    return cls(**params)
