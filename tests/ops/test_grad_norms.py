"""grad_norms: every backend against torch.linalg.vector_norm per group, over edge cases; the monitor; bad inputs."""

from __future__ import annotations

import math
import re

import pytest
import torch

import lckernels
from lckernels.ops.grad_norms import grad_norms_reference, resolve_groups

CPU_BACKENDS = ["reference", "cpu"]


def oracle(grads: list[torch.Tensor], squared: bool = False) -> torch.Tensor:
    """torch.linalg.vector_norm of the concatenated fp64 gradients (the ground truth), as fp64."""
    if not grads:
        return torch.zeros((), dtype=torch.float64)
    n = torch.linalg.vector_norm(torch.cat([g.detach().double().flatten().cpu() for g in grads]))
    return n * n if squared else n


def params_with_grads(shapes, dtype=torch.float32, device="cpu", scale=1.0, no_grad=()):
    """Leaf parameters of the given shapes; those whose index is in ``no_grad`` keep ``.grad = None``."""
    ps = []
    for i, s in enumerate(shapes):
        p = torch.nn.Parameter(torch.randn(s).to(dtype).to(device))
        if i not in no_grad:
            p.grad = (torch.randn(s) * scale).to(dtype).to(device)
        ps.append(p)
    return ps


def check(out: dict, expected: dict[str, list[torch.Tensor]], squared=False, rtol=2e-6):
    assert list(out) == list(expected), f"group order {list(out)} != {list(expected)}"
    for g, grads in expected.items():
        v = out[g]
        assert isinstance(v, torch.Tensor) and v.dtype == torch.float32 and v.dim() == 0, f"{g}: {v!r}"
        ref = oracle(grads, squared)
        got = v.double().cpu()
        assert torch.isfinite(got), f"{g}: non-finite {got}"
        assert abs(got - ref) <= rtol * ref + 1e-30, f"{g}: {got.item()!r} != {ref.item()!r}"


# id -> shapes (1 large + many small tensors cover block tails; chunk/tail sizes are not multiples of anything)
CASES = {
    "single": [(37, 29)],
    "many-small+one-large": [(3,), (1,), (17, 5), (1000, 33), (2,), (7, 7, 3), (129,), (64,), (5, 1)],
    "exact-blocks": [(256,), (64, 4), (512,)],
}


