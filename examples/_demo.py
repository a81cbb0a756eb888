"""Shared plumbing of the demonstration scripts in examples/ (not a demonstration itself).

Each script imports it after putting the examples folder on ``sys.path``::

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _demo

Only steps that are the same across scripts live here: the quiet logging overrides, building a bundled config and
running it through a :class:`~lckernels_rl.train.Trainer` that is always closed, picking the evaluation rows after
the warm-up and at the end, the first / last RL training reward, and writing the JSON summary.  ``lckernels_rl.train``
is imported only when a trainer is built (a script's non-training parts stay light).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

QUIET = ["log.progress=false", "log.plots=false", "log.checkpoint_every=0"]
"""Overrides every demo run uses: no progress bar, no plots, no checkpoints."""


def overrides(seed: int, sft_steps: int, rl_steps: int, eval_size: int, eval_every: int,
              output_dir=None) -> list[str]:
    """The common ``key=value`` overrides of one run: seed, budgets, evaluation size and cadence, quiet logging and
    (when given) the output folder.  The caller appends its arm's overrides and ``--set`` items."""
    ov = [f"seed={seed}", f"sft.steps={sft_steps}", f"rl.steps={rl_steps}", f"task.eval_size={eval_size}",
          f"log.eval_every={eval_every}", *QUIET]
    return ov + ([f"log.output_dir={output_dir}"] if output_dir is not None else [])


def fit(config: str, over: list[str], trainer_cls=None) -> list[dict]:
    """Train the bundled ``config`` with ``over`` (warm-up then RL) with ``trainer_cls`` (default
    :class:`~lckernels_rl.train.Trainer`); returns the trainer's metric rows.  The trainer is closed whatever
    happens."""
    with trainer(config, over, trainer_cls) as tr:
        return tr.fit()


def eval_rows(rows: list[dict], sft_steps: int) -> tuple[dict, dict]:
    """(the evaluation row at the end of the warm-up -- the first evaluation if there is none at that step --, the
    last evaluation row)."""
    evals = [r for r in rows if "eval_accuracy" in r]
    warm = next((r for r in evals if r["step"] == sft_steps), evals[0])
    return warm, evals[-1]


def train_reward(rows: list[dict]) -> dict:
    """``train_reward_first`` / ``train_reward_last``: the mean training reward of the first and last RL steps
    (None without RL steps)."""
    rl = [r for r in rows if r.get("phase") == "rl"]
    return {"train_reward_first": rl[0].get("reward_mean") if rl else None,
            "train_reward_last": rl[-1].get("reward_mean") if rl else None}


def write_json(out, data: dict, name: str = "summary.json", indent: int = 2) -> Path:
    """Write ``data`` as ``out/name`` (creating ``out``); returns the path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    path.write_text(json.dumps(data, indent=indent))
    return path


def trainer(config, over: list[str] | None = None, trainer_cls=None):
    """A context manager around ``trainer_cls`` (default :class:`~lckernels_rl.train.Trainer`) built from ``config``
    (a bundled name, with ``over``, or a :class:`~lckernels_rl.train.TrainConfig`) that closes the trainer on exit."""
    from lckernels_rl.train import Trainer, load_config

    cfg = load_config(config, over or []) if isinstance(config, str) else config
    return contextlib.closing((trainer_cls or Trainer)(cfg))


def warmup_then_rl(tr, sft_steps: int, measure) -> tuple:
    """Run the warm-up (``sft_steps``), ``measure(tr)``, the rest of the run (RL), ``measure(tr)`` again; returns
    (measure after the warm-up, measure after RL, the metric rows of the RL part)."""
    tr.fit(max_steps=sft_steps)
    after_sft = measure(tr)
    rows = tr.fit()
    return after_sft, measure(tr), rows


def before_after(rows: list[dict], sft_steps: int, keys) -> dict:
    """``after_warmup`` / ``after_rl``: ``keys`` of the evaluation rows picked by :func:`eval_rows` (None where a key
    is missing), then :func:`train_reward`."""
    warm, final = eval_rows(rows, sft_steps)
    return {"after_warmup": {k: warm.get(k) for k in keys}, "after_rl": {k: final.get(k) for k in keys},
            **train_reward(rows)}


def sweep(args, arms, label, run_one) -> dict:
    """For each seed of ``args.seeds`` and each arm of ``arms``: ``run_one(seed, arm)`` -> a result dict, printed as a
    JSON line as ``{"seed", label: arm, **result, "seconds"}`` (no ``label`` key when ``label`` is None).  Writes
    ``{"args": vars(args), "runs": [...]}`` to ``args.out``/summary.json and returns it."""
    summary = {"args": vars(args), "runs": []}
    for seed in args.seeds:
        for arm in arms:
            t0 = time.perf_counter()
            res = {"seed": seed, **({label: arm} if label else {}), **run_one(seed, arm)}
            res["seconds"] = round(time.perf_counter() - t0, 1)
            summary["runs"].append(res)
            print(json.dumps(res), flush=True)
    write_json(args.out, summary)
    return summary


def parser(description: str, sft_steps: int, rl_steps: int) -> argparse.ArgumentParser:
    """An argument parser with the options every demo starts with: ``--seeds`` (default [0]), ``--sft-steps``,
    ``--rl-steps`` (with the script's defaults); the script adds its own after them."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--sft-steps", type=int, default=sft_steps)
    ap.add_argument("--rl-steps", type=int, default=rl_steps)
    return ap
