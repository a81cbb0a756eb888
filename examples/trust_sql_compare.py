"""Dual-Track GRPO vs plain GRPO on ``trust_sql`` from one shared supervised warm-up (issue 12's side-by-side).

One warm-up run (``lckernels_rl/configs/trust_sql.yaml`` with ``rl.steps=0``) gives the starting policy; then, for every seed, the
same RL budget with ``dual_track_grpo`` (the config's objective) and with ``grpo`` (the same clip range, 0.2 / 0.28,
and the answer reward only).  Per run it reports the greedy held-out execution accuracy before and after RL, the
proposal precision, the train reward over the first and last 10 RL steps, and the variance (over the samples that
have a schema span) of the advantage applied on the schema span: for ``grpo`` the outcome advantage, for
``dual_track_grpo`` the schema track's own advantage and, beside it, the answer track's.

    python examples/trust_sql_compare.py --seeds 0 1 2 --rl-steps 40 --out runs/trust_sql_compare

Writes ``<out>/summary.json`` and prints one line per run and the means per objective.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from lckernels_rl.train import Trainer, load_config

CONFIG = "trust_sql"  # the bundled lckernels_rl/configs/trust_sql.yaml


def _mean(rows, key):
    vals = [r[key] for r in rows if key in r]
    return float(np.mean(vals)) if vals else float("nan")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rl-steps", type=int, default=40)
    ap.add_argument("--sft-steps", type=int, default=None, help="warm-up steps (default: the config's)")
    ap.add_argument("--objectives", nargs="+", default=["dual_track_grpo", "grpo"])
    ap.add_argument("--out", default="runs/trust_sql_compare")
    ap.add_argument("--set", action="append", default=[], help="extra config overrides (key=value)")
    ap.add_argument("--from-checkpoint", default=None,
                    help="start from the policy of a checkpoint.pt saved at the end of the warm-up of this config "
                         "(e.g. runs/trust_sql/checkpoint.pt of a run with log.checkpoint_every dividing sft.steps) "
                         "instead of running the warm-up")
    args = ap.parse_args(argv)
    out = Path(args.out)
    sft = [] if args.sft_steps is None else [f"sft.steps={args.sft_steps}"]
    common = sft + ["log.progress=false", "log.plots=false", "log.checkpoint_every=0"] + args.set

    t0 = time.perf_counter()
    if args.from_checkpoint:
        ckpt = torch.load(args.from_checkpoint, weights_only=False)
        state, sft_steps = ckpt["model"], int(ckpt["step"])
        want = load_config(CONFIG, common).sft.steps
        if sft_steps != want:
            raise SystemExit(f"--from-checkpoint: {args.from_checkpoint} is from step {sft_steps}, not the end of the "
                             f"{want}-step warm-up")
    else:
        warm = Trainer(load_config(CONFIG, common + ["rl.steps=0", f"log.output_dir={out / 'warmup'}"]))
        warm.fit()
        state = {k: v.clone() for k, v in warm.model.state_dict().items()}
        sft_steps = warm.config.sft.steps
    print(f"warm-up: {sft_steps} steps, {time.perf_counter() - t0:.0f} s", flush=True)

    runs = []
    before = before_c = None  # the starting policy's greedy evaluation: the same for every run
    for seed in args.seeds:
        for obj in args.objectives:
            extra = ["rl.objective_args={eps_high: 0.28}"] if obj == "grpo" else []
            cfg = load_config(CONFIG, common + extra + [f"seed={seed}", f"rl.objective={obj}",
                                                         f"rl.steps={args.rl_steps}",
                                                         f"log.output_dir={out / f'{obj}_seed{seed}'}"])
            t1 = time.perf_counter()
            tr = Trainer(cfg)
            tr.model.load_state_dict(state)
            tr.step = sft_steps
            if before is None:
                before, before_c = tr.evaluate(), dict(tr.eval_components)
            rows = [r for r in tr.fit() if r["phase"] == "rl"]
            after_c = tr.eval_components
            rewards = [r["reward_mean"] for r in rows]
            run = {"seed": seed, "objective": obj, "time_s": time.perf_counter() - t1,
                   "eval_exec_before": before_c.get("exec_correct", float("nan")),
                   "eval_exec_after": after_c.get("exec_correct", float("nan")),
                   "eval_reward_before": before, "eval_reward_after": rows[-1].get("eval_accuracy", float("nan")),
                   "eval_table_precision_before": before_c.get("table_precision", float("nan")),
                   "eval_table_precision_after": after_c.get("table_precision", float("nan")),
                   "eval_column_precision_after": after_c.get("column_precision", float("nan")),
                   "train_reward_first10": float(np.mean(rewards[:10])),
                   "train_reward_last10": float(np.mean(rewards[-10:])),
                   "schema_span_adv_var": _mean(rows, "span_schema_adv_var"),
                   "schema_track_adv_var": _mean(rows, "span_schema_schema_advantages_var")}
            runs.append(run)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in run.items()}), flush=True)
    summary = {"runs": runs, "means": {}}
    for obj in args.objectives:
        mine = [r for r in runs if r["objective"] == obj]
        summary["means"][obj] = {k: float(np.mean([r[k] for r in mine])) for k in mine[0]
                                 if k not in ("seed", "objective")}
        print(obj, json.dumps({k: round(v, 4) for k, v in summary["means"][obj].items()}), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
