"""lckernels_rl.integrations: the verl adapter (against a STAND-IN registry module) and the TRL trainer subclass
(against the real, installed TRL).

verl is not installed in CI (it is heavy).  ``VerlStandIn`` below is a minimal stand-in written for these tests that
mirrors verl's registry API as verified in verl-project/verl ``verl/trainer/ppo/core_algos.py``:
``register_policy_loss(name)`` / ``register_adv_est(name)`` are decorator factories filling
``POLICY_LOSS_REGISTRY`` / ``ADV_ESTIMATOR_REGISTRY``; ``register_adv_est`` raises when a *different* function is
registered under a taken name; ``get_policy_loss_fn`` / ``get_adv_estimator_fn`` raise ``ValueError`` on unknown
names.  The actor's keyword call (``old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config,
rollout_is_weights``) and ``agg_loss``'s normalizations are re-derived here independently (``verl_agg`` /
``ppo_reference``), not copied.
"""

from __future__ import annotations

import math
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import pytest
import torch

import lckernels
from lckernels_rl.objectives import get_objective, list_objectives

ROOT = Path(__file__).resolve().parents[2]


# ================================================================================================= verl (stand-in)

def make_verl_standin():
    core = types.ModuleType("verl.trainer.ppo.core_algos")
    core.POLICY_LOSS_REGISTRY = {}
    core.ADV_ESTIMATOR_REGISTRY = {}

    def register_policy_loss(name):
        def decorator(fn):
            core.POLICY_LOSS_REGISTRY[name] = fn
            return fn
        return decorator

    def get_policy_loss_fn(name):
        if name not in core.POLICY_LOSS_REGISTRY:
            raise ValueError(f"Unsupported loss mode: {name}")
        return core.POLICY_LOSS_REGISTRY[name]

    def register_adv_est(name):
        def decorator(fn):
            if name in core.ADV_ESTIMATOR_REGISTRY and core.ADV_ESTIMATOR_REGISTRY[name] != fn:
                raise ValueError(f"Adv estimator {name} has already been registered")
            core.ADV_ESTIMATOR_REGISTRY[name] = fn
            return fn
        return decorator

    def get_adv_estimator_fn(name):
        if name not in core.ADV_ESTIMATOR_REGISTRY:
            raise ValueError(f"Unknown advantage estimator simply: {name}")
        return core.ADV_ESTIMATOR_REGISTRY[name]

    core.register_policy_loss, core.get_policy_loss_fn = register_policy_loss, get_policy_loss_fn
    core.register_adv_est, core.get_adv_estimator_fn = register_adv_est, get_adv_estimator_fn
    mods = {"verl": types.ModuleType("verl"), "verl.trainer": types.ModuleType("verl.trainer"),
            "verl.trainer.ppo": types.ModuleType("verl.trainer.ppo"), "verl.trainer.ppo.core_algos": core}
    mods["verl"].trainer, mods["verl.trainer"].ppo, mods["verl.trainer.ppo"].core_algos = \
        mods["verl.trainer"], mods["verl.trainer.ppo"], core
    return core, mods


class ActorConfigStandIn(dict):
    """verl's actor config exposes attributes and ``.get``; these are the fields the adapter reads."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


def actor_config(**kw):
    base = dict(clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0, tau_pos=1.0,
                tau_neg=1.05, global_batch_info={})
    base.update(kw)
    return ActorConfigStandIn(base)


@pytest.fixture
def verl_core(monkeypatch):
    core, mods = make_verl_standin()
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return core


def verl_batch(seed=0, b=4, t=5):
    g = torch.Generator().manual_seed(seed)
    log_prob = (-torch.rand(b, t, generator=g) * 3).requires_grad_()
    old = log_prob.detach() + 0.4 * torch.randn(b, t, generator=g)
    adv = torch.randn(b, generator=g)[:, None].expand(b, t).clone()
    mask = torch.ones(b, t)
    mask[0, 3:] = 0
    mask[2, 1:] = 0
    return log_prob, old, adv, mask


def verl_agg(mat, mask, mode, dp=1, batch_num_tokens=None, global_batch_size=None, loss_scale_factor=None):
    """verl's agg_loss semantics, re-derived."""
    if mode == "token-mean":
        n = mask.sum() if batch_num_tokens is None else batch_num_tokens
        return (mat * mask).sum() / n * dp
    if mode == "token-sum":
        return (mat * mask).sum() * dp
    seq_tok = mask.sum(-1)
    nonempty = (seq_tok > 0).float()
    gbs = nonempty.sum() if global_batch_size is None else global_batch_size
    if mode == "seq-mean-token-mean":
        per_seq = (mat * mask).sum(-1) / (seq_tok + 1e-8)
        return (per_seq * nonempty).sum() / gbs * dp
    per_seq = (mat * mask).sum(-1)
    loss = (per_seq * nonempty).sum() / gbs * dp
    if mode == "seq-mean-token-sum-norm":
        loss = loss / (loss_scale_factor if loss_scale_factor is not None else mask.shape[-1])
    return loss


