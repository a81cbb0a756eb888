"""MemOCR text-only (issue 14 §1): after RL with MemOCR's reward, does accuracy at a low rendering budget hold (stay
close to the full-budget accuracy), compared with RL on the full-budget answer reward only?

Per seed, two runs of the bundled ``memocr`` config from the same warm-up recipe (demonstrations bold the asked fact
half of the time): ``memocr`` (reward (R_full + 0.7 R_low + 0.3 R_cloze) / 2, the released weights) and
``full_only`` (R_full alone).  Reported after the warm-up and after RL (greedy, held-out documents): R_full, R_low
(the answer read from a rendering at 0.25 x the character budget), R_cloze, the rate of memories that emphasise the
asked fact.

    python examples/memocr_demo.py --seeds 0 --sft-steps 60 --rl-steps 30
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _demo  # noqa: E402

VARIANTS = {"memocr": ["task.env_args.w_low=0.7", "task.env_args.w_cloze=0.3"],
            "full_only": ["task.env_args.w_low=0.0", "task.env_args.w_cloze=0.0"]}
KEYS = ("eval_r_full", "eval_r_low", "eval_r_cloze", "eval_emphasised_key")


def main(argv=None) -> dict:
    ap = _demo.parser(__doc__.split("\n\n")[0], sft_steps=60, rl_steps=30)
    ap.add_argument("--eval-size", type=int, default=64)
    ap.add_argument("--out", default="runs/memocr_demo")
    ap.add_argument("--set", action="append", default=[], help="extra config overrides (key=value)")
    args = ap.parse_args(argv)
    out = Path(args.out)

    def run_one(seed, name):
        rows = _demo.fit("memocr", _demo.overrides(seed, args.sft_steps, args.rl_steps, args.eval_size,
                                                   args.sft_steps + args.rl_steps, out / f"{name}_seed{seed}")
                         + VARIANTS[name] + args.set)
        warm, final = _demo.eval_rows(rows, args.sft_steps)
        return {"after_warmup": {k[5:]: round(warm[k], 3) for k in KEYS if k in warm},
                "after_rl": {k[5:]: round(final[k], 3) for k in KEYS if k in final}, **_demo.train_reward(rows)}

    return _demo.sweep(args, VARIANTS, "variant", run_one)


if __name__ == "__main__":
    main()
