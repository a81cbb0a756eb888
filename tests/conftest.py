"""Shared test harness.

* Seeds every test.
* Fills ``torch.empty``/``torch.empty_like`` allocations with NaN (floats) or a huge sentinel (ints), so a tile a
  kernel forgot to write fails loudly instead of passing by luck with zeroed memory.
* Triton tests are marked ``interpreter``: they need a CUDA GPU, or ``TRITON_INTERPRET=1`` set *before* triton is
  imported (``make test-interpreter`` runs ``TRITON_INTERPRET=1 pytest -m interpreter``).  Without either they skip
  with that hint.  ``aot`` tests compile for sm_90/sm_80 and must run without the interpreter, so they skip under it.
* ``slow`` tests run only with ``LCK_SLOW_TESTS=1``.
"""

from __future__ import annotations

import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")
HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skip_interp = pytest.mark.skip(reason="Triton kernel test: needs a CUDA GPU or TRITON_INTERPRET=1 "
                                          "(run `make test-interpreter`)")
    skip_aot = pytest.mark.skip(reason="AOT compile test: run without TRITON_INTERPRET")
    skip_slow = pytest.mark.skip(reason="slow: set LCK_SLOW_TESTS=1")
    for item in items:
        if "interpreter" in item.keywords and not (HAS_CUDA or INTERPRET):
            item.add_marker(skip_interp)
        if "aot" in item.keywords and INTERPRET:
            item.add_marker(skip_aot)
        if "slow" in item.keywords and os.environ.get("LCK_SLOW_TESTS") != "1":
            item.add_marker(skip_slow)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def _poison(t: torch.Tensor) -> torch.Tensor:
    if t.numel() and not t.is_meta:
        if t.is_floating_point() or t.is_complex():
            t.fill_(float("nan"))
        elif t.dtype == torch.bool:
            t.fill_(True)
        else:
            t.fill_(torch.iinfo(t.dtype).max // 2 if t.dtype != torch.uint8 else 255)
    return t


@pytest.fixture(autouse=True)
def nan_fill_empty(monkeypatch):
    """Make uninitialized allocations poisonous for the duration of each test."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def empty(*args, **kwargs):
        return _poison(real_empty(*args, **kwargs))

    def empty_like(*args, **kwargs):
        return _poison(real_empty_like(*args, **kwargs))

    monkeypatch.setattr(torch, "empty", empty)
    monkeypatch.setattr(torch, "empty_like", empty_like)
    yield


@pytest.fixture
def kernel_device() -> str:
    """Where Triton kernels run in this session: the GPU if present, else CPU under the interpreter."""
    return "cuda" if HAS_CUDA else "cpu"
