"""pytest-benchmark suite for ``fused_logprobs``: every available provider x mode at one moderate shape.

Run ``pytest benchmarks/ --benchmark-only`` (add ``--benchmark-min-rounds=3`` to be quicker, or
``--benchmark-columns=min,median,max`` to trim the table).  Results are grouped per mode and shape, so the
providers appear side by side.  The sweep over N with ratios and peak memory is ``python -m benchmarks.run``.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.common import bench_call
from benchmarks.ops import logprobs as L

pytest.importorskip("pytest_benchmark")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
N, V, D, DTYPE = 1024, 32000, 512, "float32"


@pytest.fixture(scope="module")
def inputs():
    return L.make_inputs(N, {"V": V, "D": D, "dtype": DTYPE}, DEVICE)


@pytest.mark.parametrize("mode", L.MODES)
@pytest.mark.parametrize("provider", L.available_providers(DEVICE))
def test_fused_logprobs(benchmark, inputs, provider, mode):
    """Time one provider; the first call runs outside the timing (library / thread-pool warm-up)."""
    benchmark.group = f"{L.OP} {mode} N={N} V={V} D={D} {DTYPE} {DEVICE}"
    benchmark.extra_info.update(op=L.OP, provider=provider, mode=mode, N=N, V=V, D=D, dtype=DTYPE)
    fn = L.make_fn(provider, mode, inputs)
    bench_call(benchmark, fn, DEVICE)
