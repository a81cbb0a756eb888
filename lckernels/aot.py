"""Ahead-of-time compilation of the shipped Triton kernels for real GPUs, without a GPU.

``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))`` runs the whole Triton pipeline (ttir -> ttgir ->
llir -> ptx -> cubin with the bundled ptxas) on a machine with no GPU.  This catches what the interpreter forgives:
non-power-of-2 ``tl.arange``, misuse of constexprs, dtype errors in ``tl.dot`` and shared-memory overflow.

Every op's ``triton.py`` exposes ``aot_specs()``: a list of dicts with ``name``, ``fn`` (the ``@triton.jit``
kernel), ``signature``, ``constexprs``, ``num_warps``, ``num_stages`` and ``gemm`` (True when the kernel is
tensor-core work, whose sm_90 PTX must use ``wgmma``).  :func:`all_specs` collects them.

Run ``python -m lckernels.aot`` for a summary table (must not run with TRITON_INTERPRET=1).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

# modules whose aot_specs() list the shipped kernels; every new Triton op adds itself here
KERNEL_MODULES = (
    "lckernels.ops.logprobs.triton",
    "lckernels.ops.policy_loss.triton",
    "lckernels.ops.gating.triton",
    "lckernels.ops.grad_norms.triton",
    "lckernels.ops.grouped_mm.triton",
    "lckernels.ops.moe.triton",
)

# dynamic shared memory per block (bytes): sm_80 (A100) 163 KiB, sm_90 (H100) 227 KiB
SHARED_MEMORY_LIMIT = {80: 166912, 90: 232448}


@dataclass
class Compiled:
    name: str
    arch: int
    shared: int
    num_warps: int
    ptx: str

    @property
    def uses_wgmma(self) -> bool:
        return "wgmma" in self.ptx

    @property
    def uses_mma(self) -> bool:
        return "mma.sync" in self.ptx or "wgmma" in self.ptx


def all_specs() -> list[dict]:
    specs = []
    for mod in KERNEL_MODULES:
        specs.extend(importlib.import_module(mod).aot_specs())
    return specs


def compile_spec(spec: dict, arch: int) -> Compiled:
    """Compile one spec for ``sm_{arch}``; raise if it fails or overflows shared memory."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from .backend import interpreter_enabled

    if interpreter_enabled():
        raise RuntimeError("AOT compilation needs TRITON_INTERPRET unset (kernels are interpreted functions then)")
    src = ASTSource(fn=spec["fn"], signature=spec["signature"], constexprs=spec.get("constexprs", {}))
    kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                            options={"num_warps": spec.get("num_warps", 4), "num_stages": spec.get("num_stages", 3)})
    shared = int(kernel.metadata.shared)
    limit = SHARED_MEMORY_LIMIT.get(arch)
    if limit is not None and shared > limit:
        raise RuntimeError(f"{spec['name']}: needs {shared} bytes of shared memory on sm_{arch} (limit {limit})")
    return Compiled(spec["name"], arch, shared, spec.get("num_warps", 4), kernel.asm["ptx"])


def main() -> None:  # pragma: no cover - a CLI convenience
    for spec in all_specs():
        for arch in (90, 80):
            c = compile_spec(spec, arch)
            print(f"sm_{arch}  {c.name:70s} shared={c.shared:7d}B  wgmma={c.uses_wgmma}  mma={c.uses_mma}")


if __name__ == "__main__":
    main()
