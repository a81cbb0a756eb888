"""Benchmark CLI: ``python -m benchmarks.run --op fused_logprobs [--N 256 1024] [--V 32000] [--no-memory] ...``.

Times every available provider of the op side by side in this process (same inputs, same thread count), measures
each provider's extra peak memory in its own subprocess, appends the rows to the results CSV, draws one PNG per
(op, mode, metric) and prints a table of medians with their ratios to the op's anchor (what users run today) and to
its physical limit.  :func:`run` and :func:`format_table` are the same thing as a library, for demo scripts.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Iterable

import torch

from .common import (CSV_COLUMNS, append_csv, device_label, git_commit, peak_memory_subprocess, plot_rows,
                     time_interleaved)

# op name -> module with the providers (see benchmarks/ops/__init__.py for the interface a module must provide).
OPS: dict[str, str] = {
    "fused_logprobs": "benchmarks.ops.logprobs",
    "fused_policy_loss": "benchmarks.ops.policy_loss",
    "moe_experts": "benchmarks.ops.moe",
    "grad_norms": "benchmarks.ops.grad_norms",
    "rl_step": "benchmarks.ops.rl_step",
    "generate": "benchmarks.ops.generate",
    "rollout_driver": "benchmarks.ops.rollout_driver",
}

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_CSV = BENCH_DIR / "results.csv"
DEFAULT_PLOT_DIR = BENCH_DIR / "out"


def load_op(op: str) -> ModuleType:
    """The provider module of ``op``; ``ValueError`` listing the registered ops if it is unknown."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; choose from: {', '.join(sorted(OPS))}")
    return importlib.import_module(OPS[op])


def _log(verbose: bool, msg: str) -> None:
    if verbose:
        print(msg, file=sys.stderr, flush=True)


def _select(kind: str, wanted: Iterable[str] | None, known: Iterable[str],
            usable: Iterable[str] | None = None) -> list[str]:
    """Validate a user's list against ``known`` (ValueError); drop the ones not ``usable`` here, with a note on
    stderr (when nothing was asked for, the unusable ones are dropped silently)."""
    known, usable = list(known), list(usable if usable is not None else known)
    if wanted is None:
        return usable
    wanted = list(wanted)
    bad = [w for w in wanted if w not in known]
    if bad:
        raise ValueError(f"unknown {kind} {', '.join(map(repr, bad))}; choose from: {', '.join(known)}")
    skipped = [w for w in wanted if w not in usable]
    if skipped:
        _log(True, f"note: skipping {kind} not available here: {', '.join(skipped)}")
    return [w for w in wanted if w in usable]


def run(op: str, *, modes: Iterable[str] | None = None, providers: Iterable[str] | None = None, repeats: int = 3,
        warmup: int = 1, memory: bool | Iterable[str] = True, memory_jobs: int = 2,
        out: str | Path | None = DEFAULT_CSV, plot_dir: str | Path | None = DEFAULT_PLOT_DIR,
        device: str | None = None, verbose: bool = False, **params) -> list[dict]:
    """Run the sweep of ``op`` and return its rows (dicts with the CSV columns, plus ``config``).

    Args:
        op: a key of :data:`OPS`.
        modes, providers: subsets of the op's modes / providers (default: all that can run on ``device``).
        repeats, warmup: timed and untimed calls per (x, mode, provider); the timed calls go round-robin over
            the providers (see :func:`benchmarks.common.time_interleaved`).
        memory: ``True`` measures every provider's peak memory (one subprocess each), ``False`` none, or an
            iterable of provider names to measure only those.  memory_jobs: memory subprocesses run at once.
        out: CSV to append to (``None``: don't write).  plot_dir: PNG folder (``None``: no plots).
        device: ``"cpu"`` / ``"cuda"``; default CUDA when available.
        **params: the op's sweep and fixed parameters, e.g. ``N=[256, 1024], V=32000, D=512, dtype="float32"``.
    """
    mod = load_op(op)
    unknown = sorted(set(params) - set(mod.DEFAULTS))
    if unknown:
        raise TypeError(f"{op}: unknown parameter(s) {', '.join(unknown)}; known: {', '.join(mod.DEFAULTS)}")
    params = {**mod.DEFAULTS, **params}
    xs = params.pop(mod.X_NAME)
    xs = [xs] if isinstance(xs, (int, float)) else list(xs)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    modes = _select("mode", modes, mod.MODES)
    usable = mod.available_providers(device)
    unavailable = getattr(mod, "unavailable", None)  # optional: providers that cannot run with these params
    if unavailable is not None:
        for prov in list(usable):
            why = unavailable(prov, params)
            if why:
                _log(True, f"note: {op}: leaving out {prov}: {why}")
                usable.remove(prov)
    providers = _select("provider", providers, mod.PROVIDERS, usable)
    if not providers or not modes or not xs:
        raise ValueError(f"{op}: nothing to run on {device} (providers={providers}, modes={modes}, "
                         f"{mod.X_NAME}={xs})")
    if memory is True:
        mem_providers = list(providers)
    elif not memory:
        mem_providers = []
    else:
        mem_providers = [p for p in _select("provider", memory, mod.PROVIDERS) if p in providers]

    base = {"op": op, "x_name": mod.X_NAME, "device": device_label(device), "commit": git_commit(),
            "config": mod.describe(params)}
    threads = torch.get_num_threads()
    rows: list[dict] = []
    for x in xs:
        inputs = mod.make_inputs(x, params, device)
        for mode in modes:
            fns = {prov: mod.make_fn(prov, mode, inputs) for prov in providers}
            timings = time_interleaved(fns, warmup=warmup, repeats=repeats, device=device)
            for prov, t in timings.items():
                rows.append({**base, "provider": prov, "mode": mode, "metric": "time", "unit": "ms", "x_value": x,
                             "median": t.median, "p20": t.p20, "p80": t.p80})
                _log(verbose, f"{op} {mode:8s} {mod.X_NAME}={x:<7} {prov:22s} {t.median:10.2f} ms")
                # optional: more metrics of the same timed calls (rl_step: tokens/s, rollout and update time)
                for extra in (mod.extra_metrics(fns[prov], t) if hasattr(mod, "extra_metrics") else ()):
                    rows.append({**base, "provider": prov, "mode": mode, "x_value": x, **extra})
                    _log(verbose, f"{op} {mode:8s} {mod.X_NAME}={x:<7} {prov:22s} {extra['median']:10.2f} "
                                  f"{extra['unit']} {extra['metric']}")
            del fns
        del inputs
        gc.collect()
        specs = [{"module": mod.__name__, "provider": prov, "mode": mode, "x": x, "params": params,
                  "device": device, "threads": threads} for mode in modes for prov in mem_providers]
        # Each subprocess measures only its own address space, so they may run side by side (none is timed).
        with ThreadPoolExecutor(max_workers=max(1, memory_jobs)) as pool:
            for spec, mib in zip(specs, pool.map(peak_memory_subprocess, specs)):
                rows.append({**base, "provider": spec["provider"], "mode": spec["mode"], "metric": "peak_mem",
                             "unit": "MiB", "x_value": x, "median": mib, "p20": mib, "p80": mib})
                _log(verbose, f"{op} {spec['mode']:8s} {mod.X_NAME}={x:<7} {spec['provider']:22s} {mib:10.1f} "
                              "MiB peak")
    if out is not None:
        append_csv(out, rows)
    if plot_dir is not None:
        plot_rows(rows, plot_dir, subtitle=base["config"])
    return rows


