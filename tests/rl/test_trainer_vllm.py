"""The trainer with vLLM as the rollout engine (skipped unless vLLM is installed: ``pip install lckernels[vllm]``).

The engine's log-probs feed the rollout correction (HisPO here); weights are synced after every update in memory.
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("vllm")

from lckernels_rl.train import TrainConfig, Trainer  # noqa: E402


@pytest.fixture
def nan_fill_empty():  # vLLM allocates thousands of torch.empty buffers per generate; see test_rollout_vllm.py
    yield


@pytest.mark.parametrize("dtype, gap_max", [("float32", 1e-4), ("bfloat16", 0.2)])
def test_trainer_trains_with_vllm_rollouts(tmp_path, dtype, gap_max):
    cfg = TrainConfig.from_dict({
        "model": {"arch": "qwen3", "overrides": {"hidden_size": 64, "num_attention_heads": 1, "intermediate_size": 64}},
        "task": {"env_args": {"max_value": 9}, "train_size": 64, "eval_size": 8},
        "sft": {"steps": 2, "batch_size": 8},
        "rl": {"steps": 3, "prompts_per_step": 4, "rollouts_per_step": 16, "max_new_tokens": 3, "objective": "hispo",
               "reuse": 2},
        "rollout": {"backend": "vllm", "args": {"dtype": dtype}},
        "log": {"output_dir": str(tmp_path / "run"), "progress": False, "plots": False, "eval_every": 0},
    })
    tr = Trainer(cfg)
    try:
        with torch.compiler.set_stance("force_eager"):
            rows = [r for r in tr.fit() if r["phase"] == "rl"]
    finally:
        tr.close()
    assert len(rows) == 3
    for r in rows:
        assert r["rollouts"] == 16 and math.isfinite(r["loss"]) and r["updates"] == 2
        # the engine's log-probs vs the trainer's: fp32 agrees to summation order, bf16 carries a real mismatch
        assert r["rollout_logprob_gap"] < gap_max
    if dtype == "bfloat16":
        assert max(r["rollout_logprob_gap"] for r in rows) > 1e-4
