"""Search environments (issue 14 §2): AutoRefine's search -> refine -> answer protocol (``autorefine``).

Imported on first use through :data:`lckernels_rl.envs.ENVS`; nothing is imported here.
"""
