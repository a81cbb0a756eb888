"""Triton kernels for the fused policy-loss driver (GPU; CPU tensors under TRITON_INTERPRET=1).

Per row chunk: the fused_logprobs forward kernel with ``STORE_LOGITS`` computes the chunk's logits tile by tile on
tensor cores (fp32 accumulation), folds them into the online logsumexp / entropy, and writes logits / T (fp32) to
the chunk buffer; after the loss math on [rows] vectors, ``_policy_dlogits_kernel`` turns the buffer into
d loss / d logits in the input dtype (elementwise, one read + one write); two cuBLAS GEMMs give the chunk's rows of
grad_hidden and its contribution to grad_weight, accumulated in fp32 in chunk order (no atomics).  Rows are not
compacted on the GPU (that would need a host sync); masked rows get zero gradient.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...backend import interpreter_enabled
from ..logprobs.triton import logprobs_forward_triton


@triton.jit
def _policy_dlogits_kernel(
    z_ptr, dz_ptr, tgt_ptr, lse_ptr, ent_ptr, g_ptr, ge_ptr,
    V, stride_z, stride_dz, ignore_index,
    HAS_GE: tl.constexpr, BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_V + tl.arange(0, BLOCK_V)
    ok = cols < V
    z = tl.load(z_ptr + row * stride_z + cols, mask=ok, other=0.0)
    tgt = tl.load(tgt_ptr + row).to(tl.int64)
    lse = tl.load(lse_ptr + row)
    g = tl.load(g_ptr + row)
    logp = z - lse
    p = tl.exp(logp)
    if HAS_GE:
        ent = tl.load(ent_ptr + row)
        ge = tl.load(ge_ptr + row)
        dz = -p * (g + ge * (logp + ent))
    else:
        dz = -p * g
    dz += tl.where(cols == tgt, g, 0.0)
    dz = tl.where(tgt != ignore_index, dz, 0.0)
    tl.store(dz_ptr + row * stride_dz + cols, dz.to(dz_ptr.dtype.element_ty), mask=ok)


DLOGITS_BLOCK_V = 1024
DLOGITS_NUM_WARPS = 4
GPU_CHUNK_BYTES = 1 << 30  # fp32 logits per row chunk on the GPU
INTERPRETER_CHUNK_BYTES = 64 << 10


class TritonKernels:
    compact = False

    def __init__(self, ignore_index: int):
        self.ignore_index = ignore_index
        self.chunk_bytes = INTERPRETER_CHUNK_BYTES if interpreter_enabled() else GPU_CHUNK_BYTES
        self.dtype = None
        self.gate_backend = "triton"  # MASPO's gate: the Triton kernel of lckernels.soft_gaussian_gate

    @staticmethod
    def weight_for_gemm(weight):
        return weight

    def row_stats(self, h_c, w, y_c, inv_t):
        self.dtype = h_c.dtype
        z = torch.empty(h_c.shape[0], w.shape[0], device=h_c.device, dtype=torch.float32)
        lp, ent, lse = logprobs_forward_triton(h_c, w, y_c, 1.0 / inv_t, self.ignore_index, logits_out=z)
        return lp, ent, lse, z

    def dlogits_(self, z, y_c, lse, ent, g_scaled, ge_scaled):
        n, v = z.shape
        # fp32 inputs: overwrite the logits buffer in place (each element is read then written by one program)
        dz = z if self.dtype == torch.float32 else torch.empty(n, v, device=z.device, dtype=self.dtype)
        has_ge = ge_scaled is not None
        block = 64 if interpreter_enabled() else DLOGITS_BLOCK_V
        grid = (n, triton.cdiv(v, block))
        g = g_scaled.float().contiguous()
        _policy_dlogits_kernel[grid](
            z, dz, y_c, lse, ent, g, ge_scaled.float().contiguous() if has_ge else g,
            v, z.stride(0), dz.stride(0), self.ignore_index,
            HAS_GE=has_ge, BLOCK_V=block, num_warps=DLOGITS_NUM_WARPS,
        )
        return dz

    @staticmethod
    def mm_fp32(dz, w):
        out = torch.mm(dz, w)
        return out if out.dtype == torch.float32 else out.float()

    @staticmethod
    def addmm_t_(grad_w, dz, h_c):
        if dz.dtype == torch.float32:
            grad_w.addmm_(dz.t(), h_c)
        else:
            grad_w.add_(torch.mm(dz.t(), h_c).float())

    def forward_logprobs(self, hidden2d, weight, targets, temperature):
        with torch.no_grad():
            return logprobs_forward_triton(hidden2d, weight, targets, temperature, self.ignore_index)[0]


def aot_specs():
    specs = []
    for dtype in ("fp32", "fp16", "bf16"):
        for has_ge in (False, True):
            specs.append(dict(
                name=f"policy_dlogits[{dtype}-ge{int(has_ge)}]", fn=_policy_dlogits_kernel, gemm=False,
                signature={"z_ptr": "*fp32", "dz_ptr": f"*{dtype}", "tgt_ptr": "*i64", "lse_ptr": "*fp32",
                           "ent_ptr": "*fp32", "g_ptr": "*fp32", "ge_ptr": "*fp32", "V": "i32", "stride_z": "i32",
                           "stride_dz": "i32", "ignore_index": "i32"},
                constexprs={"HAS_GE": has_ge, "BLOCK_V": DLOGITS_BLOCK_V},
                num_warps=DLOGITS_NUM_WARPS, num_stages=1,
            ))
    return specs
