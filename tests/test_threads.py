"""lckernels_rl._threads: the cores a process may use (affinity, cgroup v2/v1 quota), the trainer's ``threads``
setting, the OpenMP wait policy set before torch, and the C++ kernels following torch's thread budget.

The cgroup files and the affinity mask are faked (tmp_path, monkeypatch); the wait-policy and thread-budget checks
run in subprocesses with a clean environment, since they are about what happens before / at ``import torch``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from lckernels_rl import _threads as T

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fake_cgroup(tmp_path, lines: str):
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(textwrap.dedent(lines).lstrip())
    root = tmp_path / "cgroup"
    root.mkdir()
    return root, proc


def _mkdir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------------------------------------- cgroup v2
def test_v2_quota_of_own_cgroup(tmp_path):
    root, proc = _fake_cgroup(tmp_path, "0::/user.slice/job\n")
    (_mkdir(root / "user.slice" / "job") / "cpu.max").write_text("150000 100000\n")
    assert T.cgroup_cpu_limit(root, proc) == pytest.approx(1.5)


def test_v2_max_means_unlimited(tmp_path):
    root, proc = _fake_cgroup(tmp_path, "0::/job\n")
    (_mkdir(root / "job") / "cpu.max").write_text("max 100000\n")
    assert T.cgroup_cpu_limit(root, proc) is None


def test_v2_ancestor_quota_bounds_the_child(tmp_path):
    root, proc = _fake_cgroup(tmp_path, "0::/a/b\n")
    (_mkdir(root / "a" / "b") / "cpu.max").write_text("max 100000\n")
    (root / "a" / "cpu.max").write_text("200000 100000\n")  # the parent: 2 CPUs
    assert T.cgroup_cpu_limit(root, proc) == pytest.approx(2.0)
    (root / "a" / "b" / "cpu.max").write_text("50000 100000\n")  # the child is tighter
    assert T.cgroup_cpu_limit(root, proc) == pytest.approx(0.5)


def test_v2_container_without_cgroup_namespace(tmp_path):
    """/proc/self/cgroup names the host's path, /sys/fs/cgroup is already the container's cgroup."""
    root, proc = _fake_cgroup(tmp_path, "0::/system.slice/docker-abc.scope\n")
    (root / "cpu.max").write_text("300000 100000\n")
    assert T.cgroup_cpu_limit(root, proc) == pytest.approx(3.0)


def test_no_cgroups_at_all(tmp_path):
    assert T.cgroup_cpu_limit(tmp_path / "missing", tmp_path / "missing_proc") is None


# ---------------------------------------------------------------------------------------------------- cgroup v1
@pytest.mark.parametrize("controller", ["cpu", "cpu,cpuacct"])
def test_v1_cfs_quota(tmp_path, controller):
    root, proc = _fake_cgroup(tmp_path, f"""
        4:memory:/job
        3:{controller}:/job
        0::/
        """)
    d = _mkdir(root / controller / "job")
    (d / "cpu.cfs_quota_us").write_text("250000\n")
    (d / "cpu.cfs_period_us").write_text("100000\n")
    assert T.cgroup_cpu_limit(root, proc) == pytest.approx(2.5)
    (d / "cpu.cfs_quota_us").write_text("-1\n")  # unlimited
    assert T.cgroup_cpu_limit(root, proc) is None


def test_v1_garbage_is_ignored(tmp_path):
    root, proc = _fake_cgroup(tmp_path, "3:cpu:/\n")
    d = _mkdir(root / "cpu")
    (d / "cpu.cfs_quota_us").write_text("not a number\n")
    (d / "cpu.cfs_period_us").write_text("100000\n")
    assert T.cgroup_cpu_limit(root, proc) is None


# ------------------------------------------------------------------------------------------- available cores
def _affinity(monkeypatch, n):
    monkeypatch.setattr(T.os, "sched_getaffinity", lambda pid: set(range(n)), raising=False)


@pytest.mark.parametrize("affinity, quota, want", [
    (8, None, 8),          # no quota: the affinity mask
    (8, "200000 100000", 2),  # quota below the mask
    (2, "800000 100000", 2),  # the mask below the quota
    (8, "150000 100000", 1),  # rounded down: a second thread would be throttled part of every period
    (8, "50000 100000", 1),   # at least one
])
def test_available_cpus(tmp_path, monkeypatch, affinity, quota, want):
    _affinity(monkeypatch, affinity)
    root, proc = _fake_cgroup(tmp_path, "0::/\n")
    if quota:
        (root / "cpu.max").write_text(quota + "\n")
    assert T.available_cpus(root, proc) == want


def test_affinity_without_sched_getaffinity(monkeypatch):
    monkeypatch.delattr(T.os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(T.os, "cpu_count", lambda: 6)
    assert T.affinity_cpus() == 6


# --------------------------------------------------------------------------------------- the threads setting
def test_resolve_threads_automatic_caps_but_never_raises():
    assert T.resolve_threads(0, 32, available=4, environ={}) == T.ThreadPlan(4, "available cores", 4)
    assert T.resolve_threads(0, 1, available=4, environ={}) == T.ThreadPlan(1, "torch", 4)  # caller chose 1


def test_resolve_threads_respects_omp_num_threads():
    plan = T.resolve_threads(0, 8, available=2, environ={"OMP_NUM_THREADS": "8"})
    assert (plan.threads, plan.reason) == (8, "OMP_NUM_THREADS")


def test_resolve_threads_explicit_is_used_as_given():
    plan = T.resolve_threads(2, 16, available=4, environ={})
    assert (plan.threads, plan.reason, plan.warning) == (2, "config", None)
    plan = T.resolve_threads(8, 1, available=2, environ={})
    assert plan.threads == 8 and "may use 2 CPU" in plan.warning
    with pytest.raises(ValueError):
        T.resolve_threads(-1, 1, available=2, environ={})


def test_trainer_threads_setup(monkeypatch):
    """Trainer's set-up: automatic lowers torch's count to the available cores; explicit sets it; it reports both."""
    import torch

    from lckernels_rl.train import trainer

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(T, "available_cpus", lambda *a, **k: 1)
    try:
        torch.set_num_threads(2)
        info = trainer._set_threads(0)
        assert torch.get_num_threads() == 1
        assert info["threads"] == 1 and info["threads_from"] == "available cores" and info["available_cpus"] == 1
        assert "omp_wait_policy" in info and "set_by" in info
        with pytest.warns(RuntimeWarning, match="may use 1 CPU"):
            info = trainer._set_threads(2)
        assert torch.get_num_threads() == 2 and info["threads_from"] == "config"
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------- the wait policy
@pytest.mark.parametrize("environ, loaded, state, value", [
    ({}, False, "set", "PASSIVE"),
    ({"OMP_WAIT_POLICY": "ACTIVE"}, False, "user", "ACTIVE"),
    ({"GOMP_SPINCOUNT": "10000"}, False, "user", None),
    ({"KMP_BLOCKTIME": "0"}, False, "user", None),
    ({"LCK_OMP_PASSIVE": "0"}, False, "disabled", None),
    ({}, True, "too late", None),
])
def test_apply_default_wait_policy(environ, loaded, state, value):
    env = dict(environ)
    assert T.apply_default_wait_policy(env, runtime_loaded=loaded) == state
    assert env.get("OMP_WAIT_POLICY") == value


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in T.WAIT_POLICY_VARS + (T.OPT_OUT_VAR, "OMP_NUM_THREADS")}
    env.update(OMP_NUM_THREADS="1", **extra)  # 1 thread: these probes never time anything
    return env


def _py(code: str, env: dict) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


PROBE = """
    import os
    {first}
    import torch
    from lckernels_rl import _threads
    print(os.environ.get("OMP_WAIT_POLICY"), _threads.wait_policy_state()["set_by"], sep="|")
