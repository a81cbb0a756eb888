"""pytest-benchmark suite for ``fused_policy_loss``: every available provider x mode at one moderate shape.

``pytest benchmarks/test_bench_policy_loss.py --benchmark-only`` shows the providers side by side per mode; the
issue's full shape (N = 4096, D = 1024, V = 32000) with ratios and peak memory is
``python -m benchmarks.run --op fused_policy_loss``.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.common import bench_call
from benchmarks.ops import policy_loss as P

pytest.importorskip("pytest_benchmark")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PARAMS = {"T": 256, "V": 32000, "D": 512, "dtype": "float32"}
N = 1024


@pytest.fixture(scope="module")
def inputs():
    return P.make_inputs(N, PARAMS, DEVICE)


@pytest.mark.parametrize("mode", P.MODES)
@pytest.mark.parametrize("provider", P.available_providers(DEVICE))
def test_fused_policy_loss(benchmark, inputs, provider, mode):
    benchmark.group = f"{P.OP} {mode} N={N} " + " ".join(f"{k}={v}" for k, v in PARAMS.items()) + f" {DEVICE}"
    benchmark.extra_info.update(op=P.OP, provider=provider, mode=mode, N=N, **PARAMS)
    fn = P.make_fn(provider, mode, inputs)
    bench_call(benchmark, fn, DEVICE)
