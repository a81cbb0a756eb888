"""Providers for ``generate``: the rollout's sampling alone -- one batch of an RL step's prompts through ``generate``.

The sweep point is :mod:`benchmarks.ops.rl_step`'s (``config``, ``hidden``, ``expert_ffn``, ``prompts``,
``rollouts``, ``seed``; the same presets): the policy at its random init (the same ``build_policy(..., seed)`` for
every provider), and the prompts of the first ``prompts`` tasks of the training pool, each ``rollouts / prompts``
times (rendered as the trainer renders them), sampled at ``rl.temperature`` for at most ``max_new_tokens`` (0: the
config's ``rl.max_new_tokens``).  One call = one batch of ``rollouts`` sequences.

Providers (one mode, ``sample``):

* ``lckernels-rollout``      -- the trainer's path: ``HFGenerateBackend.generate`` (``model.generate`` in greedy
  mode around the backend's own logits processor, which samples by inverse CDF and records the chosen tokens'
  log-probs), experts ``lckernels``.
* ``hf-sample-logprobs``     -- the same semantics through transformers' sampler: ``model.generate(do_sample=True,
  top_k=0, top_p=1, output_logits=True)`` and ``log_softmax(logits / T)`` gathered at the sampled tokens (the
  trainer's path before its own sampler): what ``softmax`` + ``torch.multinomial`` and the stacked logits cost.
* ``hf-generate``            -- anchor: ``model.generate(input_ids, attention_mask, do_sample=True,
  max_new_tokens=...)`` with transformers' defaults otherwise (KV cache on, ``top_k=50``, no logits kept), the same
  model.
* ``hf-generate-grouped_mm`` -- anchor: the same defaults on the model with transformers' default experts
  (``grouped_mm``): what TRL's ``GRPOTrainer`` samples with (``use_vllm=False``).
* ``hf-generate-no-cache``   -- ``hf-generate`` with ``use_cache=False`` (every step re-runs the whole sequence):
  what the KV cache saves.

Metrics besides ``time`` (ms per call): ``tokens_per_s`` = sampled tokens (up to and including EOS) / the call's
wall time.  The tokens differ between providers (they sample independently; top-k differs), tokens/s is what to
compare.  At random init with the padded 32000-row lm_head, EOS is rare and every row runs the whole budget.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from typing import Callable

import torch

from . import check_choice
from ..common import _timing

OP = "generate"
X_NAME = "hidden"
DEFAULTS = {"hidden": [128], "expert_ffn": 0, "prompts": 0, "rollouts": 0, "max_new_tokens": 0,
            "config": "qwen3_moe", "seed": 0}
MODES = ("sample",)
ANCHOR = "hf-generate"
LIMIT = "hf-generate"  # no physical limit row; the generic table needs a name
PROVIDERS = {
    "lckernels-rollout": "HFGenerateBackend.generate (the trainer's sampling + log-probs), experts lckernels",
    "hf-sample-logprobs": "model.generate(do_sample, top_k=0, output_logits) + log-probs, experts lckernels",
    "hf-generate": "model.generate, transformers defaults, experts lckernels",
    "hf-generate-grouped_mm": "model.generate, transformers defaults, experts grouped_mm (TRL's sampler)",
    "hf-generate-no-cache": "model.generate, use_cache=False, experts lckernels",
}
WARMUP_OVERRIDES = {"hidden": 32, "expert_ffn": 32, "prompts": 2, "rollouts": 4}


@dataclass
class Inputs:
    models: dict  # experts implementation -> model (same weights)
    prompts: list  # distinct prompt ids
    counts: list  # samples per prompt
    max_new_tokens: int
    temperature: float
    eos: int
    pad: int


def make_inputs(x: int, params: dict, device: str = "cpu") -> Inputs:
    from lckernels_rl.train.config import TrainConfig
    from lckernels_rl.train.trainer import Trainer

    from . import rl_step

    if torch.device(device).type != "cpu":
        raise ValueError(f"{OP}: the trainer's model runs on CPU; got device {device!r}")
    inp = rl_step.make_inputs(x, {**params, "sft": 0})
    c = inp.config
    out_dir = tempfile.mkdtemp(prefix="lck-bench-generate-")
    try:
        tr = Trainer(TrainConfig.from_dict({**c, "log": {**c["log"], "output_dir": out_dir}}))
        if not tr.is_text_env:
            raise ValueError(f"{OP}: config {params['config']!r} is a multi-turn tool task; use a text task")
        rl = tr.config.rl
        p, n = rl.prompts_per_step, rl.rollouts_per_step
        env = tr.make_env()
        prompts = [list(tr.renderer.prompt(env.reset(seed=tr.pool.seed(i))[0])) for i in range(p)]
        env.close()
        counts = [n // p + (1 if i < n % p else 0) for i in range(p)]
        lck = tr.model.eval()
        from lckernels_rl.models import build_policy

        m = c["model"]
        grouped = build_policy(m.get("arch", "longcat_flash"), vocab_size=lck.config.vocab_size,
                               pad_token_id=tr.pad_id, bos_token_id=tr.tokenizer.bos_token_id,
                               eos_token_id=tr.eos_id, experts_implementation="grouped_mm",
                               **(m.get("overrides") or {}))
        grouped.load_state_dict(lck.state_dict())
        tr.close()
        return Inputs({"lckernels": lck, "grouped_mm": grouped.eval()}, prompts, counts,
                      int(params.get("max_new_tokens") or rl.max_new_tokens), float(rl.temperature), tr.eos_id,
                      tr.pad_id)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


class Sample:
    """One provider's call; :attr:`tokens` holds the sampled token count of every call."""

    def __init__(self, provider: str, inputs: Inputs):
        from lckernels_rl.rollout import HFGenerateBackend
        from lckernels_rl.rollout.base import left_pad

        self.provider, self.inputs, self.tokens = provider, inputs, []
        model = inputs.models["grouped_mm" if provider == "hf-generate-grouped_mm" else "lckernels"]
        self.model = model
        self.backend = HFGenerateBackend(model, eos_token_id=inputs.eos, pad_token_id=inputs.pad)
        rows = [p for p, c in zip(inputs.prompts, inputs.counts) for _ in range(c)]
        self.ids, self.mask = left_pad(rows, inputs.pad)

    def __call__(self):
        i = self.inputs
        if self.provider == "lckernels-rollout":
            out = self.backend.generate(i.prompts, i.counts, max_new_tokens=i.max_new_tokens,
                                        temperature=i.temperature)
            self.tokens.append(out.num_response_tokens())
            return out
        if self.provider == "hf-sample-logprobs":
            with torch.no_grad():
                gen = self.model.generate(input_ids=self.ids, attention_mask=self.mask, do_sample=True,
                                          temperature=i.temperature, top_k=0, top_p=1.0,
                                          max_new_tokens=i.max_new_tokens, eos_token_id=i.eos, pad_token_id=i.pad,
                                          return_dict_in_generate=True, output_logits=True)
                new = gen.sequences[:, self.ids.shape[1]:]
                logits = torch.stack(gen.logits, 1).float()[:, :new.shape[1]]
                lp = torch.log_softmax(logits / i.temperature, -1).gather(-1, new[..., None]).squeeze(-1)
            self.tokens.append(self._count(new))
            return lp
        kw = {"use_cache": False} if self.provider == "hf-generate-no-cache" else {}
        with torch.no_grad():
            seq = self.model.generate(input_ids=self.ids, attention_mask=self.mask, do_sample=True,
                                      temperature=i.temperature, max_new_tokens=i.max_new_tokens,
                                      eos_token_id=i.eos, pad_token_id=i.pad, **kw)
        self.tokens.append(self._count(seq[:, self.ids.shape[1]:]))
        return seq

    def _count(self, new: torch.Tensor) -> int:
        """Sampled tokens per row up to and including the first EOS, summed."""
        is_eos = new == self.inputs.eos
        first = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, torch.full_like(new[:, 0], new.shape[1]))
        return int(first.sum())