def _ratio(num: float | None, den: float | None) -> str:
    return f"{num / den:.2f}x" if num is not None and den else "-"


def format_table(rows: list[dict]) -> str:
    """Plain-text table: per (mode, x), each provider's median time, its ratios to the anchor and the limit, and
    its peak memory.  Ratios are provider time / reference time, so < 1 means faster than that reference."""
    out = []
    by_op: dict[tuple, list[dict]] = {}
    for r in rows:
        by_op.setdefault((r["op"], r.get("config", ""), r["device"], r["commit"]), []).append(r)
    for (op, config, device, commit), grp in by_op.items():
        mod = load_op(op)
        if hasattr(mod, "format_rows"):  # optional: an op with its own metrics prints its own table
            out.append(mod.format_rows(grp))
            continue
        anchor, limit = mod.ANCHOR, mod.LIMIT
        time = {(r["mode"], r["x_value"], r["provider"]): r for r in grp if r["metric"] == "time"}
        mem = {(r["mode"], r["x_value"], r["provider"]): r["median"] for r in grp if r["metric"] == "peak_mem"}
        keys = list(dict.fromkeys((r["mode"], r["x_value"]) for r in grp))
        x_name = grp[0]["x_name"]
        out.append(f"{op}  {config}  |  {device}  |  commit {commit}")
        out.append(f"time = median ms [p20-p80]; t/{anchor} and t/{limit} = median / their median (lower = faster); "
                   "peak = extra peak MiB in a fresh process")
        head = (f"{'mode':8s} {x_name:>6s}  {'provider':22s} {'time ms':>10s} {'[p20-p80]':>19s} "
                f"{'t/' + anchor:>15s} {'t/' + limit:>14s} {'peak MiB':>9s}")
        out.append(head)
        out.append("-" * len(head))
        for mode, x in keys:
            provs = list(dict.fromkeys(r["provider"] for r in grp if (r["mode"], r["x_value"]) == (mode, x)))
            t_anchor = time.get((mode, x, anchor), {}).get("median")
            t_limit = time.get((mode, x, limit), {}).get("median")
            for prov in provs:
                t = time.get((mode, x, prov))
                med = t["median"] if t else None
                band = f"[{t['p20']:.2f}-{t['p80']:.2f}]" if t else ""
                peak = mem.get((mode, x, prov))
                out.append(f"{mode:8s} {x!s:>6s}  {prov:22s} {med if med is not None else float('nan'):10.2f} "
                           f"{band:>19s} {_ratio(med, t_anchor):>15s} {_ratio(med, t_limit):>14s} "
                           f"{(f'{peak:.1f}' if peak is not None else '-'):>9s}")
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def _split(values: list[str] | None, cast=str) -> list | None:
    """``["256,1024", "2048"]`` -> ``[256, 1024, 2048]`` (lists may be space- or comma-separated)."""
    if values is None:
        return None
    return [cast(v) for item in values for v in item.split(",") if v]


