"""moe_experts / moe_route: every backend against the fp32 reference, on the output and all four gradients, over the
edge cases of routing (empty experts, all tokens to one expert, one token, top-1, identity experts only)."""

from __future__ import annotations

import doctest

import pytest
import torch
import torch.nn.functional as F

import lckernels
import lckernels.ops.moe
import lckernels.ops.moe.routing
from lckernels import _ext
from lckernels.ops.moe import moe_experts_reference
from lckernels.ops.moe.routing import permute, permute_torch
from tests.helpers import assert_close_fp32, assert_close_lowp

NAMES = ("out", "grad_hidden", "grad_top_k_weights", "grad_gate_up_proj", "grad_down_proj")

# id -> (T, H, I, E, k, Z, routing): routing "random" | "one-expert" (all to expert 1) | "sparse" (experts 0 and
# E-1 only: the others get no tokens) | "identity-only" (every slot an identity expert) | "mixed" (random over E + Z)
CASES = {
    "basic": (37, 24, 16, 5, 3, 0, "random"),
    "identity": (29, 16, 24, 4, 3, 2, "mixed"),
    "top1": (19, 16, 16, 4, 1, 0, "random"),
    "single-token": (1, 16, 8, 4, 2, 1, "mixed"),
    "one-expert": (21, 16, 16, 4, 2, 0, "one-expert"),
    "empty-experts": (23, 16, 16, 6, 2, 0, "sparse"),
    "identity-only": (9, 16, 8, 3, 2, 2, "identity-only"),
}


def make_index(t, e, k, z, routing, gen):
    if routing == "one-expert":
        idx = torch.full((t, k), 1)
    elif routing == "sparse":
        idx = torch.randint(0, 2, (t, k), generator=gen) * (e - 1)
    elif routing == "identity-only":
        idx = e + torch.randint(0, z, (t, k), generator=gen)
    else:
        n = e + (z if routing == "mixed" else 0)
        idx = torch.stack([torch.randperm(n, generator=gen)[:k] for _ in range(t)])
    return idx


def make_inputs(case, dtype=torch.float32, device="cpu", weight_dtype=torch.float32):
    t, h, i, e, k, z, routing = CASES[case]
    gen = torch.Generator().manual_seed(7)
    hidden = torch.randn(t, h, generator=gen)
    gate_up = torch.randn(e, 2 * i, h, generator=gen) / h ** 0.5
    down = torch.randn(e, h, i, generator=gen) / i ** 0.5
    weights = torch.rand(t, k, generator=gen) + 0.1
    idx = make_index(t, e, k, z, routing, gen)
    leaves = [x.to(dtype).to(device).requires_grad_() for x in (hidden, gate_up, down)]
    weights = weights.to(weight_dtype).to(device).requires_grad_()
    return leaves[0], idx.to(device), weights, leaves[1], leaves[2], z


def run(fn, hidden, idx, weights, gate_up, down, z):
    """Output and the gradients of sum(out * G) for a fixed random G."""
    for x in (hidden, weights, gate_up, down):
        x.grad = None
    out = fn(hidden, idx, weights, gate_up, down, z)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(out.device)
    (out.float() * g).sum().backward()
    # a weight no GEMM expert touched gets no .grad from the reference's autograd graph: that is a zero gradient
    return (out.detach(),) + tuple(x.grad.clone() if x.grad is not None else torch.zeros_like(x)
                                   for x in (hidden, weights, gate_up, down))


def op(backend):
    def f(hidden, idx, weights, gate_up, down, z):
        return lckernels.moe_experts(hidden, idx, weights, gate_up, down, num_identity_experts=z, backend=backend)
    return f


def reference(hidden, idx, weights, gate_up, down, z):
    return moe_experts_reference(hidden, idx, weights, gate_up, down, z)


def torch_same_dtype(hidden, idx, weights, gate_up, down, z):
    """The reference loop in the inputs' own precision (the error budget for 16-bit inputs)."""
    e, inter = gate_up.shape[0], gate_up.shape[1] // 2
    out = torch.zeros_like(hidden)
    for ex in range(e + z):
        token, slot = torch.where(idx == ex)
        if token.numel() == 0:
            continue
        x = hidden[token]
        if ex < e:
            gu = x @ gate_up[ex].t()
            y = (F.silu(gu[:, :inter]) * gu[:, inter:]) @ down[ex].t()
        else:
            y = x
        out = out.index_add(0, token, y * weights[token, slot, None].to(hidden.dtype))
    return out


