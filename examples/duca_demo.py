"""DuCA (arXiv 2603.01481; issue 14 §4): dual (turn + session) reward vs session-only reward on the sales dialogue.

Per seed, runs of the bundled ``duca_sales`` config with the same budgets:

* ``dual``: GRPO on ``session + sum(turn rewards)`` (+0.1 first-time question, -0.2 repeated turn), one scalar;
* ``session``: GRPO on the session reward (deal) only;
* ``hian``: DuCA's HIAN (``rl.advantage: hian``): the session reward and the per-turn rewards normalised apart
  within the group, fused per token (each turn's tokens get their own turn's term).

The warm-up is stopped early on purpose (``--sft-steps``) so that RL has something to improve.  Reported (greedy
evaluation on held-out seeds): session success, repeated turns, errors, turns, after the warm-up and after RL.

    python examples/duca_demo.py --seeds 0 --sft-steps 40 --rl-steps 6 --out runs/duca_demo
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _demo  # noqa: E402

KEYS = ("eval_session", "eval_repeats", "eval_errors", "eval_turns", "eval_turn_sum")


def main(argv=None) -> dict:
    ap = _demo.parser(__doc__.split("\n\n")[0], sft_steps=40, rl_steps=6)
    ap.add_argument("--eval-size", type=int, default=32)
    ap.add_argument("--arms", nargs="+", default=["dual", "session", "hian"], choices=["dual", "session", "hian"])
    ap.add_argument("--out", default="runs/duca_demo")
    ap.add_argument("--set", action="append", default=[], help="extra config overrides (key=value)")
    args = ap.parse_args(argv)
    out = Path(args.out)

    def run_one(seed, arm):
        rows = _demo.fit("duca_sales", _demo.overrides(seed, args.sft_steps, args.rl_steps, args.eval_size,
                                                       args.sft_steps + args.rl_steps, out / f"{arm}_seed{seed}")
                         + ([f"task.env_args.reward_mode={arm}"] if arm != "hian"
                            else ["task.env_args.reward_mode=dual", "rl.advantage=hian"]) + args.set)
        return _demo.before_after(rows, args.sft_steps, KEYS)

    return _demo.sweep(args, args.arms, "arm", run_one)


if __name__ == "__main__":
    main()
