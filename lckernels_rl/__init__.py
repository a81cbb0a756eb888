"""lckernels_rl: the thin RL layer (objectives, advantage estimators, budget allocators, value models, gating,
environments, agents and the trainer) on top of the public API of :mod:`lckernels`."""

__all__: list[str] = []
