"""Tool domains (issue 13 §1-2): (a) success on held-out DOMAINS as the number of training domains grows 1 -> 2 -> 4;
(b) noise: training with noise vs training clean (same budget), evaluated clean and noisy.

Each run: a bundled config (``--config``; default ``tool_domains_easy``, the demo preset: two-tool seed chains, still
>= 20 tools per environment; tiny LongCat-Flash policy, char tokenizer, compact tool calls), a supervised warm-up on
the scripted agent's demonstrations, then GRPO; greedy evaluation.

(a) training domains ``delivery`` / ``+travel`` / ``+clinic +store``, noise off; evaluated on the held-out domains
    ``library`` and ``garage`` (never seen: other table, tool and field names) and in-domain (unseen tasks).
(b) four training domains; ``clean``: no noise; ``noisy``: ``fraction`` of each group's rollouts (and of the
    warm-up's demonstrations) noisy at ``level``; both evaluated in-domain clean and fully noisy.

    python examples/tool_domains_demo.py --seeds 0 --sft-steps 150 --rl-steps 6 --eval-size 16 \
        --out runs/tool_domains_demo_easy
"""

from __future__ import annotations

import json
import time
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _demo  # noqa: E402

DOMAINS = ["delivery", "travel", "clinic", "store"]


def _train(config: str, overrides: list[str], evals: dict[str, dict]) -> dict:
    """Train with ``overrides``; returns {name: greedy success} for each eval_env_args in ``evals`` (after the
    warm-up and after RL) and the seconds taken."""
    t0 = time.perf_counter()

    def measure(tr) -> dict:
        res = {}
        for name, args in evals.items():
            tr.config.task.eval_env_args = args
            res[name] = round(float(tr.evaluate()), 4)
        return res

    with _demo.trainer(config, overrides) as tr:
        after_sft, after_rl, _ = _demo.warmup_then_rl(tr, tr.config.sft.steps, measure)
    out: dict = {**{f"{n}_after_sft": v for n, v in after_sft.items()},
                 **{f"{n}_after_rl": v for n, v in after_rl.items()}}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main(argv=None) -> dict:
    ap = _demo.parser(__doc__.split("\n\n")[0], sft_steps=150, rl_steps=6)
    ap.add_argument("--config", default="tool_domains_easy",
                    help="bundled config (tool_domains_easy: the demo preset; tool_domains: the full tasks)")
    ap.add_argument("--eval-size", type=int, default=32)
    ap.add_argument("--level", type=float, default=0.5)
    ap.add_argument("--fraction", type=float, default=0.5)
    ap.add_argument("--parts", default="ab", help="a: domain scaling, b: noise")
    ap.add_argument("--noise-domains", nargs="+", default=DOMAINS, help="(b) training / evaluation domains")
    ap.add_argument("--modes", nargs="+", default=None, help="(b) arms to train (default: clean noisy)")
    ap.add_argument("--domain-counts", type=int, nargs="+", default=[1, 2, 4], help="(a) training domain counts")
    ap.add_argument("--out", default="runs/tool_domains_demo")
    ap.add_argument("--set", action="append", default=[], help="extra config overrides (key=value)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    summary: dict = {"args": vars(args), "domain_scaling": [], "noise": []}
    noisy_eval = {"level": args.level, "fraction": 1.0, "max_per_episode": 1}  # every eval episode noisy
    for seed in args.seeds:
        base = _demo.overrides(seed, args.sft_steps, args.rl_steps, args.eval_size, 0) + args.set
        noisy = {"domains": DOMAINS, "noise": noisy_eval}
        if "a" in args.parts:  # (a) 1 -> 2 -> 4 clean training domains; the 4-domain run is (b)'s clean arm
            for k in args.domain_counts:
                evals = {"heldout": {"domains": "heldout", "noise": None},
                         "in_domain": {"domains": DOMAINS[:k], "noise": None}}
                if k == 4:  # the 4-domain run is also the noise demo's clean arm: evaluate it under noise too
                    evals["eval_noisy"] = noisy
                res = _train(args.config, base + [f"task.env_args.domains={DOMAINS[:k]}", "task.env_args.noise=null",
                                     f"log.output_dir={out / f'domains{k}_seed{seed}'}"], evals)
                res.update(seed=seed, train_domains=k)
                summary["domain_scaling"].append(res)
                print(json.dumps(res), flush=True)
                if k == 4 and "b" in args.parts:
                    summary["noise"].append({
                        "seed": seed, "train": "clean", "eval_clean_after_sft": res["in_domain_after_sft"],
                        "eval_clean_after_rl": res["in_domain_after_rl"],
                        "eval_noisy_after_sft": res["eval_noisy_after_sft"],
                        "eval_noisy_after_rl": res["eval_noisy_after_rl"]})
        if "b" in args.parts:
            modes = args.modes or (("noisy",) if "a" in args.parts and 4 in args.domain_counts else ("clean", "noisy"))
            for mode in modes:
                noise = "null" if mode == "clean" else (f"{{level: {args.level}, fraction: {args.fraction}, "
                                                        f"max_per_episode: 1}}")
                nd = list(args.noise_domains)
                res = _train(args.config, base + [f"task.env_args.domains={nd}", f"task.env_args.noise={noise}",
                                     f"log.output_dir={out / f'{mode}_seed{seed}'}"],
                             {"eval_clean": {"domains": nd, "noise": None},
                              "eval_noisy": {"domains": nd, "noise": noisy_eval}})
                res.update(seed=seed, train=mode)
                summary["noise"].append(res)
                print(json.dumps(res), flush=True)
    _demo.write_json(out, summary)
    return summary


if __name__ == "__main__":
    main()
