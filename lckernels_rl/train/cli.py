"""``lckernels-rl train --config <name | path.yaml>`` and ``python -m lckernels_rl.train``.

Threads: both commands import :mod:`lckernels_rl` before torch, and that import sets ``OMP_WAIT_POLICY=PASSIVE``
unless the user chose a waiting behaviour (see :mod:`lckernels_rl._threads`; libgomp reads the variable once, when
``import torch`` loads it, so nothing in this module could still change it).  The trainer then picks its thread count
from the config's ``threads`` (0: capped at the cores this process may use).
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["main"]


def _train_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--config", default="default",
                   help="a YAML file, or the name of a config shipped in lckernels_rl/configs/ (default, qwen3, "
                        "qwen3_moe, agent_kv_lookup, trust_sql, ...; default: default)")
    p.add_argument("--resume", action="store_true", help="continue from <output_dir>/checkpoint.pt")
    p.add_argument("--output-dir", help="overrides log.output_dir")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one config field (YAML value), e.g. --set rl.steps=20; repeatable")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def summarize(rows: list[dict]) -> dict:
    """Initial / post-warm-up / final evaluation accuracy and the train reward of the first and last RL steps."""
    evals = [(r["step"], r["phase"], r["eval_accuracy"]) for r in rows if "eval_accuracy" in r]
    rl = [r["reward_mean"] for r in rows if r.get("phase") == "rl"]
    k = max(1, min(10, len(rl) // 4))
    out = {"eval_initial": evals[0][2] if evals else None,
           "eval_after_warmup": next((e[2] for e in reversed(evals) if e[1] == "sft"), None),
           "eval_final": evals[-1][2] if evals else None}
    if rl:
        out.update(rl_reward_first=sum(rl[:k]) / k, rl_reward_last=sum(rl[-k:]) / k, rl_reward_window=k)
    tps = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
    if tps:
        out["rl_tokens_per_s_median"] = sorted(tps)[len(tps) // 2]
    return out


def run_train(args) -> int:
    from .config import ConfigError, load_config
    from .trainer import train

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"log.output_dir={json.dumps(args.output_dir)}")
    if args.no_progress:
        overrides.append("log.progress=false")
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"lckernels-rl: bad config: {exc}", file=sys.stderr)
        return 2
    rows = train(cfg, resume=args.resume)
    s = summarize(rows)
    print(f"run: {cfg.log.output_dir}  (seed {cfg.seed}, {cfg.model.arch}, objective {cfg.rl.objective}, "
          f"allocator {cfg.rl.allocator})")
    for key, v in s.items():
        print(f"  {key}: {v:.4g}" if isinstance(v, float) else f"  {key}: {v}")
    print(f"  metrics: {cfg.log.output_dir}/metrics.jsonl  plots: {cfg.log.output_dir}/plots/")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="lckernels-rl", description="lckernels RL trainer")
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub.add_parser("train", help="train a policy from a YAML config"))
    args = parser.parse_args(argv)
    if args.command == "train":
        return run_train(args)
    return 2  # pragma: no cover


def main_train(argv=None) -> int:
    """``python -m lckernels_rl.train [--config ...]``: the ``train`` command without the sub-command word."""
    parser = _train_parser(argparse.ArgumentParser(prog="python -m lckernels_rl.train",
                                                   description="lckernels RL trainer"))
    return run_train(parser.parse_args(argv))
