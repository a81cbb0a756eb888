"""Trainer callbacks: code that runs at fixed points of :meth:`Trainer.fit` and may steer the run.

A callback subclasses :class:`TrainerCallback` and overrides what it needs:

* ``on_train_begin(trainer)``: once per :meth:`~lckernels_rl.train.Trainer.fit` call, before the first step;
* ``on_step_end(trainer, metrics)``: after every step (SFT and RL), before the step's line is logged; keys it adds to
  ``metrics`` are logged with the step (``metrics["phase"]`` says which phase);
* ``state_dict()`` / ``load_state_dict(state)``: saved in the checkpoint, restored by ``--resume`` (a schedule's
  position, a curriculum's level).

What a callback may change: the arguments of the environments built from then on
(:meth:`Trainer.set_env_args`: a noise level, a withdrawn skill set), anything it keeps itself, and the metrics of the
step.  Examples: SKILL0's skill-withdrawal schedule, a noise curriculum raising the level as the clean-noisy gap
closes.

From a config::

    callbacks:
      - target: my_package.my_module:MyCallback   # "module:Class"
        args: {every: 10}

:func:`build_callbacks` imports and builds them (a clear ``ConfigError`` for a bad target or arguments);
:func:`register_callback` gives a class a short name usable as ``target``.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["TrainerCallback", "build_callbacks", "register_callback", "list_callbacks"]


class TrainerCallback:
    """Base class: every hook is a no-op."""

    def on_train_begin(self, trainer) -> None:
        pass

    def on_step_end(self, trainer, metrics: dict) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


# short name -> the class, or "module:Class" (imported on first use)
_REGISTRY: dict[str, Any] = {"skill0_withdrawal": "lckernels_rl.envs.skills.skill0:SkillWithdrawalCallback",
                             "noise_curriculum": "lckernels_rl.envs.tool_domains.callbacks:NoiseCurriculumCallback"}


def register_callback(name: str, cls: type) -> None:
    """Register ``cls`` (a :class:`TrainerCallback` subclass) under the short ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_callback: `name` must be a non-empty str; got {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, TrainerCallback)):
        raise TypeError(f"register_callback: `cls` must be a TrainerCallback subclass; got {cls!r}")
    _REGISTRY[name] = cls


def list_callbacks() -> list[str]:
    return sorted(_REGISTRY)


def _resolve(target: str, where: str) -> type:
    from .config import ConfigError

    if target in _REGISTRY and not isinstance(_REGISTRY[target], str):
        return _REGISTRY[target]
    mod, sep, name = _REGISTRY.get(target, target).partition(":")
    if not sep or not mod or not name:
        raise ConfigError(f"{where}.target must be 'package.module:Class' or a registered name "
                          f"({', '.join(list_callbacks()) or 'none registered'}); got {target!r}")
    try:
        cls = getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{where}.target: cannot import {target!r} ({e})") from None
    if not (isinstance(cls, type) and issubclass(cls, TrainerCallback)):
        raise ConfigError(f"{where}.target: {target!r} is not a TrainerCallback subclass")
    return cls


def build_callbacks(specs) -> list[TrainerCallback]:
    """``[{target, args}, ...]`` (the config's ``callbacks``) -> callback objects."""
    from .config import ConfigError

    if not isinstance(specs, (list, tuple)):
        raise ConfigError(f"callbacks must be a list of {{target, args}} mappings; got {type(specs).__name__}")
    out = []
    for i, spec in enumerate(specs):
        where = f"callbacks[{i}]"
        if not isinstance(spec, dict) or not isinstance(spec.get("target"), str):
            raise ConfigError(f"{where} must be a mapping with a string `target` (and optional `args`); got {spec!r}")
        unknown = sorted(set(spec) - {"target", "args"})
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {unknown}; valid fields: target, args")
        args = spec.get("args") or {}
        if not isinstance(args, dict):
            raise ConfigError(f"{where}.args must be a mapping; got {type(args).__name__}")
        cls = _resolve(spec["target"], where)
        try:
            out.append(cls(**args))
        except TypeError as e:
            raise ConfigError(f"{where}.args: {cls.__name__}({', '.join(args)}) failed: {e}") from None
    return out
