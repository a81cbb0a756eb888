"""Loads the C++ extension ``lckernels._C`` or reports why it is unavailable."""

from __future__ import annotations

import functools
import warnings

REBUILD_HINT = (
    "build it with `make build` (or `python setup.py build_ext --inplace` in the repository, or "
    "`pip install --no-build-isolation -e .`); it needs a C++17 compiler with OpenMP, ninja and pybind11"
)

_error: str | None = None


@functools.lru_cache(maxsize=None)
def load():
    """Return the ``lckernels._C`` module, or ``None`` if it is not built/importable."""
    global _error
    try:
        from lckernels import _C  # type: ignore[attr-defined]
    except ImportError as exc:  # not built, or built against another torch
        _error = str(exc)
        return None
    return _C


def available() -> bool:
    return load() is not None


def require(op: str):
    """The extension, or a RuntimeError that says how to rebuild it (for an explicit ``backend='cpu'``)."""
    ext = load()
    if ext is None:
        raise RuntimeError(f"{op}: backend='cpu' needs the C++ extension lckernels._C, which failed to load "
                           f"({_error}); {REBUILD_HINT}")
    return ext


_warned: set[str] = set()


def warn_fallback(op: str) -> None:
    """Warn once per op that ``auto`` fell back to the streamed PyTorch path."""
    if op in _warned:
        return
    _warned.add(op)
    warnings.warn(f"{op}: lckernels._C is not built ({_error}); using the streamed PyTorch CPU path. {REBUILD_HINT}",
                  RuntimeWarning, stacklevel=3)
