"""Generalization across environments (issue 13 §5; "Can RL Improve Generalization of LLM Agents?", arXiv
2603.12011): within-environment easy -> hard transfer, cross-environment transfer, and sequential vs mixture training
at the same total budget, over three environments of this library that differ in observation format and action
interface:

* ``kv_easy``  -- kv_lookup, one key: a compact tool call ``@lookup(key=ab)``, the tool's value, then the answer;
* ``arith``    -- arithmetic ``a+b=`` (single digits): a one-turn text answer, no tools;
* ``rooms``    -- hipif_rooms, 2 rooms: multi-turn text actions ``take X`` / ``open`` / ``go`` with a folded context.

Evaluated but never trained (the "hard" variants): ``kv_hard`` (two keys: two calls, then their sum) and
``rooms_hard`` (4 rooms).  Success: the reward (kv, arith: 0/1) or the ``success`` component (rooms, whose reward also
pays 0.25 per room).

Arms (lckernels_rl.train.generalization; every stage = supervised warm-up on the stage's demonstrations, then GRPO,
warm-started from the previous stage with ``model.init_from``; every environment evaluated greedily on its held-out
seeds after each stage):

* ``sequential``: kv_easy -> arith -> rooms, ``--sft-steps`` / ``--rl-steps`` per stage;
* ``mixture``: one stage on the three at equal weights with 3x those steps (the same total budget).

    nice -n 10 python examples/generalization_demo.py --seeds 0 --sft-steps 200 --rl-steps 5 --eval-size 24
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _demo  # noqa: E402

ENVS = [
    {"env": "kv_lookup", "name": "kv_easy", "args": {"table_size": 8, "keys_per_task": 1}},
    {"env": "arithmetic", "name": "arith", "args": {"ops": "+", "max_value": 9}},
    {"env": "hipif_rooms", "name": "rooms", "args": {"n_rooms": 2, "spots": "abc", "fold": True}, "metric": "success"},
    {"env": "kv_lookup", "name": "kv_hard", "args": {"table_size": 8, "keys_per_task": 2}},
    {"env": "hipif_rooms", "name": "rooms_hard", "args": {"n_rooms": 4, "spots": "abc", "fold": True},
     "metric": "success"},
]
TRAINED = ["kv_easy", "arith", "rooms"]
HARD = {"kv_easy": "kv_hard", "rooms": "rooms_hard"}

BASE = {
    "threads": 1,
    "model": {"arch": "longcat_flash", "tokenizer": "char",
              "overrides": {"hidden_size": 64, "ffn_hidden_size": 128, "expert_ffn_hidden_size": 64,
                            "max_position_embeddings": 128}},
    "task": {"train_size": 1024},
    "agent": {"renderer": "plain", "parser": "auto", "max_turns": 16, "max_context_tokens": 128,
              "max_tool_output_tokens": 16, "tools_in_prompt": False},
    "sft": {"batch_size": 16, "lr": 0.003},
    "rl": {"prompts_per_step": 4, "rollouts_per_step": 16, "max_new_tokens": 36, "lr": 0.0002},
    "log": {"progress": False, "plots": False},
}


def _row(res, stage: str) -> dict:
    return dict(zip(res.envs, res.matrix[res.stages.index(stage)]))


def _r(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 4)


def main(argv=None) -> dict:
    from lckernels_rl.train.generalization import mixture_stage, run_generalization, sequential_stages

    ap = _demo.parser(__doc__.split("\n\n")[0], sft_steps=200, rl_steps=5)
    ap.add_argument("--eval-size", type=int, default=24)
    ap.add_argument("--arms", nargs="+", default=["sequential", "mixture"])
    ap.add_argument("--out", default="runs/generalization_demo")
    args = ap.parse_args(argv)
    out = Path(args.out)
    t0 = time.perf_counter()
    res = {}
    for arm in args.arms:
        if arm == "sequential":
            stages = sequential_stages(TRAINED, args.sft_steps, args.rl_steps)
        elif arm == "mixture":
            stages = [mixture_stage(TRAINED, len(TRAINED) * args.sft_steps, len(TRAINED) * args.rl_steps)]
        else:
            raise SystemExit(f"unknown arm {arm!r} (sequential, mixture)")
        res[arm] = run_generalization(ENVS, stages, BASE, out / arm, args.seeds, eval_size=args.eval_size,
                                      title=arm)
    summary: dict = {"args": vars(args), "envs": [e["name"] for e in ENVS]}
    for arm, r in res.items():
        summary[arm] = {"stages": r.stages, "matrix": [[_r(v) for v in row] for row in r.matrix],
                        "forgetting": {k: {kk: _r(vv) for kk, vv in v.items()} for k, v in
                                       r.forgetting["per_env"].items()},
                        "seconds": round(r.seconds, 1)}
    if "sequential" in res:
        seq = res["sequential"]
        init = _row(seq, "init")
        first = _row(seq, TRAINED[0])
        # cross-environment: after training on kv_easy only, the change on the environments it never saw
        summary["cross_env_after_kv_easy"] = {e: _r(first[e] - init[e]) for e in ("arith", "rooms")}
        # easy -> hard: the hard variant's change over the stage that trained the easy one
        easy_hard = {}
        for easy, hard in HARD.items():
            k = seq.stages.index(easy)
            before, after = dict(zip(seq.envs, seq.matrix[k - 1])), dict(zip(seq.envs, seq.matrix[k]))
            easy_hard[f"{easy}->{hard}"] = {"easy_gain": _r(after[easy] - before[easy]),
                                            "hard_before": _r(before[hard]), "hard_after": _r(after[hard])}
        summary["easy_to_hard"] = easy_hard
    if {"sequential", "mixture"} <= set(res):
        fs, fm = _row(res["sequential"], res["sequential"].stages[-1]), _row(res["mixture"], "mixture")
        summary["final_sequential_vs_mixture"] = {e: {"sequential": _r(fs[e]), "mixture": _r(fm[e])}
                                                  for e in res["sequential"].envs}
        summary["mean_trained_sequential"] = _r(sum(fs[e] for e in TRAINED) / len(TRAINED))
        summary["mean_trained_mixture"] = _r(sum(fm[e] for e in TRAINED) / len(TRAINED))
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    _demo.write_json(out, summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "args"}, indent=1))
    return summary


if __name__ == "__main__":
    main()
