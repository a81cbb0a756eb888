"""Dynamic Gradient Gating under aggressive rollout reuse, on the trainer's tiny LM (issue #5's demonstration).

For every seed the supervised warm-up runs once; then the RL phase runs once per *arm* from that same warmed-up
state (model weights, RNG states and prompt-pool statistics copied), so all arms of a seed see the same first rollout
batch, and a gated arm is bit-identical to the ungated one until its gate first fires.

Default arms (all: lckernels_rl/configs/default.yaml + DEFAULT_SET, i.e. 16 prompts x 8 rollouts per RL step, RL lr 3e-4, no
gradient clipping, 40 RL steps):

    ungated     rl.reuse = 8, no gate                                 (aggressive reuse: the baseline of the claim)
    dgg         rl.reuse = 8 + DGG with the notes' defaults           (tau 0.5, window 8, statistic g)
    dgg_tuned   rl.reuse = 8 + DGG tau 0.1, window 8, delta_g         (the best of the settings in docs/dgg_demo.md)
    K4, K2, K1  rl.reuse = 4 / 2 / 1, no gate                         (references: simply reusing less)

Per run: mean training reward of the last ``--last`` RL steps, final greedy eval accuracy, optimizer updates, the
gate's fires (count, first RL step), the first RL step whose ``kl_rollout_max`` (k3 KL(pi_rollout || pi_current),
max over the reuse updates of the step) exceeds ``--kl-threshold``, and the largest KL.  For every gated arm and
seed the issue's claim is checked against the ungated arm: the ungated KL explodes, the gate first fires at or
before that RL step, the gated run's KL never explodes, and the gated run ends with the higher reward.  The last
line measures the signal the gate relies on: in the ungated batches whose KL explodes, the largest lm_head gradient
norm of reuses 2..(the explosion) relative to the on-policy (reuse 1) norm.

    .venv/bin/python examples/dgg_reuse_experiment.py                        # docs/dgg_demo.md's table (~20 min)
    .venv/bin/python examples/dgg_reuse_experiment.py --base tiny --arms ungated dgg dgg_tuned K1   # the tests' model
    .venv/bin/python examples/dgg_reuse_experiment.py --seeds 0 1 --arms ungated dgg --set rl.steps=20
    .venv/bin/python examples/dgg_reuse_experiment.py --arm w32 "rl.dgg={tau: 0.3, window: 32}" --arms ungated w32
    .venv/bin/python examples/dgg_reuse_experiment.py --json results.json    # also dump every metrics row

``--set section.field=value`` overrides a config field of every arm (YAML values), e.g. ``--set rl.lr=5e-4``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from lckernels_rl.train import TrainConfig, Trainer, load_config
from lckernels_rl.train.config import apply_overrides

DEFAULT_SET = [
    "threads=1", "rl.steps=40", "rl.prompts_per_step=16", "rl.rollouts_per_step=128", "rl.reuse=8", "rl.lr=0.0003",
    "rl.grad_clip=0", "log.eval_every=10", "log.checkpoint_every=0", "log.plots=false", "log.progress=false",
]
# ``--base tiny``: the test suite's tiny LongCat-Flash (hidden 32) on one-digit addition, as in
# tests/rl/test_dgg_trainer.py: a 60-step warm-up, then 30 RL steps of 8 prompts x 8 rollouts at RL lr 3e-3.
TINY_BASE = {
    "model": {"arch": "longcat_flash", "overrides": dict(
        hidden_size=32, ffn_hidden_size=64, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8,
        head_dim=8, v_head_dim=8, num_attention_heads=2, num_key_value_heads=2, n_routed_experts=4,
        expert_ffn_hidden_size=32)},
    "task": {"env": "arithmetic", "env_args": {"ops": "+", "min_value": 0, "max_value": 9}, "train_size": 256,
             "eval_size": 64},
    "sft": {"steps": 60, "batch_size": 32, "lr": 0.003},
    "rl": {"max_new_tokens": 3},
}
TINY_SET = ["rl.steps=30", "rl.prompts_per_step=8", "rl.rollouts_per_step=64", "rl.lr=0.003"]
ARMS = {
    "ungated": [],
    "dgg": ["rl.dgg={tau: 0.5, window: 8, statistic: g}"],
    "dgg_tuned": ["rl.dgg={tau: 0.1, window: 8, statistic: delta_g}"],
    "K4": ["rl.reuse=4"],
    "K2": ["rl.reuse=2"],
    "K1": ["rl.reuse=1"],
}


# ----------------------------------------------------------------------------------------------------- running
def make_config(seed: int, out_dir: Path, overrides: list[str], base: str = "default") -> TrainConfig:
    """``base`` config (a bundled name, a YAML path or ``tiny``) + DEFAULT_SET (+ TINY_SET) + ``overrides``, with this
    seed and output dir."""
    data = (TrainConfig.from_dict(TINY_BASE) if base == "tiny" else load_config(base)).to_dict()
    data["rl"]["betas"] = list(data["rl"]["betas"])
    data = apply_overrides(data, DEFAULT_SET + (TINY_SET if base == "tiny" else []) + list(overrides))
    data["seed"] = seed
    data["log"]["output_dir"] = str(out_dir)
    return TrainConfig.from_dict(data)


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    return [_plain(v) for v in x] if isinstance(x, (list, tuple)) else x


def warm_up(cfg: TrainConfig) -> dict:
    """Run only the supervised warm-up of ``cfg``; return the state the RL phase starts from (the trainer's
    checkpoint dict plus ``sft_eval_accuracy``).  A warm-up checkpoint already in ``cfg.log.output_dir`` from the
    same seed, threads, model, task and warm-up settings is reused."""
    ckpt = Path(cfg.log.output_dir) / "checkpoint.pt"
    same = ("seed", "threads", "model", "task", "sft")
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        if "sft_eval_accuracy" in state and all(_plain(state["config"][k]) == _plain(cfg.to_dict()[k]) for k in same):
            return state
    tr = Trainer(cfg)
    try:
        rows = tr.fit(max_steps=cfg.sft.steps)
        state = torch.load(tr.save_checkpoint(), weights_only=False)
    finally:
        tr.close()
    state["sft_eval_accuracy"] = rows[-1].get("eval_accuracy", math.nan)
    torch.save(state, ckpt)
    return state


def start_from(tr: Trainer, state: dict) -> None:
    """Put a fresh Trainer where the warm-up ended: what ``resume=True`` restores, minus its same-config check (the
    arms differ from the warm-up run only in ``rl.*``, which the supervised phase never reads) and minus the warm-up's
    optimizer (the RL phase builds its own)."""
    tr.model.load_state_dict(state["model"])
    tr.step = int(state["step"])
    torch.set_rng_state(state["rng"]["torch"])
    tr.rng.bit_generator.state = state["rng"]["numpy"]
    random.setstate(state["rng"]["python"])
    tr.source.load_state_dict(state["source"])


def run_arm(cfg: TrainConfig, state: dict) -> list[dict]:
    """The RL phase of ``cfg`` from the warmed-up ``state``: its RL metrics rows (with reuse, each carries the trainer's
    per-update traces ``grad_norm_lm_head_trace`` -- every update, a gated one included -- and ``kl_rollout_trace``
    -- the k3 KL to the rollout policy measured by updates 2..K, i.e. after 1..K-1 applied updates)."""
    tr = Trainer(cfg)
    try:
        start_from(tr, state)
        rows = tr.fit()
    finally:
        tr.close()
    return [r for r in rows if r["phase"] == "rl"]


# ----------------------------------------------------------------------------------------------------- measuring
def summarize(rows: list[dict], *, last: int, kl_threshold: float) -> dict:
    """Per-run numbers; RL steps are counted 1.. from the start of the RL phase."""
    s0 = rows[0]["step"] - 1
    fires = [r["step"] - s0 for r in rows if r.get("dgg_fired")]
    blow = [r["step"] - s0 for r in rows if r.get("kl_rollout_max", 0.0) > kl_threshold]
    evals = [r["eval_accuracy"] for r in rows if "eval_accuracy" in r]
    return {
        "final_reward": statistics.fmean(r["reward_mean"] for r in rows[-last:]),
        "eval_accuracy": evals[-1] if evals else math.nan,
        "updates": sum(r["updates"] for r in rows),
        "fires": len(fires),
        "first_fire": fires[0] if fires else None,
        "kl_blowup": blow[0] if blow else None,
        "kl_max": max(r.get("kl_rollout_max", 0.0) for r in rows),
    }


def claim(ungated: dict, gated: dict) -> dict:
    """The issue's claim for one seed, part by part (summaries from :func:`summarize`, same KL threshold)."""
    blew = ungated["kl_blowup"] is not None
    parts = {
        "ungated_kl_explodes": blew,
        "gate_fires_first": blew and gated["first_fire"] is not None and gated["first_fire"] <= ungated["kl_blowup"],
        "gated_kl_contained": gated["kl_blowup"] is None,
        "gated_reward_higher": gated["final_reward"] > ungated["final_reward"],
    }
    parts["holds"] = all(parts.values())
    return parts


