"""TopoCurate's RL task selection vs tasks matched on pass rate (issue 14 §3; lckernels_rl/train/topocurate.py).

The claim to check (arXiv 2603.01714): among tasks of equal pass rate, those whose rollouts branch at shared states
into successes and failures (high error branch ratio) and win in several ways (strategic heterogeneity) give more
learning signal -- here: more groups with a non-zero GRPO advantage (mixed rewards) when they are sampled again.

Set-up: the bundled ``agent_kv_lookup`` config (``--keys`` per question: ``key ab``, or ``sum ab cd`` with 2), a short
supervised warm-up (``--sft-steps``, stopped early on purpose so the policy is right part of the time),
then per seed: ``--group`` probe episodes of each of ``--tasks`` training tasks -> topology scores; the top ``--k``
tasks by score, and for each a different task with the nearest probe pass rate; then ``--group`` FRESH episodes of
every selected and matched task: the share of groups with mixed rewards (non-zero advantage) and their mean reward
std.  The probe pass rates of the two sets are equal by construction, so a difference is the topology's.

    python examples/topocurate_demo.py --seeds 0 1 2
    python examples/topocurate_demo.py --config duca_sales --sft-steps 40 --seeds 0 1 2   # a branching dialogue

``--config`` picks another bundled environment config (``--keys`` applies to ``agent_kv_lookup`` only; ``--set``
adds overrides); success is ``reward >= --success-threshold``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lckernels_rl.agents import AgentLoop  # noqa: E402
from lckernels_rl.agents.loop import Episode  # noqa: E402
from lckernels_rl.rollout import make_backend  # noqa: E402
from lckernels_rl.rollout.engine import BackendEngine  # noqa: E402
from lckernels_rl.train import Trainer, load_config  # noqa: E402
from lckernels_rl.train.topocurate import match_on_pass_rate, select_tasks, topology_scores  # noqa: E402


def sampling_loop(tr: Trainer) -> AgentLoop:
    """The trainer's agent loop (its renderer, parser, budget) over an HF sampling engine of its model."""
    c = tr.config
    engine = BackendEngine(make_backend(c.rollout.backend, tr.model, tr.tokenizer, **c.rollout.args),
                           stop_token_ids=tr.renderer.stop_token_ids)
    return AgentLoop(engine, tr.renderer, tr.parser, tr.budget, temperature=c.rl.temperature,
                     tools_in_prompt=c.agent.tools_in_prompt)


def rollouts(tr: Trainer, loop: AgentLoop, tasks, group: int) -> dict:
    eps = [Episode(tr.make_env(), seed=tr.pool.seed(t)) for t in tasks for _ in range(group)]
    trajs = loop.run_batch(eps)
    for e in eps:
        e.env.close()
    out: dict = {t: [] for t in tasks}
    for e, tj in zip([t for t in tasks for _ in range(group)], trajs):
        out[e].append(tj)
    return out


def mixed_share(groups: dict) -> tuple[float, float, float]:
    rewards = [np.array([t.reward for t in ts]) for ts in groups.values()]
    return (float(np.mean([r.std() > 0 for r in rewards])), float(np.mean([r.std() for r in rewards])),
            float(np.mean([r.mean() for r in rewards])))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--sft-steps", type=int, default=100)
    p.add_argument("--keys", type=int, default=1, help="keys per question (1: key ab; 2: sum ab cd)")
    p.add_argument("--tasks", type=int, default=64)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--config", default="agent_kv_lookup")
    p.add_argument("--set", action="append", default=[], help="extra config overrides (key=value)")
    p.add_argument("--success-threshold", type=float, default=1.0)
    p.add_argument("--out", default="runs/topocurate_demo.json")
    a = p.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as d:
        keys = [f"task.env_args.keys_per_task={a.keys}"] if a.config == "agent_kv_lookup" else []
        cfg = load_config(a.config, [f"sft.steps={a.sft_steps}", "rl.steps=0", "log.eval_every=0",
                                     "log.checkpoint_every=0", "log.plots=false", "log.progress=false",
                                     f"log.output_dir={d}/run", "task.train_size=256", "task.eval_size=0"]
                          + keys + a.set)
        t0 = time.time()
        tr = Trainer(cfg)
        tr.fit()  # the warm-up only
        print(f"warm-up: {a.sft_steps} steps in {time.time() - t0:.0f} s", flush=True)
        loop = sampling_loop(tr)
        for seed in a.seeds:
            torch.manual_seed(seed)
            rng = np.random.default_rng(seed)
            tasks = [int(t) for t in rng.choice(tr.pool.size, size=a.tasks, replace=False)]
            scores = topology_scores(rollouts(tr, loop, tasks, a.group), success_threshold=a.success_threshold)
            chosen = select_tasks(scores, a.k)
            matched = match_on_pass_rate(scores, chosen, rng)
            fresh = rollouts(tr, loop, chosen + matched, a.group)
            row = {"seed": seed,
                   "probe_pass_rate_selected": float(np.mean([scores[t]["pass_rate"] for t in chosen])),
                   "probe_pass_rate_matched": float(np.mean([scores[t]["pass_rate"] for t in matched])),
                   "probe_pass_rate_all": float(np.mean([s["pass_rate"] for s in scores.values()])),
                   "score_selected": float(np.mean([scores[t]["score"] for t in chosen])),
                   "score_matched": float(np.mean([scores[t]["score"] for t in matched]))}
            for name, ts in (("selected", chosen), ("matched", matched)):
                share, std, mean = mixed_share({t: fresh[t] for t in ts})
                row.update({f"mixed_groups_{name}": share, f"reward_std_{name}": std, f"reward_{name}": mean})
            results.append(row)
            print(json.dumps(row), flush=True)
        tr.close()
    keys = ["mixed_groups_selected", "mixed_groups_matched", "reward_std_selected", "reward_std_matched"]
    summary = {k: float(np.mean([r[k] for r in results])) for k in keys}
    print("mean over seeds:", json.dumps(summary))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"args": vars(a), "runs": results, "mean": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
