"""Target of the ``verl.plugins`` entry point (pyproject.toml): ``import verl`` imports this module, which registers
every lckernels_rl objective and outcome advantage estimator with verl (see :mod:`lckernels_rl.integrations.verl`).
verl logs and ignores a plugin that fails to load, so a failure here never breaks ``import verl``."""

from .verl import register

REGISTERED = register()
