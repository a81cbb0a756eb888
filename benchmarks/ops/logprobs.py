"""Providers for ``fused_logprobs``: per-token log-prob of the target under ``softmax(hidden @ weight.T)``.

Sweep: ``N`` tokens at fixed vocabulary ``V`` and hidden size ``D``.  Modes: ``fwd`` (no grad) and ``fwd_bwd``
(forward, then the gradients of ``lp.sum()`` w.r.t. hidden and weight via :func:`torch.autograd.grad`, so nothing
accumulates in ``.grad`` between repeats).

Providers (``available_providers`` drops the ones that cannot run on the device):

* ``lckernels-cpu``       -- ``fused_logprobs(..., backend="cpu")``: vocab-chunked C++ path, never builds [N, V].
* ``lckernels-triton``    -- ``backend="triton"``, CUDA only.
* ``lckernels-reference`` -- ``backend="reference"``: the readable fp32 oracle (materializes [N, V], and always
  computes the entropy too).
* ``torch-eager``         -- anchor: what verl / TRL do, ``log_softmax(hidden @ weight.T).gather(targets)``.
* ``torch-chunked``       -- anchor: the hand-written memory saver, 1024-token row chunks each under
  ``torch.utils.checkpoint`` (the backward recomputes each chunk's logits).
* ``liger``               -- anchor: Liger-Kernel's ``LigerFusedLinearCrossEntropyLoss(reduction="none")``
  (``-loss`` is the log-prob), CUDA only and only if ``liger_kernel`` imports.
* ``gemm-limit``          -- the physical limit: only the GEMMs the op cannot avoid, no softmax.  ``fwd``: one
  ``hidden @ weight.T``; ``fwd_bwd``: that plus ``grad_hidden = G @ W`` and ``grad_weight = G.T @ H`` (G = the
  logits buffer).  fp32 on CPU (what the CPU kernels compute in; casts happen before timing), the input dtype on
  CUDA (tensor cores accumulate in fp32).  It is a *time* floor: its peak memory includes the [N, V] buffer.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint

from . import available, check_choice

OP = "fused_logprobs"
X_NAME = "N"
DEFAULTS = {"N": [256, 1024, 2048], "V": 32000, "D": 512, "dtype": "float32"}
MODES = ("fwd", "fwd_bwd")
ANCHOR = "torch-eager"
LIMIT = "gemm-limit"
WARMUP_OVERRIDES = {"N": 16, "V": 256}  # tiny first call in the memory subprocess (loads libraries, thread pools)
CHUNK_ROWS = 1024  # rows per checkpointed chunk of the torch-chunked anchor

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


@dataclass
class Inputs:
    """One problem instance: hidden [N, D], weight [V, D] (leaves, no grad), targets [N] int64."""

    hidden: torch.Tensor
    weight: torch.Tensor
    targets: torch.Tensor


def make_inputs(x: int, params: dict, device: str = "cpu", seed: int = 0) -> Inputs:
    """Random inputs with N = ``x`` and ``params`` V, D, dtype; logits come out O(1) (weight ~ N(0, 1/D))."""
    dtype = _DTYPES.get(str(params["dtype"]))
    if dtype is None:
        raise ValueError(f"{OP}: dtype must be one of {sorted(_DTYPES)}; got {params['dtype']!r}")
    n, v, d = int(x), int(params["V"]), int(params["D"])
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g).to(device=device, dtype=dtype)
    weight = (torch.randn(v, d, generator=g) * d ** -0.5).to(device=device, dtype=dtype)
    targets = torch.randint(0, v, (n,), generator=g).to(device)
    return Inputs(hidden, weight, targets)


# ------------------------------------------------------------------------------------------------ logprob functions
def eager_logprobs(hidden, weight, targets):
    """The verl / TRL formulation: full [N, V] logits, fp32 log_softmax, gather the targets."""
    logits = hidden @ weight.T
    return torch.log_softmax(logits.float(), -1).gather(-1, targets[:, None]).squeeze(-1)


def chunked_logprobs(hidden, weight, targets, chunk: int = CHUNK_ROWS):
    """Row chunks of :func:`eager_logprobs`; with grad enabled each chunk is checkpointed (recomputed in backward)."""
    parts = []
    for i in range(0, hidden.shape[0], chunk):
        h, y = hidden[i:i + chunk], targets[i:i + chunk]
        if torch.is_grad_enabled():
            parts.append(checkpoint(eager_logprobs, h, weight, y, use_reentrant=False))
        else:
            parts.append(eager_logprobs(h, weight, y))
    return torch.cat(parts)


def _lckernels(backend: str):
    def fn(hidden, weight, targets):
        import lckernels

        return lckernels.fused_logprobs(hidden, weight, targets, backend=backend)
    return fn


def _liger_fn():
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    loss_fn = LigerFusedLinearCrossEntropyLoss(reduction="none")

    def fn(hidden, weight, targets):
        loss = loss_fn(weight, hidden, targets)
        loss = loss[0] if isinstance(loss, tuple) else loss  # newer versions may return (loss, z_loss)
        return -loss
    return fn


def _autograd_step(fn: Callable, mode: str, inp: Inputs) -> Callable[[], object]:
    """``fwd``: ``fn`` under no_grad.  ``fwd_bwd``: ``fn`` then d(lp.sum())/d(hidden, weight)."""
    y = inp.targets
    if mode == "fwd":
        h, w = inp.hidden.detach(), inp.weight.detach()

        def call():
            with torch.no_grad():
                return fn(h, w, y)
        return call
    h, w = inp.hidden.detach().requires_grad_(True), inp.weight.detach().requires_grad_(True)

    def call():
        lp = fn(h, w, y)
        return torch.autograd.grad(lp.sum(), (h, w))
    return call


def _gemm_limit(mode: str, inp: Inputs) -> Callable[[], object]:
    """The unavoidable GEMMs only (see module docstring); casts to fp32 on CPU happen here, outside the timing."""
    h, w = inp.hidden.detach(), inp.weight.detach()
    if h.device.type == "cpu":
        h, w = h.float(), w.float()

    def fwd():
        return torch.mm(h, w.t())

    def fwd_bwd():
        g = torch.mm(h, w.t())  # logits; reused as the stand-in for d loss / d logits
        return torch.mm(g, w), torch.mm(g.t(), h)
    return fwd if mode == "fwd" else fwd_bwd


# ------------------------------------------------------------------------------------------------------- registry
@functools.lru_cache(maxsize=None)
def _liger_importable() -> bool:
    try:
        import liger_kernel.transformers  # noqa: F401
    except Exception:
        return False
    return True


def _is_cuda(device) -> bool:
    return torch.device(device).type == "cuda"


@dataclass(frozen=True)
class Provider:
    """A contender: ``build(mode, inputs)`` returns the zero-argument callable to time."""

    description: str
    build: Callable[[str, Inputs], Callable[[], object]]
    available: Callable[[str], bool] = lambda device: True


PROVIDERS: dict[str, Provider] = {
    "lckernels-cpu": Provider("fused_logprobs(backend='cpu'), vocab-chunked C++",
                              lambda m, i: _autograd_step(_lckernels("cpu"), m, i),
                              lambda d: not _is_cuda(d)),
    "lckernels-triton": Provider("fused_logprobs(backend='triton')",
                                 lambda m, i: _autograd_step(_lckernels("triton"), m, i), _is_cuda),
    "lckernels-reference": Provider("fused_logprobs(backend='reference'), fp32 oracle",
                                    lambda m, i: _autograd_step(_lckernels("reference"), m, i)),
    "torch-eager": Provider("log_softmax(hidden @ weight.T).gather (verl/TRL)",
                            lambda m, i: _autograd_step(eager_logprobs, m, i)),
    "torch-chunked": Provider(f"{CHUNK_ROWS}-row chunks under torch.utils.checkpoint",
                              lambda m, i: _autograd_step(chunked_logprobs, m, i)),
    "liger": Provider("LigerFusedLinearCrossEntropyLoss(reduction='none')",
                      lambda m, i: _autograd_step(_liger_fn(), m, i),
                      lambda d: _is_cuda(d) and _liger_importable()),
    "gemm-limit": Provider("the unavoidable GEMMs only (1 fwd, 3 fwd_bwd), no softmax", _gemm_limit),
}


def available_providers(device: str = "cpu") -> list[str]:
    """Provider names that can run on ``device``, in display order."""
    return available(PROVIDERS, device)


def make_fn(provider: str, mode: str, inputs: Inputs) -> Callable[[], object]:
    """The callable that runs ``provider`` once in ``mode`` on ``inputs``."""
    check_choice(OP, provider, mode, PROVIDERS, MODES)
    return PROVIDERS[provider].build(mode, inputs)


def describe(params: dict) -> str:
    """The fixed parameters of a sweep, for titles and the table header."""
    return f"V={params['V']} D={params['D']} dtype={params['dtype']}"
