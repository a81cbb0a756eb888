"""Providers for ``moe_experts``: the routed SwiGLU experts of a MoE layer, forward and forward + backward.

Sweep: ``T`` tokens at fixed hidden size ``H``, expert size ``I``, ``E`` experts, top-``k`` routing (random router
logits through ``lckernels.moe_route`` with renormalization, so experts get uneven loads as in a real router).
Modes: ``fwd`` (no grad) and ``fwd_bwd`` (forward, then the gradients of ``sum(out * G)`` for a fixed random ``G``
w.r.t. hidden, top_k_weights, gate_up_proj and down_proj via :func:`torch.autograd.grad`).

Providers (``available_providers`` drops the ones that cannot run on the device):

* ``lckernels-cpu``        -- ``moe_experts(..., backend="cpu")``: C++ permutation / SwiGLU backward / combine, MKL
  GEMMs per expert.
* ``lckernels-triton``     -- ``backend="triton"``, CUDA only.
* ``lckernels-reference``  -- ``backend="reference"``: the readable loop over experts (the oracle).
* ``hf-grouped_mm``        -- anchor: HF transformers' ``grouped_mm`` experts implementation (sort by expert,
  ``torch._grouped_mm``), run through a real ``Qwen3MoeExperts`` module holding the same weights.
* ``hf-eager``             -- HF's ``eager`` experts (the per-expert loop with ``index_add_``), same module.
* ``dense-gemm``           -- the physical limit: a dense GEMM chain of the same useful FLOPs, ``[T*k, H] @ [H, 2I]``
  and ``[T*k, I] @ [I, H]`` (``fwd``), plus their four backward GEMMs (``fwd_bwd``, 3x the forward FLOPs); no
  routing, gathers or activation.  fp32 on CPU, the input dtype on CUDA.

HF's ``batched_mm`` experts are not a provider: they gather one weight matrix per (token, slot) pair, i.e.
``T*k x 2I x H`` floats (17 GB at the default shape), which does not fit this benchmark's machines.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch

from . import available, check_choice
from .logprobs import Provider, _is_cuda

OP = "moe_experts"
X_NAME = "T"
DEFAULTS = {"T": [2048], "H": 512, "I": 256, "E": 64, "k": 8, "dtype": "float32"}
MODES = ("fwd", "fwd_bwd")
ANCHOR = "hf-grouped_mm"
LIMIT = "dense-gemm"
WARMUP_OVERRIDES = {"T": 64}

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


@dataclass
class Inputs:
    """hidden [T, H], top_k_index [T, k], top_k_weights [T, k] (fp32), gate_up_proj [E, 2I, H], down_proj [E, H, I],
    grad_out [T, H] (the fixed upstream gradient)."""

    hidden: torch.Tensor
    top_k_index: torch.Tensor
    top_k_weights: torch.Tensor
    gate_up_proj: torch.Tensor
    down_proj: torch.Tensor
    grad_out: torch.Tensor


def make_inputs(x: int, params: dict, device: str = "cpu", seed: int = 0) -> Inputs:
    import lckernels

    dtype = _DTYPES.get(str(params["dtype"]))
    if dtype is None:
        raise ValueError(f"{OP}: dtype must be one of {sorted(_DTYPES)}; got {params['dtype']!r}")
    t, h, i, e, k = int(x), int(params["H"]), int(params["I"]), int(params["E"]), int(params["k"])
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(t, h, generator=g)
    weights, index = lckernels.moe_route(torch.randn(t, e, generator=g), k, renormalize=True)
    gate_up = torch.randn(e, 2 * i, h, generator=g) * h ** -0.5
    down = torch.randn(e, h, i, generator=g) * i ** -0.5
    grad_out = torch.randn(t, h, generator=g)
    cast = dict(device=device, dtype=dtype)
    return Inputs(hidden.to(**cast), index.to(device), weights.to(device), gate_up.to(**cast), down.to(**cast),
                  grad_out.to(**cast))


# --------------------------------------------------------------------------------------------------- experts fns
def _lckernels(backend: str):
    def fn(hidden, index, weights, gate_up, down):
        import lckernels

        return lckernels.moe_experts(hidden, index, weights, gate_up, down, backend=backend)
    return fn


def _hf_experts(impl: str, inp: Inputs):
    """A transformers ``Qwen3MoeExperts`` module with the benchmark's weights as its parameters, dispatching to
    transformers' experts implementation ``impl``; returns (fn, params) with fn(hidden, index, weights, gu, down)."""
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeExperts

    e, two_i, h = inp.gate_up_proj.shape
    cfg = Qwen3MoeConfig(hidden_size=h, moe_intermediate_size=two_i // 2, num_experts=e,
                         num_experts_per_tok=inp.top_k_index.shape[1], hidden_act="silu")
    cfg._experts_implementation = impl
    module = Qwen3MoeExperts(cfg)

    def fn(hidden, index, weights, gate_up, down):
        # the parameters are the benchmark's tensors (set per call: autograd.grad needs the very leaves)
        module._parameters["gate_up_proj"] = gate_up
        module._parameters["down_proj"] = down
        return module(hidden, index, weights)
    return fn


