"""Reward curves of asynchronous vs synchronous rollouts over the same number of samples (issue #15: the gain of
async must not come from worse learning).

The trainer on the default config's model and task (the tiny LongCat-Flash MoE, 2-digit addition 0..29, a
supervised warm-up then GRPO), at a smaller budget where the synchronous run learns within a few minutes on one
core; arms (``--arms``):

* ``sync``            -- ``rollout.mode: sync`` (a step waits for its episodes);
* ``async-s1``        -- ``rollout.mode: async``, ``max_staleness: 1``;
* ``async-s2``        -- ``rollout.mode: async``, ``max_staleness: 2``;
* ``async-s1-mask``   -- ``async-s1`` with ``rollout.mask_stale_tokens: true``;
* ``async-s1-tt``     -- ``async-s1`` with ``rl.objective_args: {rollout_correction: token_truncate}`` (the
  behaviour log-probs of the sampling version, truncated importance weights).

Every arm has the same seeds, the same warm-up, the same RL steps x rollouts per step (the same samples), the same
objective (GRPO; no rollout correction except in ``async-s1-tt``: the first update of a batch is taken with ratio 1,
as in sync mode).

    python examples/async_vs_sync.py --seeds 0 1 2                       # all four arms, the default budget
    python examples/async_vs_sync.py --seeds 0 --arms sync --rl-steps 60  # find / check a budget

Per arm: the mean and per-seed training-reward curve (``reward_mean`` of each RL step), its first-k and last-k
means, the greedy evaluation accuracy after the warm-up (= start of RL) and at the end, the wall time of the run and
of its RL phase, and the staleness actually seen: the driver's ``group_staleness_max`` per step and, measured here
(a :class:`Trainer` subclass wrapping ``_update``), the fraction of trained tokens by version lag (the update's
policy version minus the version that sampled the token; with ``mask_stale_tokens`` the tokens of lag >
``max_staleness`` are the ones dropped from the loss).  Writes ``<out>/async_vs_sync.json`` and
``<out>/async_vs_sync.png`` (mean +- min/max over seeds).

Sources: LongCat-Flash-Thinking-2601 section 3.2 (DORA; asynchronous rollouts with bounded staleness, 2-4x over
synchronous training) -- the paper reports throughput, not a per-sample learning comparison at this scale; the
comparison protocol (same samples, >= 3 seeds) is issue #15's.  Wall times here come from a shared 2-core machine:
they are not a speed measurement.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from lckernels_rl.train import TrainConfig, Trainer

ARMS = {  # name -> (rollout.mode, max_staleness, mask_stale_tokens, rl.objective_args rollout_correction)
    "sync": ("sync", 1, False, None),
    "async-s1": ("async", 1, False, None),
    "async-s2": ("async", 2, False, None),
    "async-s1-mask": ("async", 1, True, None),
    "async-s1-tt": ("async", 1, False, "token_truncate"),
}
MAX_LAG = 4  # lag histogram bins 0..MAX_LAG-1 and ">= MAX_LAG"


class LagTrainer(Trainer):
    """The trainer, plus the version lag of every trained token of each update in the step's metrics
    (``token_lag_frac_<k>``, ``token_lag_mean``; measured before the update, like ``mask_stale_tokens``)."""

    def _update(self, groups, t0, t_rollout):
        lags = []
        if self.engine is not None:
            v = int(self.engine.version)
            for s in groups.samples:
                lags.extend(v - tv for tv, m in zip(s.token_versions, s.loss_mask) if m)
        out = super()._update(groups, t0, t_rollout)
        if lags:
            a = np.minimum(np.asarray(lags), MAX_LAG)
            for k in range(MAX_LAG + 1):
                out[f"token_lag_frac_{k}"] = float(np.mean(a == k))
            out["token_lag_mean"] = float(np.mean(lags))
            s = self.config.rollout.max_staleness
            out["token_stale_frac"] = float(np.mean(np.asarray(lags) > s))  # what mask_stale_tokens drops
        return out


def config(out: Path, arm: str, seed: int, a) -> TrainConfig:
    """The default config's model and task at the budget of ``a`` (see ``--help``)."""
    mode, staleness, mask, correction = ARMS[arm]
    return TrainConfig.from_dict({
        "seed": seed, "threads": a.threads,
        "model": {"arch": "longcat_flash"},
        "task": {"env": "arithmetic", "env_args": {"ops": "+", "min_value": 0, "max_value": a.max_value},
                 "train_size": a.train_size, "eval_size": a.eval_size},
        "sft": {"steps": a.sft_steps, "batch_size": 64, "lr": 1e-3},
        "rl": {"steps": a.rl_steps, "prompts_per_step": a.prompts, "rollouts_per_step": a.rollouts,
               "allocator": "uniform", "objective": "grpo", "advantage": "grpo", "max_new_tokens": 4,
               "temperature": 1.0, "lr": a.lr, "grad_clip": 1.0,
               "objective_args": {"rollout_correction": correction} if correction else {}},
        "rollout": {"backend": "hf", "mode": mode, "max_staleness": staleness, "mask_stale_tokens": mask},
        "log": {"output_dir": str(out / f"{arm}_seed{seed}"), "checkpoint_every": 0,
                "eval_every": a.eval_every or 10**9,  # always: after the warm-up and at the end
                "progress": False, "plots": False},
    })


