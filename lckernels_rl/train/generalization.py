"""The generalization harness: train on a mixture of environments or over a sequence of stages, evaluate *every*
environment after each stage, and write the transfer / forgetting matrix.

Paper: Xi, Guo, Liu et al. 2026, *Can RL Improve Generalization of LLM Agents? An Empirical Study* (arXiv
2603.12011).  VERIFIED (abstract): three axes -- within-environment generalization across task difficulty,
cross-environment transfer to unseen environments, and sequential multi-environment training measured by transfer
and forgetting -- plus mixture training across environments.  INFERRED (the paper's code was not read): the exact
protocol.  Ours: every stage is one run of the trainer on a :class:`~lckernels_rl.envs.mixture.MixtureEnv` of the
*same* spec list with the stage's weights (a single environment is weight 1 on it, 0 elsewhere), a supervised
warm-up on its demonstrations then RL, warm-started from the previous stage (``model.init_from``); after each stage
every environment is evaluated greedily on its own held-out seeds (``Trainer.evaluate`` with
``task.eval_env_args: {only: <label>}``: the seeds from 10**6 on that a single-environment run evaluates on).

Outputs in ``out_dir``:

* ``transfer.csv`` -- rows = stages (``init``: the untrained policy, when ``eval_init``), columns = environments,
  values = mean greedy success over the seeds; ``transfer_runs.csv``: one row per (seed, stage, env);
* ``transfer.png`` -- the matrix as a heat map (matplotlib, Agg);
* ``summary.json`` -- the matrix, the per-seed matrices and the forgetting summary (:func:`forgetting`): per
  environment, after every stage, the drop from its best score at an *earlier* stage (``init`` excluded: one cannot
  forget what was never learnt); ``final_drop`` / ``max_drop`` per environment and their mean.

CLI::

    python -m lckernels_rl.train.generalization --config generalization [--seeds 0 1] [--out DIR] [--set k=v ...]

The YAML (bundled ``lckernels_rl/configs/generalization.yaml``): ``envs`` (MixtureEnv specs, each with a unique
``name``), ``stages`` (``{name, weights: {label: w}, sft_steps, rl_steps}``; labels left out weigh 0), ``seeds``,
``eval_size``, ``eval_init``, ``output_dir`` and ``train`` (a trainer config; its ``task.env`` / ``env_args`` /
``eval_env_args``, ``sft.steps``, ``rl.steps``, ``log.output_dir`` and ``model.init_from`` are set per stage).
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

__all__ = ["Stage", "GeneralizationResult", "run_generalization", "forgetting", "write_matrix_csv", "read_matrix_csv",
           "plot_transfer", "sequential_stages", "mixture_stage", "load_generalization_config", "main"]

INIT = "init"


@dataclass
class Stage:
    """One stage: the mixture weights (``{label: weight}``; labels left out weigh 0) and its budget."""

    name: str
    weights: dict
    sft_steps: int = 0
    rl_steps: int = 0

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name or self.name == INIT:
            raise ValueError(f"Stage: `name` must be a non-empty str other than {INIT!r}; got {self.name!r}")
        if not isinstance(self.weights, dict) or not self.weights:
            raise ValueError(f"Stage {self.name!r}: `weights` must be a non-empty dict {{label: weight}}; got "
                             f"{self.weights!r}")
        for lab, w in self.weights.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                raise ValueError(f"Stage {self.name!r}: weights.{lab} must be a finite number >= 0; got {w!r}")
        if not any(w > 0 for w in self.weights.values()):
            raise ValueError(f"Stage {self.name!r}: `weights`: at least one weight must be > 0")
        for n in ("sft_steps", "rl_steps"):
            v = getattr(self, n)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"Stage {self.name!r}: `{n}` must be an int >= 0; got {v!r}")

    @classmethod
    def from_dict(cls, d: Any, where: str = "stage") -> "Stage":
        if isinstance(d, Stage):
            return d
        if not isinstance(d, dict):
            raise ValueError(f"{where} must be a mapping {{name, weights, sft_steps, rl_steps}}; got {d!r}")
        extra = sorted(set(d) - {"name", "weights", "sft_steps", "rl_steps"})
        if extra:
            raise ValueError(f"{where}: unknown field(s) {extra}; valid: name, weights, sft_steps, rl_steps")
        try:
            return cls(**d)
        except TypeError as exc:
            raise ValueError(f"{where}: {exc}") from None


def sequential_stages(labels: Sequence[str], sft_steps: int, rl_steps: int) -> list[Stage]:
    """One stage per label (weight 1 on it), in order."""
    return [Stage(lab, {lab: 1.0}, sft_steps, rl_steps) for lab in labels]


def mixture_stage(labels: Sequence[str], sft_steps: int, rl_steps: int, name: str = "mixture",
                  weights: Optional[Sequence[float]] = None) -> Stage:
    """One stage on every label at once (equal weights unless given)."""
    w = [1.0] * len(labels) if weights is None else [float(x) for x in weights]
    return Stage(name, dict(zip(labels, w)), sft_steps, rl_steps)


# ---------------------------------------------------------------------------------------------- the matrix
def forgetting(matrix: Sequence[Sequence[float]], stages: Sequence[str], envs: Sequence[str]) -> dict:
    """The forgetting summary of a stage x env success matrix.

    ``drop[k][e] = max(matrix[j][e] for trained stages j < k) - matrix[k][e]`` for every trained stage ``k`` after the
    first (positive: the environment lost that much since its best earlier stage; negative: it still improved; rows
    named ``init`` are not "earlier scores": an untrained policy has nothing to forget).  Per environment:
    ``final_drop`` (the last stage's drop), ``max_drop`` (the largest) and ``best_earlier`` (the best score before the
    last stage); ``mean_final_drop`` / ``mean_forgetting`` (mean of ``max(final_drop, 0)``) over environments.
    NaN scores are skipped.
    """
    rows = [list(map(float, r)) for r in matrix]
    if len(rows) != len(stages) or any(len(r) != len(envs) for r in rows):
        raise ValueError(f"forgetting: `matrix` must be {len(stages)} rows x {len(envs)} columns")
    trained = [k for k, s in enumerate(stages) if s != INIT]
    drops: dict[str, dict[str, float]] = {}
    per_env: dict[str, dict] = {}
    for e, env in enumerate(envs):
        d_env: dict[str, float] = {}
        for pos, k in enumerate(trained[1:], start=1):
            earlier = [rows[j][e] for j in trained[:pos] if not math.isnan(rows[j][e])]
            if earlier and not math.isnan(rows[k][e]):
                d_env[stages[k]] = max(earlier) - rows[k][e]
        drops[env] = d_env
        last = stages[trained[-1]] if trained else None
        before = [rows[j][e] for j in trained[:-1] if not math.isnan(rows[j][e])]
        per_env[env] = {"final_drop": d_env.get(last, math.nan) if last is not None else math.nan,
                        "max_drop": max(d_env.values()) if d_env else math.nan,
                        "best_earlier": max(before) if before else math.nan}
    finals = [v["final_drop"] for v in per_env.values() if not math.isnan(v["final_drop"])]
    return {"drops": drops, "per_env": per_env,
            "mean_final_drop": sum(finals) / len(finals) if finals else math.nan,
            "mean_forgetting": sum(max(f, 0.0) for f in finals) / len(finals) if finals else math.nan}


def write_matrix_csv(path, stages: Sequence[str], envs: Sequence[str], matrix) -> Path:
    """``stage,<env>,...`` then one row per stage (values with 4 decimals; NaN as ``nan``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["stage", *envs])
        for s, row in zip(stages, matrix):
            w.writerow([s, *(f"{float(v):.4f}" for v in row)])
    return path