def _parser(mod: ModuleType | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[1])
    p.add_argument("--op", required=True, help=f"op to benchmark: {', '.join(sorted(OPS))}")
    p.add_argument("--modes", nargs="+", help="subset of the op's modes (default: all)")
    p.add_argument("--providers", nargs="+", help="subset of the providers (default: all available here)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per point (default: 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per point before timing (default: 1)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--memory-jobs", type=int, default=2, help="memory subprocesses to run at once (default: 2)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available, else cpu")
    p.add_argument("--out", default=str(DEFAULT_CSV), help=f"CSV to append rows to (default: {DEFAULT_CSV})")
    p.add_argument("--plot-dir", default=str(DEFAULT_PLOT_DIR),
                   help=f"folder for the PNG plots (default: {DEFAULT_PLOT_DIR})")
    p.add_argument("--contention", action="store_true",
                   help="run the op alone and beside a competing torch process, in fresh workers, and report the "
                        "slowdown (benchmarks/contention.py; no memory rows, no plots)")
    p.add_argument("--contention-threads", type=int, default=2, help="the competitor's torch threads (default: 2)")
    p.add_argument("--contention-policies", nargs="+", default=None,
                   help="OpenMP wait policies of the measured workers: lckernels (the shipped default), "
                        "omp-default, spin=<N> (GOMP_SPINCOUNT=N) (default: lckernels omp-default)")
    p.add_argument("--vs", choices=["trl"], default=None,
                   help="rl_step only: run TRL's GRPOTrainer and our Trainer side by side on the same model, batch, "
                        "completion cap, loss and lr, each in its own process (benchmarks/ops/rl_step_trl.py)")
    p.add_argument("--vs-providers", nargs="+", default=None,
                   help="with --vs trl: lckernels-trainer, trl-grpo, trl-grpo+lck (default: all)")
    p.add_argument("--profile", action="store_true",
                   help="rl_step only: profile one more step of our trainer (rollout / forward / loss / backward / "
                        "optimizer / experts shares); runs our worker alone unless --vs trl is given")
    if mod is not None:
        g = p.add_argument_group(f"{mod.OP} parameters")
        for name, default in mod.DEFAULTS.items():
            if isinstance(default, (list, tuple)):
                g.add_argument(f"--{name}", nargs="+", default=None,
                               help=f"sweep values (default: {' '.join(map(str, default))})")
            else:
                g.add_argument(f"--{name}", type=type(default), default=default, help=f"(default: {default})")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--op")
    known, _ = pre.parse_known_args(argv)
    mod = None
    if known.op is not None:
        try:
            mod = load_op(known.op)
        except ValueError as exc:
            _parser(None).error(str(exc))
    args = _parser(mod).parse_args(argv)
    params = {}
    for name, default in mod.DEFAULTS.items():
        value = getattr(args, name)
        if isinstance(default, (list, tuple)):
            if value is not None:
                params[name] = _split(value, type(default[0]))
        else:
            params[name] = value
    try:
        rows, table, where = _dispatch(args, params)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(table)
    print(where)
    return 0


def _dispatch(args: argparse.Namespace, params: dict) -> tuple[list[dict], str, str]:
    """Run what the flags ask for (``--vs``/``--profile``, ``--contention`` or the plain sweep): its rows, their
    table and where they went.  Bad flags raise ``ValueError`` (the CLI prints it and exits 2)."""
    if args.vs or args.profile:
        if args.op != "rl_step":
            raise ValueError("--vs / --profile work with --op rl_step")
        from .ops.rl_step_trl import OURS, format_vs_trl, run_vs_trl

        rows = run_vs_trl(params, providers=_split(args.vs_providers) if args.vs else [OURS],
                          repeats=args.repeats, warmup=args.warmup, profile=args.profile, out=args.out)
        return rows, format_vs_trl(rows), f"appended {len(rows)} rows to {args.out}"
    if args.contention:
        from .contention import POLICIES, format_contention, run_contention

        rows = run_contention(args.op, params=params, providers=_split(args.providers), modes=_split(args.modes),
                              repeats=args.repeats, warmup=args.warmup,
                              policies=_split(args.contention_policies) or POLICIES,
                              competitor_threads=args.contention_threads, out=args.out, verbose=True)
        return rows, format_contention(rows), f"appended {len(rows)} rows to {args.out}"
    rows = run(args.op, modes=_split(args.modes), providers=_split(args.providers), repeats=args.repeats,
               warmup=args.warmup, memory=not args.no_memory, memory_jobs=args.memory_jobs, out=args.out,
               plot_dir=args.plot_dir, device=args.device, verbose=True, **params)
    return rows, format_table(rows), f"appended {len(rows)} rows to {args.out}; plots in {args.plot_dir}"


__all__ = ["OPS", "CSV_COLUMNS", "load_op", "run", "format_table", "main"]

if __name__ == "__main__":
    sys.exit(main())
