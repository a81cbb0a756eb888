"""lckernels_rl.integrations.verl: the verl adapter, twice over.

1. Against a STAND-IN registry module (always runs, verl or not).  ``VerlStandIn`` below is a minimal stand-in
   written for these tests that mirrors verl's registry API as verified in verl-project/verl
   ``verl/trainer/ppo/core_algos.py``: ``register_policy_loss(name)`` / ``register_adv_est(name)`` are decorator
   factories filling ``POLICY_LOSS_REGISTRY`` / ``ADV_ESTIMATOR_REGISTRY``; ``register_adv_est`` raises when a
   *different* function is registered under a taken name; ``get_policy_loss_fn`` / ``get_adv_estimator_fn`` raise
   ``ValueError`` on unknown names.  The actor's keyword call (``old_log_prob, log_prob, advantages, response_mask,
   loss_agg_mode, config, rollout_is_weights``) and ``agg_loss``'s normalizations are re-derived here independently
   (``verl_agg`` / ``ppo_reference``), not copied.
2. Against the REAL verl 0.9.1 (the ``verl`` extra; skipped where verl cannot be imported -- ``make test-verl`` runs
   them in the side venv .venv-verl, where they must pass).  The losses go through verl's own call path,
   ``verl.workers.utils.losses.ppo_loss`` (which fills ``config.global_batch_info`` from the batch and calls
   ``get_policy_loss_fn(config.policy_loss.loss_mode)``), with a real ``FSDPActorConfig`` and a TensorDict batch,
   and are compared with verl's built-in losses on the same inputs: the oracle there is verl itself.
"""


from __future__ import annotations

import subprocess
import sys
import tomllib
import types
from pathlib import Path

import pytest
import torch

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


# ================================================================================================= verl (real)

