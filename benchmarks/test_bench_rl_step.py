"""pytest-benchmark suite for ``rl_step``: one RL step of the end-to-end trainer per available provider.

``pytest benchmarks/test_bench_rl_step.py --benchmark-only`` times ``Trainer.fit(max_steps=1)`` on the bundled
default config (tiny LongCat-Flash MoE, 2-digit addition) at 32 prompts x 256 rollouts, hidden 128.  Each round is
a whole RL step (seconds on 2 cores), so the rounds are fixed rather than calibrated.  The median tokens/s of the
timed steps is in each test's ``extra_info``.  The sweep with tokens/s ratios, rollout / update split and peak
memory is ``python -m benchmarks.run --op rl_step``.
"""

from __future__ import annotations

import pytest

from benchmarks.ops import rl_step as R

pytest.importorskip("pytest_benchmark")

PARAMS = R.resolve_params({k: v for k, v in R.DEFAULTS.items() if k != R.X_NAME})  # the default config's preset
HIDDEN = 128
ROUNDS = 3


# step 1 of every provider starts from the same weights and samples the same batch (same seed); its update is the
# same math on different kernels (fused vs materialized logits, lckernels vs transformers experts), so its loss and
# gradient norms agree to float rounding
RTOL = 1e-4
COMPARED = ("loss", "grad_norm_lm_head", "grad_norm_rest", "reward_mean", "response_tokens")


@pytest.fixture(scope="module")
def inputs():
    return R.make_inputs(HIDDEN, PARAMS, "cpu")


@pytest.fixture(scope="module")
def reference(inputs):
    """Step 1 of the ``lckernels-reference`` provider (every lckernels op on its readable PyTorch path): its metrics
    and the fingerprint of the batch it sampled."""
    ref = R.make_fn("lckernels-reference", "step", inputs)
    try:
        return dict(ref.first), ref.first_batch
    finally:
        ref.close()


@pytest.mark.parametrize("provider", [p for p in R.available_providers("cpu") if R.unavailable(p, PARAMS) is None])
def test_rl_step(benchmark, inputs, reference, provider):
    benchmark.group = f"{R.OP} hidden={HIDDEN} " + " ".join(f"{k}={v}" for k, v in PARAMS.items())
    fn = R.make_fn(provider, "step", inputs)  # builds the trainer and runs the untimed step 1
    try:
        # before timing: step 1 sampled the reference's batch and computed the reference's update
        ref_metrics, ref_batch = reference
        assert fn.first_batch == ref_batch, f"{provider}: step 1 sampled a different batch than the reference"
        for key in COMPARED:
            got, want = fn.first[key], ref_metrics[key]
            assert got == pytest.approx(want, rel=RTOL, abs=1e-7), f"{provider} step 1 {key}: {got} != {want}"
        benchmark.pedantic(fn, rounds=ROUNDS, warmup_rounds=1, iterations=1)  # disabled: one untimed call
        timed = fn.history[-ROUNDS:] if benchmark.enabled else fn.history[-1:]
        tok_s = sorted(m["response_tokens"] / m["time_s"] for m in timed)
        benchmark.extra_info.update(op=R.OP, provider=provider, hidden=HIDDEN, **PARAMS,
                                    tokens_per_s=tok_s[len(tok_s) // 2], step1_batch=fn.first_batch)
    finally:
        fn.close()
