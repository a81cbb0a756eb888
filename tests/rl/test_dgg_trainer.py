"""Issue #5's demonstration of Dynamic Gradient Gating, on the end-to-end trainer's LongCat-Flash-style MoE policy.

The claim: with aggressive rollout reuse (K = 8 updates per batch, a high RL learning rate) the KL to the rollout
policy explodes; the gate fires before it does, and the gated run ends with a higher reward than the ungated one.

Set-up: per seed the supervised warm-up runs once and both arms start its RL phase from that state (weights, RNG
states, prompt-pool statistics), so the gated arm is bit-identical to the ungated one until the gate first fires.
"KL explodes" = the trainer's ``kl_rollout_max`` (k3 KL(pi_rollout || pi_current), max over the reuses of a step)
exceeds 1 nat/token.  The full measurement (two models, six arms, eight seeds, the DGG settings tried) is in
docs/dgg_demo.md and examples/dgg_reuse_experiment.py; these tests pin down what reproduces and what does not.
"""

from __future__ import annotations

import math
import random
import statistics

import pytest
import torch

pytest.importorskip("transformers")

from lckernels_rl.train import TrainConfig, Trainer, load_config  # noqa: E402
from lckernels_rl.train.config import apply_overrides  # noqa: E402

KL_EXPLODES = 1.0  # nats per token
NOTES_DGG = {"tau": 0.5, "window": 8, "statistic": "g"}  # the third-party notes' defaults (lckernels_rl/gating/dgg.py)
TIMING = {"time_s", "time_rollout_s", "tokens_per_s"}

# The fast demonstration: the test suite's tiny LongCat-Flash (hidden 32) on one-digit addition, a 60-step warm-up
# (~35% greedy accuracy), then 30 RL steps of 8 prompts x 8 rollouts, K = 8, RL lr 3e-3, no gradient clipping.
TINY_LONGCAT = dict(hidden_size=32, ffn_hidden_size=64, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8,
                    qk_rope_head_dim=8, head_dim=8, v_head_dim=8, num_attention_heads=2, num_key_value_heads=2,
                    n_routed_experts=4, expert_ffn_hidden_size=32)
FAST_SEEDS = (0, 1, 2)
# The slow one: lckernels_rl/configs/default.yaml's model and task (the settings of examples/dgg_reuse_experiment.py).
SLOW_SEEDS = (0, 1, 2, 3, 4)
SLOW_SET = ["threads=1", "rl.steps=40", "rl.prompts_per_step=16", "rl.rollouts_per_step=128", "rl.reuse=8",
            "rl.lr=0.0003", "rl.grad_clip=0", "log.eval_every=10", "log.checkpoint_every=0", "log.plots=false",
            "log.progress=false"]


def tiny_config(out, seed: int, dgg: dict | None) -> TrainConfig:
    return TrainConfig.from_dict({
        "seed": seed, "threads": 1,
        "model": {"arch": "longcat_flash", "overrides": TINY_LONGCAT},
        "task": {"env": "arithmetic", "env_args": {"ops": "+", "min_value": 0, "max_value": 9}, "train_size": 256,
                 "eval_size": 64},
        "sft": {"steps": 60, "batch_size": 32, "lr": 0.003},
        "rl": {"steps": 30, "prompts_per_step": 8, "rollouts_per_step": 64, "max_new_tokens": 3, "reuse": 8,
               "lr": 0.003, "grad_clip": 0, "dgg": dgg},
        "log": {"output_dir": str(out), "checkpoint_every": 0, "eval_every": 10, "plots": False, "progress": False},
    })


def default_config(out, seed: int, dgg: dict | None) -> TrainConfig:
    data = load_config("default").to_dict()
    data["rl"]["betas"] = list(data["rl"]["betas"])
    data = apply_overrides(data, SLOW_SET)
    data.update(seed=seed)
    data["rl"]["dgg"] = dgg
    data["log"]["output_dir"] = str(out)
    return TrainConfig.from_dict(data)


# ------------------------------------------------------------------------------------------------------- helpers
def warm_up(cfg: TrainConfig) -> dict:
    """The supervised phase only; the trainer's checkpoint dict at its end."""
    tr = Trainer(cfg)
    try:
        tr.fit(max_steps=cfg.sft.steps)
        return torch.load(tr.save_checkpoint(), weights_only=False)
    finally:
        tr.close()


def rl_phase(cfg: TrainConfig, state: dict) -> list[dict]:
    """The RL phase of ``cfg`` started from a warm-up checkpoint ``state`` (what ``resume=True`` restores, minus its
    same-config check: the arms differ from the warm-up run in ``rl.dgg`` only).  With reuse, each RL metrics row
    carries the trainer's ``grad_norm_lm_head_trace`` (every update of the step, a gated one included) and
    ``kl_rollout_trace`` (the KL to the rollout policy measured by updates 2..K, i.e. after 1..K-1 applied updates)."""
    tr = Trainer(cfg)
    tr.model.load_state_dict(state["model"])
    tr.step = int(state["step"])
    torch.set_rng_state(state["rng"]["torch"])
    tr.rng.bit_generator.state = state["rng"]["numpy"]
    random.setstate(state["rng"]["python"])
    tr.source.load_state_dict(state["source"])
    try:
        rows = tr.fit()
    finally:
        tr.close()
    return [r for r in rows if r["phase"] == "rl"]


