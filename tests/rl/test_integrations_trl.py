"""lckernels_rl.integrations.trl: the TRL trainer subclass against the real, installed TRL (the ``test`` extra).

The whole module skips where TRL cannot be imported.  The verl adapter's tests are in test_integrations_verl.py.
"""

from __future__ import annotations

import types

import pytest
import torch

from lckernels_rl.objectives import get_objective

# ================================================================================================= TRL (real)

trl = pytest.importorskip("trl", reason="TRL is not installed (pip install 'lckernels[trl]')")


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[EOS]": 1, "[UNK]": 2, **{f"w{i}": i + 3 for i in range(61)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", eos_token="[EOS]", unk_token="[UNK]")


def make_trainer(tmp_path, model, **kw):
    from datasets import Dataset
    from lckernels_rl.integrations.trl import LckGRPOTrainer

    args = trl.GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4,
                          max_completion_length=5, report_to="none", use_cpu=True, bf16=False,
                          gradient_accumulation_steps=2, logging_steps=1, temperature=0.8)
    tr = LckGRPOTrainer(model=model, reward_funcs=lambda completions, **k: [0.0] * len(completions), args=args,
                        train_dataset=Dataset.from_dict({"prompt": ["w1 w2 w3"] * 8}),
                        processing_class=tiny_tokenizer(), **kw)
    tr.current_gradient_accumulation_steps = 2  # set by Trainer's loop; the loss scales with it
    return tr


@pytest.fixture(scope="module")
def dense_trainer(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, eos_token_id=1,
                      bos_token_id=1)
    return make_trainer(tmp_path_factory.mktemp("trl"), LlamaForCausalLM(cfg))


def trl_inputs(tr, seed=0, off_policy=True, b=4, p=3, c=5):
    g = torch.Generator().manual_seed(seed)
    inputs = dict(prompt_ids=torch.randint(3, 64, (b, p), generator=g), prompt_mask=torch.ones(b, p, dtype=torch.long),
                  completion_ids=torch.randint(3, 64, (b, c), generator=g),
                  completion_mask=torch.ones(b, c, dtype=torch.long), advantages=torch.randn(b, generator=g),
                  num_items_in_batch=torch.tensor(30.0))
    inputs["prompt_mask"][0, 0] = 0           # left padding
    inputs["completion_mask"][1, 3:] = 0      # early EOS
    with torch.no_grad():
        lp = trl.GRPOTrainer._get_per_token_logps_and_entropies(
            tr, tr.model, torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1),
            torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1), c)[0]
    old = lp + 0.3 * torch.randn(b, c, generator=g)
    if off_policy:  # else absent: TRL's "old = current, detached" (num_iterations == 1)
        inputs["old_per_token_logps"] = old
    inputs["ref_per_token_logps"] = lp + 0.2 * torch.randn(b, c, generator=g)  # read only when beta != 0
    inputs["sampling_per_token_logps"] = old + 0.05 * torch.randn(b, c, generator=g)
    return inputs


def loss_and_grads(fn, model, inputs):
    model.zero_grad(set_to_none=True)
    loss = fn(model, inputs)
    loss.backward()
    return loss.detach(), [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


def assert_same(trainer, inputs):
    m = trainer.model
    l_trl, g_trl = loss_and_grads(lambda mod, x: trl.GRPOTrainer._compute_loss(trainer, mod, x), m, inputs)
    l_lck, g_lck = loss_and_grads(trainer._compute_loss, m, inputs)
    torch.testing.assert_close(l_lck, l_trl, rtol=1e-5, atol=1e-6)
    assert len(g_trl) == len(g_lck) == len(list(m.parameters()))
    for a, b in zip(g_lck, g_trl):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=1e-6)


TRL_CASES = {
    "grpo": dict(loss_type="grpo"),
    "bnpo": dict(loss_type="bnpo"),
    "dr_grpo": dict(loss_type="dr_grpo"),
    "dapo": dict(loss_type="dapo", epsilon_high=0.28),
    "cispo": dict(loss_type="cispo", epsilon_high=1.3),
    "sapo": dict(loss_type="sapo"),
    "gspo": dict(loss_type="grpo", importance_sampling_level="sequence", epsilon_low=0.05, epsilon_high=0.05),
    "grpo+kl": dict(loss_type="grpo", beta=0.04),  # TRL's default use_bias_correction_kl=True: KL x ratio
    "bnpo+kl-no-bias-correction": dict(loss_type="bnpo", beta=0.04, use_bias_correction_kl=False),
    "gspo+kl": dict(loss_type="grpo", importance_sampling_level="sequence", beta=0.1),
    "dapo+vllm_is": dict(loss_type="dapo", use_vllm=True),
}