def check(fn, case, dtype=torch.float32, device="cpu", weight_dtype=torch.float32, rtol=1e-5):
    inputs = make_inputs(case, dtype, device, weight_dtype)
    got = run(fn, *inputs)
    ref = run(reference, *inputs)
    for g, r, name in zip(got, ref, NAMES):
        assert g.dtype == r.dtype, f"{name}: dtype {g.dtype} != reference {r.dtype}"
        assert g.device == r.device, name
    if dtype == torch.float32:
        for g, r, name in zip(got, ref, NAMES):
            assert_close_fp32(g, r, rtol, name)
    else:
        low = run(torch_same_dtype, *inputs)
        for g, r, lo, name in zip(got, ref, low, NAMES):
            assert_close_lowp(g, r, lo, atol=1e-5 * (1 + r.float().abs().max().item()), name=name)
    return got, inputs


# ---------------------------------------------------------------------------------------------------------------------
# CPU path (C++ glue) and its ATen fallback
# ---------------------------------------------------------------------------------------------------------------------

@pytest.fixture(params=["ext", "aten-fallback"])
def cpu_impl(request, monkeypatch):
    """backend="cpu" with the C++ drivers, and backend="auto" with the extension hidden (ATen loop)."""
    if request.param == "ext":
        if not _ext.available() or not hasattr(_ext.load(), "moe_experts_fwd"):
            pytest.fail("lckernels._C (with the moe kernels) is not built; run `make build`")
        return "cpu"
    monkeypatch.setattr(_ext, "load", lambda: None)
    monkeypatch.delenv("LCK_BACKEND", raising=False)
    return "auto"


