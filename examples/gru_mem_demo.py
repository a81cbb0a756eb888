"""GRU-Mem (arXiv 2602.10560; issue 14 §1): a gated reader vs an always-update, never-exit reader (MemAgent-style).

Per seed, two runs of the bundled ``gru_mem`` config with the same budgets (documents of 32-48 chunks, one asked
key-value needle and one distractor):

* ``gru_mem``: gated demonstrations (update only on evidence, exit at the last evidence chunk), then GRPO on
  ``outcome + 0.5 r_update + 0.5 r_exit``;
* ``memagent``: always-update / never-exit demonstrations (the memory rewritten at every chunk), then GRPO on the
  outcome only.

Reported (greedy evaluation on held-out seeds): answer accuracy (``outcome``), chunks read per document and the
fraction of the document read, after the warm-up and after RL.  The headline effect: the same accuracy while
reading far fewer chunks.

    python examples/gru_mem_demo.py --seeds 0 --sft-steps 200 --rl-steps 6 --out runs/gru_mem_demo

The warm-up trains every branch (chunk turn) of the forked episodes (the trainer's own warm-up does; see
docs/memory.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _demo  # noqa: E402

KEYS = ("eval_outcome", "eval_chunks_read", "eval_read_fraction", "eval_r_update", "eval_r_exit", "eval_format_ok",
        "eval_memory_entries_max")
READERS = {
    "gru_mem": ["task.env_args.demo_policy=gated", "task.env_args.w_update=0.5", "task.env_args.w_exit=0.5"],
    "memagent": ["task.env_args.demo_policy=memagent", "task.env_args.w_update=0.0", "task.env_args.w_exit=0.0"],
}


def main(argv=None) -> dict:
    ap = _demo.parser(__doc__.split("\n\n")[0], sft_steps=200, rl_steps=6)
    ap.add_argument("--eval-size", type=int, default=32)
    ap.add_argument("--readers", nargs="+", default=list(READERS), choices=list(READERS))
    ap.add_argument("--out", default="runs/gru_mem_demo")
    ap.add_argument("--set", action="append", default=[], help="extra config overrides (key=value)")
    args = ap.parse_args(argv)
    out = Path(args.out)

    def run_one(seed, reader):
        rows = _demo.fit("gru_mem", _demo.overrides(seed, args.sft_steps, args.rl_steps, args.eval_size,
                                                    args.sft_steps + args.rl_steps, out / f"{reader}_seed{seed}")
                         + READERS[reader] + args.set)
        return _demo.before_after(rows, args.sft_steps, KEYS)

    return _demo.sweep(args, args.readers, "reader", run_one)


if __name__ == "__main__":
    main()