def read_matrix_csv(path) -> tuple[list[str], list[str], list[list[float]]]:
    """(stages, envs, matrix) of a :func:`write_matrix_csv` file."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    envs = rows[0][1:]
    return [r[0] for r in rows[1:]], envs, [[float(v) for v in r[1:]] for r in rows[1:]]


def plot_transfer(path, stages: Sequence[str], envs: Sequence[str], matrix, title: str = "greedy success") -> Path:
    """The stage x env matrix as an annotated heat map (PNG, matplotlib's Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    m = np.asarray(matrix, dtype=float)
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(envs), 1.0 + 0.55 * len(stages)))
    im = ax.imshow(m, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(envs)), labels=list(envs), rotation=30, ha="right")
    ax.set_yticks(range(len(stages)), labels=list(stages))
    ax.set_xlabel("evaluated environment")
    ax.set_ylabel("after stage")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, "nan" if math.isnan(m[i, j]) else f"{m[i, j]:.2f}", ha="center", va="center",
                    color="white" if not m[i, j] > 0.6 else "black", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.05)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- training
@dataclass
class GeneralizationResult:
    stages: list[str]
    envs: list[str]
    matrix: list[list[float]]  # mean over seeds
    per_seed: dict = field(default_factory=dict)  # seed -> matrix
    forgetting: dict = field(default_factory=dict)
    out_dir: Optional[Path] = None
    seconds: float = 0.0


