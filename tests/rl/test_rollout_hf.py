"""The HF ``generate`` rollout path (issue 17, part 3): it decodes with the KV cache, samples every live sequence of a
round in one ``generate`` call, and the update does not recompute what the rollout already has (one training forward
per update, no extra no-grad log-prob pass)."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("transformers")

from lckernels_rl.models import build_policy  # noqa: E402
from lckernels_rl.rollout import HFGenerateBackend  # noqa: E402
from lckernels_rl.train import Trainer  # noqa: E402

from .test_trainer import TINY, kv_config, tiny_config  # noqa: E402


def _spy_generate(model, calls: list):
    real = model.generate

    def spy(*a, **k):
        calls.append(tuple(k["input_ids"].shape))
        model._in_generate = True
        try:
            return real(*a, **k)
        finally:
            model._in_generate = False
    model.generate = spy


def test_generate_decodes_with_the_kv_cache():
    """Prefill sees the whole (left-padded) prompt, every later step one new token per row, with a cache object
    passed to the attention layers -- not a re-run of the growing sequence."""
    from transformers import Cache

    model = build_policy("qwen3_moe", vocab_size=24, seed=0, **TINY["qwen3_moe"])
    seen = []

    def hook(mod, args, kwargs):
        h = kwargs.get("hidden_states", args[0] if args else None)
        seen.append((tuple(h.shape[:2]), any(isinstance(v, Cache) for v in kwargs.values())))
    handle = model.model.layers[0].self_attn.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        # EOS = id 23, masked from sampling (vocab_limit): every row runs the whole budget
        backend = HFGenerateBackend(model, eos_token_id=23, pad_token_id=0, vocab_limit=23)
        out = backend.generate([[5, 6, 7, 8], [9, 10]], [3, 2], max_new_tokens=4)
    finally:
        handle.remove()
    assert [len(r) for r in out.response_ids] == [4] * 5
    assert seen[0] == ((5, 4), True)                     # prefill: 5 rows x the padded prompt width
    assert seen[1:] == [((5, 1), True)] * 3               # 3 decode steps of one token per row, through the cache


def test_one_generate_call_per_step_for_all_rollouts(tmp_path):
    """A single-turn RL step samples all rollouts_per_step sequences in one generate call; the update then runs the
    policy forward exactly once with gradients (the on-policy old log-probs are that forward's, no extra pass)."""
    cfg = tiny_config(tmp_path, model={"arch": "qwen3_moe", "overrides": TINY["qwen3_moe"]}, sft={"steps": 0},
                      task={"eval_size": 0}, rl={"steps": 1, "prompts_per_step": 4, "rollouts_per_step": 16},
                      log={"eval_every": 0})
    tr = Trainer(cfg)
    calls, forwards = [], []
    _spy_generate(tr.model, calls)
    tr.model._in_generate = False
    handle = tr.model.model.register_forward_pre_hook(
        lambda mod, args: forwards.append((torch.is_grad_enabled(), tr.model._in_generate)))
    try:
        tr.fit()
    finally:
        handle.remove()
    assert len(calls) == 1 and calls[0][0] == 16          # one call, every rollout of the step
    outside = [g for g, in_gen in forwards if not in_gen]
    assert outside == [True]                              # one training forward, no no-grad recomputation


def test_multi_turn_rounds_batch_every_live_episode(tmp_path):
    """Multi-turn: one generate call per round, over exactly the episodes still running (the first round: all)."""
    tr = Trainer(kv_config(tmp_path, sft={"steps": 0}, task={"eval_size": 0}, log={"eval_every": 0},
                           rl={"steps": 1}))
    calls = []
    _spy_generate(tr.model, calls)
    tr.model._in_generate = False
    seen = []
    real_next = tr.source.next

    def next_(step):
        groups = real_next(step)
        seen.append(groups)
        return groups
    tr.source.next = next_
    tr.fit()
    trajs = seen[0].trajectories
    turns = [t.metrics["turns"] for t in trajs]
    assert calls[0][0] == len(trajs) == 8
    # round r samples every episode with more than r turns: the batch sizes are the live counts, in order
    assert [c[0] for c in calls] == [sum(n > r for n in turns) for r in range(max(turns))]


def test_generate_benchmark_runs_every_provider(tmp_path):
    """``python -m benchmarks.run --op generate`` at a toy size: every provider, time and tokens/s rows, the table."""
    from benchmarks import run as bench
    from benchmarks.ops import generate as G

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = bench.run("generate", hidden=[32], expert_ffn=32, prompts=2, rollouts=4, repeats=1, warmup=0,
                         memory=False, out=tmp_path / "r.csv", plot_dir=None, device="cpu")
    finally:
        torch.set_num_threads(threads)
    assert {(r["provider"], r["metric"]) for r in rows} == {(p, m) for p in G.PROVIDERS
                                                            for m in ("time", "tokens_per_s")}
    assert all(r["median"] > 0 for r in rows)
    table = bench.format_table(rows)
    assert all(p in table for p in G.PROVIDERS) and "xgrouped" in table


def test_sampler_draws_the_tempered_categorical():
    """The rollout's own sampler (inverse CDF inside a logits processor): over 40000 draws from one row of scores the
    frequencies match softmax(scores / T) within 5 sigma, a -inf token is never drawn, the recorded log-prob is that
    of the chosen token, and the returned row is one-hot (0 at the choice, -inf elsewhere) so greedy ``generate``
    picks it."""
    from lckernels_rl.rollout.hf import _SampleAndScore

    scores = torch.tensor([1.0, -0.5, 2.0, float("-inf"), 0.25, 0.0])
    T, n = 0.8, 40000
    probs = torch.exp(scores / T) / torch.exp(scores / T).sum()  # the oracle, from the formula
    torch.manual_seed(0)
    s = _SampleAndScore(T, greedy=False)
    out = s(None, scores.expand(n, -1).clone())
    idx = out.argmax(-1)
    assert torch.equal(out.isfinite().sum(-1), torch.ones(n, dtype=torch.long))
    assert (out.gather(-1, idx[:, None]) == 0).all()
    freq = torch.bincount(idx, minlength=6).double() / n
    assert freq[3] == 0
    sigma = (probs.double() * (1 - probs.double()) / n).sqrt()
    assert ((freq - probs.double()).abs() <= 5 * sigma + 1e-12).all(), (freq, probs)
    torch.testing.assert_close(s.logprobs[0], torch.log(probs)[idx], atol=1e-6, rtol=0)
    g = _SampleAndScore(T, greedy=True)
    assert g(None, scores[None].clone()).argmax(-1).item() == 2 and g.logprobs[0].item() == pytest.approx(
        math.log(probs[2].item()), abs=1e-6)
