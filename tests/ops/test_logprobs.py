"""fused_logprobs: every backend against the fp32 reference, on values and both gradients, over edge cases."""

from __future__ import annotations

import pytest
import torch

import lckernels
from lckernels import _ext
from lckernels.ops.logprobs import logprobs_reference
from tests._spies import LargeTensorSpy
from tests.helpers import assert_close_fp32, assert_close_lowp

# id -> (leading shape of hidden/targets, D, V)
CASES = {
    "N1": ((1,), 16, 7),
    "V-ragged": ((37,), 48, 300),
    "BxT": ((2, 5), 32, 1000),
}


def make_inputs(lead, d, v, dtype, device="cpu", ignore=(), ignore_index=-100, scale=1.0):
    h = (torch.randn(*lead, d) * scale).to(dtype).to(device).requires_grad_()
    w = (torch.randn(v, d) / d ** 0.5 * 2.0).to(dtype).to(device).requires_grad_()
    y = torch.randint(0, v, lead)
    flat = y.view(-1)
    for i in ignore:
        if i < flat.numel():
            flat[i] = ignore_index
    return h, w, y.to(device)


def run(fn, h, w, y, temperature, ignore_index, with_entropy=True):
    """Values and gradients of sum(gl * lp + ge * ent) with fixed random upstream weights."""
    h.grad = w.grad = None
    out = fn(h, w, y, temperature, ignore_index)
    lp, ent = out
    gen = torch.Generator().manual_seed(1)
    gl = torch.randn(lp.shape, generator=gen).to(lp.device)
    ge = torch.randn(lp.shape, generator=gen).to(lp.device)
    loss = (gl * lp.float()).sum() + ((ge * ent.float()).sum() if with_entropy else 0.0)
    loss.backward()
    return lp.detach(), ent.detach(), h.grad.clone(), w.grad.clone()


def op(backend):
    def f(h, w, y, temperature, ignore_index):
        return lckernels.fused_logprobs(h, w, y, temperature=temperature, ignore_index=ignore_index,
                                        return_entropy=True, backend=backend)
    return f


def reference(h, w, y, temperature, ignore_index):
    return logprobs_reference(h, w, y, temperature, True, ignore_index)


def torch_same_dtype(h, w, y, temperature, ignore_index):
    """What PyTorch computes in the inputs' own low precision (the error budget for 16-bit inputs)."""
    logits = (h @ w.t()) / temperature
    logp = torch.log_softmax(logits, -1)
    valid = y != ignore_index
    lp = logp.gather(-1, torch.where(valid, y, 0).unsqueeze(-1)).squeeze(-1)
    ent = -(logp.exp() * logp).sum(-1)
    zero = torch.zeros_like(lp)
    return torch.where(valid, lp, zero), torch.where(valid, ent, zero)


def plain_logprobs(h, w, y, temperature=1.0):
    """The test's own oracle, independent of lckernels: fp64 log_softmax of explicit logits, gathered at ``y``."""
    logits = (h.detach().double().cpu() @ w.detach().double().cpu().t()) / temperature
    return torch.log_softmax(logits, -1).gather(-1, y.cpu().long().unsqueeze(-1)).squeeze(-1).float()


def check_against_reference(fn, lead, d, v, dtype, temperature=1.0, ignore=(), ignore_index=-100, device="cpu",
                            with_entropy=True):
    h, w, y = make_inputs(lead, d, v, dtype, device, ignore, ignore_index)
    got = run(fn, h, w, y, temperature, ignore_index, with_entropy)
    ref = run(reference, h, w, y, temperature, ignore_index, with_entropy)
    names = ("logprobs", "entropy", "grad_hidden", "grad_weight")
    for g, r, name in zip(got, ref, names):
        assert g.dtype == r.dtype, f"{name}: dtype {g.dtype} != reference {r.dtype}"
    if dtype == torch.float32:
        for g, r, name in zip(got, ref, names):
            assert_close_fp32(g, r, 1e-5, name)
    else:
        low = run(torch_same_dtype, h, w, y, temperature, ignore_index, with_entropy)
        for g, r, lo, name in zip(got, ref, low, names):
            assert_close_lowp(g, r, lo, atol=1e-5 * (1 + r.float().abs().max().item()), name=name)
    # masked positions: zero outputs and zero gradient rows
    mask = (y == ignore_index).cpu()
    if mask.any():
        assert (got[0].cpu()[mask] == 0).all() and (got[1].cpu()[mask] == 0).all()
        assert (got[2].cpu()[mask] == 0).all()
    return got


# ---------------------------------------------------------------------------------------------------------------------
# CPU path (C++ extension), its ATen fallback, and the reference itself
# ---------------------------------------------------------------------------------------------------------------------

