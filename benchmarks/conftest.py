"""pytest settings for the benchmark suite (``pytest benchmarks/ --benchmark-only``).

The repository's ``pyproject.toml`` puts ``--benchmark-disable`` in ``addopts`` so that the unit tests never spend
time on statistics.  pytest-benchmark refuses ``--benchmark-only`` together with ``--benchmark-disable``
(a UsageError), so when ``--benchmark-only`` is given we switch benchmarks back on, exactly as if
``--benchmark-enable`` had been passed.  ``pytest benchmarks/`` without it runs every benchmark once, untimed
(a smoke test).
"""

from __future__ import annotations

import pytest
import torch


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark's own (trylast) pytest_configure reads the options
def pytest_configure(config):
    if config.getoption("benchmark_only", default=False) and config.getoption("benchmark_disable", default=False):
        config.option.benchmark_enable = True


def assert_outputs_close(got, ref, *, rtol: float, name: str = "") -> None:
    """A provider's outputs (a tensor, or a tuple of them: log-probs / loss, or the gradients) against the
    reference's: same structure and shapes, and max |got - ref| <= rtol * max |ref| per tensor (a max-norm relative
    error, so near-zero entries of a gradient do not need an absolute floor).  Called before anything is timed."""
    got = got if isinstance(got, (tuple, list)) else (got,)
    ref = ref if isinstance(ref, (tuple, list)) else (ref,)
    assert len(got) == len(ref), f"{name}: {len(got)} outputs, the reference has {len(ref)}"
    for i, (g, r) in enumerate(zip(got, ref)):
        g, r = g.detach().double().cpu(), r.detach().double().cpu()
        assert g.shape == r.shape, f"{name} output {i}: shape {tuple(g.shape)} != reference {tuple(r.shape)}"
        assert torch.isfinite(g).all(), f"{name} output {i}: non-finite values"
        err, scale = (g - r).abs().max().item(), r.abs().max().item()
        assert err <= rtol * scale, f"{name} output {i}: max |diff| {err:.3g} > {rtol:g} x max |ref| {scale:.3g}"


@pytest.fixture(scope="session")
def outputs_close():
    """:func:`assert_outputs_close` for the suites (a fixture, so no test imports this conftest)."""
    return assert_outputs_close
