"""Ahead-of-time compile of every shipped Triton kernel, every shipped config, for sm_90 and sm_80 (no GPU needed)."""

from __future__ import annotations

import pytest

from lckernels.aot import SHARED_MEMORY_LIMIT, all_specs, compile_spec

SPECS = all_specs()


def test_every_kernel_module_ships_specs():
    names = [s["name"] for s in SPECS]
    assert len(names) == len(set(names)), "duplicate AOT spec names"
    assert any(n.startswith("logprobs_fwd") for n in names) and any(n.startswith("logprobs_bwd") for n in names)


@pytest.mark.aot
@pytest.mark.parametrize("arch", [90, 80], ids=["sm90", "sm80"])
@pytest.mark.parametrize("spec", SPECS, ids=[s["name"] for s in SPECS])
def test_compiles(spec, arch):
    c = compile_spec(spec, arch)
    assert c.ptx and c.shared <= SHARED_MEMORY_LIMIT[arch]
    if spec["gemm"]:
        assert c.uses_mma, f"{spec['name']}: no tensor-core MMA in the sm_{arch} PTX"
        if arch == 90:
            assert c.uses_wgmma, f"{spec['name']}: GEMM-shaped kernel without wgmma on sm_90"
