"""pc_state (issue 13 §3): verifier validation (STAGE-Claw, arXiv:2606.10394), transcript judge vs agent judge
(AJ-Bench, arXiv:2604.18240), and a short RL run on the state-verified reward.

1. Generation: ``--tasks`` tasks from the task generator (hints mv/rm/book/cancel/save, flawed drafts with
   probability ``--flaw-rate``): how many drafts were written, accepted, rejected (and why), dropped.
2. Judges: the labelled scripted trajectories of those tasks (solved, quiet, claim_only, wrong, failed, undone,
   fake_mv -- four kinds are false success claims); precision / recall / F1 of both rule-based judges, and each
   judge's accuracy per trajectory kind.
3. RL (``--rl``): the bundled ``pc_state`` config with a small budget: greedy success after the warm-up and after
   GRPO, with the false-claim rate (``done`` said while the verifier fails); the greedy episodes' tool-call
   rate / tool errors / parse errors, the sampled rollouts' tool-call rate per RL step, and the tokenizer's
   coverage of the demonstrations (``<unk>`` fraction, calls that survive encode -> decode) -- the checks that
   diagnosed issue 13 part 3's "RL makes no tool calls".

    python examples/pc_state_judges.py --seeds 0 1 2 --tasks 40 --rl --sft-steps 150 --rl-steps 8
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter, defaultdict
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _demo  # noqa: E402

from lckernels_rl.envs.pc_state import TaskGenerator  # noqa: E402
from lckernels_rl.envs.pc_state.judge import (AgentJudge, TranscriptJudge, evaluate_judges,  # noqa: E402
                                              scripted_trajectories)


def judges_part(seed: int, n: int, flaw_rate: float) -> dict:
    gen = TaskGenerator(flaw_rate=flaw_rate)
    tasks = [gen.generate(seed * 100000 + i) for i in range(n)]
    ex = scripted_trajectories(tasks)
    scores = evaluate_judges(ex)
    per_kind: dict = defaultdict(lambda: Counter())
    tj, aj = TranscriptJudge(), AgentJudge()
    for e in ex:
        c = per_kind[e.kind]
        c["n"] += 1
        c["transcript_right"] += int(tj.judge(e.trajectory.messages).success == e.label)
        c["agent_right"] += int(aj.judge(e.trajectory.messages, e.final_state).success == e.label)
    return {"seed": seed, "generation": dict(gen.stats), "n_trajectories": len(ex),
            "n_false_claims": sum(1 for e in ex if not e.label and e.trajectory.messages[-1].content == "done"),
            "scores": scores, "per_kind": {k: dict(v) for k, v in per_kind.items()}}


def tokenizer_coverage(tr, n: int = 64) -> dict:
    """How much of the warm-up's text the trainer's tokenizer can hold: the fraction of ``<unk>`` ids in the
    demonstrated turns and prompts of ``n`` tasks, and whether a demonstrated call survives encode -> decode (the
    diagnosis of issue 13 part 3: a char tokenizer without the env's alphabet turned ``@mv(...)`` into ``<unk>`` s)."""
    tok, env = tr.tokenizer, tr.make_env()
    unk = tok.unk_token_id
    ids: list = []
    calls_kept = 0
    for i in range(n):
        msgs, _ = env.reset(seed=10**8 + i)
        demo = env.demonstration(msgs)
        for text in (msgs[0].content, demo):
            ids += tok(text, add_special_tokens=False)["input_ids"]
        back = tok.decode(tok(demo, add_special_tokens=False)["input_ids"], skip_special_tokens=True)
        calls_kept += int(back == demo)
    return {"unk_frac": round(sum(i == unk for i in ids) / max(len(ids), 1), 4), "calls_round_trip": calls_kept / n,
            "vocab": len(tok), "max_new_tokens": tr.config.rl.max_new_tokens}


def rl_part(seed: int, sft_steps: int, rl_steps: int, eval_size: int, extra: list[str],
            out_dir="runs/pc_state_demo") -> dict:
    t0 = time.perf_counter()
    over = _demo.overrides(seed, sft_steps, rl_steps, eval_size, 0, Path(out_dir) / f"seed{seed}") + extra

    def measure(tr) -> tuple:
        acc, m = tr.evaluate(return_metrics=True)  # greedy
        keep = {k: round(float(v), 4) for k, v in m.items() if k.startswith(("tool_", "stop_", "parse_", "turns"))}
        return round(float(acc), 4), {k: round(v, 4) for k, v in tr.eval_components.items()}, keep

    with _demo.trainer("pc_state", over) as tr:
        coverage = tokenizer_coverage(tr)
        (s_sft, c_sft, g_sft), (s_rl, c_rl, g_rl), rows = _demo.warmup_then_rl(tr, sft_steps, measure)
    out: dict = {"seed": seed, "tokenizer": coverage, "success_after_sft": s_sft, "components_after_sft": c_sft,
                 "greedy_episodes_after_sft": g_sft, "success_after_rl": s_rl, "components_after_rl": c_rl,
                 "greedy_episodes_after_rl": g_rl}
    rl = [r for r in rows if r.get("phase") == "rl"]
    out["train_reward_per_step"] = [round(float(r.get("reward_mean", r.get("reward", float("nan")))), 3) for r in rl]
    # sampled (temperature rl.temperature) rollouts: the first RL step samples from the warm-up's policy
    out["sampled_tool_call_rate_per_step"] = [round(float(r.get("tool_call_rate", float("nan"))), 3) for r in rl]
    out["sampled_stop_length_per_step"] = [int(r.get("stop_length", 0)) for r in rl]
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--tasks", type=int, default=40)
    ap.add_argument("--flaw-rate", type=float, default=0.5)
    ap.add_argument("--rl", action="store_true", help="also run the short RL part")
    ap.add_argument("--sft-steps", type=int, default=150)
    ap.add_argument("--rl-steps", type=int, default=8)
    ap.add_argument("--eval-size", type=int, default=32)
    ap.add_argument("--set", action="append", default=[], help="extra config overrides (key=value)")
    ap.add_argument("--out", default="runs/pc_state_demo")
    args = ap.parse_args(argv)
    summary: dict = {"args": vars(args), "judges": [], "rl": []}
    print(f"{'seed':>4} {'judge':>10} {'P':>6} {'R':>6} {'F1':>6}  tp fp fn tn   generation")
    for seed in args.seeds:
        j = judges_part(seed, args.tasks, args.flaw_rate)
        summary["judges"].append(j)
        for name in ("transcript", "agent"):
            s = j["scores"][name]
            print(f"{seed:>4} {name:>10} {s['precision']:6.3f} {s['recall']:6.3f} {s['f1']:6.3f}  "
                  f"{s['tp']} {s['fp']} {s['fn']} {s['tn']}   {j['generation'] if name == 'agent' else ''}")
    for kind in summary["judges"][0]["per_kind"]:
        n = sum(j["per_kind"][kind]["n"] for j in summary["judges"])
        t = sum(j["per_kind"][kind]["transcript_right"] for j in summary["judges"])
        a = sum(j["per_kind"][kind]["agent_right"] for j in summary["judges"])
        print(f"  kind {kind:>10}: n={n:4d}  transcript right {t / n:.2f}  agent right {a / n:.2f}")
    if args.rl:
        for seed in args.seeds:
            r = rl_part(seed, args.sft_steps, args.rl_steps, args.eval_size, args.set, args.out)
            summary["rl"].append(r)
            print(json.dumps(r))
    _demo.write_json(args.out, summary)
    return summary


if __name__ == "__main__":
    main()
