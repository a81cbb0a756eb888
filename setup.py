"""Builds the C++ extension ``lckernels._C`` from ``csrc/``.

Everything else (metadata, packages, extras) lives in pyproject.toml.  The extension is optional at run time:
``lckernels`` imports without it and falls back to streamed PyTorch; ``backend="cpu"`` asks for it explicitly and
raises with a rebuild hint when it is missing.

Build in place (what ``make build`` does)::

    python setup.py build_ext --inplace

Environment knobs: ``LCK_NO_EXT=1`` skips the extension entirely; ``LCK_FORCE_CUDA=1`` builds the CUDA sources even
when torch cannot see a GPU (torch must still be a CUDA build).
"""

import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _simd_flags():
    """AVX2/FMA only when the building machine has them (the in-place build runs where it is built);
    ``LCK_NATIVE=1`` tunes for this exact CPU instead."""
    if os.environ.get("LCK_NATIVE") == "1":
        return ["-march=native"]
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return []
    return ["-mavx2", "-mfma"] if (" avx2" in flags and " fma" in flags) else []


def _extensions():
    if os.environ.get("LCK_NO_EXT") == "1":
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:  # metadata-only builds (sdist) do not need torch
        return [], {}

    cpp_sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cu"), recursive=True))
    with_cuda = bool(cuda_sources) and torch.version.cuda is not None and (
        cpp_extension.CUDA_HOME is not None or os.environ.get("LCK_FORCE_CUDA") == "1"
    )
    cxx_flags = ["-O3", "-std=c++20", "-fopenmp", "-fno-math-errno"] + _simd_flags()
    extra = {"cxx": cxx_flags}
    define_macros = []
    if with_cuda:
        ext_cls = cpp_extension.CUDAExtension
        sources = cpp_sources + cuda_sources
        extra["nvcc"] = ["-O3", "-std=c++20"]
        define_macros.append(("LCK_WITH_CUDA", "1"))
    else:
        ext_cls = cpp_extension.CppExtension
        sources = cpp_sources
    ext = ext_cls(
        name="lckernels._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
        define_macros=define_macros,
    )
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