def _stage_config(base: dict, specs: list, stage: Stage, seed: int, out: Path, init_from: Optional[Path],
                  eval_size: int, first_label: str):
    from .config import ModelConfig, TrainConfig

    d = copy.deepcopy(base)
    d["seed"] = int(seed)
    labels = [s["name"] for s in specs]
    unknown = sorted(set(stage.weights) - set(labels))
    if unknown:
        raise ValueError(f"Stage {stage.name!r}: weights for unknown env label(s) {unknown}; labels: {labels}")
    weights = {lab: float(stage.weights.get(lab, 0.0)) for lab in labels}
    task = dict(d.get("task") or {})
    task.update(env="mixture", env_args={"envs": specs, "weights": weights}, eval_env_args={"only": first_label},
                eval_size=int(eval_size))
    d["task"] = task
    d.setdefault("sft", {})["steps"] = stage.sft_steps
    d.setdefault("rl", {})["steps"] = stage.rl_steps
    log = d.setdefault("log", {})
    log.update(output_dir=str(out), eval_every=0, checkpoint_every=0)
    log.setdefault("progress", False)
    model = d.setdefault("model", {})
    if init_from is not None and "init_from" in {f.name for f in dataclasses.fields(ModelConfig)}:
        model["init_from"] = str(init_from)
    return TrainConfig.from_dict(d)


def _evaluate_env(trainer, label: str, metric: str = "reward") -> float:
    """Greedy success of the trained policy on ``label``'s held-out seeds: the mean reward, or the mean of the
    verdict component ``metric`` (e.g. ``success`` for an env whose reward also pays process rewards; NaN when
    no episode reported it)."""
    setter = getattr(trainer, "set_env_args", None)
    if callable(setter):
        setter(eval=True, only=label)
    else:  # make_eval_env reads the config on every call
        trainer.config.task.eval_env_args = {"only": label}
    reward = float(trainer.evaluate())
    return reward if metric == "reward" else float(trainer.eval_components.get(metric, math.nan))


def _warm_start(trainer, prev_dir: Path, prev_vocab: Optional[dict]) -> str:
    """Make sure ``trainer.model`` starts from ``prev_dir``'s checkpoint: ``model.init_from`` when the trainer
    honours it, else the weights are loaded here (the tokenizer must then be the same -- it is for the character
    tokenizer, whose alphabet is the mixture's union over all specs)."""
    import torch

    state = torch.load(prev_dir / "checkpoint.pt", weights_only=False)["model"]
    cur = trainer.model.state_dict()
    if all(k in cur and cur[k].shape == v.shape and torch.equal(cur[k], v) for k, v in state.items()):
        return "init_from"
    if prev_vocab is not None and trainer.tokenizer.get_vocab() != prev_vocab:
        raise RuntimeError(f"warm start from {prev_dir}: the tokenizer differs from the previous stage's and the "
                           "trainer did not apply model.init_from; use model.tokenizer=char (the mixture's union "
                           "alphabet) or a trainer with model.init_from")
    trainer.model.load_state_dict(state)
    return "loaded_by_harness"


