"""``python -m benchmarks.run --op rl_step --vs trl``: TRL's ``GRPOTrainer`` beside our ``Trainer``.

Both trainers run the same sweep point of :mod:`benchmarks.ops.rl_step` (``--config``, ``--hidden``,
``--expert_ffn``, ``--prompts``, ``--rollouts``, ``--seed``): the same model config and initial weights (the same
``build_policy(..., seed)``; the shared supervised warm-up where the preset has one), the same tokenizer (ours is a
``transformers.PreTrainedTokenizerFast``, given to TRL as ``processing_class``), the same tasks, and per step the same
batch -- ``prompts`` tasks x ``rollouts / prompts`` generations each, at most ``rl.max_new_tokens`` completion tokens
-- the same loss, learning rate and AdamW settings:

====================================  ==================================  ==========================================
setting                               ours (``TrainConfig``)              TRL (``GRPOConfig``)
====================================  ==================================  ==========================================
tasks x generations per step          ``rl.prompts_per_step`` x           ``per_device_train_batch_size`` = P x G,
                                      ``rollouts_per_step / prompts``     ``num_generations`` = G,
                                      (``uniform`` allocator)             ``steps_per_generation`` = 1, GA = 1
completion cap                        ``rl.max_new_tokens``               ``max_completion_length``
loss                                  ``grpo``, ``loss_agg``              ``loss_type``: ``seq-mean-token-mean`` ->
                                                                          ``"grpo"``, ``token-mean`` -> ``"bnpo"``
                                                                          (one process, GA 1: also ``dapo``'s)
clip                                  ``eps_low`` / ``eps_high``          ``epsilon`` / ``epsilon_high``
KL                                    ``kl_beta`` = 0                     ``beta`` = 0 (no reference model)
advantages                            ``grpo`` (group mean / std)         ``scale_rewards="group"``
sampling                              ``rl.temperature``, no top-k/p      ``temperature``, ``top_k=0``, ``top_p=1``
optimizer                             AdamW ``rl.lr``, ``rl.betas``,      AdamW (TRL's default ``optim``),
                                      ``rl.weight_decay``, clip           ``learning_rate``, ``adam_beta1/2``,
                                      ``rl.grad_clip``                    ``weight_decay``, ``max_grad_norm``,
                                                                          constant schedule, no warm-up
updates per batch                     ``rl.reuse`` = 1                    ``num_iterations`` = 1 (on-policy: no
                                                                          old-log-prob forward)
====================================  ==================================  ==========================================

TRL gets the tasks as an in-memory ``datasets.Dataset`` (``prompt``: the task's opening text, ``seed``: its
environment seed; nothing downloaded) and a reward function that replays each completion's text through a fresh
environment of the task (``env.reset(seed)``, ``env.step``): our trainer's reward.  The prompt ids TRL tokenizes are
checked to equal our renderer's.  ``use_vllm=False`` (TRL samples with ``model.generate``), no evaluation, logging or
saving.  Only single-turn text tasks can be compared (TRL's GRPO has no tool environments here).

Providers (each in its own fresh ``python -m benchmarks.ops.rl_step_trl '<spec>'`` process, one after the other, so
its peak RSS is its own):

* ``lckernels-trainer`` -- our ``Trainer`` with its defaults (``rl.loss=fused``, experts ``lckernels``), driven as
  ``rl_step``'s ``lckernels-fused`` provider (``Trainer.fit(max_steps=1)`` per step).
* ``trl-grpo``          -- ``trl.GRPOTrainer`` on the same model with transformers' default experts implementation
  (``grouped_mm`` in transformers 5.x): what a TRL user runs.
* ``trl-grpo+lck``      -- ``lckernels_rl.integrations.trl.LckGRPOTrainer`` (the fused loss inside TRL) with the
  ``lckernels`` experts: how much of the gap is kernels and how much the trainer loop.

A worker builds its trainer, runs ``warmup`` untimed steps (the first allocates the optimizer state), then
``repeats`` timed ones.  Per step: the wall time (TRL: ``on_step_begin`` -> ``on_step_end`` of a callback, which
brackets generation, scoring, forward, backward and the optimizer step), the rollout time (TRL:
``_generate_and_score_completions``; ours: ``time_rollout_s``) and the completion tokens (TRL: the sum of
``completion_mask``; ours: the sampled response tokens).  Memory: ``peak_rss`` is the worker's peak resident set
(``VmHWM`` from ``/proc/self/status`` on Linux -- Linux carries ``ru_maxrss`` across fork + exec, see
:func:`benchmarks.common._peak_rss_mib`; ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` elsewhere) over the whole
run; ``step_mem`` is that peak minus the RSS once the trainer is built (before its first step): the optimizer state,
the gradients and every step's transient buffers.

``--profile``: our worker runs one more, profiled step (:func:`profile_step`, ``torch.profiler``) and reports the
shares of the step: rollout (``generate`` and scoring), forward (the policy backbone), loss (the fused loss forward),
backward (loss and model), grad norms + clipping, optimizer, and the experts' own time inside the rollout, the forward
and the backward.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

OP = "rl_step"
X_NAME = "hidden"
PROVIDERS = {
    "lckernels-trainer": "lckernels_rl Trainer (rl.loss=fused, experts lckernels)",
    "trl-grpo": "trl.GRPOTrainer, transformers' default experts (grouped_mm), use_vllm=False",
    "trl-grpo+lck": "LckGRPOTrainer (fused loss inside TRL), experts lckernels",
}
OURS, TRL = "lckernels-trainer", "trl-grpo"
# spec keys a worker reads: provider, x, params, warmup, repeats, threads, profile
_PROFILE_STAGES = ("rollout", "forward", "loss", "backward", "grad_norms+clip", "optimizer", "other")


# ------------------------------------------------------------------------------------------------ the mapping
def trl_loss_type(objective) -> str:
    """TRL's ``loss_type`` with the token aggregation of our ``objective`` (a GRPO with KL off)."""
    if objective.name != "grpo":
        raise ValueError(f"--vs trl compares the grpo objective; the config has {objective.name!r}")
    if getattr(objective, "kl_beta", 0.0):
        raise ValueError("--vs trl runs with beta=0 (no reference model); the config's grpo has kl_beta != 0")
    agg = objective.loss_agg
    if agg == "seq-mean-token-mean":
        return "grpo"
    if agg == "token-mean":
        return "bnpo"  # token sum / token count of the batch: on one process with GA 1 also what dapo computes
    raise ValueError(f"--vs trl: no TRL loss_type aggregates like loss_agg={agg!r}")


