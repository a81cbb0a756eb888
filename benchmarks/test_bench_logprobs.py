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


# fp32 on both sides; the GPU's GEMMs may block / split differently (and anchors such as Liger may use TF32)
RTOL = 1e-4 if DEVICE == "cpu" else 2e-3
NOT_THE_OP = {L.LIMIT}  # gemm-limit times the bare GEMMs: by design it does not compute the log-probs


@pytest.fixture(scope="module")
def inputs():
    return L.make_inputs(N, {"V": V, "D": D, "dtype": DTYPE}, DEVICE)


@pytest.fixture(scope="module")
def reference(inputs):
    """The fp32 reference's outputs per mode (log-probs; d(lp.sum())/d(hidden, weight)), computed once."""
    cache = {}

    def get(mode):
        if mode not in cache:
            cache[mode] = L.make_fn("lckernels-reference", mode, inputs)()
        return cache[mode]
    return get


@pytest.mark.parametrize("mode", L.MODES)
@pytest.mark.parametrize("provider", L.available_providers(DEVICE))
def test_fused_logprobs(benchmark, inputs, reference, outputs_close, provider, mode):
    """Check one provider against the reference (log-probs or both gradients), then time it; the first call runs
    outside the timing (library / thread-pool warm-up)."""
    benchmark.group = f"{L.OP} {mode} N={N} V={V} D={D} {DTYPE} {DEVICE}"
    benchmark.extra_info.update(op=L.OP, provider=provider, mode=mode, N=N, V=V, D=D, dtype=DTYPE)
    fn = L.make_fn(provider, mode, inputs)
    if provider not in NOT_THE_OP:
        outputs_close(fn(), reference(mode), rtol=RTOL, name=f"{provider} {mode}")
    bench_call(benchmark, fn, DEVICE)
