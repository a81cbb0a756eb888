"""The trainer's configuration: nested dataclasses loaded from YAML, every field checked up front.

A YAML file gives any subset of the sections below (missing fields keep their defaults); an unknown section or field,
a value of the wrong type or an unknown objective / allocator / estimator / model / environment name raises
``ConfigError`` (a ``ValueError``) naming the field and listing the valid choices.  ``--set rl.steps=10`` style
overrides go through the same checks (:func:`apply_overrides`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

__all__ = ["ConfigError", "ModelConfig", "TaskConfig", "AgentConfig", "SFTConfig", "RLConfig", "RolloutConfig", "LogConfig",
           "TrainConfig", "load_config", "apply_overrides", "resolve_config_path", "ADVANTAGES"]

# Advantage estimators the trainer can feed: (rewards [B], group index [B]) -> [B]; ``hian`` (DuCA): the session
# reward, the per-turn step rewards and each token's turn -> per-token advantages [B, R].
ADVANTAGES = ("grpo", "dr_grpo", "batch_std", "hian")


class ConfigError(ValueError):
    """A bad trainer configuration."""


@dataclass
class ModelConfig:
    """The policy: a preset of :mod:`lckernels_rl.models` plus config-field overrides, and its tokenizer.

    ``tokenizer``: ``char`` (one id per character of the task's alphabet) or ``bpe`` (a byte-level BPE trained
    locally on the task's generated text, target size ``vocab_size`` or 1024).  ``vocab_size``: the embedding /
    lm_head size (``null``: the tokenizer's size rounded up to a multiple of 8); larger than the tokenizer pads the
    lm_head with rows no token uses -- e.g. 32000 to make the lm_head as big as a real model's.
    ``init_from``: the output directory of an earlier run: this run starts from its tokenizer (``<dir>/model``, not
    rebuilt) and its model weights (``<dir>/checkpoint.pt``); the architecture must match (a warm start, e.g. the
    next stage of a curriculum; the optimizer and the step counter start afresh).
    """
    arch: str = "longcat_flash"
    experts_implementation: str = "lckernels"
    tokenizer: str = "char"
    vocab_size: Optional[int] = None
    overrides: dict = field(default_factory=dict)
    init_from: Optional[str] = None


@dataclass
class TaskConfig:
    """The environment and its prompt sets.

    ``train_size`` problems (environment seeds ``0..train_size-1``) form the training pool; ``eval_size`` further
    problems (seeds from ``10**6`` on) are the greedy-decoding evaluation set.  ``eval_env_args`` override
    ``env_args`` for the evaluation environments (e.g. ``{split: heldout}``: evaluate on held-out databases).
    """
    env: str = "arithmetic"
    env_args: dict = field(default_factory=dict)
    eval_env_args: dict = field(default_factory=dict)
    train_size: int = 2048
    eval_size: int = 256


@dataclass
class AgentConfig:
    """The agent loop: how messages become tokens and the limits of an episode.

    ``renderer``: ``raw`` (completion style: a text task's prompt as is), ``plain`` (the library's chat format with
    role tokens) or ``hf`` (the tokenizer's chat template); ``auto``: raw for text tasks, plain for tool
    environments.  ``parser``: the tool-call format (``compact``, ``hermes``, ...; ``none``: turns are plain text;
    ``auto``: the environment's own format).  ``tools_in_prompt``: list the tool schemas in the prompt (off for tiny
models whose context cannot hold them).  ``max_context_tokens``: 0 = the model's ``max_position_embeddings``.
    The new tokens per turn are ``rl.max_new_tokens``.
    """
    renderer: str = "auto"
    parser: str = "auto"
    max_turns: int = 8
    max_context_tokens: int = 0
    max_tool_output_tokens: int = 64
    tools_in_prompt: bool = True


@dataclass
class SFTConfig:
    """Supervised warm-up on the environment's demonstrations (``steps: 0`` skips it)."""
    steps: int = 100
    batch_size: int = 64
    lr: float = 3e-3


@dataclass
class RLConfig:
    """The RL phase.

    ``rollouts_per_step`` is the sampling budget split over ``prompts_per_step`` prompts by ``allocator``
    (``n_min``/``n_max`` bound each prompt's count).  ``reuse`` > 1 trains that many updates on each rollout batch;
    ``dgg`` (a dict of :class:`lckernels_rl.gating.DGGConfig` fields, or ``null``) gates those reuses.
    ``backend`` is the lckernels backend of the loss (``auto``/``cpu``/``triton``/``reference``); ``loss`` is
    ``fused`` (``objective.fused``: hidden states + lm_head through ``fused_policy_loss``) or ``per_token``
    (materialize the logits, ``log_softmax``, then the per-token objective: the unfused baseline).

    Dynamic sampling (DAPO's, as verl's recipe ``algorithm.filter_groups``): ``dynamic_sampling`` is ``auto`` (on for
    the ``dapo_filter`` allocator, off otherwise), ``filter`` (on for any allocator) or ``off`` (``dapo_filter``
    then predicts degenerate groups from the previous step: the old mode).  When on, a step samples rounds of
    ``dynamic_sampling_gen_prompts`` tasks (``null``: ``prompts_per_step``; verl's ``gen_batch_size``), drops the
    groups whose rewards have zero std and samples again until ``prompts_per_step`` groups are kept, at most
    ``dynamic_sampling_max_rounds`` rounds (0: no cap; verl's ``max_num_gen_batches``, 10 in its DAPO recipe); at the
    cap ``dynamic_sampling_on_cap: error`` stops the run as verl does, ``train`` trains on the groups kept.
    """
    steps: int = 100
    prompts_per_step: int = 16
    rollouts_per_step: int = 128
    allocator: str = "uniform"
    allocator_args: dict = field(default_factory=dict)
    n_min: int = 2
    n_max: Optional[int] = None
    objective: str = "grpo"
    objective_args: dict = field(default_factory=dict)
    advantage: str = "grpo"
    advantage_args: dict = field(default_factory=dict)
    max_new_tokens: int = 8
    temperature: float = 1.0
    reuse: int = 1
    dgg: Optional[dict] = None
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.99)
    grad_clip: float = 1.0
    backend: str = "auto"
    loss: str = "fused"
    dynamic_sampling: str = "auto"
    dynamic_sampling_max_rounds: int = 10
    dynamic_sampling_on_cap: str = "error"
    dynamic_sampling_gen_prompts: Optional[int] = None


@dataclass
class RolloutConfig:
    """The rollout engine: ``hf`` (``generate`` on the training model) or ``vllm`` (the ``vllm`` extra).

    ``mode``: ``sync`` (a step waits for its episodes) or ``async`` (DORA-style, :mod:`lckernels_rl.rollout.driver`;
    uniform allocation of ``rollouts_per_step // prompts_per_step`` episodes per group); ``executor``: ``local``
    (threads) or ``ray`` (the ``ray`` extra); ``max_staleness``: the admission bound in weight updates;
    ``max_inflight``: groups running at once (``null``: ``(max_staleness + 1) * prompts_per_step``);
    ``mask_stale_tokens``: train no token sampled more than ``max_staleness`` versions before the update;
    ``env_timeout_s``: timeout of every environment call (``null``: none; required by ``ray``);
    ``num_workers``: Ray environment actors; ``max_copies``: DORA's duplication of hard tasks (1: off).
    """
    backend: str = "hf"
    args: dict = field(default_factory=dict)
    mode: str = "sync"
    executor: str = "local"
    max_staleness: int = 1
    max_inflight: Optional[int] = None
    mask_stale_tokens: bool = False
    env_timeout_s: Optional[float] = None
    num_workers: int = 4
    max_copies: int = 1


@dataclass
class LogConfig:
    output_dir: str = "runs/default"
    checkpoint_every: int = 50
    eval_every: int = 20
    plots: bool = True
    progress: bool = True


@dataclass
class TrainConfig:
    seed: int = 0
    # torch intra-op threads; 0: automatic = torch's current count, capped at the cores this process may use
    # (affinity mask, cgroup CPU quota) unless OMP_NUM_THREADS is set (lckernels_rl/_threads.py)
    threads: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    log: LogConfig = field(default_factory=LogConfig)
    # trainer callbacks: [{target: "package.module:Class", args: {...}}] (lckernels_rl.train.callbacks)
    callbacks: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> "TrainConfig":
        cfg = _build(cls, data or {}, "")
        validate(cfg)
        return cfg


_SECTIONS = {"model": ModelConfig, "task": TaskConfig, "agent": AgentConfig, "sft": SFTConfig, "rl": RLConfig, "rollout": RolloutConfig,
             "log": LogConfig}


def _check_type(path: str, value, default, annotation: str):
    if "dict" in annotation:
        if value is None and "Optional" in annotation:
            return None
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping; got {type(value).__name__}")
        return dict(value)
    if annotation == "tuple":
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list; got {value!r}")
        return tuple(float(v) for v in value)
    if annotation == "list":
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list; got {value!r}")
        return list(value)
    if annotation.startswith("Optional[int]") or annotation.startswith("Optional[str]"):
        if value is None:
            return None
        annotation = annotation[len("Optional["):-1]
    if annotation == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false; got {value!r}")
        return value
    if annotation == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} must be an integer; got {value!r}")
        return value
    if annotation == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} must be a number; got {value!r}")
        return float(value)
    if annotation == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{path} must be a string; got {value!r}")
        return value
    return value  # pragma: no cover


