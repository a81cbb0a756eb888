"""Smoke tests of the benchmark harness (``benchmarks/``): CSV layout, plots, table, errors, memory probe.

Tiny shapes only; no timing is asserted anywhere (performance goals live in the benchmarks, not in tests).
"""

from __future__ import annotations

import csv
import math
import sys

import pytest
import torch

from benchmarks import run as bench
from benchmarks.common import CSV_COLUMNS
from benchmarks.ops import logprobs as L

TINY = dict(N=[16, 32], V=300, D=32, dtype="float32")


def _read_csv(path):
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        return header, [dict(zip(header, row)) for row in reader]


def test_run_writes_csv_plots_and_table(tmp_path):
    out, plots = tmp_path / "results.csv", tmp_path / "plots"
    rows = bench.run("fused_logprobs", repeats=2, warmup=1, memory=False, out=out, plot_dir=plots, device="cpu",
                     **TINY)
    providers = L.available_providers("cpu")
    assert {"lckernels-cpu", "lckernels-reference", "torch-eager", "torch-chunked", "gemm-limit"} <= set(providers)

    header, written = _read_csv(out)
    assert tuple(header) == CSV_COLUMNS
    assert len(written) == len(rows) == len(providers) * len(L.MODES) * len(TINY["N"])
    got = {(r["provider"], r["mode"], int(r["x_value"])) for r in written}
    assert got == {(p, m, n) for p in providers for m in L.MODES for n in TINY["N"]}
    for r in written:
        assert (r["op"], r["metric"], r["unit"], r["x_name"]) == ("fused_logprobs", "time", "ms", "N")
        assert r["device"].startswith("cpu (") and r["commit"]
        assert all(math.isfinite(float(r[k])) and float(r[k]) > 0 for k in ("median", "p20", "p80"))

    for mode in L.MODES:
        png = plots / f"fused_logprobs_{mode}_time.png"
        assert png.is_file() and png.stat().st_size > 0
    assert not list(plots.glob("*peak_mem*"))

    table = bench.format_table(rows)
    for p in providers:
        assert p in table
    assert "t/torch-eager" in table and "t/gemm-limit" in table

    # a second run appends below the same header
    bench.run("fused_logprobs", providers=["torch-eager"], modes=["fwd"], repeats=1, memory=False, out=out,
              plot_dir=None, device="cpu", **TINY)
    header2, written2 = _read_csv(out)
    assert tuple(header2) == CSV_COLUMNS and len(written2) == len(written) + len(TINY["N"])


def test_peak_memory_row_for_one_provider(tmp_path):
    """One provider measured in a subprocess; its extra peak must cover the [N, V] logits it materializes, even
    while this (parent) process holds a lot of memory (Linux carries ru_maxrss across fork + exec)."""
    n, v = 256, 4096
    ballast = torch.ones(64 << 20)  # 256 MiB resident in the parent
    rows = bench.run("fused_logprobs", N=[n], V=v, D=32, modes=["fwd"], repeats=1, warmup=0,
                     memory=["torch-eager"], out=tmp_path / "r.csv", plot_dir=tmp_path / "plots", device="cpu")
    del ballast
    mem = [r for r in rows if r["metric"] == "peak_mem"]
    assert [(r["provider"], r["mode"], r["unit"]) for r in mem] == [("torch-eager", "fwd", "MiB")]
    assert mem[0]["median"] == mem[0]["p20"] == mem[0]["p80"]
    if sys.platform.startswith("linux"):
        assert mem[0]["median"] >= 0.9 * n * v * 4 / 2**20
    _, written = _read_csv(tmp_path / "r.csv")
    assert sum(r["metric"] == "peak_mem" for r in written) == 1
    assert (tmp_path / "plots" / "fused_logprobs_fwd_peak_mem.png").is_file()


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="unknown op 'nope'.*fused_logprobs"):
        bench.run("nope")
    with pytest.raises(ValueError, match="unknown provider"):
        bench.run("fused_logprobs", providers=["no-such"], out=None, plot_dir=None, **TINY)
    with pytest.raises(TypeError, match="unknown parameter"):
        bench.run("fused_logprobs", K=3, out=None, plot_dir=None)
    with pytest.raises(SystemExit):
        bench.main(["--op", "nope"])


def test_policy_loss_benchmark_runs_every_provider(tmp_path):
    from benchmarks.ops import policy_loss as P

    rows = bench.run("fused_policy_loss", N=[32], T=8, V=100, D=16, repeats=1, warmup=0, memory=False,
                     out=tmp_path / "r.csv", plot_dir=None, device="cpu")
    got = {(r["provider"], r["mode"]) for r in rows}
    assert got == {(p, m) for p in P.available_providers("cpu") for m in P.MODES}
    assert all(r["median"] > 0 for r in rows)


