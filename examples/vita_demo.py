"""VitaBench-style personalization (issue 14 §1): success by subtask index for each memory backend between subtasks
(null / rewrite / full_context).

Two parts per seed:

1. **Scripted policies** that isolate the backend: a perfect reader of its context (``VitaPersonalEnv.demonstration``:
   it acts with every preference its context shows and guesses the rest; as a rewrite writer it keeps every
   preference it knows), run on ``--episodes`` generated users per backend.  ``full_context`` is run with the
   ``--context-budget`` character budget, ``rewrite`` also with a ``--small-note`` entry budget.
2. **A tiny policy**: the bundled ``vita_personal`` config per backend (``task.env_args.memory``), a short supervised
   warm-up on the scripted turns, then GRPO; greedy evaluation (``eval_success_at_<k>``) after the warm-up and at the
   end.

    python examples/vita_demo.py --seeds 0 --sft-steps 150 --rl-steps 8 --eval-size 32 --out runs/vita_demo

``--scripted-only`` skips part 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _demo  # noqa: E402


def scripted(memory: str, episodes: int, seed: int, **env_args) -> dict:
    """Success by subtask index of the scripted perfect-reader policy under ``memory``."""
    import numpy as np

    from lckernels_rl.agents.types import Message
    from lckernels_rl.envs import make_tool_env

    rows = []
    for e in range(episodes):
        env = make_tool_env("vita_personal", memory=memory, **env_args)
        env.reset(seed=seed * 100_000 + e)
        while True:
            res = env.step(Message("assistant", env.demonstration()))
            if res.terminated:
                break
        c = env.verify().components
        rows.append([c[f"success_at_{k}"] for k in range(env.n)] + [c["success"], c["carried_success"]])
    m = np.mean(rows, axis=0)
    n = len(m) - 2
    return {"success_by_index": [round(float(x), 3) for x in m[:n]], "success": round(float(m[n]), 3),
            "carried_success": round(float(m[n + 1]), 3)}


def main(argv=None) -> dict:
    ap = _demo.parser(__doc__.split("\n\n")[0], sft_steps=150, rl_steps=8)
    ap.add_argument("--backends", nargs="+", default=["null", "rewrite", "full_context"])
    ap.add_argument("--num-subtasks", type=int, default=4)
    ap.add_argument("--context-budget", type=int, default=120, help="full_context history budget (characters)")
    ap.add_argument("--small-note", type=int, default=2, help="a small rewrite note budget (entries)")
    ap.add_argument("--episodes", type=int, default=500, help="scripted episodes per backend")
    ap.add_argument("--eval-size", type=int, default=32)
    ap.add_argument("--scripted-only", action="store_true")
    ap.add_argument("--out", default="runs/vita_demo")
    ap.add_argument("--set", action="append", default=[], help="extra config overrides (key=value)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    env_over = [f"task.env_args.num_subtasks={args.num_subtasks}",
                f"task.env_args.context_budget={args.context_budget}"]
    keys = ("eval_accuracy", *[f"eval_success_at_{k}" for k in range(args.num_subtasks)], "eval_carried_success",
            "eval_rubric_score", "eval_format_ok")

    def run_one(seed, arm):
        memory, note = arm
        res = {"scripted": scripted(memory, args.episodes, seed, num_subtasks=args.num_subtasks,
                                    context_budget=args.context_budget,
                                    **({"memory_budget": note} if note else {}))}
        if not args.scripted_only and note is None:
            rows = _demo.fit("vita_personal",
                             _demo.overrides(seed, args.sft_steps, args.rl_steps, args.eval_size,
                                             args.sft_steps + args.rl_steps, out / f"seed{seed}_{memory}")
                             + env_over + [f"task.env_args.memory={memory}"] + args.set)
            res["policy"] = _demo.before_after(rows, args.sft_steps, keys)
        return res

    arms = [(b, None) for b in args.backends] + ([("rewrite", args.small_note)] if "rewrite" in args.backends
                                                 and args.small_note else [])
    return _demo.sweep(args, arms, "backend_note", run_one)


if __name__ == "__main__":
    main()
