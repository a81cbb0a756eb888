"""fused_policy_loss: every mode and option against the reference (loss, logprobs, both gradients, stats), the
composable path, hand-computed cases, edge cases and bad input."""

from __future__ import annotations

import math

import pytest
import torch

import lckernels
from lckernels import PolicyLossConfig as Cfg
from lckernels import _ext
from tests.helpers import assert_close_fp32, assert_close_lowp

B, T, D, V = 3, 7, 16, 300

CONFIGS = {
    "clip": Cfg(),
    "dapo": Cfg(eps_high=0.28),
    "dual_clip": Cfg(mode="dual_clip", clip_c=1.5),
    "gspo": Cfg(mode="gspo", eps_low=0.05, eps_high=0.05, loss_agg="seq-mean-token-mean"),
    "cispo": Cfg(mode="cispo", cispo_eps_low=0.1, cispo_eps_high=0.1),
    "sapo": Cfg(mode="sapo"),
    "maspo": Cfg(mode="maspo"),
    "hispo": Cfg(mode="hispo", hispo_delta_seq=0.03, hispo_delta_tok=0.08),
    "tis+k3+entropy": Cfg(rollout_correction="token_truncate", rc_threshold=1.05, kl="k3", kl_beta=0.1,
                          entropy_coef=0.01, temperature=0.7),
    "token_mask+k1": Cfg(rollout_correction="token_mask", rc_threshold=1.06, kl="k1", kl_beta=0.05,
                         loss_agg="seq-mean-token-sum"),
    "seq_truncate": Cfg(rollout_correction="sequence_truncate", rc_threshold=1.1, loss_agg="seq-mean-token-sum-norm"),
    "seq_mask": Cfg(rollout_correction="sequence_mask", rc_threshold=1.15, loss_agg="seq-mean-token-sum-norm",
                    loss_norm_constant=5.0),
    "kl_ratio": Cfg(kl="k3", kl_beta=0.2, kl_ratio_weighted=True, loss_agg="seq-mean-token-sum"),
    "gspo+kl_ratio": Cfg(mode="gspo", eps_low=0.05, eps_high=0.05, loss_agg="seq-mean-token-mean", kl="k1",
                         kl_beta=0.2, kl_ratio_weighted=True),
}


