"""Dynamic Gradient Gating: the gate on hand-made norm sequences, apply(), the reuse loop, and a seeded toy demo."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

import lckernels
from lckernels_rl.gating import DGGConfig, DynamicGradientGate, GateDecision, ReuseReport, reuse_rollout_batch


def pop_z(x, window, eps=1e-8):
    """The z-score by hand: population std of the previous values."""
    return (x - statistics.fmean(window)) / (statistics.pstdev(window) + eps)


def feed(gate, values, reuse_index):
    return [gate.observe(v, reuse_index) for v in values]


# ---------------------------------------------------------------------------------------------------------------------
# the gate on hand-made sequences
# ---------------------------------------------------------------------------------------------------------------------

def test_defaults_follow_the_notes():
    cfg = DGGConfig()
    assert (cfg.max_reuse, cfg.tau, cfg.window, cfg.statistic, cfg.min_reuse_index) == (4, 0.5, 8, "g", 2)
    assert not cfg.reset_window_per_batch and not cfg.admit_fired


def test_never_fires_while_the_window_is_not_full():
    gate = DynamicGradientGate(window=4)
    ds = feed(gate, [1.0, 1.0, 1.0], reuse_index=1) + [gate.observe(1e6, reuse_index=3)]
    assert not any(d.fire for d in ds)
    assert all(math.isnan(d.z) and not d.active for d in ds)
    assert "window not full (3/4)" in ds[-1].reason
    assert gate.window_values == (1.0, 1.0, 1.0, 1e6)  # a value that did not fire enters the window


def test_never_fires_on_the_first_update_of_a_batch():
    gate = DynamicGradientGate(window=4)
    feed(gate, [1.0, 1.1, 0.9, 1.0], reuse_index=1)
    d = gate.observe(50.0, reuse_index=1)
    assert not d.fire and not d.active and d.z > 100  # the z is reported, the gate is just not active
    assert "gate inactive" in d.reason
    assert gate.window_values[-1] == 50.0


def test_a_spike_fires_with_the_right_z_and_is_kept_out_of_the_window():
    gate = DynamicGradientGate(window=4, tau=0.5)
    base = [1.0, 1.2, 0.8, 1.0]
    feed(gate, base, reuse_index=1)
    d = gate.observe(1.5, reuse_index=2)
    assert d.fire and d.active and d.stop_reuse
    assert d.z == pytest.approx(pop_z(1.5, base), rel=1e-12)  # 0.5 / 0.1414 = 3.54
    assert (d.mean, d.value, d.g, d.reuse_index) == (pytest.approx(1.0), 1.5, 1.5, 2)
    assert d.std == pytest.approx(statistics.pstdev(base))
    assert "surge at reuse 2" in d.reason and "stop reusing" in d.reason
    assert gate.window_values == tuple(base) and gate.fired == 1  # fired value not admitted


def test_below_threshold_does_not_fire_and_threshold_is_strict():
    base = [1.0, 3.0]  # mean 2, std 1
    gate = DynamicGradientGate(window=2, tau=0.5)
    feed(gate, base, 1)
    assert not gate.observe(2.4, 2).fire          # z = 0.4
    gate = DynamicGradientGate(window=2, tau=0.5, eps=1e-300)
    feed(gate, base, 1)
    d = gate.observe(2.5, 2)                      # z = 0.5 exactly: not > tau
    assert d.z == pytest.approx(0.5) and not d.fire
    gate = DynamicGradientGate(window=2, tau=0.1)
    feed(gate, base, 1)
    assert gate.observe(2.2, 3).fire              # z = 0.2 > 0.1


def test_window_slides_across_batches_and_admit_fired_option():
    gate = DynamicGradientGate(window=3)
    feed(gate, [1.0, 2.0, 3.0], 1)                                   # batch 1
    assert gate.observe(2.0, 1).fire is False                       # batch 2, first update: window -> (2, 3, 2)
    assert gate.window_values == (2.0, 3.0, 2.0)
    assert gate.observe(9.0, 2).fire                                 # uses the window spanning both batches
    gate2 = DynamicGradientGate(window=3, admit_fired=True)
    feed(gate2, [1.0, 2.0, 3.0], 1)
    assert gate2.observe(9.0, 2).fire and gate2.window_values == (2.0, 3.0, 9.0)


def test_reset_window_per_batch():
    gate = DynamicGradientGate(max_reuse=4, window=2, reset_window_per_batch=True)
    feed(gate, [5.0, 5.0, 5.0], 1)
    assert gate.window_values == (5.0,)                              # reuse index 1 clears the window first
    assert not gate.observe(1.0, 2).fire and gate.window_values == (5.0, 1.0)
    d = gate.observe(100.0, 3)                                       # window (5, 1) is full at reuse 3
    assert d.fire and d.z == pytest.approx(pop_z(100.0, [5.0, 1.0]))
    assert not gate.observe(100.0, 1).fire and gate.window_values == (100.0,)  # a new batch starts afresh
    with pytest.raises(ValueError, match="never fills"):
        DGGConfig(max_reuse=4, window=4, reset_window_per_batch=True)


def test_delta_g_statistic():
    gate = DynamicGradientGate(window=3, statistic="delta_g", tau=0.5)
    gs = [1.0, 1.5, 1.3, 1.6]                      # deltas 0.5, -0.2, 0.3 fill the window
    ds = feed(gate, gs, 1)
    assert "no previous g" in ds[0].reason and math.isnan(ds[0].value)
    assert gate.window_values == pytest.approx((0.5, -0.2, 0.3))
    d = gate.observe(2.6, 2)                       # delta 1.0
    assert d.value == pytest.approx(1.0) and d.fire
    assert d.z == pytest.approx(pop_z(1.0, [0.5, -0.2, 0.3]), rel=1e-9)
    # a high but flat g is no surge of delta_g: g stays at 2.6 -> delta 0
    assert not gate.observe(2.6, 3).fire
    # but the same flat sequence on the g statistic would fire
    g_gate = DynamicGradientGate(window=3, statistic="g")
    feed(g_gate, gs[1:], 1)
    assert g_gate.observe(2.6, 2).fire


def test_flat_window_uses_eps_and_nonfinite_always_fires():
    gate = DynamicGradientGate(window=2, eps=1e-6)
    feed(gate, [2.0, 2.0], 1)
    assert not gate.observe(2.0, 2).fire           # z = 0
    d = gate.observe(2.001, 2)
    assert d.fire and d.z == pytest.approx(1e3, rel=1e-6)
    fresh = DynamicGradientGate()
    d = fresh.observe(float("nan"), 1)             # even with an empty window and reuse index 1
    assert d.fire and "non-finite" in d.reason and fresh.window_values == ()
    assert fresh.observe(torch.tensor(float("inf")), 2).fire


def test_gate_input_validation():
    gate = DynamicGradientGate()
    assert gate.observe(torch.tensor([2.0]), 1).g == 2.0    # 1-element tensors are fine
    with pytest.raises(ValueError, match="reuse_index"):
        gate.observe(1.0, 0)
    with pytest.raises(ValueError, match=">= 0"):
        gate.observe(-1.0, 1)
    with pytest.raises(TypeError, match="sq_norm"):
        gate.observe("1.0", 1)
    with pytest.raises(ValueError, match="statistic"):
        DGGConfig(statistic="grad")
    with pytest.raises(ValueError, match="window"):
        DGGConfig(window=1)
    with pytest.raises(ValueError, match="max_reuse"):
        DGGConfig(max_reuse=0)
    with pytest.raises(TypeError, match="not both"):
        DynamicGradientGate(DGGConfig(), tau=0.1)


# ---------------------------------------------------------------------------------------------------------------------
# apply(): what zeroing does and does not do to an optimizer
# ---------------------------------------------------------------------------------------------------------------------

def _fired():
    gate = DynamicGradientGate(window=2)
    feed(gate, [1.0, 1.0], 1)
    d = gate.observe(5.0, 2)
    assert d.fire
    return d


def _model_with_grads():
    model = torch.nn.Linear(3, 2)
    model(torch.randn(4, 3)).sum().backward()
    return model


def test_apply_zeroes_in_place_or_sets_none_and_ignores_non_fired():
    model = _model_with_grads()
    grads = [p.grad for p in model.parameters()]
    not_fired = GateDecision(False, 0.0, "", 0.0, 0.0, 0.0, 0.0, 2, True)
    assert DynamicGradientGate.apply(model, not_fired) is False and all(g.abs().sum() > 0 for g in grads)
    assert DynamicGradientGate.apply(model, _fired()) is True
    assert all(p.grad is g and not g.any() for p, g in zip(model.parameters(), grads))  # same buffers, zeroed
    model = _model_with_grads()
    DynamicGradientGate.apply(list(model.parameters()), _fired(), set_to_none=True)
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(TypeError, match="GateDecision"):
        DynamicGradientGate.apply(model, True)


def test_zero_grads_still_move_adam_so_the_step_must_be_skipped():
    """Why the reuse loop skips optimizer.step(): Adam on zero gradients still moves the weights and its moments."""
    torch.manual_seed(0)
    model = _model_with_grads()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    opt.step()                                    # one real step: non-zero moments
    model.zero_grad(set_to_none=False)
    model(torch.randn(4, 3)).sum().backward()
    before = [p.detach().clone() for p in model.parameters()]
    m_before = [opt.state[p]["exp_avg"].clone() for p in model.parameters()]
    DynamicGradientGate.apply(model, _fired())    # zero_(): gradients are 0, not None
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters())), "Adam moved on zero grads"
    assert any(not torch.equal(m, opt.state[p]["exp_avg"]) for m, p in zip(m_before, model.parameters()))
    # set_to_none=True: torch.optim skips parameters without a gradient -> nothing moves even if step() is called
    model(torch.randn(4, 3)).sum().backward()
    before = [p.detach().clone() for p in model.parameters()]
    steps = [int(opt.state[p]["step"]) for p in model.parameters()]
    DynamicGradientGate.apply(model, _fired(), set_to_none=True)
    opt.step()
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert steps == [int(opt.state[p]["step"]) for p in model.parameters()]


# ---------------------------------------------------------------------------------------------------------------------
# the reuse loop
# ---------------------------------------------------------------------------------------------------------------------

class Scripted:
    """step_fn that backprops a real loss and reports a scripted lm_head squared norm per reuse index."""

    def __init__(self, model, norms):
        self.model, self.norms, self.calls = model, norms, []

    def __call__(self, r):
        self.calls.append(r)
        loss = self.model(torch.ones(2, 3)).square().mean()
        loss.backward()
        return loss, self.norms[r - 1], {"r": r}


def test_reuse_loop_stops_early_and_skips_the_fired_step():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    gate = DynamicGradientGate(window=3, max_reuse=6)
    rep = reuse_rollout_batch(Scripted(model, [1.0, 1.2, 0.8]), gate, opt, max_reuse=3)  # fills the window
    assert isinstance(rep, ReuseReport) and not rep.stopped_early and rep.updates == rep.epochs == 3
    assert rep.reason == "max_reuse reached (3 updates)"
    assert [int(s["step"]) for s in opt.state.values()] == [3, 3]
    weights = [p.detach().clone() for p in model.parameters()]
    step_fn = Scripted(model, [1.0, 0.9, 9.0, 1.0, 1.0, 1.0])
    rep = reuse_rollout_batch(step_fn, gate, opt)                  # max_reuse from the gate: 6
    assert step_fn.calls == [1, 2, 3] and rep.epochs == 3 and rep.updates == 2 and rep.stopped_early and rep.fired
    assert rep.reason.startswith("gate fired at reuse 3/6") and "z=" in rep.reason
    assert [e.stepped for e in rep.history] == [True, True, False]
    assert rep.history[-1].decision.fire and rep.history[0].metrics == {"r": 1}
    assert [int(s["step"]) for s in opt.state.values()] == [5, 5]  # the fired update never reached Adam
    assert all(not p.grad.any() for p in model.parameters())      # and its gradients were cleared
    assert any(not torch.equal(w, p) for w, p in zip(weights, model.parameters()))


def test_reuse_loop_computes_the_lm_head_norm_when_not_reported():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 5))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    seen = {}

    def step_fn(r):
        loss = model(torch.randn(2, 3)).logsumexp(-1).sum()
        loss.backward()
        seen[r] = float(model[1].weight.grad.double().square().sum())
        return loss                                                 # bare loss: the helper measures lm_head
    rep = reuse_rollout_batch(step_fn, DynamicGradientGate(), opt, max_reuse=2, lm_head=model[1].weight)
    assert [e.lm_head_sq_norm for e in rep.history] == pytest.approx([seen[1], seen[2]], rel=1e-5)
    with pytest.raises(ValueError, match="lm_head"):
        reuse_rollout_batch(step_fn, DynamicGradientGate(), opt, max_reuse=1)
    with pytest.raises(ValueError, match="tuple of 4"):
        reuse_rollout_batch(lambda r: (1.0, 1.0, {}, 0), DynamicGradientGate(), opt)
    with pytest.raises(TypeError, match="optimizer"):
        reuse_rollout_batch(step_fn, DynamicGradientGate(), model)
    with pytest.raises(ValueError, match="max_reuse"):
        reuse_rollout_batch(step_fn, DynamicGradientGate(), opt, max_reuse=0)


def test_monitor_feeds_the_gate():
    """GradNormMonitor + gate: the monitor's lm_head squared norm is the gate's statistic."""
    model = torch.nn.ModuleDict({"body": torch.nn.Linear(3, 4), "lm_head": torch.nn.Linear(4, 5)})
    mon = lckernels.GradNormMonitor(model)
    model["lm_head"](model["body"](torch.randn(6, 3))).logsumexp(-1).sum().backward()
    mon.step()
    d = DynamicGradientGate().observe(mon.last_sq["lm_head"], 1)
    assert d.g == pytest.approx(float(model["lm_head"].weight.grad.square().sum()
                                      + model["lm_head"].bias.grad.square().sum()), rel=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# demonstration on a seeded toy policy
# ---------------------------------------------------------------------------------------------------------------------

class BagPolicy(torch.nn.Module):
    """Tiny policy: context x [d] -> L independent token distributions over V; a small MLP and a linear lm_head."""

    def __init__(self, d, vocab, length, hidden):
        super().__init__()
        self.inp = torch.nn.Linear(d, hidden)
        self.pos = torch.nn.Parameter(torch.randn(length, hidden) * 0.5)
        self.body = torch.nn.Sequential(torch.nn.Tanh(), torch.nn.Linear(hidden, hidden), torch.nn.Tanh())
        self.lm_head = torch.nn.Linear(hidden, vocab, bias=False)

    def forward(self, x):                                   # [N, d] -> logits [N, L, V]
        return self.lm_head(self.body(self.inp(x)[:, None, :] + self.pos[None]))


def toy_run(gated: bool, seed: int, *, batches=30, lr=0.2, prompts=64, group=8, K=8, d=8, vocab=8, length=6,
            need=3, hidden=32, clip=0.2):
    """Synthetic verifiable task: for a random context x the key token is argmax(M x); a response (L tokens) earns
    reward 1 when it contains the key at least ``need`` times.  GRPO-style: ``group`` samples per prompt,
    group-normalised advantages, PPO clipped objective, Adam, up to K updates per rollout batch (all K when
    ungated).  Returns per-batch lists of KL(rollout || current) after each applied update, the lm_head and
    rest-of-model squared gradient norms per update, the first (batch, reuse) where the gate fired, and the final
    expected reward on 512 held-out contexts (exact: a Poisson-binomial over the L positions)."""
    gen = torch.Generator().manual_seed(seed)
    M = torch.randn(vocab, d, generator=gen)
    eval_x = torch.randn(512, d, generator=gen)
    torch.manual_seed(seed)
    pol = BagPolicy(d, vocab, length, hidden)
    opt = torch.optim.Adam(pol.parameters(), lr=lr)
    gate = DynamicGradientGate(max_reuse=K)                # notes' defaults otherwise: tau 0.5, window 8, g
    sampler = torch.Generator().manual_seed(seed + 1)
    key = lambda x: (x @ M.T).argmax(-1)                   # noqa: E731

    def expected_reward(x):
        with torch.no_grad():
            p = pol(x).softmax(-1).gather(-1, key(x)[:, None, None].expand(-1, length, 1)).squeeze(-1)
            dist = torch.zeros(x.shape[0], length + 1)
            dist[:, 0] = 1
            for t in range(length):
                pt = p[:, t:t + 1]
                dist = torch.cat([dist[:, :1] * (1 - pt), dist[:, 1:] * (1 - pt) + dist[:, :-1] * pt], 1)
            return dist[:, need:].sum(1).mean().item()

    out = {"kl": [], "g": [], "rest": [], "first_fire": None}
    for b in range(batches):
        x = torch.randn(prompts, d, generator=sampler).repeat_interleave(group, 0)
        with torch.no_grad():
            old_all = pol(x).log_softmax(-1)
        a = torch.multinomial(old_all.exp().reshape(-1, vocab), 1, generator=sampler).view(-1, length)
        r = ((a == key(x)[:, None]).sum(1) >= need).float().view(prompts, group)
        adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-6)).view(-1, 1)
        old_lp = old_all.gather(-1, a[..., None]).squeeze(-1)
        kls, gs, rests = [], [], []

        def kl_now():
            with torch.no_grad():
                return (old_all.exp() * (old_all - pol(x).log_softmax(-1))).sum(-1).mean().item()

        def step_fn(reuse):
            if reuse > 1:
                kls.append(kl_now())                        # after the reuse - 1 updates applied so far
            ratio = (pol(x).log_softmax(-1).gather(-1, a[..., None]).squeeze(-1) - old_lp).exp()
            loss = -torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv).mean()
            loss.backward()
            norms = lckernels.grad_norms(pol.named_parameters(), {"lm_head": "lm_head", "rest": None}, squared=True)
            gs.append(norms["lm_head"].item())
            rests.append(norms["rest"].item())
            return loss, norms["lm_head"]

        if gated:
            rep = reuse_rollout_batch(step_fn, gate, opt, max_reuse=K)
            if rep.stopped_early and out["first_fire"] is None:
                out["first_fire"] = (b, rep.epochs)
            if not rep.stopped_early:
                kls.append(kl_now())
        else:
            for reuse in range(1, K + 1):
                opt.zero_grad()
                step_fn(reuse)
                opt.step()
            kls.append(kl_now())
        out["kl"].append(kls)
        out["g"].append(gs)
        out["rest"].append(rests)
    out["reward"] = expected_reward(eval_x)
    return out


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic and fast for these tiny matmuls
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_demo_lm_head_gradient_surges_while_reuse_drives_the_kl_up(one_thread, seed):
    """The paper's observation, reproduced on the toy: reusing the first rollout batch at an aggressive learning
    rate, the lm_head squared gradient norm jumps (>= 3x its on-policy value within the first reuses, and more than
    the rest of the model's) while the KL to the rollout policy keeps climbing past 1.5 nats per token."""
    run = toy_run(False, seed, batches=1)
    g, rest, kl = run["g"][0], run["rest"][0], run["kl"][0]
    surge = max(range(1, 4), key=lambda i: g[i] / g[0])
    assert g[surge] / g[0] >= 3.0, g
    assert g[surge] / g[0] > rest[surge] / rest[0], (g, rest)
    assert kl[-1] > 1.5 and kl[-1] > 1.5 * kl[0], kl


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "Negative result, reported in the issue #5 note: with the notes' defaults (tau=0.5, window=8; the fired update "
    "is skipped) this toy does not reproduce the claim. Over seeds 0-4 the gate fires on 23 of 150 batches; both "
    "criteria hold for seeds 0, 3, 4 and fail for 1, 2 (mean final reward 0.395 gated vs 0.386 ungated). Most KL "
    "blow-ups here come from Adam's momentum while the clipped gradient is near zero (invisible to g) or from a "
    "first update that is already too large (reuse index 1 is never gated). Strict: an XPASS flags a setup that "
    "demonstrates the claim."))
def test_demo_gate_fires_before_the_kl_explodes_and_ends_with_higher_reward(one_thread):
    """The claim of the issue, asserted per seed: the gate fires; when it first fires the KL to the rollout policy
    is still below 1 nat/token while the ungated run -- identical up to that batch -- crosses it within the same
    batch; and after the same number of rollout batches the gated policy's expected reward is higher.  The same
    claim on the end-to-end trainer's LM: tests/rl/test_dgg_trainer.py and docs/dgg_demo.md."""
    threshold = 1.0
    for seed in (0, 1, 2):
        ungated, gated = toy_run(False, seed), toy_run(True, seed)
        assert gated["first_fire"] is not None, f"seed {seed}: the gate never fired"
        b, _ = gated["first_fire"]
        assert max(gated["kl"][b] or [0.0]) < threshold <= max(ungated["kl"][b]), (seed, b)
        assert gated["reward"] > ungated["reward"], (seed, gated["reward"], ungated["reward"])


def test_docstring_examples():
    import doctest

    import lckernels_rl.gating.dgg

    result = doctest.testmod(lckernels_rl.gating.dgg, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
