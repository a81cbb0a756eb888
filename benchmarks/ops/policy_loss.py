"""Providers for ``fused_policy_loss``: hidden states + lm_head -> clipped policy-gradient loss and its gradients.

Sweep: ``N`` tokens (B = N / T sequences of ``T`` tokens) at fixed vocabulary ``V`` and hidden size ``D``; PPO/DAPO
clip (eps 0.2, token-mean), sequence-level advantages, a response mask with ~10% padding.  Modes: ``fwd`` (loss
only, no grad) and ``fwd_bwd`` (loss, then its gradients w.r.t. hidden and weight).

Providers:

* ``lckernels-cpu``        -- ``fused_policy_loss(backend="cpu")``: row-chunked, gradients in the forward, 3 GEMMs.
* ``lckernels-triton``     -- ``backend="triton"``, CUDA only.
* ``lckernels-reference``  -- ``backend="reference"``: full fp32 logits, the oracle.
* ``liger-grpo``           -- anchor: Liger-Kernel's ``LigerFusedLinearGRPOLoss`` (``compiled=False``,
  ``loss_type="dapo"``, no reference model), the chunked loss users pick today; needs ``liger-kernel``.
* ``torch-eager``          -- anchor: what verl / TRL do: full logits, ``log_softmax``, gather, then the loss math.
* ``gemm-limit``           -- the GEMMs the op cannot avoid: logits (fwd), plus dH = G W and dW = G^T H (fwd_bwd).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch

from . import available, check_choice
from . import logprobs as L
from .logprobs import _DTYPES, Provider, _is_cuda

OP = "fused_policy_loss"
X_NAME = "N"
DEFAULTS = {"N": [4096], "T": 512, "V": 32000, "D": 1024, "dtype": "float32"}
MODES = ("fwd", "fwd_bwd")
ANCHOR = "liger-grpo"
LIMIT = "gemm-limit"
WARMUP_OVERRIDES = {"N": 16, "T": 8, "V": 256}
EPS = 0.2


@dataclass
class Inputs:
    hidden: torch.Tensor      # [B, T, D]
    weight: torch.Tensor      # [V, D]
    targets: torch.Tensor     # [B, T]
    mask: torch.Tensor        # [B, T] float, ~10% padding at the ends
    advantages: torch.Tensor  # [B]
    old: torch.Tensor         # [B, T] near the current log-probs (some tokens clipped)


def make_inputs(x: int, params: dict, device: str = "cpu", seed: int = 0) -> Inputs:
    dtype = _DTYPES.get(str(params["dtype"]))
    if dtype is None:
        raise ValueError(f"{OP}: dtype must be one of {sorted(_DTYPES)}; got {params['dtype']!r}")
    t, v, d = int(params["T"]), int(params["V"]), int(params["D"])
    b = max(1, int(x) // t)
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, t, d, generator=g)
    weight = torch.randn(v, d, generator=g) * d ** -0.5
    targets = torch.randint(0, v, (b, t), generator=g)
    mask = torch.ones(b, t)
    mask[:, int(t * 0.9):] = 0
    adv = torch.randn(b, generator=g)
    # old log-probs: a cheap stand-in near -log V with noise, so the ratio is spread around 1 and clipping happens
    old = torch.full((b, t), -float(torch.log(torch.tensor(float(v))))) + 0.3 * torch.randn(b, t, generator=g)
    to = dict(device=device)
    return Inputs(hidden.to(dtype=dtype, **to), weight.to(dtype=dtype, **to), targets.to(**to), mask.to(**to),
                  adv.to(**to), old.to(**to))


def _cfg():
    import lckernels

    return lckernels.PolicyLossConfig(mode="clip", eps_low=EPS, eps_high=EPS, loss_agg="token-mean")


def _lckernels(backend: str):
    def fn(inp: Inputs, h, w):
        import lckernels

        return lckernels.fused_policy_loss(h, w, inp.targets, inp.advantages, inp.old, mask=inp.mask,
                                           config=_cfg(), backend=backend).loss
    return fn


def _eager(inp: Inputs, h, w):
    import lckernels

    b, t, d = h.shape
    logits = (h.reshape(b * t, d) @ w.T).float()
    lp = torch.log_softmax(logits, -1).gather(-1, inp.targets.reshape(-1, 1)).reshape(b, t)
    loss, _ = lckernels.policy_loss_from_logprobs(lp, inp.advantages, inp.old, mask=inp.mask, config=_cfg())
    return loss


@functools.lru_cache(maxsize=None)
def _liger_importable() -> bool:
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss  # noqa: F401
    except Exception:
        return False
    return True


def _liger():
    from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

    loss_fn = LigerFusedLinearGRPOLoss(beta=0.0, compiled=False, use_ref_model=False, epsilon_low=EPS,
                                       epsilon_high=EPS, loss_type="dapo")

    def fn(inp: Inputs, h, w):
        out = loss_fn(h, w, inp.targets, inp.mask, inp.advantages, old_per_token_logps=inp.old)
        return out[0] if isinstance(out, tuple) else out
    return fn


def _step(fn: Callable, mode: str, inp: Inputs) -> Callable[[], object]:
    if mode == "fwd":
        h, w = inp.hidden.detach(), inp.weight.detach()

        def call():
            with torch.no_grad():
                return fn(inp, h, w)
        return call
    h, w = inp.hidden.detach().requires_grad_(True), inp.weight.detach().requires_grad_(True)

    def call():
        return torch.autograd.grad(fn(inp, h, w), (h, w))
    return call


def _gemm_limit(mode: str, inp: Inputs) -> Callable[[], object]:
    """The same GEMMs as fused_logprobs' limit, on the flattened [B*T, D] hidden states."""
    h = inp.hidden.detach()
    flat = L.Inputs(h.reshape(-1, h.shape[-1]), inp.weight.detach(), inp.targets.reshape(-1))
    return L._gemm_limit(mode, flat)


PROVIDERS: dict[str, Provider] = {
    "lckernels-cpu": Provider("fused_policy_loss(backend='cpu'): row chunks, grads in the forward, 3 GEMMs",
                              lambda m, i: _step(_lckernels("cpu"), m, i), lambda d: not _is_cuda(d)),
    "lckernels-triton": Provider("fused_policy_loss(backend='triton')", lambda m, i: _step(_lckernels("triton"), m, i),
                                 _is_cuda),
    "lckernels-reference": Provider("fused_policy_loss(backend='reference'): full fp32 logits",
                                    lambda m, i: _step(_lckernels("reference"), m, i)),
    "liger-grpo": Provider("LigerFusedLinearGRPOLoss(compiled=False, loss_type='dapo')",
                           lambda m, i: _step(_liger(), m, i), lambda d: _liger_importable()),
    "torch-eager": Provider("full logits + log_softmax + gather + loss math (verl/TRL)",
                            lambda m, i: _step(_eager, m, i)),
    "gemm-limit": Provider("the unavoidable GEMMs only (1 fwd, 3 fwd_bwd)", _gemm_limit),
}


def available_providers(device: str = "cpu") -> list[str]:
    return available(PROVIDERS, device)


def make_fn(provider: str, mode: str, inputs: Inputs) -> Callable[[], object]:
    check_choice(OP, provider, mode, PROVIDERS, MODES)
    return PROVIDERS[provider].build(mode, inputs)


def describe(params: dict) -> str:
    return f"T={params['T']} V={params['V']} D={params['D']} dtype={params['dtype']} clip eps={EPS} token-mean"
