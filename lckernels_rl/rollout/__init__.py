"""Rollout engines (HF ``generate``, the default, and vLLM, the ``vllm`` extra) and the rollout driver (sync or
async with a staleness bound; local threads or Ray executors)."""

from .base import RolloutBackend, Rollouts, check_generate_args
from .hf import HFGenerateBackend
from .driver import BatchingEngine, Domain, DoraScheduler, EngineStopped, RolloutDriver, capacity_allows
from .executors import LocalExecutor, RayExecutor, make_executor

BACKENDS = ("hf", "vllm")


def make_backend(name: str, model, tokenizer, **kwargs) -> RolloutBackend:
    """The rollout backend ``name`` (``"hf"`` or ``"vllm"``) for ``model`` and ``tokenizer``."""
    if name == "hf":
        return HFGenerateBackend(model, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                 **kwargs)
    if name == "vllm":
        from .vllm import VLLMBackend

        return VLLMBackend(model, tokenizer, **kwargs)
    raise ValueError(f"unknown rollout backend {name!r}; available: {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "RolloutBackend", "Rollouts", "HFGenerateBackend", "check_generate_args", "make_backend",
           "RolloutDriver", "BatchingEngine", "EngineStopped", "Domain", "DoraScheduler", "capacity_allows", "LocalExecutor", "RayExecutor",
           "make_executor"]
