"""Shared benchmark plumbing: timing, peak memory in a subprocess, the results CSV and the PNG plots.

Nothing here knows about a particular op.  An op module (see :mod:`benchmarks.ops.logprobs`) provides
``make_inputs(x, params, device)`` and ``make_fn(provider, mode, inputs)``; :func:`peak_memory_subprocess` imports
it by name in a fresh interpreter so each provider's peak is measured alone.
"""

from __future__ import annotations

import csv
import importlib
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
CSV_COLUMNS = ("op", "provider", "mode", "metric", "unit", "x_name", "x_value", "median", "p20", "p80", "device",
               "commit")


# --------------------------------------------------------------------------------------------------------- context
def device_label(device: str | torch.device) -> str:
    """``"cpu (N threads)"`` or the CUDA device name: the ``device`` CSV column."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def git_commit() -> str:
    """Short hash of the repository's HEAD, or ``"unknown"`` (no git, not a checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def synchronize(device: str | torch.device) -> None:
    """Wait for queued GPU work (no-op on CPU) so wall-clock timings and memory peaks are complete."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------------------- timing
@dataclass(frozen=True)
class Timing:
    """Wall-clock statistics of repeated calls, in milliseconds."""

    median: float
    p20: float
    p80: float
    samples: tuple[float, ...]


def _quantile(sorted_xs: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile of an already sorted, non-empty sequence."""
    pos = q * (len(sorted_xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def time_fn(fn: Callable[[], object], *, warmup: int = 1, repeats: int = 5,
            device: str | torch.device = "cpu") -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed with :func:`time.perf_counter`.

    Each timed call is bracketed by :func:`synchronize`, so on CUDA it measures the kernels, not the launch.
    Returns the median, 20th and 80th percentiles in ms.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1; got {repeats}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        samples.append((time.perf_counter() - t0) * 1e3)
    return _timing(samples)


def time_interleaved(fns: dict[str, Callable[[], object]], *, warmup: int = 1, repeats: int = 5,
                     device: str | torch.device = "cpu") -> dict[str, Timing]:
    """Like :func:`time_fn` for several contenders, but round-robin: repeat ``r`` times every contender once
    before repeat ``r + 1`` starts, so drifting machine load (other jobs, thermal) hits all of them alike."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1; got {repeats}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            samples[name].append((time.perf_counter() - t0) * 1e3)
    return {name: _timing(xs) for name, xs in samples.items()}


def _timing(samples: Sequence[float]) -> Timing:
    xs = sorted(samples)
    return Timing(_quantile(xs, 0.5), _quantile(xs, 0.2), _quantile(xs, 0.8), tuple(samples))


# ---------------------------------------------------------------------------------------------------- peak memory
def _peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB.

    ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is the portable answer, but Linux carries it across fork + exec:
    a child spawned by a parent that holds 2 GiB starts with ``ru_maxrss`` >= 2 GiB, which hides the child's own
    peak.  So on Linux read ``VmHWM`` from ``/proc/self/status`` instead: the high-water mark of the child's own
    address space.  Elsewhere fall back to ``ru_maxrss`` (KiB on Linux, bytes on macOS).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def _reset_peak_rss() -> None:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0); harmless no-op where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _measure_in_this_process(spec: dict) -> float:
    """Body of the memory subprocess: extra peak MiB of ``make_fn(provider, mode, inputs)()``.

    A tiny warm-up call (``module.WARMUP_OVERRIDES``) first loads libraries and thread pools, so one-time
    initialisation is not charged to the provider.  The baseline is taken after the real inputs and the callable
    exist (the high-water mark is reset there where the OS allows it).
    """
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    mod = importlib.import_module(spec["module"])
    device = spec["device"]
    provider, mode = spec["provider"], spec["mode"]
    warm_params = {**spec["params"], **getattr(mod, "WARMUP_OVERRIDES", {})}
    warm_x = warm_params.pop(mod.X_NAME, spec["x"])
    mod.make_fn(provider, mode, mod.make_inputs(warm_x, warm_params, device))()
    synchronize(device)

    fn = mod.make_fn(provider, mode, mod.make_inputs(spec["x"], spec["params"], device))
    synchronize(device)
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        for _ in range(spec.get("calls", 1)):
            fn()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / (1 << 20)
    _reset_peak_rss()
    base = _peak_rss_mib()
    for _ in range(spec.get("calls", 1)):
        fn()
    return max(_peak_rss_mib() - base, 0.0)


def peak_memory_subprocess(provider_spec: dict, *, timeout: float = 600.0, python: str | None = None) -> float:
    """Run ONE provider in a fresh ``python -m benchmarks.common`` and return its extra peak memory in MiB.

    ``provider_spec`` is a JSON-able dict: ``module`` (op module path), ``provider``, ``mode``, ``x``, ``params``,
    ``device``, optional ``threads`` (torch threads in the child; default: the child's default) and ``calls``.
    On CPU the peak is the process's peak RSS after the call minus its peak RSS right after the inputs were built
    (see :func:`_peak_rss_mib` for why that is ``VmHWM`` rather than ``ru_maxrss`` on Linux); on CUDA it is
    ``torch.cuda.max_memory_allocated`` minus the bytes allocated at that point.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    # glibc: a fixed mmap threshold sends every large buffer to mmap and back to the OS on free, so RSS follows live
    # memory.  With the default dynamic threshold, buffers up to 32 MiB may be served from (or kept in) the heap and
    # the same provider's peak varies by one buffer from run to run.
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    cmd = [python or sys.executable, "-m", "benchmarks.common", json.dumps(provider_spec)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"memory subprocess for {provider_spec.get('provider')}/{provider_spec.get('mode')} "
                           f"failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return float(json.loads(lines[-1])["extra_mib"])


# ------------------------------------------------------------------------------------------------------------ CSV
def append_csv(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Append ``rows`` (dicts with :data:`CSV_COLUMNS` keys) to ``path``, writing the header if the file is new.

    Refuses to append to an existing file whose header differs, rather than mixing layouts.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
        if tuple(header) != CSV_COLUMNS:
            raise ValueError(f"{path} has header {header}, expected {list(CSV_COLUMNS)}; use another --out")
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row[k]) for k in CSV_COLUMNS})
    return path


def _fmt(value):
    return f"{value:.6g}" if isinstance(value, float) else value


# ----------------------------------------------------------------------------------------------------------- plots
def plot_rows(rows: Sequence[dict], out_dir: str | os.PathLike, *, subtitle: str = "") -> list[Path]:
    """One PNG per (op, mode, metric): ``x_value`` on the x axis, one line per provider (p20-p80 band shaded).

    Files are named ``{op}_{mode}_{metric}.png`` in ``out_dir``; returns their paths.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["op"], r["mode"], r["metric"]), []).append(r)
    paths = []
    for (op, mode, metric), grp in groups.items():
        fig, ax = plt.subplots(figsize=(7, 4.5))
        providers = list(dict.fromkeys(r["provider"] for r in grp))
        for prov in providers:
            pts = sorted((float(r["x_value"]), float(r["median"]), float(r["p20"]), float(r["p80"]))
                         for r in grp if r["provider"] == prov)
            xs, med, lo, hi = zip(*pts)
            style = "--" if prov.endswith("-limit") else "-"
            ax.plot(xs, med, style, marker="o", label=prov)
            ax.fill_between(xs, lo, hi, alpha=0.15)
        xs_all = sorted({float(r["x_value"]) for r in grp})
        if xs_all[0] > 0 and xs_all[-1] / xs_all[0] >= 4:
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs_all, [f"{x:g}" for x in xs_all])
        ax.minorticks_off()
        ax.set_xlabel(grp[0]["x_name"])
        ax.set_ylabel(f"{metric} ({grp[0]['unit']})")
        title = f"{op} {mode} {metric} - {grp[0]['device']} @ {grp[0]['commit']}"
        ax.set_title(title + (f"\n{subtitle}" if subtitle else ""), fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{op}_{mode}_{metric}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


if __name__ == "__main__":  # the memory subprocess: python -m benchmarks.common '<json spec>'
    print(json.dumps({"extra_mib": _measure_in_this_process(json.loads(sys.argv[1]))}))


def bench_call(benchmark, fn: Callable[[], object], device: str) -> None:
    """pytest-benchmark body shared by the suites: one untimed warm-up call (libraries, thread pools), then the
    timed calls, synchronizing CUDA so the GPU work is inside the timing."""
    fn()
    if torch.device(device).type == "cuda":
        def call():
            out = fn()
            torch.cuda.synchronize()
            return out
    else:
        call = fn
    benchmark(call)