def _autograd_step(fn: Callable, mode: str, inp: Inputs) -> Callable[[], object]:
    """``fwd``: ``fn`` under no_grad.  ``fwd_bwd``: ``fn`` then d(sum(out * G)) / d(hidden, weights, gate_up, down)."""
    idx = inp.top_k_index
    if mode == "fwd":
        h, w, gu, d = (x.detach() for x in (inp.hidden, inp.top_k_weights, inp.gate_up_proj, inp.down_proj))

        def call():
            with torch.no_grad():
                return fn(h, idx, w, gu, d)
        return call
    leaves = [x.detach().requires_grad_(True) for x in (inp.hidden, inp.top_k_weights, inp.gate_up_proj,
                                                         inp.down_proj)]
    h, w, gu, d = leaves
    g = inp.grad_out

    def call():
        out = fn(h, idx, w, gu, d)
        return torch.autograd.grad(out, leaves, g)
    return call


def _dense_gemm(mode: str, inp: Inputs) -> Callable[[], object]:
    """The limit: a dense GEMM chain with the routed FLOPs (fp32 on CPU; casts happen here, outside the timing)."""
    t, k = inp.top_k_index.shape
    e, two_i, h = inp.gate_up_proj.shape
    dt = torch.float32 if inp.hidden.device.type == "cpu" else inp.hidden.dtype
    dev = inp.hidden.device
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(t * k, h, generator=gen).to(dev, dt)
    w1 = inp.gate_up_proj[0].t().to(dt)  # [H, 2I]
    w2 = inp.down_proj[0].t().to(dt)     # [I, H]
    act = torch.randn(t * k, two_i // 2, generator=gen).to(dev, dt)
    g = torch.randn(t * k, h, generator=gen).to(dev, dt)
    d_gu = torch.randn(t * k, two_i, generator=gen).to(dev, dt)

    def fwd():
        return torch.mm(x, w1), torch.mm(act, w2)

    def fwd_bwd():
        fwd()
        return torch.mm(g, w2.t()), torch.mm(act.t(), g), torch.mm(d_gu, w1.t()), torch.mm(x.t(), d_gu)
    return fwd if mode == "fwd" else fwd_bwd


# ------------------------------------------------------------------------------------------------------- registry
@functools.lru_cache(maxsize=None)
def _transformers_importable() -> bool:
    try:
        from transformers.integrations.moe import ExpertsInterface  # noqa: F401
        from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeExperts  # noqa: F401
    except Exception:
        return False
    return True


PROVIDERS: dict[str, Provider] = {
    "lckernels-cpu": Provider("moe_experts(backend='cpu')", lambda m, i: _autograd_step(_lckernels("cpu"), m, i),
                              lambda d: not _is_cuda(d)),
    "lckernels-triton": Provider("moe_experts(backend='triton')",
                                 lambda m, i: _autograd_step(_lckernels("triton"), m, i), _is_cuda),
    "lckernels-reference": Provider("moe_experts(backend='reference'), loop over experts",
                                    lambda m, i: _autograd_step(_lckernels("reference"), m, i)),
    "hf-grouped_mm": Provider("transformers experts_implementation='grouped_mm' (Qwen3MoeExperts)",
                              lambda m, i: _autograd_step(_hf_experts("grouped_mm", i), m, i),
                              lambda d: _transformers_importable()),
    "hf-eager": Provider("transformers experts_implementation='eager' (Qwen3MoeExperts)",
                         lambda m, i: _autograd_step(_hf_experts("eager", i), m, i),
                         lambda d: _transformers_importable()),
    "dense-gemm": Provider("dense GEMM chain with the routed FLOPs (2 fwd, 6 fwd_bwd)", _dense_gemm),
}


def available_providers(device: str = "cpu") -> list[str]:
    return available(PROVIDERS, device)


def make_fn(provider: str, mode: str, inputs: Inputs) -> Callable[[], object]:
    check_choice(OP, provider, mode, PROVIDERS, MODES)
    return PROVIDERS[provider].build(mode, inputs)


def describe(params: dict) -> str:
    return f"H={params['H']} I={params['I']} E={params['E']} k={params['k']} dtype={params['dtype']}"
