"""CPU kernels for the fused policy-loss driver: ATen GEMMs (MKL/oneDNN) + the C++ row kernels of fused_logprobs.

Per row chunk: ``logits = h @ W.T`` (fp32), ``_C.logprobs_fwd_chunk`` (one fused pass per row: max, then
sum-exp and entropy; it scales the logits by 1/T in place), then, after the loss math, ``_C.logprobs_bwd_chunk``
turns the kept logits into d loss / d logits in place.  Invalid rows are dropped before any GEMM.
"""

from __future__ import annotations

import math

import torch

from ..logprobs.cpu import chunk_ops, logprobs_forward_cpu
from .fused import DEFAULT_CHUNK_BYTES


class CpuKernels:
    compact = True
    chunk_bytes = DEFAULT_CHUNK_BYTES

    def __init__(self, explicit: bool, ignore_index: int):
        self.ops = chunk_ops(explicit)
        self.ignore_index = ignore_index
        # MASPO's gate: the C++ kernel of lckernels.soft_gaussian_gate ("auto" falls back like every CPU op)
        self.gate_backend = "cpu" if explicit else "auto"

    @staticmethod
    def weight_for_gemm(weight):
        return weight.to(torch.float32).contiguous()

    def row_stats(self, h_c, w32, y_c, inv_t):
        z = torch.mm(h_c.to(torch.float32), w32.t())
        n = z.shape[0]
        m = torch.full((n,), -math.inf)
        s, t, zy = torch.zeros(n), torch.zeros(n), torch.zeros(n)
        self.ops.logprobs_fwd_chunk(z, y_c.contiguous(), 0, inv_t, m, s, t, zy)  # z is now logits / T
        log_s = s.log()
        lse = m + log_s
        return zy - lse, log_s - t / s, lse, z

    def dlogits_(self, z, y_c, lse, ent, g_scaled, ge_scaled):
        ge = ge_scaled.contiguous() if ge_scaled is not None else torch.empty(0)
        # z already holds logits / T, so the kernel's own 1/T is 1; the chain rule's 1/T is folded into g_scaled
        self.ops.logprobs_bwd_chunk(z, y_c.contiguous(), 0, 1.0, lse.contiguous(), ent.contiguous(),
                                    g_scaled.contiguous(), ge, self.ignore_index)
        return z

    @staticmethod
    def mm_fp32(dz, w32):
        return torch.mm(dz, w32)

    @staticmethod
    def addmm_t_(grad_w, dz, h_c):
        grad_w.addmm_(dz.t(), h_c.to(torch.float32))

    def forward_logprobs(self, hidden2d, weight, targets, temperature):
        with torch.no_grad():
            return logprobs_forward_cpu(self.ops, hidden2d, weight, targets, temperature, self.ignore_index)[0]
