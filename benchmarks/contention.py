"""``python -m benchmarks.run --op rl_step --contention``: the same benchmark alone and beside someone else's job.

How much a step slows down when another CPU job shares the cores.  Every measurement runs in a fresh worker
process (``python -m benchmarks.contention --worker '<spec>'``), which imports :mod:`lckernels_rl` before torch --
as the ``lckernels-rl`` command does -- and then runs :func:`benchmarks.run.run` for the op (no memory rows, no
CSV, no plots).  The worker runs twice per *policy*: alone, and beside a **competitor**, a second Python process
doing fp32 matmuls in a loop on ``competitor_threads`` torch threads (default 2), started with the user's
environment minus any OpenMP wait setting (``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT``, ``KMP_BLOCKTIME``): it models
another user's job, which spins like torch does by default.

Policies (``policies``):

* ``lckernels`` -- the worker's environment is the user's: ``import lckernels_rl`` sets ``OMP_WAIT_POLICY=PASSIVE``
  unless the user chose a policy (the shipped behaviour).
* ``omp-default`` -- the same without any wait setting and with ``LCK_OMP_PASSIVE=0``: OpenMP's default
  (libgomp spins ~3 ms before it sleeps), i.e. the trainer before lckernels set the policy.
* ``spin=<N>`` -- no other wait setting, ``GOMP_SPINCOUNT=<N>`` (a user's choice, which lckernels_rl keeps): libgomp
  spins N iterations before it sleeps (0 = passive, 300000 = its default).

The slowdown of a provider is its median ``time`` beside the competitor divided by its median alone, with the
same policy (goal for ``lckernels``: <= :data:`GOAL`).  Times on a machine that already runs other jobs are noise:
run it on an otherwise idle machine (check ``uptime``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
GOAL = 2.5
POLICIES = ("lckernels", "omp-default")
WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "LCK_OMP_PASSIVE")
_MARK = "LCK_CONTENTION_ROWS "

COMPETITOR = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
n = int(sys.argv[2])
a, b = torch.randn(n, n), torch.randn(n, n)
a @ b
print("ready", flush=True)
while True:
    a @ b
"""


def _base_env() -> dict[str, str]:
    """The user's environment (without the ``OMP_WAIT_POLICY`` lckernels_rl may have set in this process), with
    the repository on ``PYTHONPATH``."""
    try:
        from lckernels_rl._threads import user_environ
        env = user_environ()
    except ImportError:  # pragma: no cover
        env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _without_wait_settings(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in WAIT_VARS}


def policy_env(policy: str) -> dict[str, str]:
    """The measured worker's environment under ``policy`` (see the module docstring)."""
    env = _base_env()
    if policy == "lckernels":
        return env
    if policy == "omp-default":
        return {**_without_wait_settings(env), "LCK_OMP_PASSIVE": "0"}
    if policy.startswith("spin="):
        n = policy[len("spin="):]
        if not n.isdigit():
            raise ValueError(f"contention policy {policy!r}: spin=<N> needs a non-negative integer N")
        return {**_without_wait_settings(env), "GOMP_SPINCOUNT": n}
    raise ValueError(f"unknown contention policy {policy!r}; choose from {', '.join(POLICIES)} or spin=<N>")


