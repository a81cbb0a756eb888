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


# fp32 on both sides; the GPU's GEMMs may block / split differently (and anchors such as Liger may use TF32)
RTOL = 1e-4 if DEVICE == "cpu" else 2e-3
NOT_THE_OP = {P.LIMIT}  # gemm-limit times the bare GEMMs: by design it does not compute the loss


@pytest.fixture(scope="module")
def inputs():
    return P.make_inputs(N, PARAMS, DEVICE)


@pytest.fixture(scope="module")
def reference(inputs):
    """The fp32 reference's outputs per mode (the loss; its gradients w.r.t. hidden and weight), computed once."""
    cache = {}

    def get(mode):
        if mode not in cache:
            cache[mode] = P.make_fn("lckernels-reference", mode, inputs)()
        return cache[mode]
    return get


@pytest.mark.parametrize("mode", P.MODES)
@pytest.mark.parametrize("provider", P.available_providers(DEVICE))
def test_fused_policy_loss(benchmark, inputs, reference, outputs_close, provider, mode):
    """Check one provider against the reference (the loss or both gradients), then time it."""
    benchmark.group = f"{P.OP} {mode} N={N} " + " ".join(f"{k}={v}" for k, v in PARAMS.items()) + f" {DEVICE}"
    benchmark.extra_info.update(op=P.OP, provider=provider, mode=mode, N=N, **PARAMS)
    fn = P.make_fn(provider, mode, inputs)
    if provider not in NOT_THE_OP:
        outputs_close(fn(), reference(mode), rtol=RTOL, name=f"{provider} {mode}")
    bench_call(benchmark, fn, DEVICE)