def batch_shape(rl) -> tuple[int, int, int]:
    """(prompts, generations per prompt, completion cap) of our config's step; ValueError where TRL cannot match."""
    p, n = int(rl.prompts_per_step), int(rl.rollouts_per_step)
    if rl.allocator != "uniform" or n % p:
        raise ValueError(f"--vs trl needs the same number of generations per prompt (TRL's num_generations): the "
                         f"uniform allocator and rollouts divisible by prompts; got allocator {rl.allocator!r}, "
                         f"{n} rollouts over {p} prompts")
    return p, n // p, int(rl.max_new_tokens)


def _train_config(inputs, experts: str, out_dir: str):
    from lckernels_rl.train.config import TrainConfig

    c = inputs.config
    return TrainConfig.from_dict({**c, "model": {**c["model"], "experts_implementation": experts},
                                  "rl": {**c["rl"], "loss": "fused", "backend": "auto"},
                                  "log": {**c["log"], "output_dir": out_dir}})


# ---------------------------------------------------------------------------------------------------- workers
def _rss_mib() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _run_ours(spec: dict, inputs, result: dict) -> None:
    from . import rl_step

    step = rl_step.RLStep("lckernels-fused", inputs, warmup_steps=0)
    result["rss_built"] = _rss_mib()
    m = step.trainer.config.rl
    result["batch"] = {"prompts": int(m.prompts_per_step), "generations": int(m.rollouts_per_step //
                                                                                m.prompts_per_step),
                       "cap": int(m.max_new_tokens)}
    result["setup"] = {"lr": m.lr, "betas": list(m.betas), "weight_decay": m.weight_decay,
                       "grad_clip": m.grad_clip, "temperature": m.temperature,
                       "loss": f"{step.trainer.objective.name} ({step.trainer.objective.loss_agg})"}
    seen = []
    for _ in range(spec["warmup"] + spec["repeats"]):
        h = step()
        seen.append({"sequences": int(h["rollouts"]), "tokens": int(h["response_tokens"]), "time_s": h["time_s"],
                     "rollout_s": h["time_rollout_s"]})
    result["steps"] = seen
    if spec.get("profile"):
        result["profile"] = profile_step(step)
    step.close()