def g_ratio_at_blowups(rows: list[dict], kl_threshold: float) -> list[float]:
    """For each step whose KL to the rollout policy crosses the threshold: the largest lm_head gradient norm of the
    reuses up to the crossing (2..j) divided by the on-policy norm (reuse 1).  > 1 means the norm surged first."""
    out = []
    for r in rows:
        g, kl = r.get("grad_norm_lm_head_trace", []), r.get("kl_rollout_trace", [])
        if len(g) < 2 or not g[0] or not kl or max(kl) <= kl_threshold:
            continue
        j = next(i for i, x in enumerate(kl) if x > kl_threshold)  # kl[j] was measured by update j + 2
        out.append(max(g[1:j + 2]) / g[0])
    return out


def shadow_gate(rows: list[dict], kl_threshold: float, **dgg) -> dict:
    """Replay an *ungated* run's lm_head gradient norms through a gate that only watches: per RL step, the reuse
    index at which it would have fired (first fire only) and whether the step's KL crossed the threshold.  A useful
    gate fires more often on the steps whose KL explodes -- and at or before the update that makes it explode
    (a fire at reuse r keeps the policy after r - 1 updates) -- than on the other steps."""
    from lckernels_rl.gating import DynamicGradientGate

    gate = DynamicGradientGate(**dgg)
    n = exploding = fired = fired_exploding = preempted = 0
    for r in rows:
        g, kl = r.get("grad_norm_lm_head_trace", []), r.get("kl_rollout_trace", [])
        fire = next((k for k, x in enumerate(g, 1) if gate.observe(x * x, k).fire), None)
        j = next((i for i, x in enumerate(kl) if x > kl_threshold), None)  # kl[j]: after j + 1 updates
        n += 1
        fired += fire is not None
        if j is not None:
            exploding += 1
            fired_exploding += fire is not None
            preempted += fire is not None and fire <= j + 1
    return {"steps": n, "exploding": exploding, "fired": fired, "fired_exploding": fired_exploding,
            "preempted": preempted}


