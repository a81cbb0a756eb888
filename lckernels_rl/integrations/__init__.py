"""Adapters into the trainers people already use; each imports its host framework lazily.

* :mod:`lckernels_rl.integrations.verl` -- ``register()``: every objective as verl policy loss ``lck_<name>``,
  outcome advantage estimators as ``lck_<name>``; loaded automatically through the ``verl.plugins`` entry point
  (:mod:`lckernels_rl.integrations.verl_plugin`).
* :mod:`lckernels_rl.integrations.trl` -- ``LckGRPOTrainer``: TRL's ``GRPOTrainer`` with ``_compute_loss`` through
  :func:`lckernels.fused_policy_loss`.
"""
