"""HF transformers integration: tiny random-init Qwen3-MoE, Mixtral and LongCat-Flash (identity experts) models with
experts_implementation="lckernels" give the same logits and gradients as "eager" (fp32)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

import lckernels  # noqa: E402
import lckernels.integrations.transformers as lck_hf  # noqa: E402
from tests.helpers import assert_close_fp32  # noqa: E402

VOCAB = 128


def _configs():
    from transformers import LongcatFlashConfig, MixtralConfig, Qwen3MoeConfig

    attn = dict(vocab_size=VOCAB, hidden_size=64, num_attention_heads=4, max_position_embeddings=64)
    return {
        "qwen3_moe": Qwen3MoeConfig(**attn, num_key_value_heads=2, head_dim=16, num_hidden_layers=2,
                                    intermediate_size=96, moe_intermediate_size=32, num_experts=8,
                                    num_experts_per_tok=2, norm_topk_prob=True),
        "mixtral": MixtralConfig(**attn, num_key_value_heads=2, head_dim=16, num_hidden_layers=2,
                                 intermediate_size=32, num_local_experts=4, num_experts_per_tok=2),
        # num_layers=2 -> 2 decoder layers (each holds two attention blocks and one MoE); 4 GEMM + 2 identity experts
        "longcat_flash": LongcatFlashConfig(**attn, num_layers=2, ffn_hidden_size=96, q_lora_rank=16,
                                            kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, head_dim=8,
                                            v_head_dim=8, moe_topk=3, n_routed_experts=4, zero_expert_num=2,
                                            expert_ffn_hidden_size=32, routed_scaling_factor=2.0),
    }


@pytest.fixture(scope="module", autouse=True)
def _registered():
    lck_hf.register()


def _logits_and_grads(cfg, impl, ids):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)  # same random init for both implementations
    model = AutoModelForCausalLM.from_config(cfg, experts_implementation=impl, dtype=torch.float32)
    assert model.config._experts_implementation == impl
    logits = model(input_ids=ids).logits
    logits.square().mean().backward()
    return logits.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral", "longcat_flash"])
def test_matches_eager(family, monkeypatch):
    cfg = _configs()[family]
    ids = torch.randint(0, VOCAB, (2, 13), generator=torch.Generator().manual_seed(1))
    calls = []
    real = lckernels.moe_experts
    monkeypatch.setattr(lckernels, "moe_experts", lambda *a, **k: calls.append(k) or real(*a, **k))
    logits, grads = _logits_and_grads(cfg, "lckernels", ids)
    assert len(calls) == 2, "every MoE layer must go through lckernels.moe_experts"
    if family == "longcat_flash":
        assert calls[0]["num_identity_experts"] == 2
    ref_logits, ref_grads = _logits_and_grads(cfg, "eager", ids)
    assert_close_fp32(logits, ref_logits, 1e-5, "logits")
    assert grads.keys() == ref_grads.keys()
    # Per tensor: 1e-5 of its own max, plus 1e-6 of the largest gradient in the model.  The second term is for the
    # router weights, whose gradient comes out of the softmax Jacobian with heavy cancellation (max |grad| ~1e-5 while
    # other tensors reach ~5e-3): against a float64 eager run, eager fp32 and lckernels both miss it by ~1e-9.
    floor = 1e-6 * max(g.abs().max().item() for g in ref_grads.values())
    for name, ref in ref_grads.items():
        err = (grads[name] - ref).abs().max().item()
        assert err <= 1e-5 * ref.abs().max().item() + floor, f"{name}: max abs error {err:.3g}"


def test_other_implementations_untouched():
    """The LongCat-Flash wrapper only takes over for "lckernels"; "eager" still runs transformers' own loop."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(_configs()["longcat_flash"], experts_implementation="eager")
    experts = model.model.layers[0].mlp.experts
    assert experts._lckernels_config._experts_implementation == "eager"


def test_unsupported_experts_raise():
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(_configs()["mixtral"], experts_implementation="lckernels")
    experts = model.model.layers[0].mlp.experts
    experts.has_bias = True
    with pytest.raises(NotImplementedError, match="expert biases"):
        experts(torch.randn(3, 64), torch.zeros(3, 2, dtype=torch.long), torch.ones(3, 2))


def test_lckernels_imports_without_transformers():
    code = ("import sys; sys.modules['transformers'] = None\n"
            "import lckernels, lckernels.integrations.transformers as m\n"
            "assert 'transformers' not in [k for k, v in sys.modules.items() if v is not None]\n"
            "try:\n    m.register()\nexcept ImportError as e:\n    print('ok', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok"), out.stdout