def _build(cls, data: dict, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping; got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = prefix.rstrip(".") or "the top level"
        raise ConfigError(f"unknown field(s) {unknown} in {where}; valid fields: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        path = prefix + name
        if cls is TrainConfig and name in _SECTIONS:
            kwargs[name] = _build(_SECTIONS[name], value if value is not None else {}, path + ".")
        else:
            kwargs[name] = _check_type(path, value, None, str(fields[name].type))
    return cls(**kwargs)


def _choice(path: str, value: str, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{path}: unknown value {value!r}; valid choices: {', '.join(sorted(choices))}")


def _positive(path: str, value, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{path} must be {'>= 0' if allow_zero else '> 0'}; got {value!r}")


def validate(cfg: TrainConfig) -> None:
    """Check names against the registries and ranges; raises :class:`ConfigError`."""
    import lckernels
    from lckernels_rl.budget import list_allocators
    from lckernels_rl.envs import list_envs
    from lckernels_rl.models import list_archs
    from lckernels_rl.objectives import get_objective, list_objectives
    from lckernels_rl.rollout import BACKENDS as ROLLOUT_BACKENDS

    _choice("model.arch", cfg.model.arch, list_archs())
    _choice("model.experts_implementation", cfg.model.experts_implementation,
            ("lckernels", "eager", "grouped_mm", "batched_mm"))
    if cfg.model.arch == "longcat_flash" and cfg.model.experts_implementation not in ("lckernels", "eager"):
        # transformers routes only @use_experts_implementation classes; LongCat-Flash's experts are not one
        raise ConfigError(f"model.experts_implementation={cfg.model.experts_implementation!r} is not available for "
                          "longcat_flash (transformers does not route its experts); valid choices: eager, lckernels")
    _choice("model.tokenizer", cfg.model.tokenizer, ("char", "bpe"))
    if "vocab_size" in cfg.model.overrides:
        raise ConfigError("model.overrides.vocab_size: the vocabulary size follows the tokenizer; set model.vocab_size "
                          "(the lm_head size, >= the tokenizer's size) instead")
    if cfg.model.vocab_size is not None and cfg.model.vocab_size < 8:
        raise ConfigError(f"model.vocab_size must be >= 8 (or null); got {cfg.model.vocab_size}")
    _choice("task.env", cfg.task.env, list_envs())
    _choice("agent.renderer", cfg.agent.renderer, ("auto", "raw", "plain", "hf"))
    from lckernels_rl.agents.parsers import list_parsers

    _choice("agent.parser", cfg.agent.parser, ("auto", "none", *list_parsers()))
    _choice("rl.objective", cfg.rl.objective, list_objectives())
    _choice("rl.allocator", cfg.rl.allocator, list_allocators())
    _choice("rl.advantage", cfg.rl.advantage, ADVANTAGES)
    hian_args = ("w_session", "w_turn", "eps", "unbiased", "turn_return", "gamma")
    allowed = hian_args if cfg.rl.advantage == "hian" else ()
    bad = sorted(set(cfg.rl.advantage_args) - set(allowed))
    if bad:
        raise ConfigError(f"rl.advantage_args: unknown field(s) {bad} for rl.advantage={cfg.rl.advantage!r}; "
                          f"valid fields: {', '.join(allowed) or 'none'}")
    from .callbacks import build_callbacks

    build_callbacks(cfg.callbacks)  # a bad target / args fails at load time
    _choice("rl.backend", cfg.rl.backend, lckernels.BACKENDS)
    _choice("rl.loss", cfg.rl.loss, ("fused", "per_token"))
    _choice("rl.dynamic_sampling", cfg.rl.dynamic_sampling, ("auto", "filter", "off"))
    _choice("rl.dynamic_sampling_on_cap", cfg.rl.dynamic_sampling_on_cap, ("error", "train"))
    _choice("rollout.backend", cfg.rollout.backend, ROLLOUT_BACKENDS)
    from .allocation import dynamic_sampling_on

    _choice("rollout.mode", cfg.rollout.mode, ("sync", "async"))
    _choice("rollout.executor", cfg.rollout.executor, ("local", "ray"))
    if cfg.rollout.mode == "async" and (cfg.rl.allocator != "uniform" or dynamic_sampling_on(cfg.rl)):
        raise ConfigError("rollout.mode=async runs fixed-size groups: it needs rl.allocator=uniform and dynamic "
                          f"sampling off (got allocator={cfg.rl.allocator!r})")
    if cfg.rollout.executor == "ray" and cfg.rollout.mode != "async":
        raise ConfigError("rollout.executor=ray needs rollout.mode=async")
    if cfg.rollout.max_inflight is not None:
        _positive("rollout.max_inflight", cfg.rollout.max_inflight)
    for path, v, zero in (("task.train_size", cfg.task.train_size, False), ("task.eval_size", cfg.task.eval_size, True),
                          ("sft.steps", cfg.sft.steps, True), ("sft.batch_size", cfg.sft.batch_size, False),
                          ("sft.lr", cfg.sft.lr, False), ("rl.steps", cfg.rl.steps, True),
                          ("rl.prompts_per_step", cfg.rl.prompts_per_step, False),
                          ("rl.rollouts_per_step", cfg.rl.rollouts_per_step, False),
                          ("rl.n_min", cfg.rl.n_min, True), ("rl.max_new_tokens", cfg.rl.max_new_tokens, False),
                          ("rl.temperature", cfg.rl.temperature, False), ("rl.reuse", cfg.rl.reuse, False),
                          ("rl.lr", cfg.rl.lr, False), ("rl.weight_decay", cfg.rl.weight_decay, True),
                          ("rl.grad_clip", cfg.rl.grad_clip, True), ("threads", cfg.threads, True),
                          ("log.checkpoint_every", cfg.log.checkpoint_every, True),
                          ("agent.max_turns", cfg.agent.max_turns, False),
                          ("agent.max_context_tokens", cfg.agent.max_context_tokens, True),
                          ("agent.max_tool_output_tokens", cfg.agent.max_tool_output_tokens, False),
                          ("log.eval_every", cfg.log.eval_every, True),
                          ("rl.dynamic_sampling_max_rounds", cfg.rl.dynamic_sampling_max_rounds, True),
                          ("rollout.max_staleness", cfg.rollout.max_staleness, True),
                          ("rollout.num_workers", cfg.rollout.num_workers, False),
                          ("rollout.max_copies", cfg.rollout.max_copies, False)):
        _positive(path, v, zero)
    gen = cfg.rl.dynamic_sampling_gen_prompts
    if gen is not None:
        if not 1 <= gen <= cfg.task.train_size:
            raise ConfigError(f"rl.dynamic_sampling_gen_prompts must be in [1, task.train_size = "
                              f"{cfg.task.train_size}] (or null: rl.prompts_per_step); got {gen}")
        per_round = gen * cfg.rl.rollouts_per_step // cfg.rl.prompts_per_step
        if per_round < gen * max(cfg.rl.n_min, 1):
            raise ConfigError(f"rl.dynamic_sampling_gen_prompts={gen}: a round's budget gen_prompts * "
                              f"rollouts_per_step // prompts_per_step = {per_round} is below gen_prompts * "
                              f"max(rl.n_min, 1) = {gen * max(cfg.rl.n_min, 1)}")
    if cfg.rl.prompts_per_step > cfg.task.train_size:
        raise ConfigError(f"rl.prompts_per_step ({cfg.rl.prompts_per_step}) must be <= task.train_size "
                          f"({cfg.task.train_size})")
    if cfg.rl.n_max is not None and cfg.rl.n_max < max(cfg.rl.n_min, 1):
        raise ConfigError(f"rl.n_max ({cfg.rl.n_max}) must be >= max(rl.n_min, 1)")
    if len(cfg.rl.betas) != 2 or not all(0 <= b < 1 for b in cfg.rl.betas):
        raise ConfigError(f"rl.betas must be two numbers in [0, 1); got {list(cfg.rl.betas)}")
    from lckernels_rl.envs import make_env
    from lckernels_rl.gating import DGGConfig

    _try_build("rl.objective_args", get_objective, cfg.rl.objective, **cfg.rl.objective_args)
    if cfg.rl.dgg is not None:
        _try_build("rl.dgg", DGGConfig, **cfg.rl.dgg)
        k = cfg.rl.dgg.get("max_reuse", cfg.rl.reuse)
        if k != cfg.rl.reuse:  # one K: the trainer's loop runs rl.reuse updates
            raise ConfigError(f"rl.dgg.max_reuse ({k}) must equal rl.reuse ({cfg.rl.reuse}), the trainer's number of "
                              "updates per rollout batch; leave max_reuse out")
    _try_build("task.env_args", make_env, cfg.task.env, **cfg.task.env_args)
    if cfg.task.eval_env_args:
        _try_build("task.eval_env_args", make_env, cfg.task.env, **{**cfg.task.env_args, **cfg.task.eval_env_args})


def _try_build(path: str, factory, *args, **kwargs) -> None:
    """Build once to check the arguments; their TypeError/ValueError becomes a ConfigError naming ``path``."""
    try:
        factory(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from None


def bundled_configs() -> dict[str, Path]:
    """The configs shipped with the package (``lckernels_rl/configs/*.yaml``, package data): name -> file."""
    from importlib.resources import as_file, files

    root = files("lckernels_rl") / "configs"
    out = {}
    if root.is_dir():
        for item in root.iterdir():
            if item.name.endswith(".yaml") and item.is_file():
                with as_file(item) as path:  # a real file for a normal install (zips are not supported)
                    out[item.name[:-len(".yaml")]] = Path(path)
    return dict(sorted(out.items()))


def resolve_config_path(name_or_path: str) -> Path:
    """A YAML path as given, or the bundled config ``<name>`` / ``<name>.yaml`` (:func:`bundled_configs`)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    bundled = bundled_configs()
    name = name_or_path[:-len(".yaml")] if name_or_path.endswith(".yaml") else name_or_path
    if name in bundled:
        return bundled[name]
    raise ConfigError(f"config {name_or_path!r} not found (not a file; bundled configs: "
                      f"{', '.join(bundled) or 'none'})")


def _parse_value(text: str):
    import yaml

    return yaml.safe_load(text)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``section.field=value`` strings (values parsed as YAML) to a config dict (a copy is returned)."""
    import copy

    out = copy.deepcopy(data)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set expects section.field=value; got {item!r}")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {p} is not a section")
        node[parts[-1]] = _parse_value(text)
    return out


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (a path, or a bundled config name), apply ``overrides``, validate."""
    import yaml

    p = resolve_config_path(str(path))
    with open(p) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping")
    return TrainConfig.from_dict(apply_overrides(data, overrides or []))
