"""``python -m benchmarks.run --op rl_step --contention`` (benchmarks/contention.py): the environments of the
measured workers and of the competitor, the competitor's life cycle, the table, and (slow) one tiny end-to-end run.
No timing is asserted."""

from __future__ import annotations

import csv
import os

import pytest

from benchmarks import contention as C
from benchmarks import run as bench


def test_policy_envs(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.setenv("GOMP_SPINCOUNT", "5")
    env = C.policy_env("lckernels")  # the user's environment: their choice stays
    assert env["OMP_WAIT_POLICY"] == "ACTIVE" and str(C.REPO_ROOT) in env["PYTHONPATH"]
    env = C.policy_env("omp-default")
    assert env["LCK_OMP_PASSIVE"] == "0"
    assert not {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME"} & set(env)
    with pytest.raises(ValueError, match="omp-default"):
        C.policy_env("spin-forever")


def test_unknown_policy_is_a_cli_error(capsys):
    assert bench.main(["--op", "rl_step", "--contention", "--contention-policies", "nope"]) == 2
    assert "unknown contention policy" in capsys.readouterr().err


def test_competitor_runs_until_stopped(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    comp = C.Competitor(threads=1, n=32).start()
    try:
        proc = comp.proc
        assert proc.poll() is None
        with open(f"/proc/{proc.pid}/environ", "rb") as f:  # someone else's job: no wait setting of ours
            env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        assert b"OMP_WAIT_POLICY" not in env
    finally:
        comp.stop()
    assert proc.poll() is not None and comp.proc is None


def _row(provider, phase, median, policy="lckernels", metric="time"):
    return {"op": "rl_step", "provider": f"{provider} [{policy}, {phase}]", "mode": "step", "metric": metric,
            "unit": "ms", "x_name": "hidden", "x_value": 32, "median": median, "p20": median * 0.9,
            "p80": median * 1.1, "device": "cpu (2 threads)", "commit": "abc", "config": "config=default",
            "policy": policy, "phase": phase, "wait_policy": "PASSIVE (lckernels_rl)", "competitor": "2-thread",
            "base_provider": provider}


def test_format_contention():
    rows = [_row("lckernels-fused", "alone", 100.0), _row("lckernels-fused", "contended", 230.0),
            {**_row("lckernels-fused", "ratio", 2.3, metric="contention_slowdown"), "unit": "x"}]
    table = C.format_contention(rows)
    assert "lckernels-fused" in table and "2.30x" in table and "PASSIVE (lckernels_rl)" in table
    assert "100.0" in table and "230.0" in table


@pytest.mark.slow
def test_contention_end_to_end_tiny(tmp_path, capsys):
    """The CLI at the smallest setting, our policy only: one worker alone, one beside the competitor (~1 min)."""
    out = tmp_path / "r.csv"
    rc = bench.main(["--op", "rl_step", "--contention", "--contention-policies", "lckernels",
                     "--contention-threads", "1", "--providers", "lckernels-fused", "--hidden", "32",
                     "--expert_ffn", "32", "--prompts", "2", "--rollouts", "4", "--repeats", "1", "--warmup", "0",
                     "--out", str(out)])
    assert rc == 0
    table = capsys.readouterr().out
    assert "slowdown" in table and "lckernels-fused" in table
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    provs = {r["provider"] for r in rows}
    assert {"lckernels-fused [lckernels, alone]", "lckernels-fused [lckernels, contended]",
            "lckernels-fused [lckernels]"} <= provs
    slow = [r for r in rows if r["metric"] == "contention_slowdown"]
    assert len(slow) == 1 and float(slow[0]["median"]) > 0 and slow[0]["unit"] == "x"
    assert os.environ.get("LCK_OMP_PASSIVE") is None  # the harness's own environment is left alone