VERL_SKIP = "verl is not installed (the verl extra; `make test-verl` runs these in .venv-verl)"
AGG_MODES = ["token-mean", "token-sum", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
# what verl's engine puts in the batch for ppo_loss -> config.global_batch_info (+ config.loss_scale_factor):
# one process (dp 1, counts left to agg_loss) or a dp=2 shard of a global mini-batch of 7 sequences / 23 tokens
GBI = {"local": dict(dp_size=1, batch_num_tokens=None, global_batch_size=None, loss_scale_factor=None),
       "dp2-global": dict(dp_size=2, batch_num_tokens=23, global_batch_size=7, loss_scale_factor=9)}


@pytest.fixture(scope="module")
def real_verl():
    core = pytest.importorskip("verl.trainer.ppo.core_algos", reason=VERL_SKIP)
    from lckernels_rl.integrations import verl as lv

    lv.register()  # `import verl` has done it through the entry point already (test below); idempotent
    return core


def real_config(loss_mode, loss_agg_mode, loss_scale_factor=None, **kw):
    from verl.workers.config import FSDPActorConfig, PolicyLossConfig

    kw.setdefault("clip_ratio_high", 0.28)
    return FSDPActorConfig(strategy="fsdp", rollout_n=2, ppo_mini_batch_size=4, ppo_micro_batch_size_per_gpu=2,
                           loss_agg_mode=loss_agg_mode, loss_scale_factor=loss_scale_factor,
                           policy_loss=PolicyLossConfig(loss_mode=loss_mode), **kw)


def real_batch(seed=0, weights=False, dual_clip=False):
    """A left-padded prompt/response batch as verl's engine hands it to ``ppo_loss``: the model's log-probs are the
    unpadded (total_nnz,) stream, shifted by one token, which ``no_padding_2_padding`` slices back to [B, T]; row 2
    has an empty response.  Returns the [B, T] leaf ``log_prob`` (gradients are taken w.r.t. it), the stream and
    the TensorDict."""
    from tensordict import TensorDict

    g = torch.Generator().manual_seed(seed)
    b, p, t = 4, 3, 5
    resp_len, prompt_len = [5, 3, 0, 4], [3, 2, 3, 1]
    log_prob = (-torch.rand(b, t, generator=g) * 3).requires_grad_()
    old = log_prob.detach() + 0.4 * torch.randn(b, t, generator=g)
    adv = torch.randn(b, generator=g)[:, None].expand(b, t).clone()
    if dual_clip:  # ratio e^1.5 > clip_ratio_c = 3 on every negative-advantage token
        old = torch.where(adv < 0, log_prob.detach() - 1.5, old)
    response_mask = (torch.arange(t)[None] < torch.tensor(resp_len)[:, None]).long()
    prompt_mask = (torch.arange(p)[None] >= p - torch.tensor(prompt_len)[:, None]).long()
    stream = torch.cat([torch.cat([torch.full((n_p - 1,), 7.0), log_prob[i, :n_r], torch.full((1,), 9.0)])
                        for i, (n_p, n_r) in enumerate(zip(prompt_len, resp_len))])
    fields = dict(prompts=torch.ones(b, p, dtype=torch.long), responses=torch.ones(b, t, dtype=torch.long),
                  attention_mask=torch.cat([prompt_mask, response_mask], 1), response_mask=response_mask,
                  old_log_probs=old, advantages=adv)
    if weights:
        fields["rollout_is_weights"] = torch.rand(b, t, generator=g) * 1.5
    return log_prob, stream, TensorDict(fields, batch_size=[b])


def run_ppo_loss(loss_mode, loss_agg_mode, batch, gbi, **cfg):
    """verl's own actor loss path; returns (pg loss, d loss / d log_prob, {metric: float})."""
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.losses import ppo_loss

    log_prob, stream, td = batch
    td = td.clone()
    tu.assign_non_tensor(td, dp_size=gbi["dp_size"], batch_num_tokens=gbi["batch_num_tokens"],
                         global_batch_size=gbi["global_batch_size"])
    config = real_config(loss_mode, loss_agg_mode, loss_scale_factor=gbi["loss_scale_factor"], **cfg)
    loss, metrics = ppo_loss(config, {"log_probs": stream}, td)
    assert config.global_batch_info == gbi  # what the policy loss saw
    (grad,) = torch.autograd.grad(loss, log_prob)
    values = {k: float(m.values[-1]) for k, m in metrics.items() if k.startswith("actor/pg_") or k == "actor/ppo_kl"}
    return loss.detach(), grad, values


def assert_same_loss(ours, host, metrics=True):
    torch.testing.assert_close(ours[0], host[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours[1], host[1], rtol=1e-5, atol=1e-7)
    if metrics:
        for k in ("actor/pg_clipfrac", "actor/ppo_kl", "actor/pg_clipfrac_lower"):
            assert ours[2][k] == pytest.approx(host[2][k], rel=1e-5, abs=1e-7), k


def test_real_verl_plugin_registers_every_loss_on_import():
    """A fresh process: ``import verl`` loads the ``verl.plugins`` entry point, which registers the twelve
    ``lck_*`` losses and three estimators in verl's real registries, nothing else called."""
    pytest.importorskip("verl", reason=VERL_SKIP)
    code = ("import json, verl.trainer.ppo.core_algos as c\n"
            "print(json.dumps([sorted(k for k in c.POLICY_LOSS_REGISTRY if k.startswith('lck_')),\n"
            "                  sorted(k for k in c.ADV_ESTIMATOR_REGISTRY if k.startswith('lck_')),\n"
            "                  'vanilla' in c.POLICY_LOSS_REGISTRY]))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    import json

    losses, estimators, has_vanilla = json.loads(out.stdout.strip().splitlines()[-1])
    assert losses == sorted(f"lck_{n}" for n in list_objectives()) and len(losses) == 12
    assert estimators == ["lck_batch_std", "lck_dr_grpo", "lck_grpo"] and has_vanilla


def test_real_verl_register_is_idempotent(real_verl):
    from lckernels_rl.integrations import verl as lv

    before = dict(real_verl.ADV_ESTIMATOR_REGISTRY)
    lv.register()  # verl's register_adv_est raises if a different function comes under a taken name
    assert real_verl.ADV_ESTIMATOR_REGISTRY == before
    assert real_verl.get_policy_loss_fn("lck_grpo").__name__ == "lck_grpo"
    with pytest.raises(ValueError, match="Unsupported loss mode"):
        real_verl.get_policy_loss_fn("lck_nope")


@pytest.mark.parametrize("gbi", list(GBI), ids=list(GBI))
@pytest.mark.parametrize("weights", [False, True], ids=["no-is", "rollout_is_weights"])
@pytest.mark.parametrize("mode", AGG_MODES)
def test_real_verl_lck_grpo_equals_vanilla(real_verl, mode, weights, gbi):
    """lck_grpo == verl's "vanilla" PPO loss through ppo_loss: loss, d/d log_prob and the three metrics, every
    loss_agg_mode, with and without rollout_is_weights, for one process and for a dp=2 shard of a global batch
    (global_batch_info's dp_size / batch_num_tokens / global_batch_size / loss_scale_factor).  The batch keeps every
    ratio below clip_ratio_c, where vanilla's dual clip is inactive (see the next test)."""
    batch = real_batch(seed=2, weights=weights)
    assert_same_loss(run_ppo_loss("lck_grpo", mode, batch, GBI[gbi]), run_ppo_loss("vanilla", mode, batch, GBI[gbi]))


@pytest.mark.parametrize("mode", AGG_MODES)
def test_real_verl_dual_clip(real_verl, mode):
    """verl's vanilla loss is dual-clip PPO (a negative advantage's loss capped at -A * clip_ratio_c); GRPO is not:
    with ratios above clip_ratio_c lck_grpo differs from vanilla, and lck_hispo (dual clip, eps_neg_high =
    clip_ratio_c, r(mu) = 1 without weights) equals it, metrics included.  lck_lcft_tis equals it under its pinned
    seq-mean-token-sum-norm."""
    batch = real_batch(seed=1, dual_clip=True)
    gbi = GBI["dp2-global"]
    vanilla = run_ppo_loss("vanilla", mode, batch, gbi)
    assert vanilla[2]["actor/pg_clipfrac_lower"] > 0
    assert not torch.allclose(run_ppo_loss("lck_grpo", mode, batch, gbi)[0], vanilla[0])
    assert_same_loss(run_ppo_loss("lck_hispo", mode, batch, gbi), vanilla)
    lcft = run_ppo_loss("lck_lcft_tis", mode, batch, gbi)
    assert_same_loss(lcft, run_ppo_loss("vanilla", "seq-mean-token-sum-norm", batch, gbi))


@pytest.mark.parametrize("weights", [False, True], ids=["no-is", "rollout_is_weights"])
@pytest.mark.parametrize("mode", AGG_MODES)
def test_real_verl_losses_match_verls_own(real_verl, mode, weights):
    """Each lck_ loss that has a verl counterpart equals it on the same inputs through ppo_loss (dp=2 global
    batch): sapo and cispo for every mode; dapo = vanilla at token-mean (its pinned mode, clip-higher 0.28);
    dr_grpo = vanilla at seq-mean-token-sum-norm with loss_scale_factor as the constant; gspo = verl's gspo at
    seq-mean-token-mean.  verl 0.9.1's gspo follows loss_agg_mode while lck_gspo pins seq-mean-token-mean (the
    paper's sequence mean), so there they agree only at that mode."""
    batch = real_batch(seed=3, weights=weights)
    gbi = GBI["dp2-global"]
    for ours, host, host_mode in (("lck_sapo", "sapo", mode), ("lck_cispo", "cispo", mode),
                                  ("lck_dapo", "vanilla", "token-mean"),
                                  ("lck_dr_grpo", "vanilla", "seq-mean-token-sum-norm"),
                                  ("lck_gspo", "gspo", "seq-mean-token-mean")):
        # sapo and cispo report no clip metrics of the same definition (verl's sapo: 0; cispo: ratio != clip)
        assert_same_loss(run_ppo_loss(ours, mode, batch, gbi), run_ppo_loss(host, host_mode, batch, gbi),
                         metrics=host in ("vanilla", "gspo"))


def test_real_verl_objective_needing_extra_inputs_raises_in_ppo_loss(real_verl):
    with pytest.raises(ValueError, match=r"lck_aopd needs extra inputs"):
        run_ppo_loss("lck_aopd", "token-mean", real_batch(), GBI["local"])


@pytest.mark.parametrize("ours,norm_by_std", [("lck_grpo", True), ("lck_dr_grpo", False)])
def test_real_verl_outcome_estimators_match_grpo(real_verl, ours, norm_by_std):
    """Called as verl's compute_advantage calls a registered estimator (token_level_rewards=, response_mask=,
    config=, index=uid array): equal to verl's own grpo estimator (norm_adv_by_std_in_grpo True / False)."""
    import numpy as np

    rewards = torch.zeros(6, 4)
    rewards[:, -1] = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.5])
    mask = torch.ones(6, 4)
    mask[1, 2:] = 0
    uid = np.array(list("aaabbb"), dtype=object)
    adv, ret = real_verl.get_adv_estimator_fn(ours)(token_level_rewards=rewards, response_mask=mask, config=None,
                                                   index=uid)
    adv_v, ret_v = real_verl.get_adv_estimator_fn("grpo")(token_level_rewards=rewards, response_mask=mask,
                                                         config=None, index=uid, norm_adv_by_std_in_grpo=norm_by_std)
    torch.testing.assert_close(adv, adv_v, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ret, ret_v, rtol=1e-5, atol=1e-6)
