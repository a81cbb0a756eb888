"""One sub-package per op: reference.py (oracle), cpu.py (fast CPU), triton.py (GPU kernels), __init__ (public fn)."""
