"""Providers for ``rl_step``: one full RL step of the end-to-end trainer (rollout + scoring + update).

Each provider is a :class:`lckernels_rl.train.Trainer` built from a bundled config (``config``, default
``lckernels_rl/configs/default.yaml``: the tiny LongCat-Flash MoE on 2-digit addition), with the same seed, so
every provider starts from the same weights and samples the same batch at step 1.  A call is ``Trainer.fit(max_steps=1)``: the
trainer's rollout source samples ``rollouts`` episodes of ``prompts`` tasks (HF ``generate`` through the agent loop;
one turn for the text tasks, several for tool tasks), scores them, then the update (policy forward, loss, backward,
gradient norms, clipping, AdamW).  The benchmark settings replace the config's: no supervised warm-up in the
trainers (``sft.steps=0``; see ``sft`` below), no evaluation, checkpoints, plots or progress bar, the output in a
temporary folder, ``threads=0`` (the harness's torch threads).  Each trainer runs one untimed RL step when it is
built (the first step allocates the optimizer state); the harness's ``--warmup`` steps follow.

Configurations (``config``): a bundled config name or a YAML path, or a benchmark variant of one (:data:`VARIANTS`).
Each has a preset (:data:`PRESETS`) for the parameters left at their default (``0``; ``sft``: ``-1``):

* ``default``: LongCat-Flash MoE (MLA, 8 GEMM + 2 identity experts, top-2) on 2-digit addition, char vocab
  (24 ids), at most 4 new tokens.  32 prompts x 256 rollouts (in all, 8 per prompt).
* ``qwen3_moe``: Qwen3-MoE (GQA, 8 experts, top-2), the same task.  32 x 256.
* ``agent_kv_lookup``: LongCat-Flash on the multi-turn ``kv_lookup`` tool task (compact parser ``@lookup(key=ab)``,
  up to 4 turns of at most 20 tokens, a 128-token context, tool outputs masked out of the loss).  16 x 128 (the
  config's) after a 100-step supervised warm-up (``sft=100``): the random init never calls the tool, the warmed-up
  policy does in ~85-90% of the episodes (~1.8 turns each).
* ``qwen3_moe_v32k`` (a :data:`VARIANTS` entry): ``qwen3_moe`` with 64 experts top-8, 2 layers, a byte-level BPE
  tokenizer (302 ids on this task) and the lm_head padded to ``model.vocab_size`` 32000; expert FFN 256; meant for
  ``--hidden 512``.  4 x 32 (8 rollouts per prompt, at most 128 response tokens: seconds per step).

Other configs get 32 x 256 and no warm-up.

Sweep: ``hidden`` = the model's ``hidden_size`` (a model override, on every config), with the expert FFN size
``expert_ffn`` (0: the preset's, else the same as ``hidden``).  The default sweep is 128 / 256.  ``sft``: supervised
warm-up steps (``-1``: the preset's; ``0``: the random init).  The warm-up runs once per sweep point, in
:func:`make_inputs`, with the config's SFT settings on the default (lckernels) kernels; every provider's trainer
starts from its weights (loaded before its first step), so the providers still start from the same weights.  It is
neither timed nor part of the measured peak memory.

Providers (one mode, ``step``):

* ``lckernels-fused``     -- the trainer's defaults: ``rl.loss=fused`` (``objective.fused`` through
  ``lckernels.fused_policy_loss``), ``rl.backend=auto`` (the C++ CPU path), ``experts_implementation=lckernels``
  (``lckernels.moe_experts`` through the HF integration, also inside ``generate``).
* ``lckernels-reference`` -- the same config with ``LCK_BACKEND=reference`` during its calls: every lckernels op
  (MoE experts, routing, the fused loss, grad norms) on the readable PyTorch reference path.
* ``hf-grouped_mm``       -- anchor: transformers' ``grouped_mm`` experts and ``rl.loss=per_token`` (logits,
  ``log_softmax``, the per-token objective).  transformers (5.x) has no ``grouped_mm`` for LongCat-Flash's experts
  (``LongcatFlashExperts`` does not use ``@use_experts_implementation``), so it is left out with a note for the
  LongCat-Flash configs (``default``, ``agent_kv_lookup``); the Qwen3-MoE ones have it.
* ``hf-eager``            -- anchor: transformers' ``eager`` experts (the per-expert loop) and ``rl.loss=per_token``.

There is no physical-limit provider: the floor of a step with a free update is its rollout, which every row reports
(``rollout_time``).

Metrics besides the harness's ``time`` (ms per ``fit(max_steps=1)`` call), from the same timed steps
(:func:`extra_metrics`): ``tokens_per_s`` (response tokens -- the tokens the policy sampled, tool outputs excluded
-- / the step's wall time), ``rollout_time`` (sampling and scoring: the trainer's ``time_rollout_s``) and
``update_time`` (the rest of the step: packing, loss, backward, norms, optimizer).  Responses end at EOS, at the
turn / token budget or when the episode ends, so the token count varies a little from step to step and between
providers after step 1 (their weights may drift apart by rounding); tokens/s is the comparable number.

The providers of one point are timed round-robin in one process.  Each keeps its own torch / Python RNG state
(swapped in around its calls), so the interleaving does not change what it samples.  Every step's sampled token ids
are fingerprinted where the trainer's rollout source returns them (:attr:`RLStep.batches`), and the table checks
that step 1's are identical across providers.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import random
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from typing import Callable

import torch

from . import check_choice
from ..common import _timing

OP = "rl_step"
X_NAME = "hidden"
# 0 (sft: -1) = the config's preset (PRESETS); the CLI passes every default, so a preset cannot be a default here
DEFAULTS = {"hidden": [128, 256], "expert_ffn": 0, "prompts": 0, "rollouts": 0, "sft": -1, "config": "default",
            "seed": 0}
MODES = ("step",)
ANCHOR = "hf-grouped_mm"
LIMIT = None  # no limit provider; see the module docstring
REFERENCE = "lckernels-reference"
# the memory subprocess's first call (loads libraries and thread pools)
WARMUP_OVERRIDES = {"hidden": 32, "expert_ffn": 32, "prompts": 2, "rollouts": 4, "sft": 0}

# Benchmark variants of a bundled config: name -> (base config, deep-merged changes).  Model overrides that the sweep
# sets (hidden_size, the expert FFN size) are left to it.
VARIANTS: dict[str, tuple[str, dict]] = {
    "qwen3_moe_v32k": ("qwen3_moe", {"model": {"tokenizer": "bpe", "vocab_size": 32000, "overrides": {
        "num_experts": 64, "num_experts_per_tok": 8, "num_hidden_layers": 2}}}),
}
# Per config: the values of the parameters left at their default (0, sft -1).  FALLBACK for any other config.
FALLBACK = {"prompts": 32, "rollouts": 256, "sft": 0}
PRESETS: dict[str, dict] = {
    "default": {},
    "qwen3_moe": {},
    "agent_kv_lookup": {"prompts": 16, "rollouts": 128, "sft": 100},  # the config's batch; sft: the tool gets called
    "qwen3_moe_v32k": {"prompts": 4, "rollouts": 32, "expert_ffn": 256},  # 8 rollouts per prompt: seconds a step
}

# config key of the expert FFN size per model arch
_EXPERT_FFN_KEY = {"longcat_flash": "expert_ffn_hidden_size", "qwen3_moe": "moe_intermediate_size"}


@dataclass(frozen=True)
class Provider:
    """A contender: trainer settings, and the ``LCK_BACKEND`` value its calls run under."""

    description: str
    experts: str
    loss: str
    lck_backend: str = "auto"


PROVIDERS: dict[str, Provider] = {
    "lckernels-fused": Provider("rl.loss=fused, rl.backend=auto (C++ CPU), experts lckernels", "lckernels", "fused"),
    "lckernels-reference": Provider("the same config under LCK_BACKEND=reference (every lckernels op)",
                                    "lckernels", "fused", "reference"),
    "hf-grouped_mm": Provider("transformers grouped_mm experts + per-token torch loss", "grouped_mm", "per_token"),
    "hf-eager": Provider("transformers eager experts + per-token torch loss", "eager", "per_token"),
}


# ---------------------------------------------------------------------------------------------------- inputs
@dataclass
class Inputs:
    """The trainer config of one sweep point, as a dict for ``TrainConfig.from_dict`` (without the provider's
    settings and the output folder, which :func:`make_fn` fills in), and the warmed-up weights every provider's
    policy starts from (``state``)."""

    config: dict
    arch: str
    hidden: int
    state: dict | None = None  # the policy weights after the supervised warm-up (None: no warm-up)


def _merge(base: dict, changes: dict) -> dict:
    out = dict(base)
    for k, v in changes.items():
        out[k] = _merge(out.get(k) or {}, v) if isinstance(v, dict) else v
    return out


def _load_yaml(name: str) -> dict:
    """The config ``name`` as a dict: a :data:`VARIANTS` entry, a bundled config name or a YAML path."""
    import yaml

    from lckernels_rl.train.config import resolve_config_path

    base, changes = VARIANTS.get(name, (name, {}))
    with open(resolve_config_path(base)) as f:
        return _merge(yaml.safe_load(f) or {}, changes)


def resolve_params(params: dict) -> dict:
    """``params`` with the ones left at their default (``prompts`` / ``rollouts`` / ``expert_ffn`` 0, ``sft`` -1)
    replaced by the config's preset (:data:`PRESETS`; ``expert_ffn`` stays 0 = the same as ``hidden`` where the
    preset has none)."""
    preset = {**FALLBACK, **PRESETS.get(str(params["config"]), {})}
    out = dict(params)
    for k in ("prompts", "rollouts", "expert_ffn"):
        if not int(out.get(k) or 0):
            out[k] = int(preset.get(k, 0))
    if int(out.get("sft", -1)) < 0:
        out["sft"] = int(preset["sft"])
    return out


def make_inputs(x: int, params: dict, device: str = "cpu") -> Inputs:
    if torch.device(device).type != "cpu":
        raise ValueError(f"{OP}: the trainer runs on CPU; got device {device!r}")
    params = resolve_params(params)
    data = _load_yaml(str(params["config"]))
    model = dict(data.get("model") or {})
    arch = model.get("arch", "longcat_flash")
    if arch not in _EXPERT_FFN_KEY:
        raise ValueError(f"{OP}: config {params['config']!r} has arch {arch!r}; the benchmark needs a MoE arch "
                         f"({', '.join(_EXPERT_FFN_KEY)})")
    hidden = int(x)
    ffn = int(params["expert_ffn"]) or hidden
    model["overrides"] = {**(model.get("overrides") or {}), "hidden_size": hidden, _EXPERT_FFN_KEY[arch]: ffn}
    data.update(
        seed=int(params["seed"]), threads=0, model=model,
        task={**(data.get("task") or {}), "eval_size": 0},
        sft={**(data.get("sft") or {}), "steps": 0},
        rl={**(data.get("rl") or {}), "steps": 10**9, "prompts_per_step": int(params["prompts"]),
            "rollouts_per_step": int(params["rollouts"])},
        log={"checkpoint_every": 0, "eval_every": 0, "plots": False, "progress": False},
    )
    warm = data["sft"]
    state = _warm_start({**data, "sft": {**warm, "steps": int(params["sft"])}}) if int(params["sft"]) > 0 else None
    return Inputs(data, arch, hidden, state)


def _warm_start(data: dict) -> dict:
    """The policy weights after ``data['sft']['steps']`` supervised steps of a trainer built from ``data`` (the
    default kernels and experts implementation), with the caller's torch / Python RNG state left as it was."""
    from lckernels_rl.train.config import TrainConfig
    from lckernels_rl.train.trainer import Trainer

    out_dir = tempfile.mkdtemp(prefix="lck-bench-rl-step-sft-")
    rng = (torch.get_rng_state(), random.getstate())
    try:
        trainer = Trainer(TrainConfig.from_dict({**data, "log": {**data["log"], "output_dir": out_dir}}))
        try:
            trainer.fit(max_steps=int(data["sft"]["steps"]))
            return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        finally:
            trainer.close()
    finally:
        torch.set_rng_state(rng[0])
        random.setstate(rng[1])
        shutil.rmtree(out_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------------- the step
class RLStep:
    """One provider's trainer.  Each call runs one RL step (``Trainer.fit(max_steps=1)``) and appends its metrics
    line to :attr:`history`; :attr:`first` is the untimed step 1 run at construction (``warmup_steps`` >= 1).

    The provider's ``LCK_BACKEND`` and its own torch / Python RNG state are swapped in around construction and every
    call, so several instances can be called in any interleaving and each samples what it would sample alone.
    :attr:`batches` holds a :func:`batch_fingerprint` of every step's sampled responses (:attr:`first_batch`: step
    1's), taken where the trainer's rollout source returns them.
    """

    def __init__(self, provider: str, inputs: Inputs, warmup_steps: int = 1):
        from lckernels_rl.train.config import TrainConfig
        from lckernels_rl.train.trainer import Trainer

        spec = PROVIDERS[provider]
        self.provider = provider
        self._env = {"LCK_BACKEND": spec.lck_backend}
        self._rng: tuple | None = None
        out_dir = tempfile.mkdtemp(prefix="lck-bench-rl-step-")
        self._cleanup = weakref.finalize(self, shutil.rmtree, out_dir, True)
        data = {**inputs.config,
                "model": {**inputs.config["model"], "experts_implementation": spec.experts},
                "rl": {**inputs.config["rl"], "loss": spec.loss, "backend": "auto"},
                "log": {**inputs.config["log"], "output_dir": out_dir}}
        self.history: list[dict] = []
        self.batches: list[str] = []  # batch_fingerprint of each step's sampled responses
        with self._own_state():
            self.trainer = Trainer(TrainConfig.from_dict(data))
            if inputs.state is not None:  # the shared warm-up (before the first step builds the rollout engine)
                self.trainer.model.load_state_dict(inputs.state)
        source_next = self.trainer.source.next  # observe each step's sampled batch (behaviour unchanged)

        def observed_next(step):
            groups = source_next(step)
            self.batches.append(batch_fingerprint([s.sampled_ids() for s in groups.samples]))
            return groups
        self.trainer.source.next = observed_next
        for _ in range(warmup_steps):
            self()
        self.first = self.history[0] if self.history else None
        self.first_batch = self.batches[0] if self.batches else None

    @contextlib.contextmanager
    def _own_state(self):
        outer_env = {k: os.environ.get(k) for k in self._env}
        outer_rng = (torch.get_rng_state(), random.getstate())
        os.environ.update(self._env)
        if self._rng is not None:
            torch.set_rng_state(self._rng[0])
            random.setstate(self._rng[1])
        try:
            yield
        finally:
            self._rng = (torch.get_rng_state(), random.getstate())
            torch.set_rng_state(outer_rng[0])
            random.setstate(outer_rng[1])
            for k, v in outer_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def __call__(self) -> dict:
        with self._own_state():
            m = self.trainer.fit(max_steps=1)[-1]
        self.history.append(m)
        return m

    def close(self) -> None:
        self.trainer.close()
        self._cleanup()


def batch_fingerprint(response_ids) -> str:
    """Short hash of a step's sampled responses (every token id, in order)."""
    return hashlib.sha1(repr([list(map(int, r)) for r in response_ids]).encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------------- registry
@functools.lru_cache(maxsize=None)
def _grouped_mm_supported(arch: str) -> bool:
    """Whether transformers can run ``arch``'s experts with ``grouped_mm`` (its experts class is decorated with
    ``@use_experts_implementation``; transformers raises at build time otherwise)."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    from lckernels_rl.models import policy_config

    cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(policy_config(arch, vocab_size=8))]
    return bool(cls._can_set_experts_implementation())


def available_providers(device: str = "cpu") -> list[str]:
    """All providers on CPU (the trainer has no device option); none elsewhere."""
    return list(PROVIDERS) if torch.device(device).type == "cpu" else []


def unavailable(provider: str, params: dict) -> str | None:
    """Why ``provider`` cannot run with ``params`` (``None`` if it can)."""
    if PROVIDERS[provider].experts == "grouped_mm":  # (the variants keep their base config's arch)
        arch = (_load_yaml(str(params["config"])).get("model") or {}).get("arch", "longcat_flash")
        if not _grouped_mm_supported(arch):
            return f"transformers has no grouped_mm experts for arch {arch!r} (config {params['config']!r})"
    return None


def make_fn(provider: str, mode: str, inputs: Inputs) -> Callable[[], object]:
    check_choice(OP, provider, mode, PROVIDERS, MODES)
    return RLStep(provider, inputs)


def extra_metrics(fn: RLStep, timing) -> list[dict]:
    """``tokens_per_s``, ``rollout_time`` and ``update_time`` of the timed steps (the last ``len(timing.samples)``
    calls of ``fn``).  The ``tokens_per_s`` row also carries ``step1`` (the untimed first step's response tokens and
    :func:`batch_fingerprint`) and ``tokens`` (median response tokens per timed step); they are not CSV columns."""
    steps = fn.history[-len(timing.samples):]
    tok_s = _timing([m["response_tokens"] / m["time_s"] for m in steps])
    rollout = _timing([m["time_rollout_s"] * 1e3 for m in steps])
    update = _timing([(m["time_s"] - m["time_rollout_s"]) * 1e3 for m in steps])
    tokens = _timing([float(m["response_tokens"]) for m in steps]).median

    def row(metric, unit, t, **more):
        return {"metric": metric, "unit": unit, "median": t.median, "p20": t.p20, "p80": t.p80, **more}

    step1 = (fn.first["response_tokens"], fn.first_batch) if fn.first else None
    return [row("tokens_per_s", "tok/s", tok_s, step1=step1, tokens=tokens), row("rollout_time", "ms", rollout),
            row("update_time", "ms", update)]


def describe(params: dict) -> str:
    params = resolve_params(params)
    ffn = params["expert_ffn"] or "hidden"
    model = _load_yaml(str(params["config"])).get("model") or {}
    vocab = f"{model.get('tokenizer', 'char')} vocab" + (f", lm_head {model['vocab_size']}"
                                                          if model.get("vocab_size") else "")
    sft = f" sft={params['sft']}" if params["sft"] else ""
    return (f"config={params['config']} expert_ffn={ffn} prompts={params['prompts']} rollouts={params['rollouts']}"
            f"{sft} seed={params['seed']} ({vocab})")


def _speedup(num: float | None, den: float | None) -> str:
    return f"{num / den:.2f}x" if num and den else "-"


def format_rows(rows: list[dict]) -> str:
    """The table of one rl_step run: per point, each provider's tokens/s with its speedup over the reference and
    the anchors (tokens/s / theirs, so > 1 is faster), its step / rollout / update times and its peak memory."""
    by: dict[tuple, dict] = {}
    for r in rows:
        by.setdefault((r["mode"], r["x_value"]), {}).setdefault(r["provider"], {})[r["metric"]] = r
    g0 = rows[0]
    out = [f"{OP}  {g0.get('config', '')}  |  {g0['device']}  |  commit {g0['commit']}",
           "tok/s = response tokens / step wall time, median [p20-p80] of the timed steps; x<name> = tok/s / that "
           "provider's (higher = faster); step, rollout, update = median ms; upd x<name> = their update ms / this "
           "one's; peak = extra peak MiB of one step in a fresh process"]
    others = [REFERENCE, "hf-grouped_mm", "hf-eager"]
    short = {REFERENCE: "xref", "hf-grouped_mm": "xgrouped_mm", "hf-eager": "xeager"}
    head = (f"{'mode':5s} {X_NAME:>6s}  {'provider':20s} {'tok/s':>7s} {'[p20-p80]':>13s} "
            + " ".join(f"{short[o]:>11s}" for o in others)
            + f" {'step ms':>8s} {'rollout':>8s} {'update':>8s} {'upd xref':>8s} {'upd xeager':>10s} {'peak MiB':>9s}")
    for (mode, x), provs in by.items():
        out.append("")
        fps = {p: m["tokens_per_s"].get("step1") for p, m in provs.items() if "tokens_per_s" in m}
        distinct = {fp for fp in fps.values() if fp is not None}
        if len(distinct) == 1:
            n, fp = next(iter(distinct))
            out.append(f"step-1 batch identical across providers: {n} response tokens, fingerprint {fp}")
        elif distinct:
            out.append("WARNING step-1 batches differ: " + ", ".join(f"{p}={fp}" for p, fp in fps.items()))
        out.append(head)
        out.append("-" * len(head))

        def med(p, metric):
            return provs.get(p, {}).get(metric, {}).get("median")

        for p, m in provs.items():
            ts = m.get("tokens_per_s")
            band = f"[{ts['p20']:.0f}-{ts['p80']:.0f}]" if ts else ""
            peak = med(p, "peak_mem")
            tok = f"{ts['median']:.0f}" if ts else "-"
            cells = [f"{mode:5s} {x!s:>6s}  {p:20s} {tok:>7s} {band:>13s}"]
            cells += [f"{_speedup(med(p, 'tokens_per_s'), med(o, 'tokens_per_s')):>11s}" for o in others]
            cells.append(" ".join(f"{(f'{v:.0f}' if v is not None else '-'):>8s}"
                                  for v in (med(p, "time"), med(p, "rollout_time"), med(p, "update_time"))))
            cells.append(f"{_speedup(med(REFERENCE, 'update_time'), med(p, 'update_time')):>8s}")
            cells.append(f"{_speedup(med('hf-eager', 'update_time'), med(p, 'update_time')):>10s}")
            cells.append(f"{(f'{peak:.1f}' if peak is not None else '-'):>9s}")
            out.append(" ".join(cells))
    return "\n".join(out) + "\n"


__all__ = ["OP", "X_NAME", "DEFAULTS", "MODES", "ANCHOR", "LIMIT", "PROVIDERS", "WARMUP_OVERRIDES", "VARIANTS",
           "PRESETS", "Inputs", "RLStep", "resolve_params", "make_inputs", "make_fn", "available_providers",
           "unavailable", "extra_metrics", "describe", "format_rows", "batch_fingerprint"]
