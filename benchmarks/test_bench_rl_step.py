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


@pytest.fixture(scope="module")
def inputs():
    return R.make_inputs(HIDDEN, PARAMS, "cpu")


@pytest.mark.parametrize("provider", [p for p in R.available_providers("cpu") if R.unavailable(p, PARAMS) is None])
def test_rl_step(benchmark, inputs, provider):
    benchmark.group = f"{R.OP} hidden={HIDDEN} " + " ".join(f"{k}={v}" for k, v in PARAMS.items())
    fn = R.make_fn(provider, "step", inputs)  # builds the trainer and runs the untimed step 1
    try:
        benchmark.pedantic(fn, rounds=ROUNDS, warmup_rounds=1, iterations=1)  # disabled: one untimed call
        timed = fn.history[-ROUNDS:] if benchmark.enabled else fn.history[-1:]
        tok_s = sorted(m["response_tokens"] / m["time_s"] for m in timed)
        benchmark.extra_info.update(op=R.OP, provider=provider, hidden=HIDDEN, **PARAMS,
                                    tokens_per_s=tok_s[len(tok_s) // 2], step1_batch=fn.first_batch)
    finally:
        fn.close()