def _run_seed(specs, stages: list[Stage], base: dict, out: Path, seed: int, eval_size: int, eval_init: bool,
              log: Callable[[str], None], metrics: dict) -> tuple[list[str], list[list[float]], list[dict]]:
    from .trainer import Trainer

    labels = [s["name"] for s in specs]
    names: list[str] = []
    matrix: list[list[float]] = []
    info: list[dict] = []
    prev: Optional[Path] = None
    prev_vocab: Optional[dict] = None
    for k, stage in enumerate(stages):
        sdir = out / f"seed{seed}" / f"{k:02d}_{stage.name}"
        cfg = _stage_config(base, specs, stage, seed, sdir, prev, eval_size, labels[0])
        t0 = time.perf_counter()
        tr = Trainer(cfg)
        try:
            how = "scratch" if prev is None else _warm_start(tr, prev, prev_vocab)
            if k == 0 and eval_init:
                names.append(INIT)
                matrix.append([_evaluate_env(tr, lab, metrics.get(lab, 'reward')) for lab in labels])
                log(json.dumps({"seed": seed, "stage": INIT, **dict(zip(labels, matrix[-1]))}))
            rows = tr.fit()
            if not (sdir / "checkpoint.pt").is_file():  # a stage of 0 steps: keep its (warm-started) weights
                tr.save_checkpoint()
            scores = [_evaluate_env(tr, lab, metrics.get(lab, 'reward')) for lab in labels]
            prev_vocab = tr.tokenizer.get_vocab()
        finally:
            tr.close()
        rl = [r for r in rows if r.get("phase") == "rl"]
        names.append(stage.name)
        matrix.append(scores)
        info.append({"stage": stage.name, "dir": str(sdir), "warm_start": how, "seconds": time.perf_counter() - t0,
                     "train_reward_first": rl[0].get("reward_mean") if rl else None,
                     "train_reward_last": rl[-1].get("reward_mean") if rl else None})
        log(json.dumps({"seed": seed, "stage": stage.name, **dict(zip(labels, scores)),
                        "warm_start": how, "seconds": round(info[-1]["seconds"], 1)}))
        prev = sdir
    return names, matrix, info


def run_generalization(envs: Sequence[dict], stages: Sequence, base_config: dict, out_dir, seeds: Sequence[int] = (0,),
                       *, eval_size: int = 32, eval_init: bool = True, title: str = "",
                       log: Callable[[str], None] = print) -> GeneralizationResult:
    """Train ``stages`` in order (each warm-started from the previous) for every seed and evaluate every env after
    each; writes ``transfer.csv``, ``transfer_runs.csv``, ``transfer.png`` and ``summary.json`` to ``out_dir``.

    Args:
        envs: :class:`~lckernels_rl.envs.mixture.MixtureEnv` specs (``{env, args, name}``; the weights come from the
            stages) plus an optional ``metric`` each: what "success" is (``reward``, the default, or a verdict
            component such as ``success``).  Every stage trains on this same list, so the char tokenizer is the same in every stage.
        stages: :class:`Stage` s (or their dicts).  A mixture run is one stage with several weights > 0.
        base_config: a trainer config dict (model, agent, sft / rl hyper-parameters, ...).
        out_dir: where the stage runs and the outputs go.
        seeds: training seeds (the matrix is their mean).
        eval_size: held-out tasks per environment.
        eval_init: also evaluate the untrained policy (row ``init``).
    """
    from lckernels_rl.envs.mixture import _normalise

    t0 = time.perf_counter()
    if not isinstance(envs, (list, tuple)) or not envs:
        raise ValueError(f"run_generalization: `envs` must be a non-empty list of env specs; got {envs!r}")
    metric_of, raw = [], []
    for i, e in enumerate(envs):
        e = {"env": e} if isinstance(e, str) else dict(e) if isinstance(e, dict) else e
        m = e.pop("metric", "reward") if isinstance(e, dict) else "reward"
        if not isinstance(m, str) or not m:
            raise ValueError(f"run_generalization: envs[{i}].metric must be 'reward' or a verdict component name; "
                             f"got {m!r}")
        metric_of.append(m)
        raw.append(e)
    specs = [{k: v for k, v in s.items() if k != "weight"} for s in _normalise(raw)]
    labels = [s["name"] for s in specs]
    metrics = dict(zip(labels, metric_of))
    stages = [Stage.from_dict(s, f"stages[{i}]") for i, s in enumerate(stages)]
    if not stages:
        raise ValueError("run_generalization: `stages` must list at least one stage")
    if len({s.name for s in stages}) != len(stages):
        raise ValueError(f"run_generalization: stage names must be unique; got {[s.name for s in stages]}")
    for i, s in enumerate(stages):
        bad = sorted(set(s.weights) - set(labels))
        if bad:
            raise ValueError(f"run_generalization: stages[{i}].weights: unknown env label(s) {bad}; labels: {labels}")
    if not isinstance(base_config, dict):
        raise TypeError(f"run_generalization: `base_config` must be a trainer config dict; got "
                        f"{type(base_config).__name__}")
    if isinstance(eval_size, bool) or not isinstance(eval_size, int) or eval_size < 1:
        raise ValueError(f"run_generalization: `eval_size` must be an int >= 1; got {eval_size!r}")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("run_generalization: `seeds` must list at least one seed")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    per_seed, runs, names = {}, [], None
    for seed in seeds:
        names, m, info = _run_seed(specs, stages, base_config, out, seed, eval_size, eval_init, log, metrics)
        per_seed[seed] = m
        runs.append({"seed": seed, "stages": info})
    import numpy as np

    mean = np.mean(np.asarray([per_seed[s] for s in seeds], dtype=float), axis=0).tolist()
    res = GeneralizationResult(stages=list(names), envs=labels, matrix=mean, per_seed=per_seed,
                               forgetting=forgetting(mean, names, labels), out_dir=out,
                               seconds=time.perf_counter() - t0)
    write_outputs(res, runs=runs, title=title)
    return res


