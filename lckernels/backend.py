"""The one dispatch rule shared by every public op.

Every op takes ``backend: Literal["auto", "triton", "cpu", "reference"] = "auto"``.

* ``auto``      -> ``triton`` for CUDA tensors, ``cpu`` for CPU tensors.  The environment variable ``LCK_BACKEND``
                   (one of ``triton``/``cpu``/``reference``) replaces ``auto``; an explicit argument always wins.
* ``triton``    -> the ``@triton.jit`` kernels.  On CPU tensors this is only allowed when ``TRITON_INTERPRET=1`` was set
                   before triton was imported (the kernels then run under Triton's NumPy interpreter, which is how the
                   test-suite checks them without a GPU); otherwise it is a clear ``RuntimeError``.
* ``cpu``       -> the fast CPU path (C++ from ``csrc/`` via ``lckernels._C``).  Raises with a rebuild hint when the
                   extension is missing.  On CUDA tensors it is an error (it would silently copy to host).
* ``reference`` -> readable fp32 PyTorch, the test oracle; any device.

When ``auto`` picks ``cpu`` and the extension is not built, ops fall back to their streamed PyTorch path (same
numerics and memory bound, slower) and warn once.
"""

from __future__ import annotations

import functools
import os
from typing import Literal

import torch

Backend = Literal["auto", "triton", "cpu", "reference"]
BACKENDS: tuple[str, ...] = ("auto", "triton", "cpu", "reference")
_CONCRETE = ("triton", "cpu", "reference")

__all__ = ["Backend", "BACKENDS", "resolve_backend", "triton_available", "interpreter_enabled"]


def interpreter_enabled() -> bool:
    """True when Triton kernels run under the interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """True when ``import triton`` works (it is optional on non-Linux platforms)."""
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - depends on the platform
        return False
    return True


def _env_backend() -> str | None:
    value = os.environ.get("LCK_BACKEND", "").strip().lower()
    if not value or value == "auto":
        return None
    if value not in _CONCRETE:
        raise ValueError(f"LCK_BACKEND must be one of {', '.join(BACKENDS)}; got {value!r}")
    return value


def resolve_backend(backend: str, device: torch.device, op: str = "op") -> str:
    """Turn the user's ``backend`` argument into a concrete backend for tensors on ``device``.

    Returns one of ``"triton"``, ``"cpu"``, ``"reference"``.  ``"cpu"`` is returned even when the C++ extension is
    missing if it came from ``auto``; the op then uses its PyTorch fallback (see :func:`lckernels._ext.require`).
    """
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {', '.join(repr(b) for b in BACKENDS)}; got {backend!r}")
    device = torch.device(device)
    chosen = backend
    if backend == "auto":
        chosen = _env_backend() or ("triton" if device.type == "cuda" else "cpu")
    if chosen == "triton":
        if not triton_available():
            raise RuntimeError(f"{op}: backend='triton' needs the `triton` package (pip install triton)")
        if device.type != "cuda" and not interpreter_enabled():
            raise RuntimeError(
                f"{op}: backend='triton' got tensors on {device}; Triton kernels need CUDA tensors, or set "
                "TRITON_INTERPRET=1 before importing triton to run them on CPU under the interpreter (slow; for tests). "
                "Use backend='cpu' or 'auto' for CPU tensors."
            )
    elif chosen == "cpu" and device.type != "cpu":
        raise RuntimeError(
            f"{op}: backend='cpu' got tensors on {device}; move them to CPU or use backend='auto'/'triton'"
        )
    return chosen