@pytest.fixture(params=["ext", "aten-fallback"])
def cpu_impl(request, monkeypatch):
    """backend="cpu" with the C++ kernels, and backend="auto" with the extension hidden (streamed ATen fallback)."""
    if request.param == "ext":
        if not _ext.available():
            pytest.fail("lckernels._C is not built; run `make build`")
        return "cpu"
    monkeypatch.setattr(_ext, "load", lambda: None)
    monkeypatch.delenv("LCK_BACKEND", raising=False)
    return "auto"


@pytest.mark.filterwarnings("ignore:fused_logprobs. lckernels._C is not built")
@pytest.mark.parametrize("chunk", [None, "64"], ids=["chunk-auto", "chunk-64"])
@pytest.mark.parametrize("temperature", [1.0, 0.7], ids=["T1", "T0.7"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_cpu_matches_reference_fp32(cpu_impl, case, temperature, chunk, monkeypatch):
    if chunk:
        monkeypatch.setenv("LCK_VOCAB_CHUNK", chunk)
    lead, d, v = CASES[case]
    check_against_reference(op(cpu_impl), lead, d, v, torch.float32, temperature, ignore=(0, 3))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", ["V-ragged", "BxT"])
def test_cpu_low_precision(case, dtype, monkeypatch):
    monkeypatch.setenv("LCK_VOCAB_CHUNK", "128")
    lead, d, v = CASES[case]
    check_against_reference(op("cpu"), lead, d, v, dtype, 1.3, ignore=(2,))


def test_cpu_without_entropy_gradient():
    lead, d, v = CASES["V-ragged"]
    check_against_reference(op("cpu"), lead, d, v, torch.float32, 1.0, ignore=(1,), with_entropy=False)


def test_cpu_custom_ignore_index_and_all_ignored():
    lead, d, v = CASES["BxT"]
    check_against_reference(op("cpu"), lead, d, v, torch.float32, ignore=(0, 4, 7), ignore_index=-1)
    h, w, y = make_inputs(lead, d, v, torch.float32, ignore=range(10))
    lp, ent, gh, gw = run(op("cpu"), h, w, y, 1.0, -100)
    assert (lp == 0).all() and (ent == 0).all() and (gh == 0).all() and (gw == 0).all()


def test_cpu_int32_targets_and_noncontiguous_inputs():
    h, w, y = make_inputs((6, 4), 24, 90, torch.float32)
    ht = h.detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()  # strided [6, 4, 24] view
    lp = lckernels.fused_logprobs(ht, w, y.to(torch.int32), backend="cpu")
    ref = logprobs_reference(ht, w, y, 1.0)
    assert_close_fp32(lp, ref, 1e-5, "logprobs")


def test_empty_batch():
    h = torch.randn(0, 8, requires_grad=True)
    w = torch.randn(11, 8, requires_grad=True)
    lp, ent = lckernels.fused_logprobs(h, w, torch.zeros(0, dtype=torch.long), return_entropy=True, backend="cpu")
    assert lp.shape == (0,) and ent.shape == (0,)
    lp.sum().backward()
    assert h.grad.shape == (0, 8) and (w.grad == 0).all()


def test_forward_is_deterministic():
    h, w, y = make_inputs((64,), 32, 500, torch.float32)
    a = lckernels.fused_logprobs(h, w, y, backend="cpu")
    b = lckernels.fused_logprobs(h, w, y, backend="cpu")
    assert torch.equal(a, b)


def test_hand_computed_case():
    # two-token vocabulary, D = 1: logits (2h, -h) -> log p(target 0) = -log(1 + e^{-3h})
    h = torch.tensor([[1.0], [0.0]], requires_grad=True)
    w = torch.tensor([[2.0], [-1.0]])
    lp, ent = lckernels.fused_logprobs(h, w, torch.tensor([0, 1]), return_entropy=True, backend="cpu")
    expected = torch.tensor([-torch.log1p(torch.exp(torch.tensor(-3.0))).item(), -torch.log(torch.tensor(2.0)).item()])
    torch.testing.assert_close(lp, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ent[1], torch.log(torch.tensor(2.0)), rtol=1e-6, atol=1e-6)  # uniform over 2


@pytest.mark.filterwarnings("ignore:fused_logprobs. lckernels._C is not built")
def test_streaming_never_builds_full_logits(monkeypatch):
    """No ATen op of the CPU path (forward and backward, C++ extension and ATen fallback alike) produces a tensor of
    N x V elements: the logits exist only in [N, chunk] tiles.  D < N keeps grad_weight [V, D] under the bound."""
    monkeypatch.setenv("LCK_VOCAB_CHUNK", "64")
    n, d, v = 40, 16, 1000
    for hide_ext in (False, True):
        if hide_ext:
            monkeypatch.setattr(_ext, "load", lambda: None)
        h, w, y = make_inputs((n,), d, v, torch.float32)
        with LargeTensorSpy(threshold=n * v) as spy:
            lp, ent = lckernels.fused_logprobs(h, w, y, return_entropy=True, backend="auto" if hide_ext else "cpu")
            (lp.sum() + ent.sum()).backward()
        assert spy.saw_matmul, "the spy saw no GEMM: it was not watching the op"
        spy.assert_none()
        torch.testing.assert_close(lp.detach(), plain_logprobs(h, w, y), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("build", [
    lambda h, w: torch.mm(h, w.t()),
    lambda h, w: h @ w.t(),
    lambda h, w: torch.matmul(h, w.t()),
    lambda h, w: torch.addmm(torch.zeros(()), h, w.t()),
    lambda h, w: torch.nn.functional.linear(h, w),
    lambda h, w: torch.Tensor.__matmul__(h, w.t()),
    lambda h, w: torch.zeros(h.shape[0], w.shape[0]),                    # a bare [N, V] buffer, no GEMM at all
    lambda h, w: logprobs_reference(h, w, torch.zeros(h.shape[0], dtype=torch.long)),
], ids=["mm", "@", "matmul", "addmm", "F.linear", "Tensor.__matmul__", "zeros-buffer", "reference-op"])
def test_the_logits_spy_catches_every_way_of_building_them(build):
    """The spy of the test above has teeth: each spelling of h @ W.T (and the materializing reference) is caught."""
    n, d, v = 40, 16, 1000
    h, w = torch.randn(n, d), torch.randn(v, d)
    with LargeTensorSpy(threshold=n * v) as spy:
        build(h, w)
    assert spy.hits and (n, v) in [s for _, s in spy.hits]
    with pytest.raises(AssertionError, match="produced a tensor"):
        spy.assert_none()


# ---------------------------------------------------------------------------------------------------------------------
# dispatch and validation
# ---------------------------------------------------------------------------------------------------------------------

def _used_fused_kernel(t: torch.Tensor) -> bool:
    """Whether the autograd graph of ``t`` goes through the fused op (and not the reference's log_softmax)."""
    seen, stack = set(), [t.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if "FusedLogprobs" in type(fn).__name__:
            return True
        stack.extend(f for f, _ in fn.next_functions)
    return False


def test_lck_backend_env_overrides_auto(monkeypatch):
    h, w, y = make_inputs((3,), 8, 20, torch.float32)
    monkeypatch.setenv("LCK_BACKEND", "reference")
    assert not _used_fused_kernel(lckernels.fused_logprobs(h, w, y))
    monkeypatch.setenv("LCK_BACKEND", "cpu")
    assert _used_fused_kernel(lckernels.fused_logprobs(h, w, y))
    # an explicit argument wins over the environment
    assert not _used_fused_kernel(lckernels.fused_logprobs(h, w, y, backend="reference"))
    monkeypatch.setenv("LCK_BACKEND", "tpu")
    with pytest.raises(ValueError, match="LCK_BACKEND"):
        lckernels.fused_logprobs(h, w, y)


def test_explicit_cpu_without_extension_says_how_to_rebuild(monkeypatch):
    monkeypatch.setattr(_ext, "load", lambda: None)
    h, w, y = make_inputs((3,), 8, 20, torch.float32)
    with pytest.raises(RuntimeError, match="make build"):
        lckernels.fused_logprobs(h, w, y, backend="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")
def test_triton_on_cpu_tensors_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    h, w, y = make_inputs((3,), 8, 20, torch.float32)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        lckernels.fused_logprobs(h, w, y, backend="triton")


def test_bad_backend_name():
    h, w, y = make_inputs((3,), 8, 20, torch.float32)
    with pytest.raises(ValueError, match="backend must be one of"):
        lckernels.fused_logprobs(h, w, y, backend="cuda")


@pytest.mark.parametrize(
    "mutate, exc, match",
    [
        (lambda h, w, y: (h.long(), w, y), TypeError, "`hidden` must have dtype"),
        (lambda h, w, y: (h, w.int(), y), TypeError, "`weight` must have dtype"),
        (lambda h, w, y: (h, w.half(), y), TypeError, "must match `hidden` dtype"),
        (lambda h, w, y: (h, w, y.float()), TypeError, "`targets` must have dtype"),
        (lambda h, w, y: (h, w[:, :5], y), ValueError, r"`weight` must be \[V, D\]"),
        (lambda h, w, y: (h, w, y[:, :2]), ValueError, "`targets` must have shape"),
        (lambda h, w, y: (h[0, 0], w, y), ValueError, "`hidden` must be 2-D or 3-D"),
        (lambda h, w, y: (h, w, y.clone().fill_(20)), ValueError, r"`targets` must lie in \[0, 20\)"),
        (lambda h, w, y: (h, w, y.clone().fill_(-5)), ValueError, "ignore_index=-100"),
        (lambda h, w, y: (h, w.to("meta"), y), ValueError, "one device"),
        (lambda h, w, y: ("h", w, y), TypeError, "`hidden` must be a torch.Tensor"),
    ],
    ids=["int-hidden", "int-weight", "dtype-mismatch", "float-targets", "D-mismatch", "targets-shape", "1-D-hidden",
         "target-too-big", "target-negative", "device-mismatch", "not-a-tensor"],
)
def test_bad_input_raises_clear_error(mutate, exc, match):
    h, w, y = make_inputs((2, 3), 8, 20, torch.float32)
    args = mutate(h.detach(), w.detach(), y)
    with pytest.raises(exc, match=match):
        lckernels.fused_logprobs(*args, backend="cpu")


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), "1"])
def test_bad_temperature(temperature):
    h, w, y = make_inputs((3,), 8, 20, torch.float32)
    with pytest.raises((ValueError, TypeError), match="temperature"):
        lckernels.fused_logprobs(h, w, y, temperature=temperature)


# ---------------------------------------------------------------------------------------------------------------------
# Triton kernels (GPU, or CPU under TRITON_INTERPRET=1; fp32/fp16 only there: bf16 tl.dot is wrong in the interpreter)
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.interpreter
@pytest.mark.parametrize("temperature", [1.0, 0.7], ids=["T1", "T0.7"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_triton_matches_reference_fp32(case, temperature, kernel_device):
    lead, d, v = CASES[case]
    check_against_reference(op("triton"), lead, d, v, torch.float32, temperature, ignore=(0, 3),
                            device=kernel_device)


@pytest.mark.interpreter
@pytest.mark.parametrize("case", ["V-ragged", "BxT"])
def test_triton_low_precision_fp16(case, kernel_device):
    lead, d, v = CASES[case]
    check_against_reference(op("triton"), lead, d, v, torch.float16, 1.3, ignore=(2,), device=kernel_device)


@pytest.mark.interpreter
@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 tl.dot is wrong under the Triton interpreter")
def test_triton_low_precision_bf16(kernel_device):
    lead, d, v = CASES["BxT"]
    check_against_reference(op("triton"), lead, d, v, torch.bfloat16, 1.0, ignore=(2,), device=kernel_device)


@pytest.mark.interpreter
def test_triton_edge_cases(kernel_device):
    lead, d, v = CASES["V-ragged"]
    check_against_reference(op("triton"), lead, d, v, torch.float32, 1.0, ignore=(1,), device=kernel_device,
                            with_entropy=False)
    h, w, y = make_inputs((5,), 16, 40, torch.float32, kernel_device, ignore=range(5))
    lp, ent, gh, gw = run(op("triton"), h, w, y, 1.0, -100)
    assert (lp == 0).all() and (ent == 0).all() and (gh == 0).all() and (gw == 0).all()
    # the same hidden/weight with two target vectors that differ at every position: each call gathers its own
    # targets (values checked against a plain log_softmax gather, not only the shapes)
    ya = torch.arange(5, device=kernel_device) * 7 % 40
    yb = (ya + 13) % 40
    with torch.no_grad():
        a = lckernels.fused_logprobs(h, w, ya, backend="triton")
        b = lckernels.fused_logprobs(h, w, yb, backend="triton")
    torch.testing.assert_close(a.cpu(), plain_logprobs(h, w, ya), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.cpu(), plain_logprobs(h, w, yb), rtol=1e-5, atol=1e-5)
    assert (a - b).abs().min() > 1e-3  # the two calls differ where the targets do (no cached/reused result)


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_triton_shipped_configs(dtype, kernel_device, monkeypatch):
    """The tile shapes that run on GPUs (not only the small interpreter tile) give the reference's numbers."""
    from lckernels.ops.logprobs import triton as tk

    prec = "ieee" if dtype == torch.float32 else "tf32"
    for cfg in set(tk.configs_for(tk.FWD_CONFIGS, "fp32" if dtype == torch.float32 else "16bit", prec)):
        monkeypatch.setattr(tk, "INTERPRETER_CONFIG", cfg)
        monkeypatch.setattr(tk, "pick_config", lambda configs, n, dt, p, cfg=cfg: cfg)
        check_against_reference(op("triton"), (70,), 80, 300, dtype, 0.9, ignore=(5,), device=kernel_device)
