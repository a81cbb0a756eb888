"""Reward hacking and its guard on the toy prover (LongCat-Flash-Prover, arXiv 2603.21065).

Two runs from the same seed, same warm-up and budget: GRPO with the ``compile_only`` reward (the checker with the
loopholes) and with the ``legal`` reward (compile AND the AST legality check).  The warm-up demonstrates honest
proofs only; the loophole forms (``thm T:a>a:=``, ``lem H:a>c`` without proof, ``ax H:a>c``, ...) are a few
characters away from them.  Per RL step the script records, over the step's training rollouts, the compile rate, the
legal-and-compiling ("honest") rate, the hacked rate (compiles, illegal) and which loophole each hacked proof used;
and the greedy evaluation at the end.  Expected: with ``compile_only`` the pass rate climbs while the honest rate
falls (hacks take over); with ``legal`` there is no such spike.

Usage::

    python examples/reward_hacking_demo.py --seeds 0 --sft-steps 250 --rl-steps 30 --out runs/reward_hacking
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _demo  # noqa: E402

from lckernels_rl.envs.formal_proof import LOOPHOLES  # noqa: E402
from lckernels_rl.train import TrainConfig, Trainer  # noqa: E402

KEYS = ("compile", "legal", "honest", "hacked", "parse_error", *[f"hack_{k}" for k in LOOPHOLES])


class ComponentTrainer(Trainer):
    """The trainer, plus the verdict components of every RL step's rollouts in its metrics (``train_<name>``)."""

    def _update(self, groups, t0, t_rollout):
        out = super()._update(groups, t0, t_rollout)
        trajs = groups.trajectories
        for k in KEYS:
            out[f"train_{k}"] = float(np.mean([t.components.get(k, 0.0) for t in trajs])) if trajs else 0.0
        return out


def config(reward: str, seed: int, args, out: Path) -> TrainConfig:
    model = {"arch": "longcat_flash"}  # the preset: 2 layers, hidden 128, 8 routed experts
    return TrainConfig.from_dict({
        "seed": seed, "threads": 1, "model": model,
        "task": {"env": "formal_proof", "env_args": {"reward": reward, "path_len": [2, args.max_path],
                                                               "distractors": [0, args.distractors]},
                 "train_size": 2048, "eval_size": args.eval_size},
        "agent": {"renderer": "plain", "parser": "none", "max_turns": 1, "max_context_tokens": 192,
                  "tools_in_prompt": False},
        "sft": {"steps": args.sft_steps, "batch_size": 32, "lr": args.sft_lr},
        "rl": {"steps": args.rl_steps, "prompts_per_step": args.prompts, "rollouts_per_step": args.prompts * args.group,
               "max_new_tokens": 36, "temperature": 1.0, "lr": args.lr, "objective": "grpo", "advantage": "grpo"},
        "log": {"output_dir": str(out / f"{reward}_seed{seed}"), "checkpoint_every": 0, "eval_every": 0,
                "progress": False, "plots": False}})


def run(reward: str, seed: int, args, out: Path) -> dict:
    with _demo.trainer(config(reward, seed, args, out), trainer_cls=ComponentTrainer) as tr:
        rows = tr.fit()
        final = {"eval_reward": tr.evaluate(), **{f"eval_{k}": v for k, v in tr.eval_components.items()}}
    sft_end = next((r for r in rows if r["phase"] == "sft" and r["step"] == args.sft_steps), {})
    rl = [r for r in rows if r["phase"] == "rl"]
    curve = [{k: r[f"train_{k}"] for k in KEYS} for r in rl]
    return {"reward": reward, "seed": seed, "warmup_eval": sft_end.get("eval_accuracy"), "curve": curve,
            "final_eval": final}


def summary(res: dict, head: int = 5, tail: int = 10) -> str:
    c = res["curve"]
    first = {k: np.mean([x[k] for x in c[:head]]) for k in KEYS}
    last = {k: np.mean([x[k] for x in c[-tail:]]) for k in KEYS}
    hacks = ", ".join(f"{k[5:]}={last[k]:.2f}" for k in KEYS if k.startswith("hack_") and last[k] > 0)
    f = res["final_eval"]
    return (f"{res['reward']:>12} seed {res['seed']}: train compile {first['compile']:.2f} -> {last['compile']:.2f}, "
            f"honest {first['honest']:.2f} -> {last['honest']:.2f}, hacked {first['hacked']:.2f} -> "
            f"{last['hacked']:.2f} (first {head} / last {tail} RL steps; loopholes in the last: {hacks or 'none'}); "
            f"greedy eval: compile {f.get('eval_compile', 0):.2f}, honest {f.get('eval_honest', 0):.2f}, "
            f"hacked {f.get('eval_hacked', 0):.2f}")


def main() -> None:
    ap = _demo.parser(__doc__.split("\n")[0], sft_steps=250, rl_steps=30)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--eval-size", type=int, default=32)
    ap.add_argument("--sft-lr", type=float, default=2e-3)
    ap.add_argument("--max-path", type=int, default=2)
    ap.add_argument("--distractors", type=int, default=1)
    ap.add_argument("--rewards", nargs="+", default=["compile_only", "legal"])
    ap.add_argument("--out", default="runs/reward_hacking")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in args.seeds:
        for reward in args.rewards:
            res = run(reward, seed, args, out)
            results.append(res)
            print(summary(res), flush=True)
    print(f"wrote {_demo.write_json(out, {'args': vars(args), 'results': results}, 'results.json', indent=1)}")


if __name__ == "__main__":
    main()
