"""Tiny HF transformers policies built from a config with random initialization (no downloads).

==================  ===================================================================================
arch                what
==================  ===================================================================================
``longcat_flash``   LongCat-Flash style: MLA attention, MoE with GEMM experts **and identity ("zero")
                    experts** (the default policy of the trainer)
``qwen3_moe``       Qwen3-MoE: GQA attention, MoE with GEMM experts
``qwen3``           dense Qwen3 (head_dim 64 so vLLM's CPU attention accepts it)
==================  ===================================================================================

MoE experts run through lckernels' ``"lckernels"`` experts implementation
(:mod:`lckernels.integrations.transformers`) unless ``experts_implementation`` says otherwise.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ARCHS", "list_archs", "policy_config", "build_policy"]

# The tiny presets.  Every field is a transformers config field; overrides replace them one by one.
ARCHS: dict[str, dict[str, Any]] = {
    "longcat_flash": dict(
        hidden_size=128, num_layers=2, num_attention_heads=4, num_key_value_heads=4, ffn_hidden_size=256,
        q_lora_rank=64, kv_lora_rank=32, qk_nope_head_dim=32, qk_rope_head_dim=16, head_dim=16, v_head_dim=32,
        moe_topk=2, n_routed_experts=8, zero_expert_num=2, expert_ffn_hidden_size=128, routed_scaling_factor=1.0,
        max_position_embeddings=128),
    "qwen3_moe": dict(
        hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        intermediate_size=256, moe_intermediate_size=128, num_experts=8, num_experts_per_tok=2, norm_topk_prob=True,
        max_position_embeddings=128),
    "qwen3": dict(
        hidden_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=64,
        intermediate_size=384, max_position_embeddings=128),
}
_CONFIG_CLASSES = {"longcat_flash": "LongcatFlashConfig", "qwen3_moe": "Qwen3MoeConfig", "qwen3": "Qwen3Config"}
_MOE = {"longcat_flash", "qwen3_moe"}


def list_archs() -> list[str]:
    return sorted(ARCHS)


def policy_config(arch: str, *, vocab_size: int, pad_token_id: int = 0, bos_token_id: int = 1,
                  eos_token_id: int = 2, **overrides):
    """The transformers config of preset ``arch`` with ``overrides`` applied.

    Raises ``ValueError`` for an unknown ``arch`` or a field the config class does not have.
    """
    import transformers

    if arch not in ARCHS:
        raise ValueError(f"unknown model arch {arch!r}; available: {', '.join(list_archs())}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 3:
        raise ValueError(f"`vocab_size` must be an int >= 3; got {vocab_size!r}")
    cls = getattr(transformers, _CONFIG_CLASSES[arch])
    fields = dict(ARCHS[arch])
    probe = cls()
    # transformers configs accept any keyword; catch typos against the fields the class and the preset know
    unknown = sorted(k for k in overrides if not hasattr(probe, k) and k not in fields)
    if unknown:
        raise ValueError(f"model overrides {unknown} are not fields of {cls.__name__} (arch {arch!r})")
    fields.update(overrides)
    return cls(vocab_size=vocab_size, pad_token_id=pad_token_id, bos_token_id=bos_token_id,
               eos_token_id=eos_token_id, tie_word_embeddings=False, **fields)


def build_policy(arch: str, *, vocab_size: int, pad_token_id: int = 0, bos_token_id: int = 1, eos_token_id: int = 2,
                 experts_implementation: str = "lckernels", seed: int | None = None, **overrides):
    """A randomly initialized ``AutoModelForCausalLM`` of preset ``arch`` (fp32, train mode).

    ``experts_implementation`` (MoE archs only): ``"lckernels"`` (default; registered here), or transformers' own
    ``"eager"`` / ``"grouped_mm"`` / ``"batched_mm"``.  ``seed`` seeds torch before the initialization.
    """
    import torch
    from transformers import AutoModelForCausalLM

    cfg = policy_config(arch, vocab_size=vocab_size, pad_token_id=pad_token_id, bos_token_id=bos_token_id,
                        eos_token_id=eos_token_id, **overrides)
    kw = {}
    if arch in _MOE:
        if experts_implementation == "lckernels":
            import lckernels.integrations.transformers as lck_hf

            lck_hf.register()
        kw["experts_implementation"] = experts_implementation
    if seed is not None:
        torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, **kw)
    model.generation_config.pad_token_id = pad_token_id
    model.generation_config.eos_token_id = eos_token_id
    model.generation_config.bos_token_id = bos_token_id
    return model.float().train()