def is_gated(overrides: list[str]) -> bool:
    return _dgg_of(overrides) is not None


def _dgg_of(overrides: list[str]) -> dict | None:
    import yaml

    dgg = None
    for o in overrides:
        if o.startswith("rl.dgg="):
            dgg = yaml.safe_load(o.split("=", 1)[1])
    return dgg


def run_seed(seed: int, arms: dict[str, list[str]], overrides: list[str], work: Path, *, last: int,
             kl_threshold: float, base: str = "default") -> dict:
    t0 = time.perf_counter()
    state = warm_up(make_config(seed, work / f"s{seed}_warmup", overrides, base))
    out = {"seed": seed, "sft_eval_accuracy": state["sft_eval_accuracy"], "rows": {}, "summary": {}}
    for name, arm_overrides in arms.items():
        rows = run_arm(make_config(seed, work / f"s{seed}_{name}", overrides + arm_overrides, base), state)
        out["rows"][name] = rows
        out["summary"][name] = summarize(rows, last=last, kl_threshold=kl_threshold)
    print(f"# seed {seed}: {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    return out


# ----------------------------------------------------------------------------------------------------- reporting
def _fmt(v, spec=""):
    if v is None:
        return "-"
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return format(v, spec)


def table(results: list[dict], arms: dict[str, list[str]], *, last: int, kl_threshold: float) -> str:
    lines = [f"| seed | arm | reward (last {last}) | eval acc | updates | gate fires (first at) | "
             f"KL > {kl_threshold:g} first at | KL max | claim |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for res in results:
        su = res["summary"].get("ungated")
        for name, s in res["summary"].items():
            gated = is_gated(arms[name])
            fires = f"{s['fires']} ({s['first_fire']})" if s["fires"] else ("0" if gated else "")
            verdict = ""
            if gated and su is not None:
                c = claim(su, s)
                why = [text for key, text in (("ungated_kl_explodes", "ungated KL never explodes"),
                                              ("gate_fires_first", "gate not fired by the explosion"),
                                              ("gated_kl_contained", "gated KL explodes"),
                                              ("gated_reward_higher", "gated reward lower"))
                       if not c[key] and not (key == "gate_fires_first" and not c["ungated_kl_explodes"])]
                verdict = "holds" if c["holds"] else "no: " + "; ".join(why)
            lines.append(f"| {res['seed']} | {name} | {s['final_reward']:.3f} | {_fmt(s['eval_accuracy'], '.3f')} | "
                         f"{s['updates']} | {fires} | {_fmt(s['kl_blowup'])} | {s['kl_max']:.2f} | {verdict} |")
    return "\n".join(lines)


def verdict(results: list[dict], arms: dict[str, list[str]], kl_threshold: float) -> list[str]:
    out = []
    mean = statistics.fmean
    names = list(results[0]["summary"])
    if "ungated" in names:
        us = [r["summary"]["ungated"] for r in results]
        blew = sum(u["kl_blowup"] is not None for u in us)
        out.append(f"ungated: mean reward {mean(u['final_reward'] for u in us):.3f}, eval "
                   f"{mean(u['eval_accuracy'] for u in us):.3f}; KL > {kl_threshold:g} on {blew}/{len(us)} seeds")
        for name in names:
            if name == "ungated":
                continue
            ss = [r["summary"][name] for r in results]
            better = sum(s["final_reward"] > u["final_reward"] for s, u in zip(ss, us))
            line = (f"{name}: mean reward {mean(s['final_reward'] for s in ss):.3f}, eval "
                    f"{mean(s['eval_accuracy'] for s in ss):.3f}; reward > ungated on {better}/{len(ss)} seeds; "
                    f"KL > {kl_threshold:g} on {sum(s['kl_blowup'] is not None for s in ss)}/{len(ss)}")
            if is_gated(arms[name]):
                cs = [claim(u, s) for s, u in zip(ss, us)]
                holds = sum(c["holds"] for c in cs)
                higher = mean(s["final_reward"] for s in ss) > mean(u["final_reward"] for u in us)
                robust = holds > len(cs) / 2 and higher
                line += (f"; fires {sum(s['fires'] for s in ss)} times in {sum(len(r['rows'][name]) for r in results)}"
                         f" steps; full claim holds on {holds}/{len(cs)} seeds -> "
                         f"{'REPRODUCES' if robust else 'does not reproduce'} (needs a majority and a higher mean)")
            out.append(line)
        for name in names:
            dgg = _dgg_of(arms[name])
            if dgg is None:
                continue
            tot: dict[str, int] = {}
            for r in results:
                for k, v in shadow_gate(r["rows"]["ungated"], kl_threshold, **dgg).items():
                    tot[k] = tot.get(k, 0) + v
            rest = tot["steps"] - tot["exploding"]
            out.append(f"shadow {name} on the ungated runs: fires in {tot['fired_exploding']}/{tot['exploding']} steps "
                       f"whose KL explodes ({tot['preempted']} at or before the exploding update) vs "
                       f"{tot['fired'] - tot['fired_exploding']}/{rest} other steps")
        ratios = [x for r in results for x in g_ratio_at_blowups(r["rows"]["ungated"], kl_threshold)]
        if ratios:
            out.append(f"signal: in {len(ratios)} ungated steps whose KL crossed {kl_threshold:g}, max lm_head grad "
                       f"norm of reuses 2..crossing / on-policy norm: median {statistics.median(ratios):.2f}, "
                       f"max {max(ratios):.2f}, > 1 in {sum(x > 1 for x in ratios)}")
    return out


def report(results: list[dict], arms: dict[str, list[str]], overrides: list[str], base: str, last: int,
           kl_threshold: float) -> None:
    print(f"config: {base} + {' '.join(DEFAULT_SET + (TINY_SET if base == 'tiny' else []) + overrides)}")
    for name, ov in arms.items():
        print(f"  arm {name}: {' '.join(ov) or '(as above)'}")
    print("warm-up greedy eval accuracy: "
          + ", ".join(f"seed {r['seed']} {r['sft_eval_accuracy']:.3f}" for r in results))
    print(table(results, arms, last=last, kl_threshold=kl_threshold))
    print("\n".join(verdict(results, arms, kl_threshold)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    ap.add_argument("--arms", nargs="+", default=None, help=f"arms to run (default: all of {', '.join(ARMS)})")
    ap.add_argument("--arm", nargs="+", action="append", default=[], metavar=("NAME", "OVERRIDE"),
                    help="define an extra arm: NAME and section.field=value overrides")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="section.field=value, every arm")
    ap.add_argument("--base", default="default", help="base config: a bundled name, a YAML path, or `tiny` (the "
                                                      "tests' model; adds TINY_SET)")
    ap.add_argument("--last", type=int, default=10, help="final reward = mean reward of the last N RL steps")
    ap.add_argument("--kl-threshold", type=float, default=1.0, help="KL explosion: kl_rollout_max above this")
    ap.add_argument("--work-dir", default=None, help="where the runs go (default: a temporary directory); "
                                                     "warm-up checkpoints found there are reused")
    ap.add_argument("--json", default=None, help="write the summaries and every RL metrics row here")
    ap.add_argument("--from-json", default=None, help="print the report of a --json file instead of running")
    args = ap.parse_args(argv)
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        report(saved["results"], saved["arms"], saved["args"]["overrides"], saved["args"]["base"],
               saved["args"]["last"], saved["args"]["kl_threshold"])
        return 0
    arms = dict(ARMS)
    for name, *ov in args.arm:
        arms[name] = ov
    arms = {n: arms[n] for n in (args.arms or list(arms))}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_dir or tmp)
        results = [run_seed(s, arms, args.overrides, work, last=args.last, kl_threshold=args.kl_threshold,
                            base=args.base) for s in args.seeds]
    report(results, arms, args.overrides, args.base, args.last, args.kl_threshold)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "arms": arms, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
