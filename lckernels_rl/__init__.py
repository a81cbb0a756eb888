"""lckernels_rl: the thin RL layer (objectives, advantage estimators, budget allocators, value models, gating,
environments, agents and the trainer) on top of the public API of :mod:`lckernels`."""

# Before anything imports torch: OpenMP (libgomp) reads OMP_WAIT_POLICY once, when torch loads it.  PASSIVE makes
# idle OpenMP threads sleep instead of spinning, so a CPU step beside another job slows down ~3x instead of ~11x.
# Only if no OpenMP runtime is loaded yet and the user set none of OMP_WAIT_POLICY / GOMP_SPINCOUNT / KMP_BLOCKTIME;
# LCK_OMP_PASSIVE=0 turns it off (see lckernels_rl/_threads.py and ENVs.md).
from ._threads import apply_default_wait_policy as _apply_default_wait_policy

_apply_default_wait_policy()

__all__: list[str] = []
