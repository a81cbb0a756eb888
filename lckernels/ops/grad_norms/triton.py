"""Triton kernels of ``grad_norms``: a multi-tensor sum of squares in one launch, then a per-group reduction.

Stage 1 (``_sumsq_chunks_kernel``): the T distinct gradients are described by a small table -- their data
addresses, element counts and dtype codes -- and cut into chunks of ``CHUNK`` elements; ``chunk_tensor[c]`` says
which tensor chunk ``c`` belongs to and ``tensor_first_chunk[t]`` where tensor t's chunks start.  One program per
chunk turns the tensor's address into a typed pointer (``int64 -> pointer<dtype>``; one compiled branch per dtype,
picked at run time from the dtype code), sums the squares of its elements in fp32 (``BLOCK`` at a time, masked tail)
and writes one fp32 partial.  Every tensor of every dtype goes through the same launch: no ``torch.cat``, no copy.

Stage 2 (``_group_sum_kernel``): one program per group walks the group's tensors (``entry_tensor`` sorted by group)
and their chunk partials in a fixed order and writes the group's squared norm (or its square root).

No atomics anywhere, so the result is bit-for-bit deterministic.  Two launches whatever the number of tensors and
groups, plus one host-to-device copy of T int64 addresses (skipped when the gradients did not move since the last
call).  The rest of the table depends only on the shapes, dtypes and group structure and is cached on the device.

The interpreter (``TRITON_INTERPRET=1``) runs the same code on CPU tensors: its loads take raw addresses, so the
address table works there too.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ...backend import interpreter_enabled

# dtype codes stored in the table; the kernel has one branch per code
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}

# ---------------------------------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------------------------------


@triton.jit
def _sumsq_range(ptr, start, end, BLOCK: tl.constexpr, ALIGNED: tl.constexpr):
    """fp32 sum of squares of ptr[start:end] (ptr is a typed pointer; any float element type).

    Full blocks load unmasked; with ALIGNED (the host checked every address is 16-byte aligned, and ``start`` is a
    multiple of BLOCK) the hints let the compiler emit 16-byte vector loads.  The ragged tail is one masked load.
    """
    acc = tl.zeros((BLOCK,), tl.float32)
    offs = tl.arange(0, BLOCK)
    full_end = start + (end - start) // BLOCK * BLOCK
    for s in range(start, full_end, BLOCK):
        ptrs = ptr + s + offs
        if ALIGNED:
            ptrs = tl.max_contiguous(tl.multiple_of(ptrs, 16), BLOCK)
        x = tl.load(ptrs).to(tl.float32)
        acc += x * x
    o = full_end + offs
    x = tl.load(ptr + o, mask=o < end, other=0.0).to(tl.float32)
    acc += x * x
    return tl.sum(acc, 0)


@triton.jit
def _sumsq_chunks_kernel(
    addr_ptr, numel_ptr, code_ptr, first_chunk_ptr, chunk_tensor_ptr, partial_ptr,
    CHUNK: tl.constexpr, BLOCK: tl.constexpr, ALIGNED: tl.constexpr,
):
    c = tl.program_id(0).to(tl.int64)
    t = tl.load(chunk_tensor_ptr + c)
    addr = tl.load(addr_ptr + t)
    n = tl.load(numel_ptr + t)
    code = tl.load(code_ptr + t)
    start = (c - tl.load(first_chunk_ptr + t)) * CHUNK
    end = tl.minimum(start + CHUNK, n)
    # one branch per dtype (distinct names: a variable may not change pointer type across branches)
    if code == 0:
        p32 = addr.to(tl.pointer_type(tl.float32), bitcast=True)
        sq = _sumsq_range(p32, start, end, BLOCK, ALIGNED)
    elif code == 1:
        p16 = addr.to(tl.pointer_type(tl.float16), bitcast=True)
        sq = _sumsq_range(p16, start, end, BLOCK, ALIGNED)
    elif code == 2:
        pbf = addr.to(tl.pointer_type(tl.bfloat16), bitcast=True)
        sq = _sumsq_range(pbf, start, end, BLOCK, ALIGNED)
    else:
        p64 = addr.to(tl.pointer_type(tl.float64), bitcast=True)
        sq = _sumsq_range(p64, start, end, BLOCK, ALIGNED)
    tl.store(partial_ptr + c, sq)


@triton.jit
def _group_sum_kernel(
    partial_ptr, first_chunk_ptr, entry_tensor_ptr, group_entry_ptr, out_ptr,
    SQUARED: tl.constexpr, BLOCK_R: tl.constexpr,
):
    g = tl.program_id(0)
    e0 = tl.load(group_entry_ptr + g)
    e1 = tl.load(group_entry_ptr + g + 1)
    acc = tl.zeros((BLOCK_R,), tl.float32)
    offs = tl.arange(0, BLOCK_R).to(tl.int64)
    for e in range(e0, e1):
        t = tl.load(entry_tensor_ptr + e)
        c0 = tl.load(first_chunk_ptr + t)
        c1 = tl.load(first_chunk_ptr + t + 1)
        for c in range(c0, c1, BLOCK_R):
            o = c + offs
            acc += tl.load(partial_ptr + o, mask=o < c1, other=0.0)
    total = tl.sum(acc, 0)
    if not SQUARED:
        total = tl.sqrt(total)
    tl.store(out_ptr + g, total)


# ---------------------------------------------------------------------------------------------------------------------
# configs and launcher
# ---------------------------------------------------------------------------------------------------------------------


class Config(NamedTuple):
    CHUNK: int      # elements per program in stage 1
    BLOCK: int      # elements per load in stage 1
    num_warps: int


# Shipped configs (every one is compiled for sm_90 and sm_80 by tests/test_aot_compile.py).  A chunk of 16K elements
# keeps ~2K programs in flight at 32M gradient elements; 64K-element chunks keep the chunk table and the stage-2
# walk short for LLM-sized models (7B parameters -> ~110K chunks).
CONFIGS = (
    Config(16384, 1024, 4),
    Config(65536, 2048, 8),
)
LARGE_NUMEL = 256 << 20  # elements from which the large-chunk config is used
INTERPRETER_CONFIG = Config(256, 64, 1)  # several chunks per tensor even for tiny test tensors (ragged tails)
GROUP_BLOCK = 256
GROUP_WARPS = 4
INTERPRETER_GROUP_BLOCK = 16


def pick_config(total_numel: int) -> Config:
    if interpreter_enabled():
        return INTERPRETER_CONFIG
    return CONFIGS[1] if total_numel >= LARGE_NUMEL else CONFIGS[0]


class _Layout(NamedTuple):
    meta: torch.Tensor          # int64 on the device: [numel(T) | code(T) | first_chunk(T+1) | entry(E) | gstart(G+1)]
    chunk_tensor: torch.Tensor  # int64 [n_chunks] on the device
    n_tensors: int
    n_entries: int
    n_chunks: int


_LAYOUTS: OrderedDict = OrderedDict()   # layout key -> _Layout (shapes/dtypes/groups; no addresses)
_ADDRS: OrderedDict = OrderedDict()     # (device, addresses) -> int64 device tensor
_CACHE_SIZE = 8


def _cached(cache: OrderedDict, key, build):
    hit = cache.get(key)
    if hit is not None:
        cache.move_to_end(key)
        return hit
    value = build()
    cache[key] = value
    if len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)
    return value


def _build_layout(numels, codes, members, chunk, device) -> _Layout:
    counts = [-(-n // chunk) for n in numels]
    first = [0]
    for c in counts:
        first.append(first[-1] + c)
    entries, gstart = [], [0]
    for idx in members:
        entries.extend(idx)
        gstart.append(len(entries))
    meta = torch.tensor(list(numels) + list(codes) + first + entries + gstart, dtype=torch.int64)
    chunk_tensor = torch.repeat_interleave(torch.arange(len(numels), dtype=torch.int64),
                                           torch.tensor(counts, dtype=torch.int64))
    return _Layout(meta.to(device), chunk_tensor.to(device), len(numels), len(entries), first[-1])


def grad_norms_triton(tensors: list[torch.Tensor], members: list[list[int]], squared: bool = False,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """tensors: the distinct gradients (fp32/fp16/bf16/fp64, one device); members[g]: indices into ``tensors`` of
    group g.  Returns an fp32 ``[G]`` tensor of (squared) L2 norms on the device; empty groups give 0."""
    device = torch.device(device)
    n_groups = len(members)
    out = torch.empty(n_groups, dtype=torch.float32, device=device)
    if n_groups == 0:
        return out
    # contiguous views (a non-contiguous gradient -- rare: AccumulateGrad follows the parameter's layout -- is copied)
    dense = [t if t.is_contiguous() else t.contiguous() for t in tensors]
    numels = tuple(t.numel() for t in dense)
    codes = tuple(DTYPE_CODES[t.dtype] for t in dense)
    cfg = pick_config(sum(numels))
    key = (device, numels, codes, tuple(map(tuple, members)), cfg.CHUNK)
    layout = _cached(_LAYOUTS, key, lambda: _build_layout(numels, codes, members, cfg.CHUNK, device))
    addrs = tuple(t.data_ptr() for t in dense)
    addr_t = _cached(_ADDRS, (device, addrs),
                     lambda: torch.tensor(addrs if addrs else (0,), dtype=torch.int64).to(device))
    T, E = layout.n_tensors, layout.n_entries
    meta = layout.meta
    numel_t, code_t = meta[0:T], meta[T:2 * T]
    first_t = meta[2 * T:3 * T + 1]
    entry_t = meta[3 * T + 1:3 * T + 1 + E]
    gstart_t = meta[3 * T + 1 + E:]
    partial = torch.empty(max(layout.n_chunks, 1), dtype=torch.float32, device=device)
    if layout.n_chunks:
        _sumsq_chunks_kernel[(layout.n_chunks,)](
            addr_t, numel_t, code_t, first_t, layout.chunk_tensor, partial,
            CHUNK=cfg.CHUNK, BLOCK=cfg.BLOCK, ALIGNED=all(a % 16 == 0 for a in addrs), num_warps=cfg.num_warps,
        )
    block_r = INTERPRETER_GROUP_BLOCK if interpreter_enabled() else GROUP_BLOCK
    _group_sum_kernel[(n_groups,)](
        partial, first_t, entry_t if E else gstart_t, gstart_t, out,  # (an empty slice is never read)
        SQUARED=squared, BLOCK_R=block_r, num_warps=GROUP_WARPS,
    )
    del dense  # the launches are stream-ordered; the caching allocator keeps any copied tensor alive until they ran
    return out


def aot_specs():
    """Everything tests/test_aot_compile.py compiles: each shipped stage-1 config and both stage-2 variants.

    Neither kernel is GEMM-shaped (``gemm=False``): they are memory-bound reductions.
    """
    specs = []
    for cfg in CONFIGS:
        for aligned in (True, False):
            specs.append(dict(
                name=f"grad_norms_sumsq[chunk{cfg.CHUNK}-b{cfg.BLOCK}-w{cfg.num_warps}-al{int(aligned)}]",
                fn=_sumsq_chunks_kernel, gemm=False,
                signature={"addr_ptr": "*i64", "numel_ptr": "*i64", "code_ptr": "*i64", "first_chunk_ptr": "*i64",
                           "chunk_tensor_ptr": "*i64", "partial_ptr": "*fp32"},
                constexprs={"CHUNK": cfg.CHUNK, "BLOCK": cfg.BLOCK, "ALIGNED": aligned},
                num_warps=cfg.num_warps, num_stages=3,
            ))
    for squared in (False, True):
        specs.append(dict(
            name=f"grad_norms_group_sum[sq{int(squared)}-b{GROUP_BLOCK}-w{GROUP_WARPS}]",
            fn=_group_sum_kernel, gemm=False,
            signature={"partial_ptr": "*fp32", "first_chunk_ptr": "*i64", "entry_tensor_ptr": "*i64",
                       "group_entry_ptr": "*i64", "out_ptr": "*fp32"},
            constexprs={"SQUARED": squared, "BLOCK_R": GROUP_BLOCK},
            num_warps=GROUP_WARPS, num_stages=3,
        ))
    return specs
