"""grouped_mm: every backend against the fp32 reference on the output and both gradients; empty groups, rows past
the last group, one group owning every row; bad offsets."""

from __future__ import annotations

import doctest

import pytest
import torch

import lckernels
import lckernels.ops.grouped_mm
from lckernels import _ext
from lckernels.ops.grouped_mm import grouped_mm_reference
from tests.helpers import assert_close_fp32, assert_close_lowp

NAMES = ("out", "grad_x", "grad_w")

# id -> (M, K, N, offsets)
CASES = {
    "basic": (50, 24, 40, [10, 22, 33, 50]),
    "empty-groups": (41, 16, 24, [0, 17, 17, 41, 41]),
    "rows-past-end": (30, 16, 32, [7, 19]),  # rows 19..29 belong to no group: zero output, zero gradient
    "one-group": (37, 32, 16, [0, 37, 37]),
    "single-row": (1, 16, 16, [1, 1]),
    "no-rows": (0, 16, 16, [0, 0]),
}


def make_inputs(case, dtype=torch.float32, device="cpu", transposed_w=False):
    m, k, n, offsets = CASES[case]
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(m, k, generator=gen).to(dtype).to(device).requires_grad_()
    if transposed_w:  # a [G, N, K] weight used as [G, K, N] through a view (the HF experts layout)
        w = (torch.randn(len(offsets), n, k, generator=gen) / k ** 0.5).to(dtype).to(device)
        w = w.requires_grad_().transpose(1, 2)
        w.retain_grad()
    else:
        w = (torch.randn(len(offsets), k, n, generator=gen) / k ** 0.5).to(dtype).to(device).requires_grad_()
    return x, w, torch.tensor(offsets, dtype=torch.int32, device=device)


def run(fn, x, w, offsets):
    x.grad = w.grad = None
    y = fn(x, w, offsets)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(2)).to(y.device)
    (y.float() * g).sum().backward()
    return y.detach(), x.grad.clone(), w.grad.clone()


def op(backend):
    return lambda x, w, offsets: lckernels.grouped_mm(x, w, offsets, backend=backend)


def torch_same_dtype(x, w, offsets):
    pieces, start = [], 0
    for g, end in enumerate(offsets.tolist()):
        pieces.append(x[start:end] @ w[g])
        start = end
    pieces.append(x.new_zeros(x.shape[0] - start, w.shape[2]))
    return torch.cat(pieces)


def check(fn, case, dtype=torch.float32, device="cpu", transposed_w=False):
    inputs = make_inputs(case, dtype, device, transposed_w)
    got = run(fn, *inputs)
    ref = run(grouped_mm_reference, *inputs)
    for g, r, name in zip(got, ref, NAMES):
        assert g.dtype == r.dtype, name
    if dtype == torch.float32:
        for g, r, name in zip(got, ref, NAMES):
            assert_close_fp32(g, r, 2e-5, name)
    else:
        low = run(torch_same_dtype, *inputs)
        for g, r, lo, name in zip(got, ref, low, NAMES):
            scale = r.float().abs().max().item() if r.numel() else 0.0
            assert_close_lowp(g, r, lo, atol=1e-5 * (1 + scale), name=name)
    end = CASES[case][3][-1]
    assert (got[0][end:] == 0).all() and (got[1][end:] == 0).all()  # rows of no group
    return got


@pytest.fixture(params=["ext", "aten-fallback"])
def cpu_impl(request, monkeypatch):
    """backend="cpu" with the C++ drivers, and backend="auto" with the extension hidden (a loop of torch.mm)."""
    if request.param == "ext":
        if not hasattr(_ext.load(), "grouped_mm_rows"):
            pytest.fail("lckernels._C (with grouped_mm) is not built; run `make build`")
        return "cpu"
    monkeypatch.setattr(_ext, "load", lambda: None)
    monkeypatch.delenv("LCK_BACKEND", raising=False)
    return "auto"


@pytest.mark.filterwarnings("ignore:grouped_mm. lckernels._C is not built")
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_cpu_matches_reference(cpu_impl, case):
    check(op(cpu_impl), case)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_cpu_low_precision(dtype):
    check(op("cpu"), "empty-groups", dtype)


def test_cpu_transposed_weight_view():
    check(op("cpu"), "basic", transposed_w=True)


def test_matches_torch_grouped_mm():
    x, w, offsets = make_inputs("empty-groups")
    ours = lckernels.grouped_mm(x, w, offsets, backend="cpu")
    theirs = torch._grouped_mm(x, w, offs=offsets)
    assert_close_fp32(ours, theirs, 1e-5, "out")


@pytest.mark.parametrize("offsets, match", [
    ([10, 5, 50], "non-decreasing"), ([10, 22, 51], "non-decreasing"), ([-1, 22, 50], "non-decreasing"),
    ([10, 50], "one entry per group"),
], ids=["decreasing", "past-M", "negative", "wrong-length"])
def test_bad_offsets(offsets, match):
    x, w, _ = make_inputs("basic")
    with pytest.raises(ValueError, match=match):
        lckernels.grouped_mm(x, w[:3], torch.tensor(offsets), backend="cpu")


@pytest.mark.parametrize("args, exc, match", [
    (lambda x, w, o: (x, w.half(), o), TypeError, "must match"),
    (lambda x, w, o: (x[:, :8], w, o), ValueError, "K = x.shape"),
    (lambda x, w, o: (x, w, o.float()), TypeError, "offsets"),
    (lambda x, w, o: (x, w[0], o), ValueError, "3-D"),
], ids=["dtype", "K", "offsets-dtype", "w-2d"])
def test_bad_input(args, exc, match):
    with pytest.raises(exc, match=match):
        lckernels.grouped_mm(*args(*make_inputs("basic")), backend="cpu")


def test_docstring_examples():
    result = doctest.testmod(lckernels.ops.grouped_mm, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_triton_matches_reference(case, dtype, kernel_device):
    check(op("triton"), case, dtype, kernel_device)


@pytest.mark.interpreter
def test_triton_transposed_weight_view(kernel_device):
    check(op("triton"), "basic", device=kernel_device, transposed_w=True)