def ppo_reference(log_prob, old, adv, eps_low, eps_high, weights=None):
    r = torch.exp((log_prob - old).clamp(-20, 20))
    pg = torch.maximum(-adv * r, -adv * r.clamp(1 - eps_low, 1 + eps_high))
    return pg if weights is None else pg * weights


def call(fn, log_prob, old, adv, mask, mode, cfg, w=None, **kw):
    return fn(old_log_prob=old, log_prob=log_prob, advantages=adv, response_mask=mask, loss_agg_mode=mode,
              config=cfg, rollout_is_weights=w, **kw)


def test_verl_register_every_objective_and_estimator(verl_core):
    from lckernels_rl.integrations import verl as lv

    out = lv.register()
    assert out["policy_losses"] == [f"lck_{n}" for n in list_objectives()]
    assert sorted(verl_core.POLICY_LOSS_REGISTRY) == sorted(out["policy_losses"])
    assert sorted(verl_core.ADV_ESTIMATOR_REGISTRY) == ["lck_batch_std", "lck_dr_grpo", "lck_grpo"]
    assert lv.register() == out  # idempotent: the same function objects (the stand-in rejects a different one)
    with pytest.raises(ValueError, match="Unsupported loss mode"):
        verl_core.get_policy_loss_fn("lck_nope")


@pytest.mark.parametrize("mode", ["token-mean", "token-sum", "seq-mean-token-mean", "seq-mean-token-sum",
                                  "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("weights", [False, True], ids=["no-is", "rollout_is_weights"])
def test_verl_grpo_matches_verl_semantics(verl_core, mode, weights):
    """lck_grpo called the way verl's actor calls it equals the PPO clip aggregated by verl's agg_loss, loss and
    d/d log_prob, with clip ratios and loss_agg_mode from the config and rollout_is_weights as a factor."""
    from lckernels_rl.integrations import verl as lv

    lv.register(["grpo"])
    fn = verl_core.get_policy_loss_fn("lck_grpo")
    log_prob, old, adv, mask = verl_batch()
    w = torch.rand(mask.shape, generator=torch.Generator().manual_seed(5)) * 1.5 if weights else None
    cfg = actor_config()
    loss, metrics = call(fn, log_prob, old, adv, mask, mode, cfg, w)
    (g_lck,) = torch.autograd.grad(loss, log_prob)
    ref = verl_agg(ppo_reference(log_prob, old, adv, 0.2, 0.28, w), mask, mode)
    (g_ref,) = torch.autograd.grad(ref, log_prob)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_lck * mask, g_ref * mask, rtol=1e-5, atol=1e-6)
    assert {"actor/pg_clipfrac", "actor/ppo_kl", "actor/pg_clipfrac_lower"} <= set(metrics)
    assert metrics["actor/pg_clipfrac"] > 0
    valid = mask.bool()
    assert metrics["actor/ppo_kl"] == pytest.approx(float((old - log_prob.detach())[valid].mean()), rel=1e-5)


def test_verl_global_batch_info_rescales_like_agg_loss(verl_core):
    from lckernels_rl.integrations import verl as lv

    lv.register(["grpo", "dr_grpo"])
    log_prob, old, adv, mask = verl_batch(1)
    gbi = dict(dp_size=2, batch_num_tokens=23, global_batch_size=7, loss_scale_factor=9)
    for mode in ("token-mean", "seq-mean-token-mean"):
        loss, _ = call(verl_core.get_policy_loss_fn("lck_grpo"), log_prob, old, adv, mask, mode,
                       actor_config(global_batch_info=gbi))
        ref = verl_agg(ppo_reference(log_prob, old, adv, 0.2, 0.28), mask, mode, dp=2, batch_num_tokens=23,
                       global_batch_size=7)
        torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    # Dr. GRPO pins seq-mean-token-sum-norm whatever loss_agg_mode says; loss_scale_factor is its constant
    loss, _ = call(verl_core.get_policy_loss_fn("lck_dr_grpo"), log_prob, old, adv, mask, "token-mean",
                   actor_config(global_batch_info=gbi))
    ref = verl_agg(ppo_reference(log_prob, old, adv, 0.2, 0.28), mask, "seq-mean-token-sum-norm", dp=2,
                   global_batch_size=7, loss_scale_factor=9)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)


def test_verl_config_mapping_and_pinned_aggregations(verl_core):
    from lckernels_rl.integrations import verl as lv

    lv.register()
    log_prob, old, adv, mask = verl_batch(2)
    cfg = actor_config(clip_ratio_low=None, clip_ratio_high=None, clip_ratio=0.1, tau_pos=2.0, tau_neg=3.0)
    # clip_ratio_low/high None -> clip_ratio; gspo and sapo pin seq-mean-token-mean (as verl's own losses)
    for name, direct in (("gspo", get_objective("gspo", eps_low=0.1, eps_high=0.1)),
                         ("sapo", get_objective("sapo", tau_pos=2.0, tau_neg=3.0)),
                         ("cispo", get_objective("cispo", eps_low=0.1, eps_high=0.1, loss_agg="seq-mean-token-sum")),
                         ("maspo", get_objective("maspo", loss_agg="seq-mean-token-sum"))):
        loss, _ = call(verl_core.get_policy_loss_fn(f"lck_{name}"), log_prob, old, adv, mask, "seq-mean-token-sum",
                       cfg)
        expected, _ = direct(log_prob, old, adv, mask)
        torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7, msg=name)
    # host_config=False keeps the objective's own clip range (DAPO's 0.2 / 0.28)
    fn = lv.make_policy_loss("dapo", host_config=False)
    loss, _ = call(fn, log_prob, old, adv, mask, "seq-mean-token-mean", cfg)
    torch.testing.assert_close(loss, verl_agg(ppo_reference(log_prob, old, adv, 0.2, 0.28), mask, "token-mean"))