def _run_trl(spec: dict, inputs, result: dict) -> None:
    import datasets
    import torch
    import trl
    from transformers import TrainerCallback

    from lckernels_rl.agents.types import Message
    from lckernels_rl.train.trainer import Trainer

    lck = spec["provider"] == "trl-grpo+lck"
    tmp = tempfile.mkdtemp(prefix="lck-bench-trl-")
    try:
        ours = Trainer(_train_config(inputs, "lckernels" if lck else "grouped_mm", os.path.join(tmp, "ours")))
        rl, obj = ours.config.rl, ours.objective
        prompts, gens, cap = batch_shape(rl)
        loss_type = trl_loss_type(obj)
        if not ours.is_text_env:
            raise ValueError("--vs trl compares single-turn text tasks; the config's task is a tool environment")
        model, tok, make_env = ours.model, ours.tokenizer, ours.make_env
        if inputs.state is not None:
            model.load_state_dict(inputs.state)
        texts, seeds = [], []
        env = make_env()
        for i in range(ours.pool.size):
            msgs, _ = env.reset(seed=ours.pool.seed(i))
            text = "".join(m.content for m in msgs)
            if i < 64 and tok(text)["input_ids"] != list(ours.renderer.prompt(msgs)):
                raise AssertionError(f"TRL's prompt ids differ from ours for task {i}: {text!r}")
            texts.append(text)
            seeds.append(ours.pool.seed(i))
        env.close()
        ours.close()
        del ours

        def reward(prompts, completions, seed, **_):
            out = []
            for text, s in zip(completions, seed):
                e = make_env()
                e.reset(seed=int(s))
                out.append(float(e.step(Message("assistant", text)).reward))
                e.close()
            return out

        args = trl.GRPOConfig(
            output_dir=os.path.join(tmp, "trl"), per_device_train_batch_size=prompts * gens, num_generations=gens,
            steps_per_generation=1, gradient_accumulation_steps=1, num_iterations=1,
            max_steps=spec["warmup"] + spec["repeats"], max_completion_length=cap,
            learning_rate=rl.lr, lr_scheduler_type="constant", warmup_steps=0, adam_beta1=rl.betas[0],
            adam_beta2=rl.betas[1], weight_decay=rl.weight_decay, max_grad_norm=rl.grad_clip or None,
            temperature=rl.temperature, top_k=0, top_p=1.0, beta=0.0, loss_type=loss_type,
            epsilon=obj.eps_low, epsilon_high=obj.eps_high, scale_rewards="group", use_vllm=False,
            use_cpu=True, bf16=False, fp16=False, report_to="none", logging_strategy="no", save_strategy="no",
            eval_strategy="no", disable_tqdm=True, log_completions=False, seed=int(inputs.config["seed"]),
            dataloader_num_workers=0, remove_unused_columns=False)
        cls = trl.GRPOTrainer
        if lck:
            from lckernels_rl.integrations.trl import LckGRPOTrainer as cls
        trainer = cls(model=model, reward_funcs=reward, args=args, processing_class=tok,
                      train_dataset=datasets.Dataset.from_dict({"prompt": texts, "seed": seeds}))
        result["rss_built"] = _rss_mib()
        result["batch"] = {"prompts": prompts, "generations": gens, "cap": cap}
        result["setup"] = {"lr": args.learning_rate, "betas": [args.adam_beta1, args.adam_beta2],
                           "weight_decay": args.weight_decay, "grad_clip": args.max_grad_norm,
                           "temperature": args.temperature, "loss": f"TRL loss_type={loss_type}",
                           "optim": str(args.optim)}
        steps: list[dict] = []
        gen = trainer._generate_and_score_completions

        def timed_generate(*a, **k):
            t0 = time.perf_counter()
            out = gen(*a, **k)
            steps[-1]["rollout_s"] = time.perf_counter() - t0
            steps[-1]["sequences"] = int(out["completion_ids"].shape[0])
            steps[-1]["tokens"] = int(out["completion_mask"].sum())
            steps[-1]["width"] = int(out["completion_ids"].shape[1])
            return out
        trainer._generate_and_score_completions = timed_generate

        class Clock(TrainerCallback):
            def on_step_begin(self, *a, **k):
                steps.append({"t0": time.perf_counter()})

            def on_step_end(self, *a, **k):
                steps[-1]["time_s"] = time.perf_counter() - steps[-1].pop("t0")
        trainer.add_callback(Clock())
        torch.manual_seed(int(inputs.config["seed"]))
        trainer.train()
        result["steps"] = steps
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def worker(spec: dict) -> dict:
    """Body of one provider's process: build, ``warmup`` + ``repeats`` steps, peak RSS; a JSON-able dict."""
    import lckernels_rl  # noqa: F401  (before torch, as `lckernels-rl train` does: the OpenMP wait policy)
    import torch

    from benchmarks.common import _peak_rss_mib

    from . import rl_step

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    result: dict[str, Any] = {"provider": spec["provider"], "rss_start": _rss_mib()}
    inputs = rl_step.make_inputs(spec["x"], spec["params"])
    result["rss_inputs"] = _rss_mib()
    if spec["provider"] == OURS:
        _run_ours(spec, inputs, result)
    else:
        _run_trl(spec, inputs, result)
    result["peak_rss"] = _peak_rss_mib()
    result["threads"] = torch.get_num_threads()
    return result


