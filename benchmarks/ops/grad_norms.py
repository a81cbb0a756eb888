"""Providers for ``grad_norms``: per-group L2 norms of a model's gradients after backward (the monitor / DGG step).

Model: a transformer-shaped list of ``4 * layers * 2 + 3`` gradient tensors (default 12 layers -> 99 tensors): per
layer q/k/v/o ``[D, D]``, MLP up ``[4D, D]`` and down ``[D, 4D]``, two norm vectors ``[D]``; plus the embedding and
the lm_head ``[8D, D]`` and a final norm ``[D]``.  Sweep: ``Mparams`` = millions of gradient elements; ``D`` is
chosen so the model has about that many (``160 D^2 + 13 D`` per 12 layers), rounded to a multiple of 8.  Two groups,
``lm_head`` (one tensor) and ``rest`` (98), resolved once -- what ``GradNormMonitor.step`` does every step.
One mode, ``step``: compute both norms (no host sync on CPU; on CUDA the timer synchronizes).

Providers (``available_providers`` drops the ones that cannot run on the device):

* ``lckernels-cpu``       -- ``grad_norms(groups, backend="cpu")``: one ``torch._foreach_norm`` + a per-group sum.
* ``lckernels-triton``    -- ``backend="triton"``, CUDA only: one multi-tensor launch + one group reduction.
* ``lckernels-reference`` -- ``backend="reference"``: the readable loop (fp32 upcast + square + sum per tensor).
* ``foreach-norm``        -- anchor: ``torch.nn.utils.clip_grad_norm_``'s foreach path per group,
  ``vector_norm(stack(_foreach_norm(grads)))``.
* ``python-loop``         -- anchor: ``clip_grad_norm_(foreach=False)``'s path, one ``vector_norm`` per tensor in a
  Python loop, then ``vector_norm(stack(...))`` per group.
* ``memory-limit``        -- the physical limit: one ``vector_norm`` of a single flat tensor with the same number of
  elements and dtype (one pass over the same bytes, no per-tensor overhead).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from . import available, check_choice

OP = "grad_norms"
X_NAME = "Mparams"
DEFAULTS = {"Mparams": [1, 16, 64], "layers": 12, "dtype": "float32"}
MODES = ("step",)
ANCHOR = "foreach-norm"
LIMIT = "memory-limit"
WARMUP_OVERRIDES = {"Mparams": 0.05}

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


@dataclass
class Inputs:
    """groups: {"lm_head": [grad], "rest": [98 grads]}; flat: one tensor with the same total numel and dtype."""

    groups: dict
    flat: torch.Tensor
    n_tensors: int


def model_shapes(mparams: float, layers: int) -> list[tuple[int, ...]]:
    """Gradient shapes of the transformer-shaped model with about ``mparams`` million elements (lm_head last)."""
    # per layer 12 D^2 + 2 D, plus embedding and lm_head 8 D^2 each and a final norm: (12 L + 16) D^2 + (2 L + 1) D
    a, b = 12 * layers + 16, 2 * layers + 1
    d = (-b + math.sqrt(b * b + 4 * a * mparams * 1e6)) / (2 * a)
    d = max(8, int(round(d / 8)) * 8)
    shapes = [(8 * d, d)]  # embedding
    for _ in range(layers):
        shapes += [(d, d)] * 4 + [(4 * d, d), (d, 4 * d), (d,), (d,)]
    shapes += [(d,), (8 * d, d)]  # final norm, lm_head
    return shapes


def make_inputs(x, params: dict, device: str = "cpu", seed: int = 0) -> Inputs:
    dtype = _DTYPES.get(str(params["dtype"]))
    if dtype is None:
        raise ValueError(f"{OP}: dtype must be one of {sorted(_DTYPES)}; got {params['dtype']!r}")
    shapes = model_shapes(float(x), int(params["layers"]))
    g = torch.Generator().manual_seed(seed)
    grads = [(torch.randn(s, generator=g) * 1e-3).to(device=device, dtype=dtype) for s in shapes]
    total = sum(t.numel() for t in grads)
    flat = (torch.randn(total, generator=g) * 1e-3).to(device=device, dtype=dtype)
    return Inputs({"lm_head": grads[-1:], "rest": grads[:-1]}, flat, len(grads))


# ----------------------------------------------------------------------------------------------------- providers
def _lckernels(backend: str):
    def build(inp: Inputs):
        import lckernels

        groups = inp.groups
        return lambda: lckernels.grad_norms(groups, backend=backend)
    return build


def _foreach(inp: Inputs):
    groups = {k: list(v) for k, v in inp.groups.items()}

    def call():
        return {k: torch.linalg.vector_norm(torch.stack(torch._foreach_norm(v, 2.0)), 2.0) for k, v in groups.items()}
    return call


def _python_loop(inp: Inputs):
    groups = {k: list(v) for k, v in inp.groups.items()}

    def call():
        return {k: torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t, 2.0) for t in v]), 2.0)
                for k, v in groups.items()}
    return call


def _memory_limit(inp: Inputs):
    flat = inp.flat
    return lambda: torch.linalg.vector_norm(flat, 2.0)


def _is_cuda(device) -> bool:
    return torch.device(device).type == "cuda"


@dataclass(frozen=True)
class Provider:
    description: str
    build: Callable[[Inputs], Callable[[], object]]
    available: Callable[[str], bool] = lambda device: True


PROVIDERS: dict[str, Provider] = {
    "lckernels-cpu": Provider("grad_norms(backend='cpu'): one _foreach_norm + group sums", _lckernels("cpu"),
                              lambda d: not _is_cuda(d)),
    "lckernels-triton": Provider("grad_norms(backend='triton'): multi-tensor kernel", _lckernels("triton"), _is_cuda),
    "lckernels-reference": Provider("grad_norms(backend='reference'): readable loop", _lckernels("reference")),
    "foreach-norm": Provider("clip_grad_norm_'s foreach path per group", _foreach),
    "python-loop": Provider("per-tensor vector_norm in a Python loop per group", _python_loop),
    "memory-limit": Provider("vector_norm of one flat tensor of the same numel", _memory_limit),
}


def available_providers(device: str = "cpu") -> list[str]:
    return available(PROVIDERS, device)


def make_fn(provider: str, mode: str, inputs: Inputs) -> Callable[[], object]:
    check_choice(OP, provider, mode, PROVIDERS, MODES)
    return PROVIDERS[provider].build(inputs)


def describe(params: dict) -> str:
    n = len(model_shapes(1, int(params["layers"])))
    return f"{n} tensors (lm_head + {n - 1} rest), layers={params['layers']} dtype={params['dtype']}"