def run_pair(make_config, tmp, seed: int, dgg: dict) -> dict:
    threads = torch.get_num_threads()
    try:
        state = warm_up(make_config(tmp / f"s{seed}_warmup", seed, None))
        return {"ungated": rl_phase(make_config(tmp / f"s{seed}_ungated", seed, None), state),
                "gated": rl_phase(make_config(tmp / f"s{seed}_gated", seed, dgg), state)}
    finally:
        torch.set_num_threads(threads)  # the configs pin 1 thread (deterministic); give the rest of the suite back its


def first(rows: list[dict], pred) -> int | None:
    """The first RL step (1-based within the RL phase) where ``pred(row)``."""
    return next((i for i, r in enumerate(rows, 1) if pred(r)), None)


def summary(rows: list[dict], last: int = 10) -> dict:
    return {"reward": statistics.fmean(r["reward_mean"] for r in rows[-last:]),
            "first_fire": first(rows, lambda r: r["dgg_fired"]),
            "explodes_at": first(rows, lambda r: r["kl_rollout_max"] > KL_EXPLODES),
            "fires": sum(r["dgg_fired"] for r in rows)}


def claim(pair: dict) -> dict:
    """The issue's claim for one seed, part by part, read as leniently as it allows: the ungated KL explodes at some
    RL step; the gate has fired by then; the gated run's KL never explodes; the gated run ends with the higher mean
    reward over its last 10 RL steps."""
    u, g = summary(pair["ungated"]), summary(pair["gated"])
    fired_first = None not in (u["explodes_at"], g["first_fire"]) and g["first_fire"] <= u["explodes_at"]
    parts = {"ungated_kl_explodes": u["explodes_at"] is not None,
             "gate_fires_first": fired_first,
             "gated_kl_contained": g["explodes_at"] is None,
             "gated_reward_higher": g["reward"] > u["reward"]}
    return {**parts, "holds": all(parts.values()), "ungated": u, "gated": g}


def surge_ratios(rows: list[dict]) -> list[float]:
    """For each step whose KL crosses the threshold: the largest lm_head gradient norm of the reuses up to the
    crossing divided by the step's on-policy (reuse 1) norm; > 1 means the norm surged before the KL exploded."""
    out = []
    for r in rows:
        kl, g = r["kl_rollout_trace"], r["grad_norm_lm_head_trace"]
        j = next((i for i, x in enumerate(kl) if x > KL_EXPLODES), None)  # kl[j]: after j + 1 updates
        if j is not None and g[0] > 0:
            out.append(max(g[1:j + 2]) / g[0])
    return out


@pytest.fixture(scope="module")
def fast_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dgg_trainer")
    return {seed: run_pair(tiny_config, tmp, seed, NOTES_DGG) for seed in FAST_SEEDS}


def strip(r: dict) -> dict:
    return {k: v for k, v in r.items() if k not in TIMING}


# ------------------------------------------------------------------------------------------- what reproduces
def test_the_arms_are_identical_until_the_gate_first_fires(fast_runs):
    """The comparison is paired: same warm-up, same batches, same updates up to the first fire; at that step the
    batch and the updates before the fired one are still the same."""
    for seed, pair in fast_runs.items():
        u, g = pair["ungated"], pair["gated"]
        f = summary(g)["first_fire"]
        assert f is not None and f >= 2, (seed, f)        # the window (8 updates) fills during step 1
        assert [strip(r) for r in u[:f - 1]] == [strip(r) for r in g[:f - 1]], seed
        fired_u, fired_g = u[f - 1], g[f - 1]
        assert fired_g["dgg_fired"] and fired_g["updates"] < fired_u["updates"] == 8
        assert fired_g["reward_mean"] == fired_u["reward_mean"]
        assert fired_g["grad_norm_lm_head_trace"] == fired_u["grad_norm_lm_head_trace"][:len(fired_g["grad_norm_lm_head_trace"])]
        assert len(fired_g["grad_norm_lm_head_trace"]) == fired_g["updates"] + 1


def test_aggressive_reuse_explodes_the_kl_to_the_rollout_policy(fast_runs):
    """The premise: K = 8 at a high learning rate drives the KL to the rollout policy past 1 nat/token."""
    for seed, pair in fast_runs.items():
        rows = pair["ungated"]
        assert summary(rows)["explodes_at"] is not None, (seed, max(r["kl_rollout_max"] for r in rows))
        assert all(r["updates"] == 8 for r in rows)


