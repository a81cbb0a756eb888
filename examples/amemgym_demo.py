"""AMemGym (templated; issue 14 §1): does RL on the memory-writing policy raise accuracy under a memory budget, and
how does the write / read failure split move?

Per seed: the bundled ``amemgym`` config (a user with 3 variables x 3 values over 4 periods, a memory of at most
``--memory-budget`` entries that is the only thing crossing periods), a short supervised warm-up on the scripted
writer/answerer, then GRPO.  Reported: greedy evaluation accuracy, write-failure and read-failure rates (AMemGym's
diagnosis: a miss is a write failure when the memory was already wrong at the variable's last update) and memory
accuracy, after the warm-up and after RL.

    python examples/amemgym_demo.py --seeds 0 --sft-steps 250 --rl-steps 20 --out runs/amemgym_demo

The warm-up trains every branch of the forked episodes (each period's write and answer turn is its own branch; the
trainer's own warm-up does, see docs/memory.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _demo  # noqa: E402

KEYS = ("eval_accuracy", "eval_write_failure", "eval_read_failure", "eval_memory_accuracy", "eval_format_ok")


def main(argv=None) -> dict:
    ap = _demo.parser(__doc__.split("\n\n")[0], sft_steps=250, rl_steps=20)
    ap.add_argument("--memory-budget", type=int, default=3)
    ap.add_argument("--eval-size", type=int, default=64)
    ap.add_argument("--out", default="runs/amemgym_demo")
    ap.add_argument("--set", action="append", default=[], help="extra config overrides (key=value)")
    args = ap.parse_args(argv)
    out = Path(args.out)

    def run_one(seed, _):
        rows = _demo.fit("amemgym", _demo.overrides(seed, args.sft_steps, args.rl_steps, args.eval_size,
                                                    args.sft_steps + args.rl_steps, out / f"seed{seed}")
                         + [f"task.env_args.memory_budget={args.memory_budget}"] + args.set)
        return _demo.before_after(rows, args.sft_steps, KEYS)

    return _demo.sweep(args, [None], None, run_one)


if __name__ == "__main__":
    main()