def test_verl_lcft_tis_reads_rollout_is_weights_as_train_infer_ratio(verl_core):
    from lckernels_rl.integrations import verl as lv

    lv.register(["lcft_tis", "hispo"])
    log_prob, old, adv, mask = verl_batch(3)
    w = torch.exp(0.3 * torch.randn(mask.shape, generator=torch.Generator().manual_seed(1)))
    cfg = actor_config(clip_ratio_c=2.5)
    loss, m = call(verl_core.get_policy_loss_fn("lck_lcft_tis"), log_prob, old, adv, mask, "token-mean", cfg, w)
    direct = get_objective("lcft_tis", eps_neg_low=0.2, eps_pos_high=0.28, eps_neg_high=2.5)
    expected, _ = direct(log_prob, old, adv, mask, rollout_log_prob=old - torch.log(w))
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)  # every sequence non-empty: B = n_seq
    # without weights: r(mu) = 1, i.e. plain dual-clip PPO
    loss0, _ = call(verl_core.get_policy_loss_fn("lck_lcft_tis"), log_prob, old, adv, mask, "token-mean", cfg)
    expected0, _ = direct(log_prob, old, adv, mask, rollout_log_prob=old)
    torch.testing.assert_close(loss0, expected0, rtol=1e-6, atol=1e-7)
    assert "actor/pg_clipfrac_lower" in m


def test_verl_objectives_with_extra_inputs(verl_core):
    from lckernels_rl.integrations import verl as lv

    lv.register(["aopd", "dual_track_grpo"])
    log_prob, old, adv, mask = verl_batch(4)
    with pytest.raises(ValueError, match=r"lck_aopd needs extra inputs \['teacher_logits', 'student_logits'\]"):
        call(verl_core.get_policy_loss_fn("lck_aopd"), log_prob, old, adv, mask, "token-mean", actor_config())
    schema_mask = torch.zeros_like(mask)
    schema_mask[:, :2] = 1
    loss, m = call(verl_core.get_policy_loss_fn("lck_dual_track_grpo"), log_prob, old, adv, mask, "token-mean",
                   actor_config(), schema_advantages=adv[:, 0] * 2, schema_mask=schema_mask)
    assert torch.isfinite(loss) and "actor/lck/schema/loss" in m


def test_verl_outcome_estimators(verl_core):
    from lckernels_rl.integrations import verl as lv

    lv.register(objectives=[])
    rewards = torch.zeros(6, 4)
    rewards[:, -1] = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])  # outcome reward on the last token
    mask = torch.ones(6, 4)
    mask[1, 2:] = 0
    index = ["a", "a", "a", "b", "b", "b"]
    adv, ret = verl_core.get_adv_estimator_fn("lck_grpo")(token_level_rewards=rewards, response_mask=mask,
                                                        config=None, index=index)
    scores = rewards.sum(-1)
    expect = torch.empty(6)
    for sl in (slice(0, 3), slice(3, 6)):  # inline group-relative advantage (unbiased std + 1e-6, as verl)
        s = scores[sl]
        expect[sl] = (s - s.mean()) / (s.std() + 1e-6)
    torch.testing.assert_close(adv, expect[:, None] * mask)
    assert ret is adv or torch.equal(ret, adv)


def test_verl_entry_point_and_lazy_import(verl_core, monkeypatch):
    eps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["verl.plugins"]
    assert eps == {"lckernels_rl": "lckernels_rl.integrations.verl_plugin"}
    sys.modules.pop("lckernels_rl.integrations.verl_plugin", None)
    import lckernels_rl.integrations.verl_plugin as plugin  # what `import verl` does through the entry point

    assert "lck_dapo" in verl_core.POLICY_LOSS_REGISTRY and plugin.REGISTERED["adv_estimators"]
    monkeypatch.setitem(sys.modules, "verl.trainer.ppo.core_algos", None)
    from lckernels_rl.integrations import verl as lv

    with pytest.raises(ImportError, match="needs verl"):
        lv.register()


def test_library_imports_without_verl_or_trl():
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('verl', 'trl'): raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import lckernels_rl, lckernels_rl.objectives, lckernels_rl.integrations.verl, lckernels_rl.integrations.trl\n"
        "import lckernels_rl.integrations.trl as t\n"
        "try:\n"
        "    t.LckGRPOTrainer\n"
        "except ImportError as e:\n"
        "    print('OK', e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("OK LckGRPOTrainer needs TRL")


# ================================================================================================= TRL (real)

trl = pytest.importorskip("trl")


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