def test_the_gate_fires_before_every_explosion_after_the_first_batch(fast_runs):
    """The part of the claim that reproduces: the gate is firing by the time the ungated KL explodes -- except when
    it explodes within the first batch, while the window is still filling (reuse index 1 is never gated either).
    How often it fires depends on the run: 14, 5 and 13 of 30 steps for seeds 0-2 since the rollout sampler and the
    fused AdamW changed the random stream (issue 17; before, at least a quarter of the steps), on steps that would
    explode and steps that would not alike (docs/dgg_demo.md).  Seed 1's gated policy collapses (reward 0.002), and a
    dead policy's gradients stop tripping the gate."""
    for seed, pair in fast_runs.items():
        u, g = summary(pair["ungated"]), summary(pair["gated"])
        assert g["first_fire"] is not None and g["fires"] >= 3, (seed, g)
        if u["explodes_at"] is None:
            continue
        if u["explodes_at"] > 1:
            assert g["first_fire"] <= u["explodes_at"], (seed, g, u)
        else:
            assert g["first_fire"] > u["explodes_at"], (seed, g, u)


def test_no_lm_head_gradient_surge_precedes_the_kl_explosion(fast_runs):
    """The signal the gate relies on is absent here: within the reused batches whose KL explodes, the lm_head
    gradient norm mostly falls below its on-policy value before the explosion (the clipped surrogate's gradient
    vanishes as the ratios leave [0.8, 1.2], while Adam keeps moving the weights)."""
    ratios = [x for pair in fast_runs.values() for x in surge_ratios(pair["ungated"])]
    assert len(ratios) >= 3, ratios
    assert statistics.median(ratios) < 1.0, ratios
    assert sum(x > 1 for x in ratios) < len(ratios) / 2, ratios


# -------------------------------------------------------------------------------------- what does not reproduce
@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "Negative result (issue #5): on the trainer's tiny LongCat-Flash (hidden 32, one-digit addition, K=8, RL lr 3e-3, "
    "no clipping, 30 RL steps) with the notes' DGG defaults (tau 0.5, window 8, g) the claim holds on 1 of seeds "
    "0-2. Seed 0: the ungated KL explodes in RL step 1 (1.53 nats), before the gate can be active (its window fills "
    "during step 1); seed 1: holds (ungated KL 1.22 at step 5, gate first fires at step 2, gated reward 0.142 vs "
    "0.116); seed 2: the gated KL explodes too (1.20 at step 27; ungated 2.89 at step 25). Over seeds 0-7 the gated "
    "run ends higher on 4/8 (mean reward 0.074 vs 0.075) and the claim holds on 2/8; at RL lr 2e-3 the gated reward "
    "is higher on 8/8 (0.141 vs 0.093) but the ungated KL explodes on only 5/8 and the gated one still on 2/8 (claim "
    "3/8); on the default model the claim holds on 0/8 (docs/dgg_demo.md); these per-seed "
    "figures predate issue 17's sampler and fused AdamW, which changed the random stream (now seed 1's gated policy "
    "collapses). Strict: an XPASS flags a setup that "
    "demonstrates the claim."))
def test_demo_gate_fires_before_the_kl_explodes_and_ends_with_higher_reward(fast_runs):
    """The issue's claim, asserted for every seed of the demonstration."""
    for seed, pair in fast_runs.items():
        c = claim(pair)
        assert c["ungated_kl_explodes"], (seed, c)
        assert c["gate_fires_first"], (seed, c)
        assert c["gated_kl_contained"], (seed, c)
        assert c["gated_reward_higher"], (seed, c)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "Negative result (issue #5): on lckernels_rl/configs/default.yaml's model (LongCat-Flash MoE, hidden 128, 2-digit addition; "
    "16x8 rollouts per step, K=8, RL lr 3e-4, no clipping, 40 RL steps) with the notes' DGG defaults the gated run "
    "ends with a lower mean reward than the ungated one on all of seeds 0-4 (0.172 vs 0.261); the ungated KL "
    "explodes on 2 of them. Strict: an XPASS flags a setup that demonstrates the claim."))
def test_demo_on_the_default_model_over_five_seeds(tmp_path):
    """The claim on the bundled config's model, as a robust majority: it holds on most seeds and the gated mean reward
    is higher.  ~7 minutes on 2 cores."""
    pairs = {seed: run_pair(default_config, tmp_path, seed, NOTES_DGG) for seed in SLOW_SEEDS}
    claims = {seed: claim(p) for seed, p in pairs.items()}
    mean = lambda arm: statistics.fmean(c[arm]["reward"] for c in claims.values())  # noqa: E731
    assert mean("gated") > mean("ungated"), claims
    assert sum(c["holds"] for c in claims.values()) > len(claims) / 2, claims
    assert all(math.isfinite(c["gated"]["reward"]) for c in claims.values())
