"""pytest settings for the benchmark suite (``pytest benchmarks/ --benchmark-only``).

The repository's ``pyproject.toml`` puts ``--benchmark-disable`` in ``addopts`` so that the unit tests never spend
time on statistics.  pytest-benchmark refuses ``--benchmark-only`` together with ``--benchmark-disable``
(a UsageError), so when ``--benchmark-only`` is given we switch benchmarks back on, exactly as if
``--benchmark-enable`` had been passed.  ``pytest benchmarks/`` without it runs every benchmark once, untimed
(a smoke test).
"""

from __future__ import annotations

import pytest


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark's own (trylast) pytest_configure reads the options
def pytest_configure(config):
    if config.getoption("benchmark_only", default=False) and config.getoption("benchmark_disable", default=False):
        config.option.benchmark_enable = True
