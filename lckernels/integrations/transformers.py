"""HF transformers integration: ``moe_experts`` as the experts implementation ``"lckernels"``.

    >>> import lckernels.integrations.transformers as lck_hf          # doctest: +SKIP
    >>> lck_hf.register()                                             # doctest: +SKIP
    >>> model = AutoModelForCausalLM.from_config(cfg, experts_implementation="lckernels")   # doctest: +SKIP

How it plugs in (transformers >= 5, ``transformers/integrations/moe.py``): MoE experts modules decorated with
``@use_experts_implementation`` (Qwen3-MoE, Mixtral, DeepSeek-V3, ...) look their forward up in the
``ExpertsInterface`` under ``config._experts_implementation``; :func:`register` adds :func:`lckernels_experts_forward`
there.  It is called as ``forward(experts_module, hidden_states [T, H], top_k_index [T, k], top_k_weights [T, k])``
with the module's ``gate_up_proj [E, 2I, H]`` and ``down_proj [E, H, I]`` -- exactly :func:`lckernels.moe_experts`'s
layout, so the weights are passed as they are (no copy).

LongCat-Flash's experts (``LongcatFlashExperts``: E GEMM experts plus ``zero_expert_num`` identity experts) are not
decorated in transformers, so :func:`register` also wraps that class: models built *after* ``register()`` with
``experts_implementation="lckernels"`` route their experts through ``moe_experts(..., num_identity_experts=Z)``; every
other implementation name keeps transformers' own forward.

Unsupported expert variants (biases, non-SiLU or custom gating, interleaved gate/up, post-expert norms) raise
``NotImplementedError`` naming the feature rather than computing something else.  Under expert parallelism
(sentinel expert ids) the call is handed to transformers' ``grouped_mm`` implementation.

transformers is imported lazily: ``lckernels`` itself imports without it.
"""

from __future__ import annotations

import functools

import torch

NAME = "lckernels"
_REGISTERED: set[str] = set()  # names registered by register(); LongCat-Flash's wrapper dispatches on these

__all__ = ["NAME", "register", "lckernels_experts_forward"]


def _is_silu(act) -> bool:
    return isinstance(act, torch.nn.SiLU) or type(act).__name__ in ("SiLUActivation", "SiLU")


def _check_supported(module) -> None:
    from transformers.integrations.moe import _default_apply_gate

    problems = []
    if getattr(module, "has_bias", False):
        problems.append("expert biases")
    if not getattr(module, "has_gate", True):
        problems.append("non-gated experts (up_proj only)")
    if getattr(module, "has_post_expert_norm", False):
        problems.append("a post-expert norm")
    if not getattr(module, "is_concatenated", True):
        problems.append("interleaved gate/up weights")
    apply_gate = getattr(type(module), "_apply_gate", _default_apply_gate)
    if apply_gate is not _default_apply_gate:
        problems.append(f"a custom gate ({type(module).__name__}._apply_gate)")
    if not _is_silu(getattr(module, "act_fn", None)):
        problems.append(f"activation {type(getattr(module, 'act_fn', None)).__name__} (only SiLU / SwiGLU)")
    if problems:
        raise NotImplementedError(f"experts_implementation='{NAME}' supports SwiGLU experts with concatenated "
                                  f"[gate; up] weights and no bias; {type(module).__name__} has "
                                  f"{', '.join(problems)}. Use experts_implementation='grouped_mm' for this model.")


def lckernels_experts_forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                              top_k_weights: torch.Tensor) -> torch.Tensor:
    """The ``"lckernels"`` entry of transformers' ``ExpertsInterface``: ``self`` is the experts module.

    hidden_states [T, H], top_k_index [T, k], top_k_weights [T, k] -> [T, H] in hidden_states' dtype.
    """
    import lckernels

    if getattr(self, "_is_expert_parallel", False):
        from transformers.integrations.moe import grouped_mm_experts_forward

        return grouped_mm_experts_forward(self, hidden_states, top_k_index, top_k_weights)
    _check_supported(self)
    num_identity = int(getattr(self, "zero_expert_num", 0) or 0)  # LongCat-Flash's identity ("zero") experts
    gate_up, down = self.gate_up_proj, self.down_proj
    if gate_up is None:  # a model with identity experts only
        return (top_k_weights.sum(-1, keepdim=True).to(hidden_states.dtype) * hidden_states)
    if getattr(self, "is_transposed", False):  # [E, H, 2I] / [E, I, H] storage: transposed views, no copy
        gate_up, down = gate_up.transpose(1, 2), down.transpose(1, 2)
    num_experts = down.shape[0]
    if gate_up.shape[0] != num_experts:  # LongcatFlashExperts allocates gate_up_proj for E + Z experts; E are used
        gate_up = gate_up[:num_experts]
    x = hidden_states.to(gate_up.dtype)  # as transformers' grouped_mm does under autocast
    out = lckernels.moe_experts(x, top_k_index, top_k_weights, gate_up, down, num_identity_experts=num_identity)
    return out.to(hidden_states.dtype)


def _wrap_longcat_flash() -> None:
    """Let ``LongcatFlashExperts`` (not decorated with ``use_experts_implementation`` in transformers) dispatch to
    :func:`lckernels_experts_forward` when its model's config asks for ``"lckernels"``."""
    try:
        from transformers.models.longcat_flash import modeling_longcat_flash as mod
    except ImportError:  # an older transformers without LongCat-Flash
        return
    cls = mod.LongcatFlashExperts
    if getattr(cls, "_lckernels_wrapped", False):
        return
    original_init, original_forward = cls.__init__, cls.forward

    @functools.wraps(original_init)
    def __init__(self, config, *args, **kwargs):
        original_init(self, config, *args, **kwargs)
        self._lckernels_config = config  # the model's config: its _experts_implementation is read at call time

    @functools.wraps(original_forward)
    def forward(self, hidden_states, top_k_index, top_k_weights):
        config = getattr(self, "_lckernels_config", None)
        if config is not None and getattr(config, "_experts_implementation", None) in _REGISTERED:
            return lckernels_experts_forward(self, hidden_states, top_k_index, top_k_weights)
        return original_forward(self, hidden_states, top_k_index, top_k_weights)

    cls.__init__ = __init__
    cls.forward = forward
    cls._lckernels_wrapped = True


def register(name: str = NAME) -> None:
    """Add ``name`` (default ``"lckernels"``) to transformers' ``ExpertsInterface`` and wrap LongCat-Flash's experts.

    Idempotent.  Afterwards ``from_pretrained(..., experts_implementation="lckernels")`` /
    ``from_config(cfg, experts_implementation="lckernels")`` or ``model.set_experts_implementation("lckernels")``
    (decorated experts classes) select it.  The backend follows lckernels' dispatch rule: Triton for CUDA tensors,
    the C++ CPU path for CPU tensors, ``LCK_BACKEND`` to override.
    """
    try:
        from transformers.integrations.moe import ExpertsInterface
    except ImportError as exc:  # pragma: no cover - depends on the installed transformers
        raise ImportError("lckernels.integrations.transformers needs transformers >= 5 (ExpertsInterface in "
                          "transformers.integrations.moe); pip install 'transformers>=5'") from exc
    ExpertsInterface.register(name, lckernels_experts_forward)
    _REGISTERED.add(name)
    _wrap_longcat_flash()