def make_problem(dtype=torch.float32, device="cpu", b=B, t=T, d=D, v=V, seq_adv=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(b, t, d, generator=g)
    w = torch.randn(v, d, generator=g) / d ** 0.5 * 2
    y = torch.randint(0, v, (b, t), generator=g)
    y[0, -2:] = -100
    mask = torch.ones(b, t)
    if b > 2:
        mask[2, :2] = 0
    with torch.no_grad():
        cur = lckernels.fused_logprobs(h, w, y.clamp_min(0), backend="reference")
    old = cur + 0.3 * torch.randn(b, t, generator=g)
    rollout = old + 0.05 * torch.randn(b, t, generator=g)
    ref = old + 0.2 * torch.randn(b, t, generator=g)
    adv = torch.randn(b, generator=g) if seq_adv else torch.randn(b, t, generator=g)
    h = h.to(dtype).to(device).requires_grad_()
    w = w.to(dtype).to(device).requires_grad_()
    f = lambda x: x.to(device)  # noqa: E731
    return h, w, f(y), f(adv), f(old), dict(mask=f(mask), rollout_logprobs=f(rollout), ref_logprobs=f(ref))


def run(backend, h, w, y, adv, old, kw, cfg):
    h.grad = w.grad = None
    out = lckernels.fused_policy_loss(h, w, y, adv, old, config=cfg, backend=backend, **kw)
    out.loss.backward()
    return out, h.grad.clone(), w.grad.clone()


def compare(got, ref, w_grad_ref, fp32=True):
    (o1, gh1, gw1), (o2, gh2, gw2) = got, ref
    if fp32:
        torch.testing.assert_close(o1.loss.detach(), o2.loss.detach(), rtol=1e-5, atol=1e-6)
        assert_close_fp32(o1.logprobs, o2.logprobs, 1e-5, "logprobs")
        assert_close_fp32(gh1, gh2, 1e-5, "grad_hidden")
        assert_close_fp32(gw1, gw2, 1e-5, "grad_weight")
    for k, v in o2.stats.items():
        if k == "lm_head_grad_sq_norm":
            continue
        if math.isnan(v):
            assert math.isnan(o1.stats[k]), k
        else:
            assert o1.stats[k] == pytest.approx(v, rel=1e-4, abs=1e-6), k
    assert o1.stats["lm_head_grad_sq_norm"] == pytest.approx(float(w_grad_ref.float().square().sum()), rel=1e-4)


@pytest.fixture(params=["ext", "aten-fallback"])
def cpu_backend(request, monkeypatch):
    if request.param == "ext":
        assert _ext.available(), "lckernels._C is not built; run `make build`"
        return "cpu"
    monkeypatch.setattr(_ext, "load", lambda: None)
    monkeypatch.delenv("LCK_BACKEND", raising=False)
    return "auto"


@pytest.mark.filterwarnings("ignore:fused_logprobs. lckernels._C is not built")
@pytest.mark.filterwarnings("ignore:soft_gaussian_gate. lckernels._C is not built")
@pytest.mark.parametrize("row_chunk", [None, "4"], ids=["rows-auto", "rows-4"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_cpu_matches_reference(name, row_chunk, cpu_backend, monkeypatch):
    if row_chunk:
        monkeypatch.setenv("LCK_ROW_CHUNK", row_chunk)
    cfg = CONFIGS[name]
    problem = make_problem(seq_adv=name in ("gspo", "seq_mask"))
    ref = run("reference", *problem, cfg)
    got = run(cpu_backend, *problem, cfg)
    compare(got, ref, ref[2])


def test_configs_exercise_their_branches():
    """The shared inputs really hit clipping, masking and truncation (else the comparisons above prove little)."""
    h, w, y, adv, old, kw = make_problem()
    stats = {n: lckernels.fused_policy_loss(h, w, y, adv, old, config=c, backend="reference", **kw).stats
             for n, c in CONFIGS.items()}
    assert stats["clip"]["clip_frac_low"] > 0 and stats["clip"]["clip_frac_high"] > 0
    assert 0 < stats["hispo"]["masked_frac"] < 1
    assert 0 < stats["token_mask+k1"]["masked_frac"] < 1
    assert 0 < stats["seq_mask"]["masked_frac"] < 1
    assert stats["maspo"]["gate_mean"] < 1 and stats["sapo"]["gate_mean"] < 1
    assert stats["kl_ratio"]["ratio_mean"] != pytest.approx(1.0, abs=0.05)  # the KL weight is far from 1


def make_pg_weight(b=B, t=T, device="cpu", seed=1):
    """[B, T] in [0, 2) with exact zeros (the docstring's "a weight 0 keeps the token in the denominators")."""
    g = torch.Generator().manual_seed(seed)
    pw = torch.rand(b, t, generator=g) * 2
    pw[1, 2] = pw[0, 0] = 0.0
    return pw.to(device)


PG_WEIGHT_CONFIGS = ["clip", "gspo", "maspo", "hispo", "sapo", "tis+k3+entropy", "gspo+kl_ratio"]


@pytest.mark.filterwarnings("ignore:fused_logprobs. lckernels._C is not built")
@pytest.mark.filterwarnings("ignore:soft_gaussian_gate. lckernels._C is not built")
@pytest.mark.parametrize("row_chunk", [None, "4"], ids=["rows-auto", "rows-4"])
@pytest.mark.parametrize("name", PG_WEIGHT_CONFIGS)
def test_pg_weight_cpu_matches_reference(name, row_chunk, cpu_backend, monkeypatch):
    """The pg_weight input on the fused CPU path (chunked) == the reference, loss / log-probs / gradients / stats."""
    if row_chunk:
        monkeypatch.setenv("LCK_ROW_CHUNK", row_chunk)
    cfg = CONFIGS[name]
    h, w, y, adv, old, kw = make_problem(seq_adv=name.startswith("gspo"))
    kw = dict(kw, pg_weight=make_pg_weight())
    ref = run("reference", h, w, y, adv, old, kw, cfg)
    compare(run(cpu_backend, h, w, y, adv, old, kw, cfg), ref, ref[2])
    # and it is not a no-op: the loss differs from the unweighted one
    plain = run("reference", h, w, y, adv, old, dict(kw, pg_weight=None), cfg)
    assert abs(plain[0].loss.item() - ref[0].loss.item()) > 1e-4


def test_pg_weight_composable_path_matches():
    """fused_logprobs + policy_loss_from_logprobs(pg_weight=) == fused_policy_loss(pg_weight=)."""
    for name in ("clip", "maspo", "gspo+kl_ratio"):
        cfg = CONFIGS[name]
        h, w, y, adv, old, kw = make_problem(seq_adv=name.startswith("gspo"))
        pw = make_pg_weight()
        fused = run("cpu", h, w, y, adv, old, dict(kw, pg_weight=pw), cfg)
        h.grad = w.grad = None
        lp, ent = lckernels.fused_logprobs(h, w, y, return_entropy=True, backend="cpu")
        loss, _ = lckernels.policy_loss_from_logprobs(lp, adv, old, mask=kw["mask"] * (y != -100), entropy=ent,
                                                      rollout_logprobs=kw["rollout_logprobs"],
                                                      ref_logprobs=kw["ref_logprobs"], pg_weight=pw, config=cfg)
        loss.backward()
        torch.testing.assert_close(fused[0].loss.detach(), loss.detach(), rtol=1e-5, atol=1e-6)
        assert_close_fp32(fused[1], h.grad, 1e-5, name)
        assert_close_fp32(fused[2], w.grad, 1e-5, name)


def test_maspo_loss_calls_the_gate_kernel(monkeypatch):
    """MASPO's loss runs the library's own soft-gate kernel: C++ on the CPU path, Triton on the Triton path (the
    dispatch of lckernels.soft_gaussian_gate), the plain-torch gate only on the reference backend."""
    import lckernels.ops.gating as gating

    calls = []
    real = gating.soft_gaussian_gate

    def spy(*args, backend="auto", **kw):
        calls.append(backend)
        return real(*args, backend=backend, **kw)

    monkeypatch.setattr(gating, "soft_gaussian_gate", spy)
    h, w, y, adv, old, kw = make_problem()
    cfg = CONFIGS["maspo"]
    run("cpu", h, w, y, adv, old, kw, cfg)
    assert calls and set(calls) == {"cpu"}
    calls.clear()
    run("reference", h, w, y, adv, old, kw, cfg)
    assert calls == []
    lp = lckernels.fused_logprobs(h, w, y, backend="cpu")
    lckernels.policy_loss_from_logprobs(lp, adv, old, mask=kw["mask"], config=cfg, backend="cpu")
    assert calls == ["cpu"]
    calls.clear()
    lckernels.policy_loss_from_logprobs(lp, adv, old, mask=kw["mask"], config=cfg)  # auto: C++ or its fallback
    assert calls == ["auto"]
    calls.clear()
    lckernels.policy_loss_from_logprobs(lp, adv, old, mask=kw["mask"], config=Cfg(), backend="cpu")
    assert calls == []  # other modes have no kernel on this path


def torch_same_dtype(h, w, y, adv, old, kw, cfg):
    """Loss and gradients computed by plain PyTorch in the inputs' own precision (logits, log_softmax in 16 bits)."""
    h.grad = w.grad = None
    logp = torch.log_softmax((h @ w.t()) / cfg.temperature, -1)
    lp = logp.gather(-1, y.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    ent = -(logp.exp() * logp).sum(-1)
    loss, _ = lckernels.policy_loss_from_logprobs(lp.float(), adv, old, mask=kw["mask"] * (y != -100),
                                                  rollout_logprobs=kw["rollout_logprobs"],
                                                  ref_logprobs=kw["ref_logprobs"], entropy=ent.float(), config=cfg)
    loss.backward()
    return loss.detach(), h.grad.clone(), w.grad.clone()


def assert_lowp_rule(got, ref, low):
    """mamba's rule on the loss and both gradients: kernel error <= 2 x PyTorch's same-dtype error + atol."""
    pairs = ((got[0].loss.detach(), ref[0].loss.detach(), low[0], "loss"), (got[1], ref[1], low[1], "grad_hidden"),
             (got[2], ref[2], low[2], "grad_weight"))
    for g, r, lo, name in pairs:
        assert_close_lowp(g.cpu(), r.cpu(), lo.cpu(), 1e-5 * (1 + r.float().abs().max().item()), name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", ["clip", "maspo", "tis+k3+entropy"])
def test_cpu_low_precision(name, dtype):
    cfg = CONFIGS[name]
    problem = make_problem(dtype)
    got = run("cpu", *problem, cfg)
    ref = run("reference", *problem, cfg)
    assert_lowp_rule(got, ref, torch_same_dtype(*problem, cfg))


@pytest.mark.parametrize("name", ["clip", "gspo", "hispo", "tis+k3+entropy", "maspo"])
def test_composable_path_matches(name):
    """fused_logprobs + policy_loss_from_logprobs == fused_policy_loss, loss and both gradients."""
    cfg = CONFIGS[name]
    h, w, y, adv, old, kw = make_problem()
    fused = run("cpu", h, w, y, adv, old, kw, cfg)
    h.grad = w.grad = None
    lp, ent = lckernels.fused_logprobs(h, w, y, temperature=cfg.temperature, return_entropy=True, backend="cpu")
    loss, stats = lckernels.policy_loss_from_logprobs(lp, adv, old, mask=kw["mask"] * (y != -100), entropy=ent,
                                                      rollout_logprobs=kw["rollout_logprobs"],
                                                      ref_logprobs=kw["ref_logprobs"], config=cfg)
    loss.backward()
    torch.testing.assert_close(fused[0].loss.detach(), loss.detach(), rtol=1e-5, atol=1e-6)
    assert_close_fp32(fused[1], h.grad, 1e-5, "grad_hidden")
    assert_close_fp32(fused[2], w.grad, 1e-5, "grad_weight")
    assert stats["clip_frac_high"] == pytest.approx(fused[0].stats["clip_frac_high"])


# ------------------------------------------------------------------------------------------------- hand-computed

def _loss_on(lp_minus_old: float, adv: float, cfg: Cfg, lp0: float = -1.0):
    lp = torch.tensor([[lp0]], requires_grad=True)
    old = torch.tensor([[lp0 - lp_minus_old]])
    loss, stats = lckernels.policy_loss_from_logprobs(lp, torch.tensor([adv]), old, config=cfg)
    loss.backward()
    return loss.item(), lp.grad.item(), stats


def test_hand_ratio_e_clipped_to_1_2():
    loss, grad, stats = _loss_on(1.0, 1.0, Cfg(eps_high=0.2))  # ratio e > 1.2, A > 0: clipped, no gradient
    assert loss == pytest.approx(-1.2) and grad == 0.0 and stats["clip_frac_high"] == 1.0
    loss, grad, _ = _loss_on(1.0, -1.0, Cfg())  # A < 0: the unclipped -A r = e wins, gradient d(e^x)/dx = e
    assert loss == pytest.approx(math.e) and grad == pytest.approx(math.e)
    loss, grad, _ = _loss_on(2.0, -1.0, Cfg(mode="dual_clip", clip_c=3.0))  # e^2 = 7.39 > c = 3: capped at 3
    assert loss == pytest.approx(3.0) and grad == 0.0
    loss, grad, stats = _loss_on(-1.0, -1.0, Cfg())  # r = 1/e < 0.8, A < 0: clipped at 0.8
    assert loss == pytest.approx(0.8) and grad == 0.0 and stats["clip_frac_low"] == 1.0


def test_hand_on_policy_is_reinforce():
    # old_logprobs=None: ratio 1 with gradient -> loss -mean(A), d loss / d lp_t = -A_t / n
    lp = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    adv = torch.tensor([[1.0, -2.0, 0.5]])
    loss, stats = lckernels.policy_loss_from_logprobs(lp, adv)
    loss.backward()
    assert loss.item() == pytest.approx(-(1.0 - 2.0 + 0.5) / 3)
    torch.testing.assert_close(lp.grad, -adv / 3)
    assert stats["ratio_mean"] == 1.0


def test_hand_cispo_sapo():
    # CISPO: -sg(clip(r)) A log pi; r = e clipped to 1 + 0.5 -> gradient -1.5 * A
    loss, grad, _ = _loss_on(1.0, 2.0, Cfg(mode="cispo", cispo_eps_high=0.5), lp0=-1.0)
    assert grad == pytest.approx(-1.5 * 2.0) and loss == pytest.approx(-1.5 * 2.0 * -1.0)
    # SAPO at r = 1: gate value 4 sigmoid(0) / tau = 2 / tau, slope 1 (the plain policy gradient)
    loss, grad, stats = _loss_on(0.0, 1.0, Cfg(mode="sapo", tau_pos=2.0))
    assert loss == pytest.approx(-1.0) and grad == pytest.approx(-1.0) and stats["gate_mean"] == pytest.approx(1.0)


def test_hand_maspo_gate_values():
    # r = 1.5, log p_old = -0.1, A = 1: sigma_mass = clamp(1 / p_old^0.3, 1, 10) = e^{0.03},
    # sigma_pos = e^{0.03} * (1 + 0.03 * 1), w = exp(-(0.5)^2 / (2 sigma_pos^2)) = 0.89497
    r = torch.tensor([1.5, 0.5, 0.5, 1.2])
    old = torch.tensor([-0.1, -0.1, -0.1, -10.0])
    a = torch.tensor([1.0, 1.0, -2.0, 1.0])
    expected = torch.tensor([
        math.exp(-0.25 / (2 * (math.exp(0.03) * 1.03) ** 2)),
        1.0,  # A > 0 but r < 1: untouched
        math.exp(-0.25 / (2 * (math.exp(0.03) / 1.06) ** 2)),  # sigma_neg = mass / (1 - 0.03 * (-2))
        math.exp(-0.04 / (2 * (10.0 * 1.03) ** 2)),  # p_old tiny: sigma_mass hits sigma_high = 10
    ])
    for backend in ("reference", "cpu"):
        torch.testing.assert_close(lckernels.soft_gaussian_gate(r, old, a, backend=backend), expected, rtol=1e-5,
                                   atol=1e-6)


def test_hand_hispo_masks():
    cfg = Cfg(mode="hispo", hispo_delta_seq=0.1, hispo_delta_tok=0.5)
    lp = torch.zeros(3, 2, requires_grad=True)
    old = torch.zeros(3, 2)
    # seq 0: r_dis = 1 everywhere (kept); seq 1: geometric mean e^{0.5} -> |1.65 - 1| > 0.1 (sequence dropped);
    # seq 2: tokens e^{0.6}, e^{-0.6}: sequence mean 1 (kept) but |e^{0.6} - 1| = 0.82 > 0.5 and
    # |e^{-0.6} - 1| = 0.45 < 0.5, so only its first token is dropped.
    rollout = torch.tensor([[0.0, 0.0], [-0.5, -0.5], [-0.6, 0.6]])
    adv = torch.ones(3, 2)
    loss, stats = lckernels.policy_loss_from_logprobs(lp, adv, old, rollout_logprobs=rollout, config=cfg)
    loss.backward()
    keep = torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 1.0]])
    assert stats["masked_frac"] == pytest.approx(3 / 6)
    torch.testing.assert_close(lp.grad, -keep / 6)  # token-mean over all 6 valid tokens, only kept ones count


# ------------------------------------------------------------------------------------------------- edge cases

@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_all_masked_is_zero_not_nan(backend):
    h, w, y, adv, old, kw = make_problem()
    kw["mask"] = torch.zeros(B, T)
    out, gh, gw = run(backend, h, w, y, adv, old, kw, Cfg(kl="k3", kl_beta=0.1, entropy_coef=0.1,
                                                          rollout_correction="sequence_mask"))
    assert out.loss.item() == 0.0 and (gh == 0).all() and (gw == 0).all()
    assert (out.logprobs == 0).all() and out.stats["valid_tokens"] == 0


def test_single_token_and_sequence_advantages():
    for seq_adv in (False, True):
        problem = make_problem(b=1, t=1, seq_adv=seq_adv)
        problem[5]["mask"] = None
        problem = (problem[0], problem[1], problem[2].clamp_min(0)) + problem[3:]
        compare(run("cpu", *problem, CONFIGS["clip"]), run("reference", *problem, CONFIGS["clip"]),
                run("reference", *problem, CONFIGS["clip"])[2])


def test_deterministic_and_on_policy_ratio_is_one():
    h, w, y, adv, old, kw = make_problem()
    a = lckernels.fused_policy_loss(h, w, y, adv, None, mask=kw["mask"], backend="cpu")
    b = lckernels.fused_policy_loss(h, w, y, adv, a.logprobs, mask=kw["mask"], backend="cpu")
    assert torch.equal(a.loss, b.loss)  # old = the same op's logprobs on the same inputs -> ratio exactly 1
    assert b.stats["ratio_mean"] == 1.0 and b.stats["clip_frac_high"] == 0 and b.stats["clip_frac_low"] == 0


def test_no_grad_forward_only():
    h, w, y, adv, old, kw = make_problem()
    with torch.no_grad():
        out = lckernels.fused_policy_loss(h, w, y, adv, old, backend="cpu", **kw)
    ref = lckernels.fused_policy_loss(h, w, y, adv, old, backend="reference", **kw)
    torch.testing.assert_close(out.loss, ref.loss.detach(), rtol=1e-5, atol=1e-6)
    assert math.isnan(out.stats["lm_head_grad_sq_norm"])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_streaming_never_builds_full_logits(monkeypatch, name):
    """No ATen op of the CPU path (any spelling of a GEMM, any allocation, forward or backward) produces more
    elements than one row chunk of logits (5 x V): never [N, V].  D = 4 keeps grad_weight [V, D] under that."""
    from tests._spies import LargeTensorSpy

    monkeypatch.setenv("LCK_ROW_CHUNK", "5")
    monkeypatch.setenv("LCK_VOCAB_CHUNK", "100")  # the GSPO prepass streams over the vocabulary like fused_logprobs
    h, w, y, adv, old, kw = make_problem(b=4, t=8, d=4, v=1000)
    with LargeTensorSpy(threshold=6 * 1000) as spy:
        run("cpu", h, w, y, adv, old, kw, CONFIGS[name])
    assert spy.saw_matmul, "the spy saw no GEMM: it was not watching the op"
    spy.assert_none()


# ------------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize(
    "change, exc, match",
    [
        (lambda p: p.update(adv=torch.randn(B, T + 1)), ValueError, "`advantages` must be"),
        (lambda p: p.update(adv=torch.randn(B + 1)), ValueError, "`advantages` must be"),
        (lambda p: p.update(old=torch.randn(B, T - 1)), ValueError, "`old_logprobs` must have shape"),
        (lambda p: p["kw"].update(mask=torch.ones(B, 2)), ValueError, "`mask` must have shape"),
        (lambda p: p.update(y=p["y"].float()), TypeError, "`targets` must have dtype"),
        (lambda p: p.update(h=p["h"].detach()[0]), ValueError, "`hidden` must be 3-D"),
        (lambda p: p.update(y=p["y"].clone().fill_(V)), ValueError, "`targets` must lie in"),
        (lambda p: p.update(old=p["old"].clone().index_fill_(1, torch.tensor([1]), float("nan"))), ValueError,
         "`old_logprobs` has .* NaN/inf"),
        (lambda p: p["kw"].update(rollout_logprobs=torch.full((B, T), float("inf"))), ValueError,
         "`rollout_logprobs` has"),
        (lambda p: p.update(cfg=Cfg(mode="hispo")) or p["kw"].update(rollout_logprobs=None), ValueError,
         "needs `rollout_logprobs`"),
        (lambda p: p.update(cfg=Cfg(kl="k1", kl_beta=0.1)) or p["kw"].update(ref_logprobs=None), ValueError,
         "needs `ref_logprobs`"),
        (lambda p: p.update(cfg={"mode": "clip"}), TypeError, "PolicyLossConfig"),
        (lambda p: p.update(w=p["w"].detach().to("meta")), ValueError, "one device"),
        (lambda p: p["kw"].update(pg_weight=torch.ones(B, T + 1)), ValueError, "`pg_weight` must have shape"),
        (lambda p: p["kw"].update(pg_weight=torch.ones(B)), ValueError, "`pg_weight` must be 2-D"),
        (lambda p: p["kw"].update(pg_weight=torch.ones(B, T, dtype=torch.long)), TypeError,
         "`pg_weight` must have dtype"),
        (lambda p: p["kw"].update(pg_weight=-torch.ones(B, T)), ValueError, "`pg_weight` must be >= 0"),
        (lambda p: p["kw"].update(pg_weight=torch.full((B, T), float("nan"))), ValueError, "`pg_weight` has .* NaN"),
        (lambda p: p["kw"].update(pg_weight=torch.ones(B, T, device="meta")), ValueError, "one device"),
    ],
    ids=["adv-T", "adv-B", "old-shape", "mask-shape", "float-targets", "2-D-hidden", "target-range", "nan-old",
         "inf-rollout", "hispo-no-rollout", "kl-no-ref", "config-type", "device", "pg_weight-shape",
         "pg_weight-1-D", "pg_weight-dtype", "pg_weight-negative", "pg_weight-nan", "pg_weight-device"],
)
def test_bad_input(change, exc, match):
    h, w, y, adv, old, kw = make_problem()
    p = dict(h=h, w=w, y=y, adv=adv, old=old, kw=dict(kw), cfg=Cfg(rollout_correction="token_mask"))
    change(p)
    with pytest.raises(exc, match=match):
        lckernels.fused_policy_loss(p["h"], p["w"], p["y"], p["adv"], p["old"], config=p["cfg"], backend="cpu",
                                    **p["kw"])


def test_bad_pg_weight_composable_path():
    lp, adv = torch.zeros(B, T), torch.ones(B)
    with pytest.raises(ValueError, match="policy_loss_from_logprobs: `pg_weight` must have shape"):
        lckernels.policy_loss_from_logprobs(lp, adv, pg_weight=torch.ones(T, B))
    with pytest.raises(TypeError, match="`pg_weight` must have dtype"):
        lckernels.policy_loss_from_logprobs(lp, adv, pg_weight=torch.ones(B, T, dtype=torch.bool))
    with pytest.raises(ValueError, match="`pg_weight` must be >= 0"):
        lckernels.policy_loss_from_logprobs(lp, adv, pg_weight=torch.full((B, T), -0.5))
    with pytest.raises(ValueError, match="backend must be one of"):
        lckernels.policy_loss_from_logprobs(lp, adv, backend="gpu")
    # a negative value outside the loss (masked) is ignored, like every per-token input
    pw = torch.ones(B, T)
    pw[0, 0] = -1.0
    mask = torch.ones(B, T)
    mask[0, 0] = 0
    loss, _ = lckernels.policy_loss_from_logprobs(lp, adv, mask=mask, pg_weight=pw)
    assert torch.isfinite(loss)


def test_nonfinite_mask_policy_drops_tokens():
    h, w, y, adv, old, kw = make_problem()
    old = old.clone()
    old[1, 3] = float("nan")
    cfg = Cfg(nonfinite="mask")
    got = run("cpu", h, w, y, adv, old, kw, cfg)
    assert torch.isfinite(got[0].loss) and torch.isfinite(got[1]).all()
    kw2 = dict(kw, mask=kw["mask"].clone())
    kw2["mask"][1, 3] = 0
    ref = run("reference", h, w, y, adv, old.nan_to_num(0.0), kw2, cfg)
    torch.testing.assert_close(got[0].loss.detach(), ref[0].loss.detach(), rtol=1e-5, atol=1e-6)
    assert got[0].stats["nonfinite_frac"] > 0


@pytest.mark.parametrize("kwargs, match", [
    (dict(mode="ppo"), "mode must be one of"), (dict(loss_agg="mean"), "loss_agg"), (dict(eps_low=-0.1), "eps_low"),
    (dict(kl="k2"), "kl must be"), (dict(temperature=0.0), "temperature"), (dict(eps_high=float("nan")), "finite"),
    (dict(mode="dual_clip", clip_c=0.5), "clip_c"), (dict(rc_threshold_low=5.0), "rc_threshold_low"),
    (dict(kl_ratio_weighted="yes"), "kl_ratio_weighted must be a bool"), (dict(kl_ratio_weighted=1), "bool"),
])
def test_bad_config(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Cfg(**kwargs)


# ------------------------------------------------------------------------------------------------- Triton

@pytest.mark.interpreter
@pytest.mark.parametrize("name", ["clip", "gspo", "maspo", "hispo", "tis+k3+entropy", "gspo+kl_ratio"])
def test_triton_matches_reference(name, kernel_device):
    cfg = CONFIGS[name]
    problem = make_problem(device=kernel_device, seq_adv=name == "gspo")
    ref = run("reference", *problem, cfg)
    compare(run("triton", *problem, cfg), ref, ref[2])


@pytest.mark.interpreter
@pytest.mark.parametrize("name", ["maspo", "kl_ratio", "gspo+kl_ratio"])
def test_triton_pg_weight_matches_reference(name, kernel_device):
    """pg_weight and the ratio-weighted KL on the Triton path (MASPO: its Triton gate kernel) == the reference."""
    cfg = CONFIGS[name]
    h, w, y, adv, old, kw = make_problem(device=kernel_device, seq_adv=name.startswith("gspo"))
    kw = dict(kw, pg_weight=make_pg_weight(device=kernel_device))
    ref = run("reference", h, w, y, adv, old, kw, cfg)
    compare(run("triton", h, w, y, adv, old, kw, cfg), ref, ref[2])


@pytest.mark.interpreter
def test_triton_fp16_and_all_masked(kernel_device):
    cfg = CONFIGS["tis+k3+entropy"]
    problem = make_problem(torch.float16, kernel_device)
    got = run("triton", *problem, cfg)
    ref = run("reference", *problem, cfg)
    assert_lowp_rule(got, ref, torch_same_dtype(*problem, cfg))
    h, w, y, adv, old, kw = problem
    kw["mask"] = torch.zeros(B, T, device=kernel_device)
    out, gh, gw = run("triton", h, w, y, adv, old, kw, cfg)
    assert out.loss.item() == 0.0 and (gh == 0).all() and (gw == 0).all()


def test_upstream_gradient_scales():
    h, w, y, adv, old, kw = make_problem()
    out = lckernels.fused_policy_loss(h, w, y, adv, old, backend="cpu", **kw)
    (out.loss * -2.5).backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref = lckernels.fused_policy_loss(h, w, y, adv, old, backend="reference", **kw)
    (ref.loss * -2.5).backward()
    assert_close_fp32(gh, h.grad, 1e-5, "grad_hidden")
    assert_close_fp32(gw, w.grad, 1e-5, "grad_weight")


@pytest.mark.interpreter
def test_triton_maspo_uses_the_triton_gate(kernel_device, monkeypatch):
    import lckernels.ops.gating as gating

    calls = []
    real = gating.soft_gaussian_gate
    monkeypatch.setattr(gating, "soft_gaussian_gate",
                        lambda *a, backend="auto", **k: calls.append(backend) or real(*a, backend=backend, **k))
    run("triton", *make_problem(device=kernel_device), CONFIGS["maspo"])
    assert calls and set(calls) == {"triton"}