ON_POLICY_CASES = ("grpo", "dapo", "cispo", "grpo+kl", "gspo+kl")
TRL_PARAMS = [(c, True) for c in TRL_CASES] + [(c, False) for c in ON_POLICY_CASES]


@pytest.mark.parametrize("case,off_policy", TRL_PARAMS,
                         ids=[f"{c}-{'off' if o else 'on'}-policy" for c, o in TRL_PARAMS])
def test_trl_subclass_matches_grpo_trainer_compute_loss(dense_trainer, case, off_policy):
    """LckGRPOTrainer._compute_loss == GRPOTrainer._compute_loss (TRL 1.16's own) on a tiny random Llama: the loss
    and the gradient of every parameter, for each TRL loss type."""
    tr = dense_trainer
    spec = dict(TRL_CASES[case])
    keys = ("loss_type", "epsilon_low", "epsilon_high", "beta", "importance_sampling_level", "use_vllm",
            "vllm_importance_sampling_correction")
    saved = {k: getattr(tr, k) for k in keys}
    saved_bias = tr.args.use_bias_correction_kl
    try:
        tr.loss_type = spec.get("loss_type", "grpo")
        tr.epsilon_low = spec.get("epsilon_low", 0.2)
        tr.epsilon_high = spec.get("epsilon_high", 0.2)
        tr.beta = spec.get("beta", 0.0)
        tr.importance_sampling_level = spec.get("importance_sampling_level", "token")
        tr.args.use_bias_correction_kl = spec.get("use_bias_correction_kl", True)
        inputs = trl_inputs(tr, off_policy=off_policy or "use_vllm" in spec)
        if spec.get("use_vllm"):
            tr.use_vllm = tr.vllm_importance_sampling_correction = True
            d = inputs["old_per_token_logps"] - inputs["sampling_per_token_logps"]
            inputs["importance_sampling_ratio"] = torch.exp(d * inputs["completion_mask"]).clamp(max=1.02)
        assert_same(tr, inputs)
    finally:
        for k, v in saved.items():
            setattr(tr, k, v)
        tr.args.use_bias_correction_kl = saved_bias
    metrics = tr._metrics["train"]
    assert metrics["entropy"] and metrics["lck/loss"]


def test_trl_moe_aux_loss_matches(tmp_path):
    """A tiny Qwen3-MoE with output_router_logits: the router load-balancing loss is added exactly as TRL does."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(1)
    cfg = Qwen3MoeConfig(vocab_size=64, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, num_experts=4,
                         num_experts_per_tok=2, head_dim=8, max_position_embeddings=64, output_router_logits=True,
                         router_aux_loss_coef=0.01, pad_token_id=0, eos_token_id=1, bos_token_id=1)
    tr = make_trainer(tmp_path, Qwen3MoeForCausalLM(cfg))
    assert tr.aux_loss_enabled
    assert_same(tr, trl_inputs(tr, seed=3))
    assert tr._metrics["train"]["aux_loss"]


def test_trl_custom_objective_and_unsupported_options(dense_trainer):
    """objective='lcft_tis' reads sampling_per_token_logps as the inference log-probs; equal to the per-token
    objective on TRL's own log-probs (GA scaling included)."""
    tr = dense_trainer
    inputs = trl_inputs(tr, seed=4)
    tr.lck_objective = get_objective("lcft_tis", temperature=tr.temperature)
    try:
        loss = tr._compute_loss(tr.model, inputs)
    finally:
        tr.lck_objective = None
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    am = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    lp = trl.GRPOTrainer._get_per_token_logps_and_entropies(tr, tr.model, ids, am, 5)[0]
    expected, _ = get_objective("lcft_tis")(lp, inputs["old_per_token_logps"], inputs["advantages"],
                                            inputs["completion_mask"],
                                            rollout_log_prob=inputs["sampling_per_token_logps"])
    torch.testing.assert_close(loss, expected / 2, rtol=1e-5, atol=1e-6)
    from lckernels_rl.integrations.trl import objective_from_trl

    with pytest.raises(NotImplementedError, match="vespo"):
        objective_from_trl(types.SimpleNamespace(loss_type="vespo", epsilon=0.2, epsilon_high=0.2, beta=0.0,
                                                 temperature=1.0, importance_sampling_level="token"))
    tr.top_entropy_quantile = 0.5
    try:
        from lckernels_rl.integrations.trl import _check_supported

        with pytest.raises(NotImplementedError, match="top_entropy_quantile"):
            _check_supported(tr)
    finally:
        tr.top_entropy_quantile = 1.0