@pytest.mark.filterwarnings("ignore:moe_experts. lckernels._C is not built")
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_cpu_matches_reference_fp32(cpu_impl, case):
    got, (hidden, idx, *_rest, z) = check(op(cpu_impl), case)
    if CASES[case][-1] == "identity-only":  # no GEMM expert used: their weight gradients are exactly zero
        assert (got[3] == 0).all() and (got[4] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", ["basic", "identity"])
def test_cpu_low_precision(case, dtype):
    check(op("cpu"), case, dtype)  # top_k_weights stay fp32 (as routers produce them); grads keep each dtype


def test_cpu_low_precision_weights_dtype():
    check(op("cpu"), "identity", torch.bfloat16, weight_dtype=torch.bfloat16)


def test_cpu_deterministic():
    """Same inputs twice -> bit-identical output and gradients (fixed-order combine, per-expert dW written once)."""
    inputs = make_inputs("identity")
    a = run(op("cpu"), *inputs)
    b = run(op("cpu"), *inputs)
    for x, y, name in zip(a, b, NAMES):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_no_grad_forward_matches(backend):
    """Inference (no autograd: nothing saved for a backward) gives the very same output as the training forward."""
    hidden, idx, weights, gate_up, down, z = make_inputs("identity")
    train = lckernels.moe_experts(hidden, idx, weights, gate_up, down, num_identity_experts=z, backend=backend)
    with torch.no_grad():
        infer = lckernels.moe_experts(hidden, idx, weights, gate_up, down, num_identity_experts=z, backend=backend)
    assert not infer.requires_grad and torch.equal(infer, train.detach())


def test_cpu_partial_requires_grad_and_int32_index():
    hidden, idx, weights, gate_up, down, z = make_inputs("identity")
    hidden = hidden.detach()
    down = down.detach()
    out = lckernels.moe_experts(hidden, idx.to(torch.int32), weights, gate_up, down, num_identity_experts=z,
                                backend="cpu")
    ref = moe_experts_reference(hidden, idx, weights, gate_up, down, z)
    assert_close_fp32(out, ref, 1e-5, "out")
    gw, ggu = torch.autograd.grad(out.square().sum(), (weights, gate_up))
    rw, rgu = torch.autograd.grad(ref.square().sum(), (weights, gate_up))
    assert_close_fp32(gw, rw, 1e-5, "grad_top_k_weights")
    assert_close_fp32(ggu, rgu, 1e-5, "grad_gate_up_proj")


def test_cpu_noncontiguous_inputs():
    hidden, idx, weights, gate_up, down, z = make_inputs("basic")
    gate_up_t = gate_up.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()  # strided view
    hidden_t = hidden.detach().t().contiguous().t()
    out = lckernels.moe_experts(hidden_t, idx, weights, gate_up_t, down, backend="cpu")
    ref = moe_experts_reference(hidden_t, idx, weights, gate_up_t, down)
    assert_close_fp32(out, ref, 1e-5, "out")


def test_empty_batch():
    hidden = torch.randn(0, 16, requires_grad=True)
    gate_up = torch.randn(2, 8, 16, requires_grad=True)
    down = torch.randn(2, 16, 4, requires_grad=True)
    w = torch.rand(0, 2, requires_grad=True)
    out = lckernels.moe_experts(hidden, torch.zeros(0, 2, dtype=torch.long), w, gate_up, down, backend="cpu")
    assert out.shape == (0, 16)
    out.sum().backward()
    assert (gate_up.grad == 0).all() and (down.grad == 0).all()


# ---------------------------------------------------------------------------------------------------------------------
# the permutation
# ---------------------------------------------------------------------------------------------------------------------

def test_permutation_cpp_matches_torch_and_is_stable():
    gen = torch.Generator().manual_seed(0)
    t, k, e, z = 50, 4, 6, 2
    idx = torch.stack([torch.randperm(e + z, generator=gen)[:k] for _ in range(t)])
    idx[:, 0] = 5  # many tokens on one expert
    ext = _ext.require("moe_experts")
    p = permute(ext, idx, e, z)
    q = permute_torch(idx, e)
    routed = int(q.offsets[-1])
    assert torch.equal(p.offsets, q.offsets) and torch.equal(p.row_of_slot, q.row_of_slot)
    assert torch.equal(p.sorted_slot, q.sorted_slot[:routed]) and torch.equal(p.sorted_token, q.sorted_token[:routed])
    flat = idx.reshape(-1)
    assert torch.equal(flat[p.sorted_slot], torch.sort(flat[flat < e]).values)  # grouped by expert
    start = 0
    for end in p.offsets.tolist():  # stable: token order inside each expert
        assert bool((p.sorted_slot[start:end].diff() > 0).all())
        start = end
    routed_slots = (flat < e).nonzero().squeeze(1)
    assert torch.equal(p.sorted_slot[p.row_of_slot[routed_slots]], routed_slots)  # inverse permutation
    assert bool((p.row_of_slot[flat >= e] == -1).all())


def test_permutation_cpp_rejects_out_of_range():
    ext = _ext.require("moe_experts")
    with pytest.raises(RuntimeError, match="must lie in"):
        ext.moe_permute(torch.tensor([[0, 7]]), 4, 2)


# ---------------------------------------------------------------------------------------------------------------------
# moe_route
# ---------------------------------------------------------------------------------------------------------------------

def test_route_softmax_renormalize_matches_mixtral_qwen3():
    logits = torch.randn(11, 8, requires_grad=True)
    w, idx = lckernels.moe_route(logits, 2, renormalize=True)
    probs = torch.softmax(logits.float(), -1)
    top, top_idx = torch.topk(probs, 2, dim=-1)
    assert torch.equal(idx, top_idx)
    assert_close_fp32(w, top / top.sum(-1, keepdim=True), 1e-6, "weights")
    w.sum().backward()  # differentiable w.r.t. the logits
    assert logits.grad is not None


def test_route_bias_and_scaling_match_longcat():
    """Choice on scores + correction_bias, weights = unbiased scores * scaling (LongCat-Flash / DeepSeek-V3)."""
    logits = torch.randn(9, 6)
    bias = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 10.0])  # expert 5 always chosen
    w, idx = lckernels.moe_route(logits, 3, correction_bias=bias, scaling=2.5)
    scores = torch.softmax(logits, -1)
    assert bool((idx[:, 0] == 5).all())
    assert_close_fp32(w, scores.gather(1, idx) * 2.5, 1e-6, "weights")


def test_route_sigmoid_hand_computed():
    logits = torch.tensor([[0.0, 2.0, -1.0]])
    w, idx = lckernels.moe_route(logits, 2, score="sigmoid", renormalize=True)
    s1, s0 = torch.sigmoid(torch.tensor(2.0)), torch.sigmoid(torch.tensor(0.0))  # 0.881, 0.5
    assert idx.tolist() == [[1, 0]]
    assert torch.allclose(w, torch.stack([s1, s0]).view(1, 2) / (s1 + s0))


