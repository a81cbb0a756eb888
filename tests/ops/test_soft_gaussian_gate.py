"""soft_gaussian_gate (MASPO): the C++ and Triton kernels against the reference, broadcasting, edge cases, errors."""

from __future__ import annotations

import pytest
import torch

import lckernels
from lckernels.ops.gating import soft_gaussian_gate_reference

PARAMS = [
    {},
    dict(sigma_base=0.5, alpha=0.6, beta_pos=0.2, beta_neg=0.3, sigma_high=3.0, a_low=0.5, a_high=2.0),
]


def inputs(shape=(5, 37), device="cpu"):
    g = torch.Generator().manual_seed(0)
    r = torch.exp(0.5 * torch.randn(shape, generator=g))
    old = -torch.rand(shape, generator=g) * 8
    adv = torch.randn(shape[0], 1, generator=g) * 3  # per-sequence advantages broadcast over tokens
    return r.to(device), old.to(device), adv.to(device)


@pytest.mark.parametrize("params", PARAMS, ids=["paper-defaults", "custom"])
def test_cpu_matches_reference(params):
    r, old, adv = inputs()
    ref = soft_gaussian_gate_reference(r, old, adv, **params)
    got = lckernels.soft_gaussian_gate(r, old, adv, backend="cpu", **params)
    assert got.shape == (5, 37) and got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=2e-6, atol=1e-7)
    assert ((ref < 1) & (ref > 0)).any() and (ref == 1).any()  # both branches exercised


def test_low_precision_inputs_and_no_grad():
    r, old, adv = inputs()
    r = r.bfloat16().requires_grad_()
    got = lckernels.soft_gaussian_gate(r, old.half(), adv, backend="cpu")
    assert not got.requires_grad
    torch.testing.assert_close(got, soft_gaussian_gate_reference(r.float(), old.half().float(), adv))


def test_empty():
    e = torch.empty(0)
    assert lckernels.soft_gaussian_gate(e, e, e, backend="cpu").shape == (0,)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(sigma_base=0.0), ValueError, "sigma_base"),
    (dict(alpha=-1.0), ValueError, "alpha"),
    (dict(sigma_base=20.0), ValueError, "sigma_base <= sigma_high"),
    (dict(a_low="x"), TypeError, "a_low"),
])
def test_bad_params(kwargs, exc, match):
    r, old, adv = inputs()
    with pytest.raises(exc, match=match):
        lckernels.soft_gaussian_gate(r, old, adv, **kwargs)


def test_bad_tensors():
    r, old, adv = inputs()
    with pytest.raises(ValueError, match="do not broadcast"):
        lckernels.soft_gaussian_gate(r, old[:, :3], adv)
    with pytest.raises(TypeError, match="`ratio` must have dtype"):
        lckernels.soft_gaussian_gate(r.long(), old, adv)
    with pytest.raises(ValueError, match="one device"):
        lckernels.soft_gaussian_gate(r, old.to("meta"), adv)


@pytest.mark.interpreter
@pytest.mark.parametrize("params", PARAMS, ids=["paper-defaults", "custom"])
def test_triton_matches_reference(params, kernel_device):
    r, old, adv = inputs((3, 300), kernel_device)  # 900 elements: several blocks and a ragged tail
    got = lckernels.soft_gaussian_gate(r, old, adv, backend="triton", **params)
    torch.testing.assert_close(got.cpu(), soft_gaussian_gate_reference(r, old, adv, **params).cpu(), rtol=2e-6,
                               atol=1e-7)
