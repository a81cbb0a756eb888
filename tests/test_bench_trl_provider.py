"""``python -m benchmarks.run --op rl_step --vs trl`` (``benchmarks/ops/rl_step_trl.py``): TRL's GRPOTrainer beside
our Trainer.  Tiny sizes only; no timing is asserted (performance goals live in the benchmarks)."""

from __future__ import annotations

import csv
import types

import pytest

from benchmarks.ops import rl_step_trl as V

TINY = dict(config="qwen3_moe", hidden=[32], expert_ffn=32, prompts=2, rollouts=4)


def test_loss_type_and_batch_shape_mapping():
    """grpo's token aggregation picks TRL's loss_type; the batch must split evenly into TRL's num_generations."""
    from lckernels_rl.objectives import get_objective

    assert V.trl_loss_type(get_objective("grpo")) == "grpo"  # seq-mean-token-mean
    assert V.trl_loss_type(get_objective("grpo", loss_agg="token-mean")) == "bnpo"
    with pytest.raises(ValueError, match="kl_beta"):
        V.trl_loss_type(get_objective("grpo", kl_beta=0.1))
    with pytest.raises(ValueError, match="compares the grpo objective"):
        V.trl_loss_type(get_objective("dapo"))
    rl = types.SimpleNamespace(prompts_per_step=4, rollouts_per_step=32, allocator="uniform", max_new_tokens=4)
    assert V.batch_shape(rl) == (4, 8, 4)
    with pytest.raises(ValueError, match="num_generations"):
        V.batch_shape(types.SimpleNamespace(**{**vars(rl), "rollouts_per_step": 30}))
    with pytest.raises(ValueError, match="num_generations"):
        V.batch_shape(types.SimpleNamespace(**{**vars(rl), "allocator": "coba"}))


def test_unknown_provider_is_an_error():
    with pytest.raises(ValueError, match="choose from"):
        V.run_vs_trl(dict(TINY), providers=["nope"], repeats=1, warmup=0)


@pytest.mark.slow
def test_trl_and_ours_one_step_same_batch_shape(tmp_path, monkeypatch):
    """Both trainers at the tiniest size for one step, each in its own process: both give rows (CSV too), the same
    prompts x generations, cap and sequences per step; the ratio rows and the table are there."""
    pytest.importorskip("trl", reason="TRL is not installed (pip install 'lckernels[trl]')")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "r.csv"
    provs = [V.OURS, V.TRL]
    rows = V.run_vs_trl(dict(TINY), providers=provs, repeats=1, warmup=0, out=out, verbose=False)
    metrics = ("time", "tokens_per_s", "rollout_time", "update_time", "peak_rss", "step_mem")
    assert {(r["provider"], r["metric"]) for r in rows if r["provider"] in provs} == \
        {(p, m) for p in provs for m in metrics}
    assert all(r["median"] > 0 for r in rows if r["metric"] in ("time", "tokens_per_s", "peak_rss"))
    tok = {r["provider"]: r for r in rows if r["metric"] == "tokens_per_s"}
    assert tok[V.OURS]["batch"] == tok[V.TRL]["batch"] == {"prompts": 2, "generations": 2, "cap": 4}
    assert tok[V.OURS]["sequences"] == tok[V.TRL]["sequences"] == [4]
    assert all(0 < t <= 4 * 4 for r in tok.values() for t in r["tokens"])  # at most cap tokens per sequence
    assert tok[V.OURS]["setup"]["lr"] == tok[V.TRL]["setup"]["lr"]
    ratio = {r["metric"] for r in rows if r["provider"] == f"{V.OURS}/{V.TRL}"}
    assert ratio == {"tokens_per_s_ratio", "peak_rss_ratio", "step_mem_ratio"}
    with open(out, newline="") as f:
        written = list(csv.DictReader(f))
    assert len(written) == len(rows) and {w["op"] for w in written} == {"rl_step"}
    table = V.format_vs_trl(rows)
    assert all(p in table for p in provs) and "2 prompts x 2 generations, cap 4" in table
