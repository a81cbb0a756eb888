"""Skill1 (issue 14 §3): does removing either credit term hurt selection accuracy or library quality?

Per seed, three arms with the same budget (bundled ``skill1`` config: SFT warm-up on the demonstrations, then GRPO
on the whole query -> select -> answer -> distil episode; each arm has its own shared library, seeded identically):
``full`` (lambda_rerank = lambda_distill = 0.3), ``no_selection`` (lambda_rerank = 0), ``no_distill``
(lambda_distill = 0).  Reported after training: greedy evaluation success, selection accuracy (the chosen skill is
the right macro: ``right_skill``), distillation accuracy, and the library's quality (fraction of right entries) and
coverage (families with a right skill).

    python examples/skill1_demo.py --seeds 0 --sft-steps 40 --rl-steps 20
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _demo  # noqa: E402

from lckernels_rl.envs.skills.skill1 import get_library, reset_libraries  # noqa: E402
from lckernels_rl.train import load_config  # noqa: E402

ARMS = {"full": (0.3, 0.3), "no_selection": (0.0, 0.3), "no_distill": (0.3, 0.0)}


def run_arm(arm: str, seed: int, a) -> dict:
    lr, ld = ARMS[arm]
    lib_id = f"demo_{arm}_{seed}"
    ov = [f"seed={seed}", f"sft.steps={a.sft_steps}", f"rl.steps={a.rl_steps}", "log.eval_every=0",
          f"log.output_dir={a.out}/{arm}_{seed}", f"rl.prompts_per_step={a.prompts}",
          f"rl.rollouts_per_step={a.rollouts}", f"task.eval_size={a.eval_size}"]
    cfg = load_config("skill1", ov)
    cfg.task.env_args = {**cfg.task.env_args, "library_id": lib_id, "library_seed": seed,
                         "lambda_rerank": lr, "lambda_distill": ld}
    with _demo.trainer(cfg) as tr:
        lib = get_library(lib_id, seed, cfg.task.env_args["distractors"], cfg.task.env_args["missing"], 64)
        q0, c0 = lib.quality(), lib.coverage()
        tr.fit()
        tr.evaluate()
        comp = dict(tr.eval_components)
    return {"arm": arm, "seed": seed, "eval_outcome": comp.get("outcome"), "selection_acc": comp.get("right_skill"),
            "distill_acc": comp.get("distilled_right"), "malformed": comp.get("malformed"),
            "library_quality": [round(q0, 3), round(lib.quality(), 3)],
            "library_coverage": [round(c0, 3), round(lib.coverage(), 3)], "library_size": len(lib.entries)}


def main(argv=None):
    ap = _demo.parser(__doc__.split("\n\n")[0], sft_steps=40, rl_steps=20)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--rollouts", type=int, default=32)
    ap.add_argument("--eval-size", type=int, default=48)
    ap.add_argument("--out", default="runs/skill1_demo")
    a = ap.parse_args(argv)
    rows = []
    for s in a.seeds:
        for arm in ARMS:
            reset_libraries()
            rows.append(run_arm(arm, s, a))
            print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    main()
