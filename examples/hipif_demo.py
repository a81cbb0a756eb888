"""HIPIF (arXiv 2606.10507; issue 14 §4): folding completed subgoals vs keeping the full history, same context.

Per seed, runs of the bundled ``hipif_rooms`` config (``n_rooms`` rooms = subgoals, ``agent.max_context_tokens``
the same for every arm):

* ``fold``: every completed subgoal folds into a one-line summary (a context rewrite; the episode forks);
* ``full``: the full history is kept (``fold: false``);
* ``full_large_ctx`` (optional reference): the full history with a context large enough to hold it.

Warm-up on the scripted turns (every branch of a forked episode, as examples/gru_mem_demo.py), then GRPO.  Reported
(greedy evaluation on held-out seeds): success rate, subgoals done, errors, after the warm-up and after RL.

    python examples/hipif_demo.py --seeds 0 --sft-steps 150 --rl-steps 4 --out runs/hipif_demo
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _demo  # noqa: E402

KEYS = ("eval_accuracy", "eval_success", "eval_subgoals", "eval_errors", "eval_folds")


def main(argv=None) -> dict:
    ap = _demo.parser(__doc__.split("\n\n")[0], sft_steps=150, rl_steps=4)
    ap.add_argument("--eval-size", type=int, default=16)
    ap.add_argument("--n-rooms", type=int, default=6)
    ap.add_argument("--context", type=int, default=96)
    ap.add_argument("--arms", nargs="+", default=["fold", "full"], choices=["fold", "full", "full_large_ctx"])
    ap.add_argument("--out", default="runs/hipif_demo")
    ap.add_argument("--set", action="append", default=[], help="extra config overrides (key=value)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    arms = {"fold": ["task.env_args.fold=true", f"agent.max_context_tokens={args.context}"],
            "full": ["task.env_args.fold=false", f"agent.max_context_tokens={args.context}"],
            "full_large_ctx": ["task.env_args.fold=false", "agent.max_context_tokens=1024"]}

    def run_one(seed, arm):
        rows = _demo.fit("hipif_rooms", _demo.overrides(seed, args.sft_steps, args.rl_steps, args.eval_size,
                                                        args.sft_steps + args.rl_steps, out / f"{arm}_seed{seed}")
                         + [f"task.env_args.n_rooms={args.n_rooms}", f"agent.max_turns={3 * args.n_rooms + 6}"]
                         + arms[arm] + args.set)
        return _demo.before_after(rows, args.sft_steps, KEYS)

    return _demo.sweep(args, args.arms, "arm", run_one)


if __name__ == "__main__":
    main()