def run_one(out: Path, arm: str, seed: int, a) -> dict:
    tr = LagTrainer(config(out, arm, seed, a))
    t0 = time.perf_counter()
    try:
        rows = tr.fit()
    finally:
        tr.close()
    wall = time.perf_counter() - t0
    rl = [r for r in rows if r["phase"] == "rl"]
    sft_end = [r for r in rows if r["phase"] == "sft" and r["step"] == a.sft_steps]
    start_eval = (sft_end[0] if sft_end else rows[0]).get("eval_accuracy", float("nan"))
    evals = [(r["step"] - a.sft_steps, r["eval_accuracy"]) for r in rl if "eval_accuracy" in r]
    lag = {str(k): float(np.mean([r.get(f"token_lag_frac_{k}", 0.0) for r in rl])) for k in range(MAX_LAG + 1)}
    return {"arm": arm, "seed": seed, "reward_curve": [round(r["reward_mean"], 4) for r in rl],
            "eval_start": start_eval, "eval_end": rl[-1].get("eval_accuracy", float("nan")), "eval_curve": evals,
            "wall_s": wall, "rl_wall_s": float(sum(r["time_s"] for r in rl)),
            "token_lag_frac": lag, "token_lag_mean": float(np.mean([r.get("token_lag_mean", 0.0) for r in rl])),
            "token_stale_frac": float(np.mean([r.get("token_stale_frac", 0.0) for r in rl])),
            "group_staleness_max": [int(r.get("group_staleness_max", 0)) for r in rl],
            "skipped_steps": sum(1 for r in rl if "skipped" in r)}


def summarize(runs: list[dict], k: int) -> dict:
    c = np.asarray([r["reward_curve"] for r in runs], dtype=np.float64)
    first, last = c[:, :k].mean(1), c[:, -k:].mean(1)
    es, ee = np.asarray([r["eval_start"] for r in runs]), np.asarray([r["eval_end"] for r in runs])
    return {"seeds": [r["seed"] for r in runs], "reward_curve_mean": c.mean(0).round(4).tolist(),
            "reward_first_k": first.round(4).tolist(), "reward_last_k": last.round(4).tolist(),
            "reward_first_k_mean": float(first.mean()), "reward_last_k_mean": float(last.mean()),
            "eval_start": es.tolist(), "eval_end": ee.tolist(), "eval_start_mean": float(es.mean()),
            "eval_end_mean": float(ee.mean()), "wall_s": [round(r["wall_s"], 1) for r in runs],
            "rl_wall_s": [round(r["rl_wall_s"], 1) for r in runs],
            "token_lag_frac_mean": {str(j): float(np.mean([r["token_lag_frac"][str(j)] for r in runs]))
                                    for j in range(MAX_LAG + 1)},
            "token_stale_frac_mean": float(np.mean([r["token_stale_frac"] for r in runs])),
            "group_staleness_max": int(max(max(r["group_staleness_max"]) for r in runs)),
            "skipped_steps": int(sum(r["skipped_steps"] for r in runs))}


