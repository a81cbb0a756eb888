"""SKILL0 (issue 14 §3): does withdrawing in-context skills by a schedule beat RL without skills and RL with skills
always on, at final ZERO-SHOT success?

Per seed, three arms with the same budget (bundled ``skill0`` config, a short supervised warm-up on the
demonstrations with the arm's prompts, then GRPO): ``none`` (never any skills), ``always`` (skills always in context),
``curriculum`` (:class:`~lckernels_rl.envs.skills.skill0.SkillWithdrawalSchedule`, released ``[6, 3, 0]`` or
``--linear``: every ``--test-freq`` RL steps a greedy validation with and without the active skills, per task type,
withdraws the unhelpful files).  Reported: final greedy zero-shot success (no skills in the prompt).

    python examples/skill0_demo.py --seeds 0 --sft-steps 40 --rl-steps 30 --test-freq 5

The curriculum runs inside the trainer as its ``skill0_withdrawal`` callback
(:class:`~lckernels_rl.envs.skills.skill0.SkillWithdrawalCallback`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _demo  # noqa: E402

from lckernels_rl.envs.skills.skill1 import VERBS  # noqa: E402
from lckernels_rl.train import Trainer, load_config  # noqa: E402


def per_type(tr: Trainer, eval_args: dict) -> dict:
    tr.config.task.eval_env_args = eval_args
    tr.evaluate()
    return {v: tr.eval_components.get(f"{v}_success", 0.0) for v in VERBS}


def run_arm(arm: str, seed: int, a) -> dict:
    sid = f"demo{seed}"
    skills = {"none": "none", "always": "all", "curriculum": "schedule"}[arm]
    ov = [f"seed={seed}", f"sft.steps={a.sft_steps}", f"rl.steps={a.rl_steps}", "log.eval_every=0",
          f"log.output_dir={a.out}/{arm}_{seed}", f"rl.prompts_per_step={a.prompts}",
          f"rl.rollouts_per_step={a.rollouts}", f"task.eval_size={a.eval_size}"]
    cfg = load_config("skill0", ov)
    cfg.task.env_args = {"skill_seed": seed, "skills": skills, "schedule_id": sid}
    cfg.task.eval_env_args = {"skills": "none"}
    if arm == "curriculum":  # the trainer's callback validates and withdraws every --test-freq RL steps
        cfg.callbacks = [{"target": "skill0_withdrawal",
                          "args": {"max_set_schedule": [6] if a.linear else [6, 3, 0], "test_freq": a.test_freq,
                                   "mode": "linear" if a.linear else "released"}}]
    with _demo.trainer(cfg) as tr:
        tr.fit()
        hist = [{"step": h["step"], "max_set": h["max_set"], "active": h["active"]}
                for cb in tr.callbacks for h in cb.schedule.history]
        zero = per_type(tr, {"skills": "none"})
    return {"arm": arm, "seed": seed, "zero_shot": sum(zero.values()) / len(zero), "per_type": zero, "schedule": hist}


def main(argv=None):
    ap = _demo.parser(__doc__.split("\n\n")[0], sft_steps=40, rl_steps=30)
    ap.add_argument("--test-freq", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--rollouts", type=int, default=32)
    ap.add_argument("--eval-size", type=int, default=48)
    ap.add_argument("--linear", action="store_true")
    ap.add_argument("--arms", nargs="+", default=["none", "always", "curriculum"])
    ap.add_argument("--out", default="runs/skill0_demo")
    a = ap.parse_args(argv)
    rows = [run_arm(arm, s, a) for s in a.seeds for arm in a.arms]
    for r in rows:
        print(json.dumps(r))
    return rows


if __name__ == "__main__":
    main()