@pytest.mark.parametrize("kwargs, match", [
    (dict(top_k=0), "top_k"), (dict(top_k=9), "top_k"), (dict(top_k=2, score="relu"), "score"),
    (dict(top_k=2, correction_bias=torch.zeros(7)), "correction_bias"),
], ids=["k0", "k-too-big", "bad-score", "bias-shape"])
def test_route_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lckernels.moe_route(torch.randn(4, 8), **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------------------------------

def _args(**over):
    hidden, idx, weights, gate_up, down, z = make_inputs("identity")
    args = dict(hidden=hidden, top_k_index=idx, top_k_weights=weights, gate_up_proj=gate_up, down_proj=down,
                num_identity_experts=z)
    args.update(over)
    return args


@pytest.mark.parametrize("over, exc, match", [
    (dict(top_k_index=torch.full((29, 3), 6)), ValueError, r"must lie in \[0, 6\)"),
    (dict(top_k_index=torch.full((29, 3), -1)), ValueError, "must lie in"),
    (dict(num_identity_experts=0), ValueError, r"must lie in \[0, 4\)"),
    (dict(down_proj=torch.randn(5, 16, 24)), ValueError, "mismatched expert counts"),
    (dict(down_proj=torch.randn(4, 16, 12)), ValueError, "down_proj"),
    (dict(gate_up_proj=torch.randn(4, 48, 8)), ValueError, "gate_up_proj"),
    (dict(gate_up_proj=torch.randn(4, 48, 16, dtype=torch.float64)), TypeError, "gate_up_proj"),
    (dict(down_proj=torch.randn(4, 16, 24).half()), TypeError, "must match"),
    (dict(top_k_index=torch.zeros(29, 3)), TypeError, "top_k_index"),
    (dict(top_k_weights=torch.rand(29, 2)), ValueError, r"\[T, k\]"),
    (dict(num_identity_experts=-1), ValueError, "num_identity_experts"),
    (dict(activation="gelu"), ValueError, "silu"),
], ids=["index-too-big", "index-negative", "identity-not-declared", "expert-count", "down-shape", "hidden-size",
        "fp64", "dtype-mismatch", "float-index", "weights-shape", "negative-identity", "activation"])
def test_bad_input(over, exc, match):
    with pytest.raises(exc, match=match):
        lckernels.moe_experts(**_args(**over), backend="cpu")


def test_triton_on_cpu_without_interpreter_is_an_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        lckernels.moe_experts(**_args(), backend="triton")


def test_docstring_examples():
    for module in (lckernels.ops.moe, lckernels.ops.moe.routing):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        assert result.attempted > 0 and result.failed == 0, module.__name__


# ---------------------------------------------------------------------------------------------------------------------
# Triton kernels (interpreter on CPU, or a GPU)
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_triton_matches_reference(case, dtype, kernel_device):
    check(op("triton"), case, dtype, kernel_device, rtol=2e-5)


@pytest.mark.interpreter
def test_triton_no_grad_forward(kernel_device):
    hidden, idx, weights, gate_up, down, z = make_inputs("identity", device=kernel_device)
    with torch.no_grad():
        out = lckernels.moe_experts(hidden, idx, weights, gate_up, down, num_identity_experts=z, backend="triton")
    assert_close_fp32(out, moe_experts_reference(hidden, idx, weights, gate_up, down, z), 2e-5, "out")


@pytest.mark.interpreter
def test_triton_deterministic(kernel_device):
    inputs = make_inputs("identity", device=kernel_device)
    a = run(op("triton"), *inputs)
    b = run(op("triton"), *inputs)
    for x, y, name in zip(a, b, NAMES):
        assert torch.equal(x, y), name


@pytest.mark.aot
def test_triton_kernels_pipeline_when_specialized():
    """The AOT test compiles with no alignment hints; at launch Triton specializes 16-aligned pointers and
    16-divisible sizes / strides.  Compiled that way, the 16-bit GEMM kernels must software-pipeline their loads
    (cp.async, several stages of shared memory) and still use wgmma -- the runtime variant that matters."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from lckernels.aot import SHARED_MEMORY_LIMIT
    from lckernels.ops.grouped_mm.triton import aot_specs as gmm_specs
    from lckernels.ops.moe.triton import aot_specs as moe_specs

    wanted = ("moe_gate_up[bf16-64x64x64-w4]", "grouped_mm_tn[bf16-64x128x64-w4-ga1-gb0]")
    specs = [s for s in gmm_specs() + moe_specs() if s["name"] in wanted]
    assert len(specs) == len(wanted)
    for spec in specs:
        names = list(spec["fn"].arg_names)
        attrs = {(names.index(n),): [["tt.divisibility", 16]] for n, t in spec["signature"].items()
                 if t != "constexpr"}
        src = ASTSource(fn=spec["fn"], signature=spec["signature"], constexprs=spec["constexprs"], attrs=attrs)
        k = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                           options={"num_warps": spec["num_warps"], "num_stages": spec["num_stages"]})
        ptx = k.asm["ptx"]
        assert "wgmma" in ptx and "cp.async" in ptx, spec["name"]
        assert 2 * 24576 <= k.metadata.shared <= SHARED_MEMORY_LIMIT[90], (spec["name"], k.metadata.shared)