def run_worker(spec: dict, *, timeout: float = 3600.0) -> dict:
    """One provider in a fresh ``python -m benchmarks.ops.rl_step_trl '<spec>'``; its result dict."""
    from benchmarks.common import REPO_ROOT

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")  # RSS follows live memory (see benchmarks/common.py)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.ops.rl_step_trl", json.dumps(spec)], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"--vs trl worker {spec['provider']} failed (exit {proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------------------------- profile
def profile_step(step) -> dict:
    """One more RL step of ``step`` (an :class:`benchmarks.ops.rl_step.RLStep`) under ``torch.profiler``, with the
    stages labelled; ms per stage and the experts' ms inside the rollout, the forward and the backward.

    Labels: ``rollout`` = the rollout source's ``next`` (generate + scoring), ``forward`` = ``RLBatch.hidden`` (the
    backbone), ``loss`` = the trainer's ``_loss`` (the fused loss forward), ``backward`` = ``Tensor.backward``,
    ``grad_norms+clip`` = the trainer's ``_grad_norms`` and ``clip_grad_norm_``, ``optimizer`` = ``AdamW.step``;
    ``other`` = the step's wall time minus those (packing, advantages, the weight sync, Python).  The experts' time is
    the inclusive time of the ``lckernels.moe_experts`` calls (what transformers' ``"lckernels"`` experts call; in the
    rollout or the forward) and of the ``_MoeExpertsBackward`` autograd nodes (in the backward).
    Profiling costs a few percent; the shares are what to read.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    import lckernels
    from lckernels_rl.train import batch as batch_mod

    tr = step.trainer
    restore = []

    def label(obj, name, tag):
        fn = getattr(obj, name)

        def wrapped(*a, **k):
            with record_function(("lckx::" if tag == "experts" else "lck::") + tag):
                return fn(*a, **k)
        setattr(obj, name, wrapped)
        restore.append((obj, name, fn, name in vars(obj)))

    label(tr.source, "next", "rollout")
    label(batch_mod.RLBatch, "hidden", "forward")
    label(tr, "_loss", "loss")
    label(torch.Tensor, "backward", "backward")
    label(tr, "_grad_norms", "grad_norms+clip")
    label(torch.nn.utils, "clip_grad_norm_", "grad_norms+clip")
    label(tr.optimizer, "step", "optimizer")
    label(lckernels, "moe_experts", "experts")  # the lckernels experts (transformers calls lckernels.moe_experts)
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            step()
            wall = (time.perf_counter() - t0) * 1e3
    finally:
        for obj, name, fn, own in reversed(restore):
            if own:
                setattr(obj, name, fn)
            else:
                delattr(obj, name)
    stages = {s: 0.0 for s in _PROFILE_STAGES}
    experts = {"rollout": 0.0, "forward": 0.0, "backward": 0.0}
    for ev in prof.events():
        tag, up = None, ev.cpu_parent
        while up is not None:  # the outermost lck:: label above this event
            if up.name.startswith("lck::"):
                tag = up.name[5:]
            up = up.cpu_parent
        if ev.name.startswith("lck::") and tag is None:
            stages[ev.name[5:]] += ev.cpu_time_total / 1e3
        elif ev.name == "lckx::experts" and not _under(ev.cpu_parent, "lckx::experts"):
            experts["rollout" if tag == "rollout" else "forward"] += ev.cpu_time_total / 1e3
        elif "_MoeExpertsBackward" in ev.name and not _under(ev.cpu_parent, "_MoeExpertsBackward"):
            experts["backward"] += ev.cpu_time_total / 1e3
    stages["other"] = max(wall - sum(v for k, v in stages.items() if k != "other"), 0.0)
    return {"wall_ms": wall, "stages_ms": stages, "experts_ms": experts,
            "response_tokens": int(step.history[-1]["response_tokens"])}


def _under(ev, needle: str) -> bool:
    while ev is not None:
        if needle in ev.name:
            return True
        ev = ev.cpu_parent
    return False


# ------------------------------------------------------------------------------------------------ the sweep
def _median(xs: list[float]) -> tuple[float, float, float]:
    from benchmarks.common import _timing

    t = _timing(xs)
    return t.median, t.p20, t.p80


def run_vs_trl(params: dict, *, providers: list[str] | None = None, repeats: int = 3, warmup: int = 1,
               profile: bool = False, out=None, verbose: bool = True) -> list[dict]:
    """Every provider at every ``hidden`` of ``params`` (rl_step's parameters), each in its own process; the rows
    (CSV columns plus ``config`` and, on the ``tokens_per_s`` rows, ``batch``)."""
    import torch

    from benchmarks.common import append_csv, device_label, git_commit

    from . import rl_step

    if repeats < 1 or warmup < 0:
        raise ValueError(f"--vs trl needs --repeats >= 1 and --warmup >= 0 (keep >= 1 for figures: the first step "
                         f"allocates the optimizer state); got {repeats} / {warmup}")
    providers = list(providers or PROVIDERS)
    bad = [p for p in providers if p not in PROVIDERS]
    if bad:
        raise ValueError(f"--vs trl: unknown provider(s) {bad}; choose from: {', '.join(PROVIDERS)}")
    if any(p != OURS for p in providers):
        try:
            import trl  # noqa: F401
        except ImportError as e:
            raise ValueError("--vs trl needs TRL (pip install 'lckernels[trl]')") from e
    params = {**rl_step.DEFAULTS, **params}
    xs = params.pop(X_NAME)
    xs = [xs] if isinstance(xs, int) else list(xs)
    threads = torch.get_num_threads()
    base = {"op": OP, "mode": "step", "x_name": X_NAME, "device": device_label("cpu"), "commit": git_commit(),
            "config": rl_step.describe(params) + " vs trl"}
    rows: list[dict] = []
    for x in xs:
        results = {}
        for prov in providers:
            spec = {"provider": prov, "x": int(x), "params": params, "warmup": warmup, "repeats": repeats,
                    "threads": threads, "profile": bool(profile and prov == OURS)}
            if verbose:
                print(f"rl_step --vs trl: hidden={x} {prov} ...", file=sys.stderr, flush=True)
            results[prov] = r = run_worker(spec)
            timed = r["steps"][warmup:]
            for metric, unit, vals in (
                    ("time", "ms", [s["time_s"] * 1e3 for s in timed]),
                    ("tokens_per_s", "tok/s", [s["tokens"] / s["time_s"] for s in timed]),
                    ("rollout_time", "ms", [s["rollout_s"] * 1e3 for s in timed]),
                    ("update_time", "ms", [(s["time_s"] - s["rollout_s"]) * 1e3 for s in timed]),
                    ("peak_rss", "MiB", [r["peak_rss"]]),
                    ("step_mem", "MiB", [r["peak_rss"] - r["rss_built"]])):
                med, p20, p80 = _median(vals)
                row = {**base, "provider": prov, "x_value": x, "metric": metric, "unit": unit, "median": med,
                       "p20": p20, "p80": p80}
                if metric == "tokens_per_s":
                    row.update(batch=r["batch"], sequences=[s["sequences"] for s in r["steps"]],
                               tokens=[s["tokens"] for s in r["steps"]], setup=r.get("setup"))
                rows.append(row)
            for stage, ms in (r.get("profile") or {}).get("stages_ms", {}).items():
                rows.append({**base, "provider": prov, "x_value": x, "metric": f"profile_{stage}", "unit": "ms",
                             "median": ms, "p20": ms, "p80": ms})
            for where, ms in (r.get("profile") or {}).get("experts_ms", {}).items():
                rows.append({**base, "provider": prov, "x_value": x, "metric": f"profile_experts_{where}",
                             "unit": "ms", "median": ms, "p20": ms, "p80": ms})
        for prov in providers:  # ratio rows: ours over each TRL provider
            if prov == OURS or OURS not in results:
                continue
            get = {(r["provider"], r["metric"]): r["median"] for r in rows if r["x_value"] == x}
            for metric in ("tokens_per_s", "peak_rss", "step_mem"):
                den = get.get((prov, metric))
                v = get.get((OURS, metric)) / den if den else float("nan")
                rows.append({**base, "provider": f"{OURS}/{prov}", "x_value": x, "metric": f"{metric}_ratio",
                             "unit": "x", "median": v, "p20": v, "p80": v})
    if out is not None:
        append_csv(out, rows)
    return rows


def format_vs_trl(rows: list[dict]) -> str:
    """The side-by-side table of :func:`run_vs_trl`'s rows (and the profile, when there is one)."""
    g0 = rows[0]
    out = [f"rl_step --vs trl  {g0.get('config', '')}  |  {g0['device']}  |  commit {g0['commit']}",
           "tok/s = completion tokens / step wall time, median [p20-p80] of the timed steps; x<p> = ours / that "
           "provider (tok/s: higher = ours faster; RSS: lower = ours smaller); peak RSS = the process's peak "
           "resident set; step mem = peak RSS - RSS once built (optimizer state, gradients, step buffers)"]
    for x in dict.fromkeys(r["x_value"] for r in rows):
        pts = [r for r in rows if r["x_value"] == x]
        by: dict[str, dict] = {}
        for r in pts:
            by.setdefault(r["provider"], {})[r["metric"]] = r
        out.append("")
        shapes = {p: (m["tokens_per_s"]["batch"], m["tokens_per_s"]["sequences"]) for p, m in by.items()
                  if "tokens_per_s" in m}
        for p, (b, seqs) in shapes.items():
            out.append(f"hidden={x} {p}: {b['prompts']} prompts x {b['generations']} generations, cap {b['cap']} "
                       f"tokens; sequences per step {seqs}; completion tokens per step "
                       f"{by[p]['tokens_per_s']['tokens']}; {by[p]['tokens_per_s'].get('setup')}")
        head = (f"{'hidden':>6s}  {'provider':18s} {'tok/s':>8s} {'[p20-p80]':>15s} {'x ours':>7s} {'step ms':>8s} "
                f"{'rollout':>8s} {'update':>8s} {'peak RSS':>9s} {'x ours':>7s} {'step mem':>9s} {'x ours':>7s}")
        out += [head, "-" * len(head)]
        for p, m in by.items():
            if "tokens_per_s" not in m:
                continue
            ts = m["tokens_per_s"]
            ratio = by.get(f"{OURS}/{p}", {})

            def rv(metric):
                r = ratio.get(f"{metric}_ratio")
                return f"{r['median']:.2f}x" if r else "-"
            band = f"[{ts['p20']:.0f}-{ts['p80']:.0f}]"
            out.append(f"{x!s:>6s}  {p:18s} {ts['median']:8.1f} {band:>15s} "
                       f"{rv('tokens_per_s'):>7s} {m['time']['median']:8.0f} {m['rollout_time']['median']:8.0f} "
                       f"{m['update_time']['median']:8.0f} {m['peak_rss']['median']:9.1f} {rv('peak_rss'):>7s} "
                       f"{m['step_mem']['median']:9.1f} {rv('step_mem'):>7s}")
        prof = {k[len("profile_"):]: r["median"] for k, r in by.get(OURS, {}).items() if k.startswith("profile_")}
        if prof:
            out.append("")
            out.append(format_profile(prof, x))
    return "\n".join(out) + "\n"


def format_profile(prof: dict, x) -> str:
    """One line per stage of the profiled step: ms and share of the step."""
    stages = {s: prof.get(s, 0.0) for s in _PROFILE_STAGES}
    total = sum(stages.values()) or 1.0
    lines = [f"profile of one {OURS} step at hidden={x} (torch.profiler, {total:.0f} ms):"]
    lines += [f"  {s:16s} {ms:8.1f} ms  {100 * ms / total:5.1f}%" for s, ms in stages.items()]
    for where in ("rollout", "forward", "backward"):
        ms = prof.get(f"experts_{where}", 0.0)
        lines.append(f"  experts in {where:8s} {ms:6.1f} ms  {100 * ms / total:5.1f}% of the step")
    return "\n".join(lines)


if __name__ == "__main__":  # a worker: python -m benchmarks.ops.rl_step_trl '<json spec>'
    print(json.dumps(worker(json.loads(sys.argv[1]))))
