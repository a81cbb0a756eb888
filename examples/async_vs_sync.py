"""Reward curves of asynchronous vs synchronous rollouts over the same number of samples (the gain of async must not
come from worse learning): the trainer on the tiny arithmetic task, ``rollout.mode`` sync vs async (staleness 1),
several seeds, the same RL steps x rollouts per step.

    python examples/async_vs_sync.py --seeds 0 1 2 --steps 8

Prints per mode the mean training reward per RL step (averaged over seeds), the final greedy evaluation accuracy
and the wall time per run; writes ``<out>/async_vs_sync.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from lckernels_rl.train import TrainConfig, Trainer

TINY = dict(hidden_size=32, ffn_hidden_size=64, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8,
            qk_rope_head_dim=8, head_dim=8, v_head_dim=8, num_attention_heads=2, num_key_value_heads=2,
            n_routed_experts=4, expert_ffn_hidden_size=32)


def config(out: Path, seed: int, mode: str, steps: int, staleness: int) -> TrainConfig:
    return TrainConfig.from_dict({
        "seed": seed, "threads": 1,
        "model": {"arch": "longcat_flash", "overrides": TINY},
        "task": {"env": "arithmetic", "env_args": {"max_value": 9}, "train_size": 64, "eval_size": 32},
        "sft": {"steps": 4, "batch_size": 16},
        "rl": {"steps": steps, "prompts_per_step": 4, "rollouts_per_step": 16, "max_new_tokens": 3, "lr": 3e-3},
        "rollout": {"mode": mode, "max_staleness": staleness},
        "log": {"output_dir": str(out / f"{mode}_s{seed}"), "checkpoint_every": 0, "eval_every": steps,
                "progress": False, "plots": False},
    })


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--staleness", type=int, default=1)
    ap.add_argument("--out", default="runs/async_vs_sync")
    args = ap.parse_args(argv)
    out = Path(args.out)
    res: dict = {}
    for mode in ("sync", "async"):
        curves, evals, walls = [], [], []
        for seed in args.seeds:
            tr = Trainer(config(out, seed, mode, args.steps, args.staleness))
            t0 = time.perf_counter()
            try:
                rows = tr.fit()
            finally:
                tr.close()
            walls.append(time.perf_counter() - t0)
            rl = [r for r in rows if r["phase"] == "rl"]
            curves.append([r["reward_mean"] for r in rl])
            evals.append(rl[-1].get("eval_accuracy", float("nan")))
        res[mode] = {"reward_curve": np.mean(curves, 0).round(4).tolist(), "final_eval": float(np.mean(evals)),
                     "final_eval_per_seed": evals, "wall_s": walls, "samples": args.steps * 16}
        print(f"{mode:5s} reward/step {res[mode]['reward_curve']}  final eval {res[mode]['final_eval']:.3f} "
              f"(per seed {evals})  wall {np.mean(walls):.1f} s/run")
    out.mkdir(parents=True, exist_ok=True)
    (out / "async_vs_sync.json").write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