class Competitor:
    """The competing job: ``threads`` torch threads doing ``n`` x ``n`` matmuls until :meth:`stop`."""

    def __init__(self, threads: int = 2, n: int = 384):
        self.threads, self.n = int(threads), int(n)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 300.0) -> "Competitor":
        env = _without_wait_settings(_base_env())
        env.pop("OMP_NUM_THREADS", None)  # its own thread count (set_num_threads), whatever the user's is
        self.proc = subprocess.Popen([sys.executable, "-c", COMPETITOR, str(self.threads), str(self.n)], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t0 = time.monotonic()
        line = self.proc.stdout.readline()  # blocks until the first matmul is done (torch imported, threads up)
        if line.strip() != "ready":
            err = self.proc.stderr.read() if self.proc.poll() is not None else ""
            self.stop()
            raise RuntimeError(f"the competitor did not start ({time.monotonic() - t0:.0f} s): {err.strip()[-2000:]}")
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def run_worker(spec: dict, env: dict[str, str], *, timeout: float = 3600.0, verbose: bool = False) -> dict:
    """One measurement in a fresh process: ``{"rows": [...], "wait_policy": {...}, "threads": n}``."""
    cmd = [sys.executable, "-m", "benchmarks.contention", "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=None if verbose else subprocess.PIPE, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"contention worker failed (rc {proc.returncode}): "
                           f"{(proc.stderr or '').strip()[-3000:]}")
    return json.loads(lines[-1][len(_MARK):])


def _worker_main(spec: dict) -> int:
    import lckernels_rl  # noqa: F401  -- before torch, as the lckernels-rl command: sets the wait policy
    from lckernels_rl._threads import wait_policy_state

    import torch

    from benchmarks.run import run

    rows = run(spec["op"], providers=spec.get("providers"), modes=spec.get("modes"), repeats=spec["repeats"],
               warmup=spec["warmup"], memory=False, out=None, plot_dir=None, device="cpu",
               verbose=spec.get("verbose", False), **spec["params"])
    print(_MARK + json.dumps({"rows": rows, "wait_policy": wait_policy_state(),
                              "threads": torch.get_num_threads()}, default=str), flush=True)
    return 0


def run_contention(op: str, *, params: dict, providers=None, modes=None, repeats: int = 3, warmup: int = 1,
                   policies=POLICIES, competitor_threads: int = 2, competitor_n: int = 384,
                   out: str | Path | None = None, verbose: bool = False) -> list[dict]:
    """Measure ``op`` alone and beside the competitor under each policy; returns the rows.

    Each row is a :func:`benchmarks.run.run` row with ``provider`` = ``"<provider> [<policy>, alone|contended]"``,
    plus one ``contention_slowdown`` row (unit ``x``: contended / alone median ``time``) per provider, mode, x and
    policy.  Extra keys (not CSV columns): ``policy``, ``phase``, ``wait_policy``, ``competitor``.
    ``out``: a CSV to append them to (``None``: don't write).
    """
    from .common import append_csv

    policies = list(policies)
    for policy in policies:
        policy_env(policy)  # ValueError for an unknown one, before anything runs
    spec = {"op": op, "params": params, "providers": list(providers) if providers else None,
            "modes": list(modes) if modes else None, "repeats": int(repeats), "warmup": int(warmup),
            "verbose": verbose}
    competitor = f"{competitor_threads}-thread torch matmul loop ({competitor_n}x{competitor_n}, OpenMP default)"
    rows: list[dict] = []
    for policy in policies:
        env = policy_env(policy)
        results = {}
        for phase in ("alone", "contended"):
            if verbose:
                print(f"contention: {op} policy={policy} {phase} ...", file=sys.stderr, flush=True)
            if phase == "alone":
                results[phase] = run_worker(spec, env, verbose=verbose)
            else:
                with Competitor(competitor_threads, competitor_n):
                    results[phase] = run_worker(spec, env, verbose=verbose)
        wp = results["alone"]["wait_policy"]
        label = f"{wp.get('omp_wait_policy') or 'unset'} ({wp.get('set_by')})"
        times = {}
        for phase, res in results.items():
            for r in res["rows"]:
                rows.append({**r, "provider": f"{r['provider']} [{policy}, {phase}]", "policy": policy,
                             "phase": phase, "wait_policy": label, "competitor": competitor,
                             "base_provider": r["provider"]})
                if r["metric"] == "time":
                    times[(r["provider"], r["mode"], r["x_value"], phase)] = r
        for (prov, mode, x, phase), r in list(times.items()):
            if phase != "alone" or (prov, mode, x, "contended") not in times:
                continue
            c = times[(prov, mode, x, "contended")]
            ratio = c["median"] / r["median"]
            rows.append({**r, "provider": f"{prov} [{policy}]", "metric": "contention_slowdown", "unit": "x",
                         "median": ratio, "p20": c["p20"] / r["p80"], "p80": c["p80"] / r["p20"],
                         "policy": policy, "phase": "ratio", "wait_policy": label, "competitor": competitor,
                         "base_provider": prov})
    if out is not None:
        append_csv(out, rows)
    return rows


def format_contention(rows: list[dict]) -> str:
    """Per (mode, x, provider, policy): median ms [p20-p80] alone and beside the competitor, and the slowdown."""
    if not rows:
        return "(no rows)\n"
    g0 = rows[0]
    out = [f"{g0['op']} contention  {g0.get('config', '')}  |  {g0['device']}  |  commit {g0['commit']}",
           f"competitor: {g0.get('competitor')}; slowdown = median time beside it / alone (goal for lckernels: "
           f"<= {GOAL:g}x); alone/default and beside/default-alone = that time / omp-default's time alone (what the "
           f"policy costs a user alone, and beside the competitor); a noisy machine makes these numbers noise"]
    head = (f"{'mode':5s} {g0['x_name']:>6s}  {'provider':20s} {'policy':12s} {'OMP_WAIT_POLICY':28s} "
            f"{'alone ms':>9s} {'[p20-p80]':>15s} {'beside ms':>10s} {'[p20-p80]':>15s} {'slowdown':>9s} "
            f"{'alone/default':>13s} {'beside/default-alone':>20s}")
    out += [head, "-" * len(head)]
    by: dict[tuple, dict] = {}
    for r in rows:
        if r["metric"] in ("time", "contention_slowdown"):
            key = (r["mode"], r["x_value"], r["base_provider"], r["policy"])
            by.setdefault(key, {"wait_policy": r["wait_policy"]})[r.get("phase")] = r

    def cell(r: dict | None, width: int) -> str:
        if r is None:
            return f"{'-':>{width}s} {'':>15s}"
        band = f"[{r['p20']:.0f}-{r['p80']:.0f}]"
        return f"{r['median']:{width}.1f} {band:>15s}"

    def versus(r: dict | None, base: dict | None) -> str:
        return f"{r['median'] / base['median']:.2f}x" if r and base else "-"

    for (mode, x, prov, policy), d in by.items():
        s = d.get("ratio")
        slow = f"{s['median']:.2f}x" if s else "-"
        base = by.get((mode, x, prov, "omp-default"), {}).get("alone")  # what a user who sets nothing had before
        out.append(f"{mode:5s} {x!s:>6s}  {prov:20s} {policy:12s} {d['wait_policy']:28s} "
                   f"{cell(d.get('alone'), 9)} {cell(d.get('contended'), 10)} {slow:>9s} "
                   f"{versus(d.get('alone'), base):>13s} {versus(d.get('contended'), base):>20s}")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(_worker_main(json.loads(sys.argv[2])))
    print("usage: python -m benchmarks.run --op rl_step --contention  (this module's --worker is internal)",
          file=sys.stderr)
    sys.exit(2)