# ---------------------------------------------------------------------------------------------------------------------
# reference and CPU backends
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("squared", [False, True], ids=["norm", "squared"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_dict_groups_match_vector_norm(backend, case, squared):
    ps = params_with_grads(CASES[case])
    groups = {"first": ps[:1], "rest": ps[1:], "all": ps, "empty": []}
    out = lckernels.grad_norms(groups, squared=squared, backend=backend)
    check(out, {k: [p.grad for p in v] for k, v in groups.items()}, squared)
    assert out["empty"].item() == 0.0


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_named_parameters_with_group_specs(backend):
    model = torch.nn.ModuleDict({
        "embed": torch.nn.Embedding(50, 16),
        "block": torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 16)),
        "norm": torch.nn.LayerNorm(16),
        "lm_head": torch.nn.Linear(16, 50, bias=False),
    })
    x = torch.randint(0, 50, (4, 7))
    model["lm_head"](model["norm"](model["block"](model["embed"](x)))).logsumexp(-1).sum().backward()
    named = dict(model.named_parameters())
    groups = {
        "lm_head": "lm_head",                                   # regex searched in the name
        "mlp": re.compile(r"^block\.\d+\.weight$"),             # compiled pattern
        "norm": ["norm.weight", "norm.bias"],                   # exact names
        "biases": lambda n: n.endswith(".bias"),                # predicate (overlaps with "norm": allowed)
        "rest": None,                                           # everything no other group takes
    }
    out = lckernels.grad_norms(model.named_parameters(), groups, backend=backend)
    expected = {
        "lm_head": [named["lm_head.weight"].grad],
        "mlp": [named["block.0.weight"].grad, named["block.2.weight"].grad],
        "norm": [named["norm.weight"].grad, named["norm.bias"].grad],
        "biases": [named[n].grad for n in ("block.0.bias", "block.2.bias", "norm.bias")],
        "rest": [named["embed.weight"].grad],
    }
    check(out, expected)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_params_without_grad_are_skipped_and_empty_groups_are_zero(backend):
    ps = params_with_grads([(10,), (20, 3), (5,)], no_grad=(1,))
    out = lckernels.grad_norms({"a": ps, "only_none": [ps[1]], "nothing": []}, backend=backend)
    check(out, {"a": [ps[0].grad, ps[2].grad], "only_none": [], "nothing": []})
    out = lckernels.grad_norms([], backend=backend)
    assert list(out) == ["total"] and out["total"].item() == 0.0


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_plain_iterables_gradients_and_tied_weights(backend):
    ps = params_with_grads([(4, 4), (9,)])
    # model.parameters()-style iterable -> one "total" group; a generator is consumed once
    check(lckernels.grad_norms((p for p in ps), backend=backend), {"total": [p.grad for p in ps]})
    # plain tensors (no requires_grad) are taken to be gradients themselves
    check(lckernels.grad_norms({"g": [p.grad for p in ps]}, backend=backend), {"g": [p.grad for p in ps]})
    # the same parameter listed twice in a group (tied weights) counts once; across groups it counts in each
    out = lckernels.grad_norms({"a": [ps[0], ps[0], ps[1]], "b": [ps[0]]}, backend=backend)
    check(out, {"a": [ps[0].grad, ps[1].grad], "b": [ps[0].grad]})


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_low_precision_grads_accumulate_in_fp32(backend, dtype):
    # 2e5 elements of ~300: an fp16 sum of squares would overflow (max 65504); fp32 accumulation is exact enough
    ps = params_with_grads([(200_000,), (3, 5)], dtype=dtype, scale=300.0)
    out = lckernels.grad_norms({"all": ps}, backend=backend)
    check(out, {"all": [p.grad for p in ps]}, rtol=1e-5)
    # mixed dtypes in one call
    mixed = params_with_grads([(100,)]) + ps
    check(lckernels.grad_norms({"all": mixed}, backend=backend), {"all": [p.grad for p in mixed]}, rtol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_nonfinite_and_noncontiguous_and_sparse(backend):
    p = torch.nn.Parameter(torch.zeros(6, 4))
    p.grad = torch.randn(4, 6).t()  # non-contiguous gradient
    check(lckernels.grad_norms([p], backend=backend), {"total": [p.grad]})
    q = torch.nn.Parameter(torch.zeros(3))
    q.grad = torch.tensor([1.0, float("nan"), 2.0])
    assert math.isnan(lckernels.grad_norms([q], backend=backend)["total"].item())
    emb = torch.nn.Embedding(10, 3, sparse=True)
    emb(torch.tensor([1, 1, 4])).sum().backward()
    assert emb.weight.grad.is_sparse
    check(lckernels.grad_norms([emb.weight], backend=backend), {"total": [emb.weight.grad.to_dense()]})


@pytest.mark.parametrize("backend", CPU_BACKENDS + [pytest.param("triton", marks=pytest.mark.interpreter)])
def test_every_backend_matches_plain_torch_and_is_deterministic(backend, kernel_device):
    """Each backend against the test's own sqrt(sum g^2) in fp64 (not against another backend), then bitwise equal
    to itself on a second call (the forward is deterministic)."""
    device = kernel_device if backend == "triton" else "cpu"
    ps = params_with_grads(CASES["many-small+one-large"], device=device)
    groups = {"x": ps, "y": ps[2:], "one": ps[3:4]}
    a = lckernels.grad_norms(groups, backend=backend)
    b = lckernels.grad_norms(groups, backend=backend)
    for k, members in groups.items():
        plain = sum((p.grad.detach().cpu().double() ** 2).sum() for p in members).sqrt()
        assert abs(a[k].double().cpu() - plain) <= 5e-6 * plain, f"{backend} {k}: {a[k].item()} != {plain.item()}"
        assert torch.equal(a[k], b[k]), f"{backend} {k}: two calls differ"


def test_reference_is_the_documented_formula():
    grads = [torch.tensor([3.0, 4.0]), torch.tensor([[12.0]])]
    out = grad_norms_reference({"g": grads, "e": []})
    assert out["g"].item() == 13.0 and out["e"].item() == 0.0


# ---------------------------------------------------------------------------------------------------------------------
# Triton kernel (interpreter on CPU, or a GPU)
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.interpreter
@pytest.mark.parametrize("squared", [False, True], ids=["norm", "squared"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_triton_matches_vector_norm(kernel_device, case, squared):
    ps = params_with_grads(CASES[case], device=kernel_device)
    groups = {"first": ps[:1], "all": ps, "tail": ps[-2:], "empty": []}
    out = lckernels.grad_norms(groups, squared=squared, backend="triton")
    check(out, {k: [p.grad for p in v] for k, v in groups.items()}, squared, rtol=5e-6)
    assert out["empty"].item() == 0.0


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=["fp16", "bf16", "fp64"])
def test_triton_low_precision_and_mixed_dtypes(kernel_device, dtype):
    ps = params_with_grads([(1000,), (3, 5)], dtype=dtype, scale=300.0, device=kernel_device)
    ps += params_with_grads([(77,)], device=kernel_device)  # an fp32 tensor in the same launch
    out = lckernels.grad_norms({"all": ps, "low": ps[:2]}, backend="triton")
    check(out, {"all": [p.grad for p in ps], "low": [p.grad for p in ps[:2]]}, rtol=1e-5)


@pytest.mark.interpreter
def test_triton_edge_cases(kernel_device):
    ps = params_with_grads([(300,), (0,), (5,)], device=kernel_device, no_grad=(2,))
    # zero-element gradient, a parameter without grad, empty group, no tensors at all
    out = lckernels.grad_norms({"a": ps, "b": [ps[1]], "c": []}, backend="triton")
    check(out, {"a": [ps[0].grad], "b": [], "c": []})
    assert lckernels.grad_norms({"x": []}, backend="triton")["x"].item() == 0.0
    # an unaligned view (offset by one element) takes the unaligned kernel variant; a non-contiguous one is copied
    base = torch.randn(1001, device=kernel_device)
    v = base[1:]
    t = torch.randn(8, 5, device=kernel_device).t()
    check(lckernels.grad_norms({"v": [v], "t": [t]}, backend="triton"), {"v": [v], "t": [t]})
    # deterministic: two calls give bit-identical results; named form and monitor go through the same kernel
    a = lckernels.grad_norms({"a": ps}, backend="triton")["a"]
    assert torch.equal(a, lckernels.grad_norms({"a": ps}, backend="triton")["a"])


@pytest.mark.interpreter
def test_triton_agrees_with_plain_torch_on_a_model(kernel_device):
    model = torch.nn.Sequential(torch.nn.Linear(12, 40), torch.nn.Tanh(), torch.nn.Linear(40, 9)).to(kernel_device)
    model(torch.randn(5, 12, device=kernel_device)).square().sum().backward()
    groups = {"head": r"^2\.", "rest": None}
    tri = lckernels.grad_norms(model.named_parameters(), groups, backend="triton")
    named = dict(model.named_parameters())
    members = {"head": ["2.weight", "2.bias"], "rest": ["0.weight", "0.bias"]}
    for k, names in members.items():
        plain = sum((named[n].grad.detach().cpu().double() ** 2).sum() for n in names).sqrt().item()
        assert abs(tri[k].item() - plain) <= 2e-6 * plain, f"{k}: {tri[k].item()} != {plain}"


# ---------------------------------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------------------------------

def test_bad_inputs_raise_clear_errors():
    p = params_with_grads([(3,)])[0]
    with pytest.raises(TypeError, match="group 'g' item 1 must be a torch.Tensor"):
        lckernels.grad_norms({"g": [p, 3.0]})
    with pytest.raises(TypeError, match="single tensor"):
        lckernels.grad_norms(p)
    with pytest.raises(TypeError, match="not the module"):
        lckernels.grad_norms(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="unknown group spec"):
        lckernels.grad_norms([("w", p)], groups={"g": 3})
    with pytest.raises(ValueError, match="not a valid regular expression"):
        lckernels.grad_norms([("w", p)], groups={"g": "("})
    with pytest.raises(ValueError, match="at most one group may be None"):
        lckernels.grad_norms([("w", p)], groups={"a": None, "b": None})
    with pytest.raises(TypeError, match="pairs"):
        lckernels.grad_norms([p], groups={"a": None})
    with pytest.raises(TypeError, match="`groups` must be None"):
        lckernels.grad_norms({"a": [p]}, groups={"a": None})
    with pytest.raises(ValueError, match="norm_type=2.0"):
        lckernels.grad_norms([p], norm_type=1.0)
    with pytest.raises(ValueError, match="backend must be one of"):
        lckernels.grad_norms([p], backend="gpu")
    with pytest.raises(TypeError, match="gradient dtype"):  # a list of gradients holding an integer tensor
        lckernels.grad_norms({"g": [torch.zeros(2, dtype=torch.int64)]})


def test_mixed_devices_raise():
    a = torch.randn(3)
    m = torch.empty(3, device="meta")
    with pytest.raises(ValueError, match="one device"):
        lckernels.grad_norms({"a": [a], "b": [m]})


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        lckernels.grad_norms([torch.randn(3)], backend="triton")


def test_resolve_groups_order_and_rest():
    t = {n: torch.zeros(1) for n in ("a.w", "b.w", "lm_head.w")}
    out = resolve_groups(t.items(), {"rest": None, "head": "lm_head"})
    assert list(out) == ["rest", "head"]
    assert out["head"] == [t["lm_head.w"]] and out["rest"] == [t["a.w"], t["b.w"]]


# ---------------------------------------------------------------------------------------------------------------------
# GradNormMonitor
# ---------------------------------------------------------------------------------------------------------------------

class TinyLM(torch.nn.Module):
    def __init__(self, vocab=11, dim=8, tie=False):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.body = torch.nn.Linear(dim, dim)
        self.lm_head = torch.nn.Linear(dim, vocab, bias=False)
        if tie:
            self.lm_head.weight = self.embed.weight

    def forward(self, x):
        return self.lm_head(torch.tanh(self.body(self.embed(x))))


def test_monitor_records_norms_and_uses_precomputed_values():
    model = TinyLM()
    mon = lckernels.GradNormMonitor(model)  # default {"lm_head": "lm_head", "rest": None}
    model(torch.randint(0, 11, (3, 5))).logsumexp(-1).sum().backward()
    out = mon.step()
    head = model.lm_head.weight.grad
    rest = [p.grad for n, p in model.named_parameters() if not n.startswith("lm_head")]
    assert out["lm_head"] == pytest.approx(oracle([head]).item(), rel=1e-6)
    assert out["rest"] == pytest.approx(oracle(rest).item(), rel=1e-6)
    assert mon.last_sq["lm_head"] == pytest.approx(out["lm_head"] ** 2, rel=1e-5)
    # the fused policy loss reports the lm_head squared norm: the monitor takes its square root, reads only "rest"
    out2 = mon.step(precomputed_sq_norms={"lm_head": 16.0})
    assert out2["lm_head"] == 4.0 and out2["rest"] == pytest.approx(out["rest"], rel=1e-6)
    assert mon.step(precomputed_sq_norms={"lm_head": None})["lm_head"] == pytest.approx(out["lm_head"], rel=1e-6)
    assert len(mon.history) == 3 and mon.history[1] == out2 and mon.last == mon.history[-1]
    assert mon.series("lm_head")[1] == 4.0
    with pytest.raises(ValueError, match="unknown group"):
        mon.step(precomputed_sq_norms={"head": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        mon.step(precomputed_sq_norms={"lm_head": -1.0})


def test_monitor_tied_lm_head_and_history_cap_and_warning():
    model = TinyLM(tie=True)
    mon = lckernels.GradNormMonitor(model, max_history=2)
    assert mon.groups["lm_head"] == [model.lm_head.weight]          # found under its tied name
    assert all(p is not model.embed.weight for p in mon.groups["rest"])
    model(torch.randint(0, 11, (2, 3))).sum().backward()
    for _ in range(3):
        mon.step()
    assert len(mon.history) == 2
    with pytest.warns(UserWarning, match="match no parameter"):
        lckernels.GradNormMonitor(model, groups={"experts": "experts", "rest": None})


@pytest.mark.aot
def test_aligned_kernel_variant_uses_vector_loads():
    """The ALIGNED specialization (every address 16-byte aligned) must compile to 16-byte vector loads on sm_90 --
    the reason it exists; the unaligned one must not assume alignment."""
    from lckernels.aot import compile_spec
    from lckernels.ops.grad_norms.triton import aot_specs

    specs = {s["name"]: s for s in aot_specs() if s["name"].startswith("grad_norms_sumsq")}
    assert specs and all(not s["gemm"] for s in specs.values())
    for name, spec in specs.items():
        ptx = compile_spec(spec, 90).ptx
        assert ("ld.global.v4" in ptx) == spec["constexprs"]["ALIGNED"], name


@pytest.mark.parametrize("module", ["lckernels.ops.grad_norms", "lckernels.monitor"])
def test_docstring_examples(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