def plot(res: dict, a, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    w = max(1, a.smooth)
    for arm, s in res["arms"].items():
        c = np.asarray([r["reward_curve"] for r in res["runs"] if r["arm"] == arm], dtype=np.float64)
        if w > 1:  # a trailing moving average per seed, then mean / min / max over seeds
            ker = np.ones(w) / w
            c = np.stack([np.convolve(x, ker, mode="valid") for x in c])
        x = (np.arange(c.shape[1]) + w) * a.rollouts
        line, = ax1.plot(x, c.mean(0), label=arm)
        ax1.fill_between(x, c.min(0), c.max(0), color=line.get_color(), alpha=0.15)
        ev = [r["eval_curve"] for r in res["runs"] if r["arm"] == arm]
        xs = [0] + [st for st, _ in ev[0]]
        e = np.asarray([[r["eval_start"]] + [v for _, v in r["eval_curve"]] for r in res["runs"]
                        if r["arm"] == arm])
        ax2.plot(np.asarray(xs) * a.rollouts, e.mean(0), marker="o", color=line.get_color(), label=arm)
        ax2.fill_between(np.asarray(xs) * a.rollouts, e.min(0), e.max(0), color=line.get_color(), alpha=0.15)
    ax1.set(xlabel="RL samples", ylabel=f"training reward (moving avg {w} steps)",
            title=f"train reward, mean and min-max over seeds {a.seeds}")
    ax2.set(xlabel="RL samples", ylabel="greedy eval accuracy", title=f"greedy eval ({a.eval_size} problems)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--sft-steps", type=int, default=250, help="supervised warm-up steps (batch 64)")
    ap.add_argument("--rl-steps", type=int, default=80)
    ap.add_argument("--prompts", type=int, default=16, help="rl.prompts_per_step (groups per batch)")
    ap.add_argument("--rollouts", type=int, default=128, help="rl.rollouts_per_step (prompts x group size)")
    ap.add_argument("--lr", type=float, default=3e-4, help="RL learning rate")
    ap.add_argument("--max-value", type=int, default=29, help="operands 0..max_value")
    ap.add_argument("--train-size", type=int, default=2048)
    ap.add_argument("--eval-size", type=int, default=256)
    ap.add_argument("--eval-every", type=int, default=0,
                    help="greedy eval every this many global steps (0: only after the warm-up and at the end)")
    ap.add_argument("--k", type=int, default=10, help="first-k / last-k RL steps of the reward summary")
    ap.add_argument("--smooth", type=int, default=5, help="moving average of the plotted reward curve (steps)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/async_vs_sync")
    ap.add_argument("--replot", action="store_true",
                    help="no training: re-summarize and re-plot <out>/async_vs_sync.json (its budget and runs)")
    a = ap.parse_args(argv)
    if a.replot:
        res = json.loads((Path(a.out) / "async_vs_sync.json").read_text())
        b = argparse.Namespace(**{**res["budget"], "smooth": a.smooth, "k": a.k})
        arms = [arm for arm in ARMS if any(r["arm"] == arm for r in res["runs"])]
        res["arms"] = {arm: summarize([r for r in res["runs"] if r["arm"] == arm], b.k) for arm in arms}
        (Path(a.out) / "async_vs_sync.json").write_text(json.dumps(res, indent=1))
        plot(res, b, Path(a.out) / "async_vs_sync.png")
        for arm, s in res["arms"].items():
            print(f"{arm:13s} seeds {s['seeds']}: reward first-{b.k} {s['reward_first_k_mean']:.3f} last-{b.k} "
                  f"{s['reward_last_k_mean']:.3f}  eval {s['eval_start_mean']:.3f} -> {s['eval_end_mean']:.3f}  "
                  f"token lag {s['token_lag_frac_mean']}  stale {s['token_stale_frac_mean']:.3f}")
        return res
    if a.rl_steps < 2 * a.k:
        ap.error(f"--rl-steps ({a.rl_steps}) must be >= 2 * --k ({a.k})")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res: dict = {"budget": {k: v for k, v in vars(a).items() if k not in ("out",)},
                 "samples_per_run": a.rl_steps * a.rollouts, "runs": [], "arms": {}}
    for seed in a.seeds:  # seed-major: a run cut short still has every arm for its first seeds
        for arm in a.arms:
            r = run_one(out, arm, seed, a)
            res["runs"].append(r)
            print(f"{arm:13s} seed {seed}: reward first-{a.k} {np.mean(r['reward_curve'][:a.k]):.3f} last-{a.k} "
                  f"{np.mean(r['reward_curve'][-a.k:]):.3f}  eval {r['eval_start']:.3f} -> {r['eval_end']:.3f}  "
                  f"lag0/1/2 {r['token_lag_frac']['0']:.2f}/{r['token_lag_frac']['1']:.2f}/"
                  f"{r['token_lag_frac']['2']:.2f}  wall {r['wall_s']:.0f} s (RL {r['rl_wall_s']:.0f} s)", flush=True)
            (out / "async_vs_sync.json").write_text(json.dumps(res, indent=1))  # partial results survive a kill
    for arm in a.arms:
        s = res["arms"][arm] = summarize([r for r in res["runs"] if r["arm"] == arm], a.k)
        print(f"{arm:13s} MEAN: reward first-{a.k} {s['reward_first_k_mean']:.3f} last-{a.k} "
              f"{s['reward_last_k_mean']:.3f}  eval {s['eval_start_mean']:.3f} -> {s['eval_end_mean']:.3f}  "
              f"token lag fractions {s['token_lag_frac_mean']}  stale (> s) {s['token_stale_frac_mean']:.3f}",
              flush=True)
    (out / "async_vs_sync.json").write_text(json.dumps(res, indent=1))
    plot(res, a, out / "async_vs_sync.png")
    return res


if __name__ == "__main__":
    main()
