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


# Before timing, each provider's step 1 is compared with the lckernels-reference provider's (every lckernels op on
# its readable PyTorch path).  Step 1 of every provider starts from the same weights and samples the same batch (same
# seed); its update is the same math on different kernels (fused vs materialized logits, lckernels vs transformers
# experts), so the gradient norms agree to float rounding.  The on-policy loss is ~0 by construction (ratio 1,
# zero-mean group advantages): compared with an absolute tolerance.  At the random init of the timed config no
# episode is solved yet, so that step's update is zero: the comparison there covers the sampled batch only, and a
# small warmed-up configuration (CHECK_PARAMS: 20 supervised steps, some rewards, nonzero gradients) checks the update.
RTOL = 1e-4
LOSS_ATOL = 1e-6
CHECK_PARAMS = R.resolve_params({**{k: v for k, v in R.DEFAULTS.items() if k != R.X_NAME},
                                 "prompts": 8, "rollouts": 64, "sft": 20})


def _step1(provider: str, inputs) -> tuple[dict, str]:
    """Step 1's metrics and sampled-batch fingerprint of ``provider`` on ``inputs``."""
    fn = R.make_fn(provider, "step", inputs)
    try:
        return dict(fn.first), fn.first_batch
    finally:
        fn.close()


def assert_same_step(provider: str, got: tuple[dict, str], ref: tuple[dict, str], where: str) -> None:
    (m, batch), (r, ref_batch) = got, ref
    assert batch == ref_batch, f"{provider} ({where}): step 1 sampled a different batch than the reference"
    for key in ("response_tokens", "reward_mean"):
        assert m[key] == r[key], f"{provider} ({where}) step 1 {key}: {m[key]} != {r[key]}"
    for key in ("grad_norm_lm_head", "grad_norm_rest"):
        assert m[key] == pytest.approx(r[key], rel=RTOL, abs=1e-9), f"{provider} ({where}) {key}: {m[key]} != {r[key]}"
    assert abs(m["loss"] - r["loss"]) <= LOSS_ATOL, f"{provider} ({where}) loss: {m['loss']} != {r['loss']}"


@pytest.fixture(scope="module")
def inputs():
    return R.make_inputs(HIDDEN, PARAMS, "cpu")


@pytest.fixture(scope="module")
def check_inputs():
    return R.make_inputs(HIDDEN, CHECK_PARAMS, "cpu")


@pytest.fixture(scope="module")
def reference(inputs, check_inputs):
    ref = {"timed config": _step1("lckernels-reference", inputs),
           "warmed-up check config": _step1("lckernels-reference", check_inputs)}
    m = ref["warmed-up check config"][0]
    assert m["grad_norm_lm_head"] > 0 and m["grad_norm_rest"] > 0, "the check config's update is zero: no check"
    return ref


@pytest.mark.parametrize("provider", [p for p in R.available_providers("cpu") if R.unavailable(p, PARAMS) is None])
def test_rl_step(benchmark, inputs, check_inputs, reference, provider):
    benchmark.group = f"{R.OP} hidden={HIDDEN} " + " ".join(f"{k}={v}" for k, v in PARAMS.items())
    assert_same_step(provider, _step1(provider, check_inputs), reference["warmed-up check config"],
                     "warmed-up check config")
    fn = R.make_fn(provider, "step", inputs)  # builds the trainer and runs the untimed step 1
    try:
        assert_same_step(provider, (fn.first, fn.first_batch), reference["timed config"], "timed config")
        benchmark.pedantic(fn, rounds=ROUNDS, warmup_rounds=1, iterations=1)  # disabled: one untimed call
        timed = fn.history[-ROUNDS:] if benchmark.enabled else fn.history[-1:]
        tok_s = sorted(m["response_tokens"] / m["time_s"] for m in timed)
        benchmark.extra_info.update(op=R.OP, provider=provider, hidden=HIDDEN, **PARAMS,
                                    tokens_per_s=tok_s[len(tok_s) // 2], step1_batch=fn.first_batch)
    finally:
        fn.close()