"""


@pytest.mark.parametrize("first, extra, want", [
    ("import lckernels_rl", {}, "PASSIVE|lckernels_rl"),
    ("import lckernels_rl.train.cli", {}, "PASSIVE|lckernels_rl"),  # the console script's import chain
    ("import lckernels_rl", {"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE|user"),
    ("import lckernels_rl", {"LCK_OMP_PASSIVE": "0"}, "None|LCK_OMP_PASSIVE=0"),
    ("import torch; import lckernels_rl", {}, "None|nobody (torch was imported before lckernels_rl)"),
])
def test_wait_policy_before_torch_in_a_clean_process(first, extra, want):
    assert _py(PROBE.format(first=first), _clean_env(**extra)) == want


def test_user_environ_drops_only_our_policy(monkeypatch):
    monkeypatch.setattr(T, "_STATE", "set")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert "OMP_WAIT_POLICY" not in T.user_environ()
    monkeypatch.setattr(T, "_STATE", "user")
    assert T.user_environ()["OMP_WAIT_POLICY"] == "PASSIVE"


@pytest.mark.slow
@pytest.mark.skipif(T.affinity_cpus() < 2, reason="needs 2 CPUs")
def test_libgomp_reads_wait_policy_when_torch_is_imported():
    """The premise of the above: ACTIVE set before ``import torch`` makes a worker spin through a sleep after a
    parallel region; the same value set after the import changes nothing (libgomp read the environment when it was
    loaded).  CPU time is what is compared, with wide margins."""
    code = """
        import os, resource, sys, time
        if sys.argv[1] == "before":
            os.environ["OMP_WAIT_POLICY"] = "ACTIVE"
        import torch
        if sys.argv[1] == "after":
            os.environ["OMP_WAIT_POLICY"] = "ACTIVE"
        torch.set_num_threads(2)
        x = torch.randn(4_000_000)
        for _ in range(3):
            (x * 2).sum()
        cpu = lambda: sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
        t0 = cpu(); time.sleep(0.5); print(cpu() - t0)
    """
    env = _clean_env()
    env.pop("OMP_NUM_THREADS")

    def spin(when):
        out = subprocess.run([sys.executable, "-c", textwrap.dedent(code), when], env=env, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        return float(out.stdout.strip())

    assert spin("before") > 0.15
    assert spin("after") < 0.1


@pytest.mark.skipif(T.affinity_cpus() < 2, reason="needs 2 CPUs to see a second OpenMP thread")
def test_extension_follows_torch_thread_budget_on_a_new_thread():
    """``torch.set_num_threads(1)`` on the main thread; a C++ kernel called from another thread must not start an
    OpenMP worker (omp_set_num_threads is per thread: the OpenMP default there would be every CPU).  Counted as the
    process's OS threads, no timing."""
    code = """
        import os, threading
        import torch, lckernels
        from lckernels import _ext
        if not _ext.available():
            print("no-ext"); raise SystemExit
        torch.set_num_threads(1)
        n = 1 << 20
        r, lp, a = torch.rand(n) + 0.5, -torch.rand(n), torch.randn(n)
        tasks = lambda: len(os.listdir("/proc/self/task"))
        out = {}
        def work():
            before = tasks()
            for _ in range(3):  # straight into the C++ kernel: no torch op first that would set this thread's budget
                _ext.load().soft_gaussian_gate(r, lp, a, 1.0, 0.3, 0.03, 0.03, 10.0, 0.1, 10.0)
            out["new"] = tasks() - before
        th = threading.Thread(target=work); th.start(); th.join()
        print(out["new"])
    """
    env = _clean_env()
    env.pop("OMP_NUM_THREADS")
    got = _py(code, env)
    if got == "no-ext":
        pytest.skip("lckernels._C not built")
    assert got == "0", f"{got} OpenMP worker(s) started on a thread where torch's budget is 1"
