"""bf16 numerics of the Triton kernels of ``moe_experts``, ``grouped_mm`` and ``fused_policy_loss`` on a GPU.

bf16 ``tl.dot`` returns garbage under the Triton interpreter (DESIGN.md, "Testing Triton kernels without a GPU"), so
the interpreter tests stop at fp32 / fp16 and these run only on a CUDA GPU (skipped otherwise, and under
``TRITON_INTERPRET=1``).  Each test mirrors the fp32 / fp16 interpreter test of its op (same inputs, same calls) and
applies the numerics contract's rule for low precision to the output and every gradient:

    |kernel(bf16) - reference(fp32)| <= 2 x |PyTorch in bf16 - reference(fp32)| + atol        (max norms)

where the fp32 reference runs on fp32 copies of the very bf16 values the kernel sees (so input rounding is not
counted as kernel error) and atol = 1e-5 * (1 + max |reference|).
"""

from __future__ import annotations

import os

import pytest
import torch

import lckernels
from tests.helpers import assert_close_lowp
from tests.ops import test_grouped_mm as gmm
from tests.ops import test_moe as moe
from tests.ops import test_policy_loss as pl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or INTERPRET,
                                reason="bf16 Triton numerics need a CUDA GPU (bf16 tl.dot is wrong under the "
                                       "Triton interpreter)")
DEVICE = "cuda"
BF16 = torch.bfloat16


def fp32_copy(x: torch.Tensor) -> torch.Tensor:
    """The same values in fp32, a fresh leaf (requires grad when ``x`` does)."""
    y = x.detach().float()
    return y.requires_grad_() if x.requires_grad else y


def assert_rule(got, ref32, low, names):
    for g, r, lo, name in zip(got, ref32, low, names):
        scale = r.float().abs().max().item() if r.numel() else 0.0
        assert_close_lowp(g.cpu(), r.cpu(), lo.cpu(), atol=1e-5 * (1 + scale), name=name)


# ------------------------------------------------------------------------------------------------- grouped_mm

@pytest.mark.parametrize("transposed_w", [False, True], ids=["w", "w-transposed-view"])
@pytest.mark.parametrize("case", list(gmm.CASES), ids=list(gmm.CASES))
def test_grouped_mm_bf16(case, transposed_w):
    x, w, offsets = gmm.make_inputs(case, BF16, DEVICE, transposed_w)
    got = gmm.run(gmm.op("triton"), x, w, offsets)
    x32, w32 = fp32_copy(x), w.detach().float().requires_grad_()
    ref = gmm.run(gmm.grouped_mm_reference, x32, w32, offsets)
    low = gmm.run(gmm.torch_same_dtype, x, w, offsets)
    assert got[0].dtype == BF16 and got[1].dtype == BF16 and got[2].dtype == BF16
    assert_rule(got, ref, low, gmm.NAMES)
    end = gmm.CASES[case][3][-1]
    assert (got[0][end:] == 0).all() and (got[1][end:] == 0).all()  # rows of no group


# ------------------------------------------------------------------------------------------------- moe_experts

@pytest.mark.parametrize("weight_dtype", [torch.float32, BF16], ids=["router-fp32", "router-bf16"])
@pytest.mark.parametrize("case", list(moe.CASES), ids=list(moe.CASES))
def test_moe_experts_bf16(case, weight_dtype):
    hidden, idx, weights, gate_up, down, z = moe.make_inputs(case, BF16, DEVICE, weight_dtype)
    got = moe.run(moe.op("triton"), hidden, idx, weights, gate_up, down, z)
    ref = moe.run(moe.reference, fp32_copy(hidden), idx, fp32_copy(weights), fp32_copy(gate_up), fp32_copy(down), z)
    low = moe.run(moe.torch_same_dtype, hidden, idx, weights, gate_up, down, z)
    assert got[0].dtype == BF16 and got[1].dtype == BF16 and got[3].dtype == BF16 and got[4].dtype == BF16
    assert got[2].dtype == weight_dtype
    assert_rule(got, ref, low, moe.NAMES)


# ------------------------------------------------------------------------------------------------- fused_policy_loss

def policy_loss_same_dtype(h, w, y, adv, old, kw, cfg):
    """Loss, log-probs and gradients by plain PyTorch in bf16 (logits and log_softmax in bf16), every input passed."""
    h.grad = w.grad = None
    logp = torch.log_softmax((h @ w.t()) / cfg.temperature, -1)
    lp = logp.gather(-1, y.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    ent = -(logp.exp() * logp).sum(-1)
    mask = kw["mask"] * (y != cfg.ignore_index)
    loss, _ = lckernels.policy_loss_from_logprobs(lp.float(), adv, old, mask=mask,
                                                  rollout_logprobs=kw["rollout_logprobs"],
                                                  ref_logprobs=kw["ref_logprobs"], entropy=ent.float(),
                                                  pg_weight=kw.get("pg_weight"), config=cfg, backend="reference")
    loss.backward()
    lp_out = torch.where(mask.bool(), lp.detach().float(), torch.zeros((), device=lp.device))
    return loss.detach(), lp_out, h.grad.clone(), w.grad.clone()


def policy_loss_op(backend, h, w, y, adv, old, kw, cfg):
    out, gh, gw = pl.run(backend, h, w, y, adv, old, kw, cfg)
    return out.loss.detach(), out.logprobs, gh, gw


@pytest.mark.parametrize("pg_weight", [False, True], ids=["", "pg_weight"])
@pytest.mark.parametrize("name", ["clip", "gspo", "maspo", "hispo", "tis+k3+entropy", "kl_ratio", "gspo+kl_ratio"])
def test_fused_policy_loss_bf16(name, pg_weight):
    cfg = pl.CONFIGS[name]
    h, w, y, adv, old, kw = pl.make_problem(BF16, DEVICE, seq_adv=name.startswith("gspo"))
    if pg_weight:
        kw = dict(kw, pg_weight=pl.make_pg_weight(device=DEVICE))
    got = policy_loss_op("triton", h, w, y, adv, old, kw, cfg)
    h32, w32 = fp32_copy(h), fp32_copy(w)
    ref = policy_loss_op("reference", h32, w32, y, adv, old, kw, cfg)
    low = policy_loss_same_dtype(h, w, y, adv, old, kw, cfg)
    assert got[2].dtype == BF16 and got[3].dtype == BF16
    assert_rule(got, ref, low, ("loss", "logprobs", "grad_hidden", "grad_weight"))


def test_fused_policy_loss_bf16_all_masked():
    """All-masked batch in bf16: loss 0, zero gradients (the dlogits kernel writes every tile)."""
    cfg = pl.CONFIGS["tis+k3+entropy"]
    h, w, y, adv, old, kw = pl.make_problem(BF16, DEVICE)
    kw["mask"] = torch.zeros_like(kw["mask"])
    out, gh, gw = pl.run("triton", h, w, y, adv, old, kw, cfg)
    assert out.loss.item() == 0.0 and (gh == 0).all() and (gw == 0).all()
