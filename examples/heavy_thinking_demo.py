"""Heavy Thinking's trained summary vs majority vote as K grows (LongCat-Flash-Thinking-2601, arXiv 2601.16725 §4).

The summary policy (tiny LongCat-Flash MoE) reads an arithmetic question and K candidate answers from the
``heavy_thinking`` environment's synthetic first stage (right with p=0.35, a per-problem systematic wrong answer with
p=0.4, else a random near miss) and writes the final answer.  It is trained on tasks with K drawn from {2, 4, 8}
(supervised warm-up on the right answers, then GRPO), and evaluated greedily per K on the same held-out candidate
sets as majority vote and pass@K (oracle).  Printed: accuracy of the summary after the warm-up and after RL, majority
vote, oracle, per K.

Where the K samples come from: here the environment's seeded first stage (the trainer builds tasks from seeds).
With a policy-produced first stage the same environment takes ``task={"prompt", "answer", "candidates"}``; the
two-stage source that samples the candidates from the policy inside a training step is described in
docs/reward_hacking.md (it needs a trainer hook this example does not add).

Usage::

    python examples/heavy_thinking_demo.py --seeds 0 --sft-steps 200 --rl-steps 40 --out runs/heavy_thinking_demo
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _demo  # noqa: E402

from lckernels_rl.agents.loop import Episode  # noqa: E402
from lckernels_rl.envs.heavy_thinking import HeavyThinkingEnv  # noqa: E402
from lckernels_rl.rollout import HFGenerateBackend  # noqa: E402
from lckernels_rl.rollout.engine import BackendEngine  # noqa: E402
from lckernels_rl.train import TrainConfig, Trainer  # noqa: E402

KS = (2, 4, 8)


def env_args(args) -> dict:
    return {"base": "arithmetic", "base_args": {"ops": "+", "max_value": args.max_value}, "k": list(KS),
            "p_correct": args.p_correct, "p_attractor": args.p_attractor}


def config(seed: int, args, out: Path) -> TrainConfig:
    return TrainConfig.from_dict({
        "seed": seed, "threads": 1, "model": {"arch": "longcat_flash"},
        "task": {"env": "heavy_thinking", "env_args": env_args(args), "train_size": 2048, "eval_size": 0},
        "agent": {"renderer": "plain", "parser": "none", "max_turns": 1, "max_context_tokens": 96,
                  "tools_in_prompt": False},
        "sft": {"steps": args.sft_steps, "batch_size": 64, "lr": args.sft_lr},
        "rl": {"steps": args.rl_steps, "prompts_per_step": args.prompts, "rollouts_per_step": args.prompts * args.group,
               "max_new_tokens": 4, "temperature": 1.0, "lr": args.lr, "objective": "grpo", "advantage": "grpo"},
        "log": {"output_dir": str(out / f"seed{seed}"), "checkpoint_every": 0, "eval_every": 0, "progress": False,
                "plots": False}})


@torch.no_grad()
def eval_per_k(tr: Trainer, args) -> dict:
    """Greedy summary accuracy, majority vote and pass@K on ``args.eval_size`` held-out tasks per K."""
    backend = HFGenerateBackend(tr.model, eos_token_id=tr.eos_id, pad_token_id=tr.pad_id, greedy=True)
    engine = BackendEngine(backend, stop_token_ids=tr.renderer.stop_token_ids)
    out = {}
    for k in KS:
        eps = [Episode(HeavyThinkingEnv(**{**env_args(args), "k": k}), None, 10**6 + i) for i in range(args.eval_size)]
        trajs = tr._loop(engine).run_batch(eps)
        out[k] = {name: float(np.mean([t.components.get(name, 0.0) for t in trajs]))
                  for name in ("correct", "majority_correct", "oracle", "in_candidates")}
    return out


def main() -> None:
    ap = _demo.parser(__doc__.split("\n")[0], sft_steps=200, rl_steps=40)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--sft-lr", type=float, default=2e-3)
    ap.add_argument("--max-value", type=int, default=29)
    ap.add_argument("--p-correct", type=float, default=0.35)
    ap.add_argument("--p-attractor", type=float, default=0.4)
    ap.add_argument("--eval-size", type=int, default=128)
    ap.add_argument("--out", default="runs/heavy_thinking_demo")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in args.seeds:
        with _demo.trainer(config(seed, args, out)) as tr:
            warm, final, _ = _demo.warmup_then_rl(tr, args.sft_steps, lambda t: eval_per_k(t, args))
        results.append({"seed": seed, "after_warmup": warm, "after_rl": final})
        for k in KS:
            print(f"seed {seed} K={k}: summary {warm[k]['correct']:.3f} (warm-up) -> {final[k]['correct']:.3f} (RL); "
                  f"majority vote {final[k]['majority_correct']:.3f}; pass@K {final[k]['oracle']:.3f}; summary "
                  f"copied a candidate {final[k]['in_candidates']:.2f}", flush=True)
    print(f"wrote {_demo.write_json(out, {'args': vars(args), 'results': results}, 'results.json', indent=1)}")


if __name__ == "__main__":
    main()