def test_rl_step_benchmark_runs_every_provider(tmp_path):
    """The end-to-end RL step at a toy size: every provider, the extra metrics, the same batch at step 1."""
    from benchmarks.ops import rl_step as R

    provs = ["lckernels-fused", "lckernels-reference", "hf-eager"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # toy ops: on a busy machine, 2 threads spin-wait for a core (4x slower)
    try:
        rows = bench.run("rl_step", hidden=[32], prompts=2, rollouts=4, providers=provs, repeats=1, warmup=0,
                         memory=False, out=tmp_path / "r.csv", plot_dir=None, device="cpu")
    finally:
        torch.set_num_threads(threads)
    metrics = ("time", "tokens_per_s", "rollout_time", "update_time")
    assert {(r["provider"], r["metric"]) for r in rows} == {(p, m) for p in provs for m in metrics}
    assert all(r["median"] > 0 and r["x_value"] == 32 for r in rows)
    tok = {r["provider"]: r for r in rows if r["metric"] == "tokens_per_s"}
    assert tok["lckernels-fused"]["unit"] == "tok/s"
    assert len({r["step1"] for r in tok.values()}) == 1  # same init, seed and batch at step 1
    _, written = _read_csv(tmp_path / "r.csv")
    assert len(written) == len(rows) and {r["op"] for r in written} == {"rl_step"}
    table = bench.format_table(rows)
    assert "step-1 batch identical across providers" in table and all(p in table for p in provs)
    assert R.unavailable("hf-grouped_mm", {**R.DEFAULTS, "config": "qwen3_moe"}) is None


def test_rl_step_presets_and_variants():
    """Parameters left at their default take the config's preset; an explicit value wins; the V=32000 variant is
    Qwen3-MoE with the model changes on top (no trainer is built)."""
    from benchmarks.ops import rl_step as R

    def resolved(config, **kw):
        p = R.resolve_params({**R.DEFAULTS, "config": config, **kw})
        return p["prompts"], p["rollouts"], p["expert_ffn"], p["sft"]

    assert resolved("default") == (32, 256, 0, 0)
    assert resolved("agent_kv_lookup") == (16, 128, 0, 100)
    assert resolved("agent_kv_lookup", sft=0, prompts=2) == (2, 128, 0, 0)
    assert resolved("qwen3_moe_v32k") == (4, 32, 256, 0)
    inp = R.make_inputs(512, {**R.DEFAULTS, "config": "qwen3_moe_v32k"})
    model = inp.config["model"]
    assert inp.arch == "qwen3_moe" and inp.state is None
    assert (model["tokenizer"], model["vocab_size"]) == ("bpe", 32000)
    assert model["overrides"] == {"num_experts": 64, "num_experts_per_tok": 8, "num_hidden_layers": 2,
                                  "hidden_size": 512, "moe_intermediate_size": 256}
    assert (inp.config["rl"]["prompts_per_step"], inp.config["rl"]["rollouts_per_step"]) == (4, 32)
    assert R.unavailable("hf-grouped_mm", {**R.DEFAULTS, "config": "qwen3_moe_v32k"}) is None
    assert "lm_head 32000" in R.describe({**R.DEFAULTS, "config": "qwen3_moe_v32k"})
    kv = R.make_inputs(48, {**R.DEFAULTS, "config": "agent_kv_lookup", "sft": 0})
    assert kv.config["model"]["overrides"]["hidden_size"] == 48 and kv.config["agent"]["parser"] == "compact"
    assert R.unavailable("hf-grouped_mm", {**R.DEFAULTS, "config": "agent_kv_lookup"})


def test_rl_step_multi_turn_config_with_warm_start(tmp_path):
    """agent_kv_lookup at a toy size, with a 2-step supervised warm-up shared by the providers: same step-1 batch."""
    from benchmarks.ops import rl_step as R

    provs = ["lckernels-fused", "hf-eager"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        inp = R.make_inputs(32, {**R.DEFAULTS, "config": "agent_kv_lookup", "prompts": 2, "rollouts": 4, "sft": 2})
        assert inp.state is not None and inp.config["sft"]["steps"] == 0
        rows = bench.run("rl_step", hidden=[32], config="agent_kv_lookup", prompts=2, rollouts=4, sft=2,
                         providers=provs, repeats=1, warmup=0, memory=False, out=tmp_path / "r.csv", plot_dir=None,
                         device="cpu")
    finally:
        torch.set_num_threads(threads)
    tok = {r["provider"]: r for r in rows if r["metric"] == "tokens_per_s"}
    assert set(tok) == set(provs) and len({r["step1"] for r in tok.values()}) == 1
    assert "sft=2" in rows[0]["config"] and "step-1 batch identical" in bench.format_table(rows)


@pytest.mark.parametrize("engine", ["scripted", "hf"])
def test_rollout_driver_benchmark_sync_and_async(tmp_path, engine):
    """One tiny budget per provider (local executors): both engines produce episodes and tokens; a bad engine name
    is a clear error."""
    rows = bench.run("rollout_driver", steps=[2], groups=2, group_size=2, tool_ms=1.0, train_ms=1.0, engine=engine,
                     max_new_tokens=2, providers=["sync", "async-s1-local"], repeats=1, warmup=0, memory=False,
                     out=tmp_path / "r.csv", plot_dir=None, device="cpu")
    eps = {r["provider"]: r["median"] for r in rows if r["metric"] == "episodes_per_s"}
    assert set(eps) == {"sync", "async-s1-local"} and all(v > 0 for v in eps.values())
    with pytest.raises(ValueError, match="engine must be"):
        bench.run("rollout_driver", steps=[1], engine="vllm", providers=["sync"], repeats=1, warmup=0, memory=False,
                  out=tmp_path / "r2.csv", plot_dir=None, device="cpu")
