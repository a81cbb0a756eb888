"""Value models: predict the current policy's success rate on prompts before any rollout (V0-style).

* :class:`InContextValueModel` -- ``predict(prompts, history) -> p_hat`` from the policy's (instruction, score)
  history: hashed character/word n-grams and a kernel-weighted Beta posterior; no download, no training.
* :func:`route` / :class:`CheapestSuccessfulRouter` -- send each prompt to the cheapest model predicted to succeed.

Any object with the same ``predict`` signature (:class:`ValueModel`) plugs into the router and into
``lckernels_rl.budget.v0_allocate``.
"""

from .incontext import InContextValueModel, ValueModel, hashed_features
from .router import CheapestSuccessfulRouter, ModelSpec, RoutingResult, route

__all__ = ["ValueModel", "InContextValueModel", "hashed_features", "ModelSpec", "RoutingResult", "route",
           "CheapestSuccessfulRouter"]