def available_providers(device: str = "cpu") -> list[str]:
    return list(PROVIDERS) if torch.device(device).type == "cpu" else []


def unavailable(provider: str, params: dict) -> str | None:
    if provider == "hf-generate-grouped_mm":
        from . import rl_step

        arch = (rl_step._load_yaml(str(params["config"])).get("model") or {}).get("arch", "longcat_flash")
        if not rl_step._grouped_mm_supported(arch):
            return f"transformers has no grouped_mm experts for arch {arch!r}"
    return None


def make_fn(provider: str, mode: str, inputs: Inputs) -> Callable[[], object]:
    check_choice(OP, provider, mode, PROVIDERS, MODES)
    return Sample(provider, inputs)


def extra_metrics(fn: Sample, timing) -> list[dict]:
    toks = fn.tokens[-len(timing.samples):]
    t = _timing([n / (ms / 1e3) for n, ms in zip(toks, timing.samples)])
    return [{"metric": "tokens_per_s", "unit": "tok/s", "median": t.median, "p20": t.p20, "p80": t.p80}]


def describe(params: dict) -> str:
    from . import rl_step

    mnt = params.get("max_new_tokens") or "the config's"
    return rl_step.describe({**params, "sft": 0}) + f" max_new_tokens={mnt}"


def format_rows(rows: list[dict]) -> str:
    """Per point: each provider's tokens/s, its ratio to ``hf-sample-logprobs``, ``hf-generate`` and
    ``hf-generate-grouped_mm``, ms per call and peak memory."""
    by: dict[tuple, dict] = {}
    for r in rows:
        by.setdefault((r["mode"], r["x_value"]), {}).setdefault(r["provider"], {})[r["metric"]] = r
    g0 = rows[0]
    out = [f"{OP}  {g0.get('config', '')}  |  {g0['device']}  |  commit {g0['commit']}",
           "tok/s = sampled tokens / call wall time, median [p20-p80]; x<name> = tok/s / that provider's "
           "(higher = faster); ms = median per call (one batch); peak = extra peak MiB in a fresh process"]
    others = ["hf-sample-logprobs", "hf-generate", "hf-generate-grouped_mm"]
    head = (f"{X_NAME:>6s}  {'provider':24s} {'tok/s':>8s} {'[p20-p80]':>15s} {'xhf-lp':>7s} {'xhf':>7s} "
            f"{'xgrouped':>9s} {'ms':>8s} {'peak MiB':>9s}")
    for (_, x), provs in by.items():
        out += ["", head, "-" * len(head)]

        def med(p, m):
            return provs.get(p, {}).get(m, {}).get("median")
        for p, m in provs.items():
            ts = m.get("tokens_per_s")
            if not ts:
                continue
            ratios = [f"{ts['median'] / med(o, 'tokens_per_s'):.2f}x" if med(o, "tokens_per_s") else "-"
                      for o in others]
            peak = med(p, "peak_mem")
            band = f"[{ts['p20']:.0f}-{ts['p80']:.0f}]"
            out.append(f"{x!s:>6s}  {p:24s} {ts['median']:8.1f} {band:>15s} {ratios[0]:>7s} {ratios[1]:>7s} "
                       f"{ratios[2]:>9s} "
                       f"{med(p, 'time'):8.1f} {(f'{peak:.1f}' if peak is not None else '-'):>9s}")
    return "\n".join(out) + "\n"


__all__ = ["OP", "X_NAME", "DEFAULTS", "MODES", "ANCHOR", "LIMIT", "PROVIDERS", "WARMUP_OVERRIDES", "make_inputs",
           "make_fn", "available_providers", "unavailable", "extra_metrics", "describe", "format_rows"]
