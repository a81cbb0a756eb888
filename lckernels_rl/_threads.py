"""CPU threads that degrade gracefully: the cores this process may actually use, and OpenMP's wait policy.

Two things make a CPU training step slow beside another job:

* **Spinning.**  torch's CPU wheels (and ``lckernels._C``, which shares torch's ``libgomp``) run their parallel
  regions on GNU OpenMP.  Unless ``OMP_WAIT_POLICY`` is set, a libgomp thread that finishes its share spins for
  about 3 ms (``GOMP_SPINCOUNT`` 300000) before it sleeps -- at every barrier, and after every region.  Beside a
  second process that wants the same cores, the spinning threads take the CPU the late thread needs: the trainer's
  default RL step went from 0.11 s to 1.2 s beside a 2-thread torch job, 0.35 s with ``OMP_WAIT_POLICY=PASSIVE``.
  libgomp reads the variable once, when the library is loaded (``import torch``), so it must be in the environment
  before that; setting ``os.environ`` afterwards does nothing.  :func:`apply_default_wait_policy` (called by
  ``import lckernels_rl``, which is the first import of the ``lckernels-rl`` and ``python -m lckernels_rl.train``
  commands) sets ``OMP_WAIT_POLICY=PASSIVE`` if no OpenMP runtime is loaded yet and the user chose no waiting
  behaviour of their own.
* **Too many threads.**  torch's default is the machine's physical cores (MKL's count), whatever a container's CPU
  quota says.  :func:`available_cpus` is the CPU affinity mask, capped by the cgroup (v2 ``cpu.max``, v1
  ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``) quota of this process and its ancestors; :func:`resolve_threads` is
  the trainer's ``threads`` setting (``0``: torch's current count capped at that).

Nothing here imports torch (the module runs before torch is imported).
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, MutableMapping

__all__ = ["affinity_cpus", "cgroup_cpu_limit", "available_cpus", "resolve_threads", "openmp_runtime_loaded",
           "apply_default_wait_policy", "wait_policy_state", "user_environ", "ThreadPlan",
           "WAIT_POLICY_VARS"]

# Variables by which a user picks OpenMP's waiting behaviour (GNU libgomp, LLVM / Intel libomp); any one of them set
# means "leave it to me".
WAIT_POLICY_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
OPT_OUT_VAR = "LCK_OMP_PASSIVE"  # "0": never set OMP_WAIT_POLICY
_OPENMP_LIBS = ("libgomp", "libiomp", "libomp")

# What apply_default_wait_policy did in this process (see wait_policy_state); None until it runs.
_STATE: str | None = None


# --------------------------------------------------------------------------------------------------- the cores
def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (``os.sched_getaffinity``; ``os.cpu_count()`` where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _v2_limit(directory: Path) -> float | None:
    """CPUs allowed by ``<directory>/cpu.max`` (``"<quota> <period>"`` or ``"max <period>"``); None if unlimited."""
    text = _read(directory / "cpu.max")
    if not text:
        return None
    parts = text.split()
    try:
        if parts[0] == "max":
            return None
        quota, period = int(parts[0]), int(parts[1]) if len(parts) > 1 else 100_000
    except (ValueError, IndexError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_limit(directory: Path) -> float | None:
    """CPUs allowed by ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (quota -1: unlimited); None if unlimited."""
    quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
    try:
        q, p = int(quota), int(period)
    except (TypeError, ValueError):
        return None
    return q / p if q > 0 and p > 0 else None


def _own_cgroups(proc_cgroup: Path) -> tuple[str | None, str | None]:
    """This process's cgroup path in the v2 hierarchy and in v1's ``cpu`` controller (from /proc/self/cgroup)."""
    text = _read(proc_cgroup) or ""
    v2 = v1 = None
    for line in text.splitlines():
        hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hid == "0" and controllers == "":
            v2 = path or "/"
        elif "cpu" in controllers.split(","):
            v1 = path or "/"
    return v2, v1


def _candidates(base: Path, path: str | None) -> list[Path]:
    """``base/path`` and its ancestors up to ``base`` (a parent's quota bounds its children too).  Inside a
    container without a cgroup namespace the path names the host's hierarchy while ``base`` is already the
    container's own cgroup: ``base`` itself is always a candidate."""
    out = []
    if path and path != "/":
        p = base / path.lstrip("/")
        while p != base and base in p.parents:
            out.append(p)
            p = p.parent
    out.append(base)
    return out


def cgroup_cpu_limit(root: str | os.PathLike = "/sys/fs/cgroup",
                     proc_cgroup: str | os.PathLike = "/proc/self/cgroup") -> float | None:
    """The CPU quota of this process's cgroups in CPUs (``1.5`` = 150 ms per 100 ms), the smallest over cgroup v2
    (``<root>/<path>/cpu.max``) and v1 (``<root>/cpu/<path>/cpu.cfs_quota_us`` and ``cpu.cfs_period_us``, also under
    ``cpu,cpuacct``) and their ancestors; ``None`` where nothing limits it (or there are no cgroups)."""
    root, proc_cgroup = Path(root), Path(proc_cgroup)
    v2_path, v1_path = _own_cgroups(proc_cgroup)
    limits = [_v2_limit(d) for d in _candidates(root, v2_path)]
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        base = root / name
        if base.is_dir():
            limits += [_v1_limit(d) for d in _candidates(base, v1_path)]
    limits = [x for x in limits if x is not None]
    return min(limits) if limits else None


def available_cpus(root: str | os.PathLike = "/sys/fs/cgroup",
                   proc_cgroup: str | os.PathLike = "/proc/self/cgroup") -> int:
    """The cores this process may keep busy: its affinity mask, capped by the cgroup CPU quota rounded down (a
    1.5-CPU quota gives 1: a second thread would be throttled for part of every period), at least 1."""
    n = affinity_cpus()
    quota = cgroup_cpu_limit(root, proc_cgroup)
    if quota is not None:
        n = min(n, max(1, math.floor(quota + 1e-9)))
    return max(1, n)


@dataclass(frozen=True)
class ThreadPlan:
    """The intra-op thread count a trainer runs with, and why (``reason``), plus a warning to show (or None)."""

    threads: int
    reason: str
    available: int
    warning: str | None = None


def resolve_threads(requested: int, current: int, *, available: int | None = None,
                    environ: Mapping[str, str] | None = None) -> ThreadPlan:
    """The trainer's ``threads`` setting as a thread count.

    Args:
        requested: the config's ``threads``: ``N > 0`` is used as given (a warning if it exceeds the available
            cores: the threads then wait for each other); ``0`` is automatic.
        current: ``torch.get_num_threads()`` now (torch's default, ``OMP_NUM_THREADS``, or what the caller set).
        available: the usable cores (default :func:`available_cpus`).
        environ: for ``OMP_NUM_THREADS`` (default ``os.environ``).

    Automatic: ``current`` if ``OMP_NUM_THREADS`` is set (the user's choice), else ``min(current, available)`` --
    it only ever lowers torch's count, so a caller that chose fewer threads keeps them.
    """
    environ = os.environ if environ is None else environ
    available = available_cpus() if available is None else int(available)
    if requested < 0:
        raise ValueError(f"threads must be >= 0, got {requested}")
    if requested > 0:
        warn = None
        if requested > available:
            warn = (f"threads={requested} but this process may use {available} CPU(s) (affinity / cgroup quota): "
                    f"the OpenMP threads will wait for each other; threads=0 picks {available}")
        return ThreadPlan(requested, "config", available, warn)
    if environ.get("OMP_NUM_THREADS"):
        return ThreadPlan(current, "OMP_NUM_THREADS", available)
    if current > available:
        return ThreadPlan(available, "available cores", available)
    return ThreadPlan(current, "torch", available)


# ------------------------------------------------------------------------------------------- the wait policy
def openmp_runtime_loaded() -> bool:
    """Whether an OpenMP runtime is already mapped into this process (then its wait policy is fixed).  Reads
    /proc/self/maps; elsewhere, whether torch has been imported."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                name = line.rsplit("/", 1)[-1]
                if name.startswith(_OPENMP_LIBS):
                    return True
        return False
    except OSError:
        return "torch" in sys.modules


def apply_default_wait_policy(environ: MutableMapping[str, str] | None = None, *,
                              runtime_loaded: bool | None = None) -> str:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose otherwise; returns what happened:

    * ``"set"``: it was set (no OpenMP runtime loaded yet, so the next ``import torch`` uses it);
    * ``"user"``: one of :data:`WAIT_POLICY_VARS` is already set, left as it is;
    * ``"disabled"``: ``LCK_OMP_PASSIVE=0``;
    * ``"too late"``: an OpenMP runtime is already loaded (torch imported first): setting it would change nothing
      in this process, so it is left unset (children started later keep the user's environment).

    With the default ``environ`` the outcome is remembered for :func:`wait_policy_state` and :func:`user_environ`.
    """
    global _STATE
    own = environ is None
    environ = os.environ if environ is None else environ
    if environ.get(OPT_OUT_VAR, "").strip().lower() in ("0", "false", "no", "off"):
        state = "disabled"
    elif any(environ.get(v) for v in WAIT_POLICY_VARS):
        state = "user"
    elif (openmp_runtime_loaded() if runtime_loaded is None else runtime_loaded):
        state = "too late"
    else:
        environ["OMP_WAIT_POLICY"] = "PASSIVE"
        state = "set"
    if own:
        _STATE = state
    return state


def wait_policy_state() -> dict:
    """``{"omp_wait_policy": <the value in the environment or None>, "set_by": "lckernels_rl" | "user" | ...}``:
    what this process's OpenMP runtime was (most likely) started with."""
    value = os.environ.get("OMP_WAIT_POLICY")
    by = {"set": "lckernels_rl", "user": "user", "disabled": f"{OPT_OUT_VAR}=0",
          "too late": "nobody (torch was imported before lckernels_rl)"}.get(_STATE or "", "unknown")
    return {"omp_wait_policy": value, "set_by": by}


def user_environ() -> dict[str, str]:
    """``os.environ`` as the user started the process: without the ``OMP_WAIT_POLICY`` that
    :func:`apply_default_wait_policy` added (for a subprocess that models someone else's job)."""
    env = dict(os.environ)
    if _STATE == "set" and env.get("OMP_WAIT_POLICY") == "PASSIVE":
        env.pop("OMP_WAIT_POLICY")
    return env
