"""Memory environments (issue 14 §1): AMemGym (``amemgym``), GRU-Mem (``gru_mem``), MemOCR text-only (``memocr``).

Each module is imported on first use through :data:`lckernels_rl.envs.ENVS`; nothing is imported here.
"""
