"""Long-horizon environments: HIPIF rooms (subgoals, folding, reflection) and the DuCA sales dialogue."""

from .rooms import RoomsEnv
from .sales import SalesEnv

__all__ = ["RoomsEnv", "SalesEnv"]