def write_outputs(res: GeneralizationResult, runs: Optional[list] = None, title: str = "") -> None:
    """``transfer.csv`` / ``transfer_runs.csv`` / ``transfer.png`` / ``summary.json`` of ``res`` in ``res.out_dir``."""
    out = Path(res.out_dir)
    write_matrix_csv(out / "transfer.csv", res.stages, res.envs, res.matrix)
    with open(out / "transfer_runs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["seed", "stage", "env", "success"])
        for seed, m in res.per_seed.items():
            for s, row in zip(res.stages, m):
                for e, v in zip(res.envs, row):
                    w.writerow([seed, s, e, f"{float(v):.4f}"])
    n = len(res.per_seed)
    plot_transfer(out / "transfer.png", res.stages, res.envs, res.matrix,
                  title=(title + " -- " if title else "") + f"greedy success, mean of {n} seed(s)")
    (out / "summary.json").write_text(json.dumps(
        {"stages": res.stages, "envs": res.envs, "matrix": res.matrix,
         "per_seed": {str(k): v for k, v in res.per_seed.items()}, "forgetting": res.forgetting,
         "runs": runs or [], "seconds": res.seconds}, indent=2, default=float))


# ---------------------------------------------------------------------------------------------- config + CLI
_TOP = ("envs", "stages", "seeds", "eval_size", "eval_init", "output_dir", "train", "title")


def load_generalization_config(path, overrides: Sequence[str] = ()) -> dict:
    """The harness YAML (a path or a bundled config name) with ``key=value`` overrides, checked."""
    import yaml

    from .config import apply_overrides, resolve_config_path

    p = resolve_config_path(str(path))
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{p}: the top level must be a mapping")
    data = apply_overrides(data, list(overrides))
    extra = sorted(set(data) - set(_TOP))
    if extra:
        raise ValueError(f"{p}: unknown field(s) {extra}; valid: {', '.join(_TOP)}")
    for key in ("envs", "stages"):
        if not isinstance(data.get(key), list) or not data[key]:
            raise ValueError(f"{p}: `{key}` must be a non-empty list")
    if not isinstance(data.get("train", {}), dict):
        raise ValueError(f"{p}: `train` must be a trainer config mapping")
    return data


def main(argv=None) -> GeneralizationResult:
    ap = argparse.ArgumentParser(description="Train stages (sequential or mixture) and write the transfer / "
                                             "forgetting matrix.")
    ap.add_argument("--config", default="generalization", help="harness YAML (path or bundled name)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--out", default=None, help="output folder (default: the config's output_dir)")
    ap.add_argument("--set", action="append", default=[], help="override key=value (e.g. train.rl.lr=0.001)")
    args = ap.parse_args(argv)
    data = load_generalization_config(args.config, args.set)
    res = run_generalization(data["envs"], data["stages"], data.get("train") or {},
                             args.out or data.get("output_dir", "runs/generalization"),
                             args.seeds or data.get("seeds", [0]), eval_size=int(data.get("eval_size", 32)),
                             eval_init=bool(data.get("eval_init", True)), title=str(data.get("title", "")))
    print(json.dumps({"stages": res.stages, "envs": res.envs, "matrix": res.matrix,
                      "forgetting": res.forgetting["per_env"], "out": str(res.out_dir)}, default=float))
    return res


if __name__ == "__main__":
    main()
