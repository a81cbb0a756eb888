"""lckernels_rl.objectives: the registry, fused == per-token (loss and both gradients) for every objective, and
hand-computed cases for every loss."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

import lckernels
from lckernels_rl import objectives as O
from lckernels_rl.objectives import get_objective, list_objectives
from tests.helpers import assert_close_fp32

B, T, D, V = 4, 6, 16, 48
ALL = ["grpo", "dapo", "dr_grpo", "gspo", "cispo", "sapo", "maspo", "hispo", "lcft_tis", "aopd", "dual_track_grpo",
       "self_verify"]


# ------------------------------------------------------------------------------------------------- registry

def test_registry_lists_every_objective_and_rejects_unknown_names():
    assert list_objectives() == sorted(ALL)
    with pytest.raises(ValueError, match="unknown objective 'ppo'; valid names: aopd, cispo, dapo"):
        get_objective("ppo")
    assert get_objective("dapo").eps_high == 0.28
    assert get_objective("grpo", eps_high=0.3).eps_high == 0.3
    obj = get_objective("gspo")
    assert get_objective(obj) is obj and get_objective(obj, eps_low=0.1).eps_low == 0.1


def test_every_module_cites_its_source_status():
    for name, status in O.objective_sources().items():
        assert status in ("verified", "third-party", "inferred")
        cls = type(get_objective(name))
        doc = importlib.import_module(cls.__module__).__doc__
        assert "Status:" in doc and status in doc and ("Paper:" in doc or "Source:" in doc), name


def test_docstring_examples():
    import doctest

    for mod in (O, O.registry):
        result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        assert result.attempted > 0 and result.failed == 0, mod.__name__


def test_bad_parameters_fail_at_construction():
    with pytest.raises(ValueError, match="loss_agg"):
        get_objective("grpo", loss_agg="sum")
    with pytest.raises(ValueError, match="clip_c must be > 1"):
        get_objective("lcft_tis", eps_neg_high=0.5)
    with pytest.raises(ValueError, match="schema_weight"):
        get_objective("dual_track_grpo", schema_weight=-1.0)
    with pytest.raises(ValueError, match="variant"):
        get_objective("dual_track_grpo", variant="both")
    with pytest.raises(ValueError, match="unknown objective"):
        get_objective("self_verify", base="nope")


# ------------------------------------------------------------------------------------------------- fused == per-token

def make_problem(seed=0, seq_adv=False):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, T, D, generator=g)
    w = torch.randn(V, D, generator=g) / D ** 0.5 * 2
    y = torch.randint(0, V, (B, T), generator=g)
    y[0, -2:] = -100
    mask = torch.ones(B, T)
    mask[2, :2] = 0
    mask = mask * (y != -100)
    with torch.no_grad():
        cur = lckernels.fused_logprobs(h, w, y, backend="reference")
    old = cur + 0.3 * torch.randn(B, T, generator=g)
    rollout = old + 0.05 * torch.randn(B, T, generator=g)
    ref = old + 0.2 * torch.randn(B, T, generator=g)
    adv = torch.randn(B, generator=g) if seq_adv else torch.randn(B, T, generator=g)
    teacher = (h @ w.t()) * 0.8 + 0.5 * torch.randn(B, T, V, generator=g)
    rollout_on = cur + 0.02 * torch.randn(B, T, generator=g)  # on-policy: pi_old = current, mu close to it
    return dict(h=h, w=w, y=y, mask=mask, old=old, rollout=rollout, rollout_on=rollout_on, ref=ref, adv=adv,
                teacher=teacher, g=g)


def case_inputs(name, p, on_policy):
    """(objective, extra kwargs for both paths, kwargs only for the per-token path given lp/logits)."""
    old = None if on_policy else p["old"]
    kw = dict(old_log_prob=old)
    extra = {}
    if name in ("hispo", "lcft_tis"):
        kw["rollout_log_prob"] = p["rollout_on"] if on_policy else p["rollout"]
    obj = get_objective(name)
    if name == "grpo":
        obj = obj.replace(kl_beta=0.04)
        kw["ref_log_prob"] = p["ref"]
    if name == "dapo":
        obj = obj.replace(entropy_coef=0.01, temperature=0.7)
    if name in ("gspo", "sapo"):  # the KL times the differentiable ratio (TRL's use_bias_correction_kl)
        obj = obj.replace(kl_beta=0.1, kl_ratio_weighted=True)
        kw["ref_log_prob"] = p["ref"]
    if name == "hispo":
        obj = obj.replace(delta_seq=0.02, delta_tok=0.06)
    if name == "lcft_tis":
        obj = obj.replace(tis_cap=1.03, t_max=9.0)
    if name == "cispo":
        obj = obj.replace(eps_low=0.2, eps_high=0.1)
    if name == "aopd":
        kw["advantages"] = None
        extra["teacher_logits"] = p["teacher"]
        extra["teacher_log_prob"] = O.teacher_token_log_prob(p["teacher"], p["y"])
    if name == "dual_track_grpo":
        extra["schema_advantages"] = torch.randn(B, generator=p["g"])
        extra["schema_mask"] = torch.arange(T)[None, :] < torch.tensor([2, 6, 3, 0])[:, None]
    return obj, kw, extra


def run_both(obj, p, kw, extra, adv, topk=None):
    h1, w1 = p["h"].clone().requires_grad_(), p["w"].clone().requires_grad_()
    h2, w2 = p["h"].clone().requires_grad_(), p["w"].clone().requires_grad_()
    a = kw.pop("advantages", adv)
    fkw = dict(extra)
    if topk is not None:
        ids = p["teacher"].topk(topk, dim=-1).indices
        fkw["teacher_topk_ids"] = ids
        fkw["teacher_logits"] = p["teacher"].gather(-1, ids)
    loss_f, m_f = obj.fused(h1, w1, p["y"], a, response_mask=p["mask"], **kw, **fkw)
    loss_f.backward()

    temp = getattr(obj, "temperature", 1.0)
    lp, ent = lckernels.fused_logprobs(h2, w2, p["y"], temperature=temp, return_entropy=True)
    ukw = dict(fkw)
    if isinstance(obj, O.AOPD):
        ukw["student_logits"] = h2 @ w2.t()
    elif getattr(obj, "entropy_coef", 0) or isinstance(obj, O.DualTrackGRPO):
        ukw["entropy"] = ent
    loss_u, m_u = obj(lp, kw.pop("old_log_prob"), a, p["mask"], **kw, **ukw)
    loss_u.backward()
    return (loss_f, m_f, h1.grad, w1.grad), (loss_u, m_u, h2.grad, w2.grad)


@pytest.mark.parametrize("on_policy", [False, True], ids=["off-policy", "on-policy"])
@pytest.mark.parametrize("name", ALL)
def test_fused_matches_per_token_path(name, on_policy):
    """objective.fused(hidden, W, ...) == objective(fused_logprobs(hidden, W), ...): loss, d/d hidden, d/d W."""
    p = make_problem(seq_adv=name == "gspo")
    obj, kw, extra = case_inputs(name, p, on_policy)
    (lf, mf, ghf, gwf), (lu, mu, ghu, gwu) = run_both(obj, p, kw, extra, p["adv"])
    torch.testing.assert_close(lf.detach(), lu.detach(), rtol=1e-5, atol=1e-6)
    assert_close_fp32(ghf, ghu, 2e-5, "grad_hidden")
    assert_close_fp32(gwf, gwu, 2e-5, "grad_weight")
    assert ghf.abs().sum() > 0 and gwf.abs().sum() > 0
    assert mf["loss"] == pytest.approx(mu["loss"], rel=1e-5, abs=1e-6)
    assert all(isinstance(v, float) for v in mf.values())


@pytest.mark.parametrize("k", [None, 5], ids=["full-vocab", "top-5"])
def test_aopd_fused_matches_per_token_both_kl_modes(k):
    p = make_problem(seed=1)
    obj, kw, extra = case_inputs("aopd", p, on_policy=False)
    (lf, mf, ghf, gwf), (lu, mu, ghu, gwu) = run_both(obj, p, kw, extra, None, topk=k)
    torch.testing.assert_close(lf.detach(), lu.detach(), rtol=1e-5, atol=1e-6)
    assert_close_fp32(ghf, ghu, 2e-5, "grad_hidden")
    assert_close_fp32(gwf, gwu, 2e-5, "grad_weight")
    assert 0 < mf["pos_frac"] < 1 and mf["kl_loss"] > 0


def test_token_weight_fused_matches_and_is_a_plain_factor():
    """token_weight (verl's rollout_is_weights) multiplies each token's PG term, for every mode, both paths."""
    p = make_problem(seed=2)
    wts = torch.rand(B, T, generator=p["g"]) * 2
    wts[1, 3] = 0.0
    for name in ("grpo", "maspo", "sapo"):
        obj = get_objective(name)
        (lf, _, ghf, gwf), (lu, _, ghu, gwu) = run_both(obj, p, dict(old_log_prob=p["old"]),
                                                        dict(token_weight=wts), p["adv"])
        torch.testing.assert_close(lf.detach(), lu.detach(), rtol=1e-5, atol=1e-6)
        assert_close_fp32(ghf, ghu, 2e-5, name)
        assert_close_fp32(gwf, gwu, 2e-5, name)
    # hand: on-policy, A = 1, token-mean over 3 tokens: loss = -(0.5 + 2 + 0) / 3, d loss / d lp_t = -w_t / 3
    lp = torch.zeros(1, 3, requires_grad=True)
    loss, _ = get_objective("dapo")(lp, None, torch.ones(1), None, token_weight=torch.tensor([[0.5, 2.0, 0.0]]))
    loss.backward()
    assert loss.item() == pytest.approx(-2.5 / 3)
    torch.testing.assert_close(lp.grad, torch.tensor([[-0.5, -2.0, 0.0]]) / 3)
    with pytest.raises(ValueError, match="own rollout correction"):
        get_objective("lcft_tis")(lp, None, torch.ones(1), None, rollout_log_prob=torch.zeros(1, 3),
                                  token_weight=torch.ones(1, 3))


# ------------------------------------------------------------------------------------------------- hand-computed

def one_token(name, lp_minus_old, adv, lp0=-1.0, **params):
    lp = torch.tensor([[lp0]], requires_grad=True)
    old = torch.tensor([[lp0 - lp_minus_old]])
    loss, m = get_objective(name, **params)(lp, old, torch.tensor([adv]), None)
    loss.backward()
    return loss.item(), lp.grad.item(), m


def test_hand_grpo_ratio_e_clipped_to_1_2():
    loss, grad, m = one_token("grpo", 1.0, 1.0)  # r = e > 1.2, A > 0: clipped, no gradient
    assert loss == pytest.approx(-1.2) and grad == 0.0 and m["clip_frac_high"] == 1.0
    loss, grad, _ = one_token("grpo", 1.0, -1.0)  # A < 0: the unclipped -A r = e wins, gradient e
    assert loss == pytest.approx(math.e) and grad == pytest.approx(math.e)


def test_hand_dapo_clip_higher_keeps_ratio_1_25():
    loss, grad, _ = one_token("dapo", math.log(1.25), 1.0)  # 1.25 < 1.28: unclipped, d(-r)/dlp = -r
    assert loss == pytest.approx(-1.25) and grad == pytest.approx(-1.25)
    loss, grad, _ = one_token("grpo", math.log(1.25), 1.0)  # 1.25 > 1.2: clipped under GRPO
    assert loss == pytest.approx(-1.2) and grad == 0.0


def test_hand_aggregations_grpo_dapo_dr_grpo():
    """Sequences of 1 and 3 valid tokens (T = 4), on-policy, A = (2, 1): the three aggregations."""
    mask = torch.tensor([[1.0, 0, 0, 0], [1, 1, 1, 0]])
    adv = torch.tensor([2.0, 1.0])
    expected = {
        "grpo": (-(2 + 1) / 2, [[-2 / 2, 0, 0, 0], [-1 / 6, -1 / 6, -1 / 6, 0]]),          # mean_i mean_t
        "dapo": (-(2 + 3) / 4, [[-2 / 4, 0, 0, 0], [-1 / 4, -1 / 4, -1 / 4, 0]]),          # sum / 4 tokens
        "dr_grpo": (-(2 + 3) / 8, [[-2 / 8, 0, 0, 0], [-1 / 8, -1 / 8, -1 / 8, 0]]),       # sum / (B T) = 8
    }
    for name, (val, grad) in expected.items():
        lp = torch.zeros(2, 4, requires_grad=True)
        loss, _ = get_objective(name)(lp, None, adv, mask)
        loss.backward()
        assert loss.item() == pytest.approx(val), name
        torch.testing.assert_close(lp.grad, torch.tensor(grad), msg=name)
    lp = torch.zeros(2, 4, requires_grad=True)  # Dr. GRPO with a constant generation budget of 10 tokens
    loss, _ = get_objective("dr_grpo", loss_norm_constant=10.0)(lp, None, adv, mask)
    assert loss.item() == pytest.approx(-5 / 20)


def test_hand_gspo_sequence_ratio():
    """Token log-ratios 0.1 and 0.3: s = exp(0.2) = 1.2214 shared by both tokens."""
    s = math.exp(0.2)
    lp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    old = lp.detach() - torch.tensor([[0.1, 0.3]])
    loss, m = get_objective("gspo", eps_high=0.1)(lp, old, torch.tensor([1.0]), None)  # s > 1.1: clipped
    loss.backward()
    assert loss.item() == pytest.approx(-1.1) and lp.grad.abs().sum() == 0 and m["clip_frac_high"] == 1.0
    lp.grad = None
    loss, _ = get_objective("gspo", eps_high=0.1)(lp, old, torch.tensor([-1.0]), None)  # A < 0: -A s, unclipped
    loss.backward()
    assert loss.item() == pytest.approx(s)
    torch.testing.assert_close(lp.grad, torch.tensor([[s / 2, s / 2]]))  # d s_t / d lp_t = s, mean over 2 tokens


def test_hand_cispo_sapo_maspo():
    loss, grad, _ = one_token("cispo", 1.0, 2.0, eps_high=0.5)  # weight e -> 1.5, detached: -1.5 A lp
    assert grad == pytest.approx(-3.0) and loss == pytest.approx(3.0)
    r = math.exp(0.5)
    sig = 1 / (1 + math.exp(-(r - 1)))
    loss, grad, _ = one_token("sapo", 0.5, 1.0)  # tau_pos = 1: -4 sigmoid(r - 1), slope 4 sig (1 - sig) r
    assert loss == pytest.approx(-4 * sig) and grad == pytest.approx(-4 * sig * (1 - sig) * r)
    # MASPO: r = 1.5, log p_old = -0.1, A = 1: sigma = e^{0.03} * 1.03, w = exp(-0.25 / (2 sigma^2)) = 0.89497
    w = math.exp(-0.25 / (2 * (math.exp(0.03) * 1.03) ** 2))
    loss, grad, m = one_token("maspo", math.log(1.5), 1.0, lp0=math.log(1.5) - 0.1)
    assert w == pytest.approx(0.89497, abs=1e-5)
    assert loss == pytest.approx(-w * 1.5) and grad == pytest.approx(-w * 1.5) and m["gate_mean"] == pytest.approx(w)


def test_hand_hispo_masks():
    """seq 0 kept; seq 1 mismatch e^{0.5} on every token (sequence dropped); seq 2 tokens e^{±0.6}: the sequence
    mean passes, the token with |e^{0.6} - 1| = 0.82 > 0.5 is dropped."""
    lp = torch.zeros(3, 2, requires_grad=True)
    rollout = torch.tensor([[0.0, 0.0], [-0.5, -0.5], [-0.6, 0.6]])
    loss, m = get_objective("hispo", delta_seq=0.1, delta_tok=0.5)(lp, torch.zeros(3, 2), torch.ones(3, 2), None,
                                                                  rollout_log_prob=rollout)
    loss.backward()
    assert m["masked_frac"] == pytest.approx(0.5)
    torch.testing.assert_close(lp.grad, -torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 1.0]]) / 6)


def test_hand_lcft_tis():
    """One sequence, T = 4 (last token padding), T_max = 8, eps 0.2 / 0.28 / 3, C = 2.
    t0: A = +1, r = e^{0.5} > 1.28 -> -1.28; pi_train / pi_infer = 3 truncated to C = 2 -> -2.56 (no gradient)
    t1: A = -1, r = e^2: min(rA, clip(r)A) = -e^2, dual clip max(-e^2, -3) = -3 -> loss +3; weight 0.5 -> 1.5
    t2: A = -1, r = 1, weight 1 -> +1, gradient -A r = 1
    loss = (-2.56 + 1.5 + 1) / (1 * 8)."""
    lp = torch.tensor([[-1.0, -1.0, -1.0, 0.0]], requires_grad=True)
    old = torch.tensor([[-1.5, -3.0, -1.0, 0.0]])
    rollout = old - torch.log(torch.tensor([[3.0, 0.5, 1.0, 1.0]]))
    adv = torch.tensor([[1.0, -1.0, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1, 1, 0]])
    loss, m = get_objective("lcft_tis", t_max=8.0)(lp, old, adv, mask, rollout_log_prob=rollout)
    loss.backward()
    assert loss.item() == pytest.approx((-2.56 + 1.5 + 1) / 8)
    torch.testing.assert_close(lp.grad, torch.tensor([[0.0, 0.0, 1 / 8, 0.0]]))
    assert m["clip_frac_high"] == pytest.approx(1 / 3)


def test_hand_aopd_positive_tokens_get_clipped_pg_nonpositive_get_kl():
    """3 tokens, V = 3.  t0: Â = 0.5 > 0, r = 1 -> PG -Â r (gradient -Â / 3 on lp); t1: Â = 0.5, r = e -> clipped at
    1.2 (no gradient); t2: Â = -0.3 <= 0 -> KL(uniform || [.5, .25, .25]) = log(1/3) - (log .5 + 2 log .25) / 3,
    no PG gradient on its log-prob.  Token-mean over the 3 tokens."""
    lp = torch.tensor([[-1.0, -1.0, -1.0]], requires_grad=True)
    old = torch.tensor([[-1.0, -2.0, -1.0]])
    teacher_lp = old + torch.tensor([[0.5, 0.5, -0.3]])
    student_logits = torch.zeros(1, 3, 3, requires_grad=True)
    teacher_logits = torch.log(torch.tensor([0.5, 0.25, 0.25])).expand(1, 3, 3)
    kl = math.log(1 / 3) - (math.log(0.5) + 2 * math.log(0.25)) / 3
    loss, m = get_objective("aopd")(lp, old, None, None, teacher_log_prob=teacher_lp, teacher_logits=teacher_logits,
                                    student_logits=student_logits)
    loss.backward()
    assert kl == pytest.approx(0.0566, abs=1e-4)
    assert loss.item() == pytest.approx((-0.5 - 0.5 * 1.2 + kl) / 3)
    torch.testing.assert_close(lp.grad, torch.tensor([[-0.5 / 3, 0.0, 0.0]]))
    assert student_logits.grad[0, :2].abs().sum() == 0 and student_logits.grad[0, 2].abs().sum() > 0
    assert m["pos_frac"] == pytest.approx(2 / 3) and m["local_kl_mean"] == pytest.approx(kl, rel=1e-5)
    # top-k: the KL over the teacher's top-2 ids, both renormalized: teacher [.5, .25] -> [2/3, 1/3], student 1/2 each
    ids = torch.tensor([0, 1]).expand(1, 3, 2)
    loss_k, _ = get_objective("aopd")(lp, old, None, None, teacher_log_prob=teacher_lp,
                                      teacher_logits=teacher_logits.gather(-1, ids), student_logits=student_logits,
                                      teacher_topk_ids=ids)
    kl2 = 0.5 * math.log(0.5 / (2 / 3)) + 0.5 * math.log(0.5 / (1 / 3))
    assert loss_k.item() == pytest.approx((-0.5 - 0.5 * 1.2 + kl2) / 3)


def test_hand_dual_track_loss_per_sample_means():
    """B = 2, T = 3, on-policy (ratio 1), ε irrelevant.  Answer track A = (1, -1) on every token: L_a = mean over
    samples of the per-sample token mean of -A = (-1 + 1) / 2 = 0.  Schema track A_s = (2, 0.5) on the schema span
    (2 and 1 tokens): L_s = (-2 - 0.5) / 2 = -1.25.  L = L_a + 0.25 L_s (the released script's SCHEMA_WEIGHT)."""
    lp = torch.zeros(2, 3, requires_grad=True)
    span = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    loss, m = get_objective("dual_track_grpo")(lp, None, torch.tensor([1.0, -1.0]), None,
                                               schema_advantages=torch.tensor([2.0, 0.5]), schema_mask=span)
    loss.backward()
    assert m["answer/loss"] == pytest.approx(0.0) and m["schema/loss"] == pytest.approx(-1.25)
    assert loss.item() == pytest.approx(0.25 * -1.25)
    answer = torch.tensor([[-1.0, -1, -1], [1, 1, 1]]) / 6              # -A / (3 tokens * 2 samples)
    schema = torch.tensor([[-2.0 / 4, -2.0 / 4, 0], [-0.5 / 2, 0, 0]])   # -A_s / (tokens in span * 2 samples)
    torch.testing.assert_close(lp.grad, answer + 0.25 * schema)


def test_hand_dual_track_empty_span_still_counts_as_a_sample():
    """slime's sum_of_sample_mean: a sample without schema tokens adds 0 but is in the average:
    L_s = (-2 + 0) / 2 = -1 (not -2, the mean over the samples that have a span)."""
    lp = torch.zeros(2, 3, requires_grad=True)
    span = torch.tensor([[1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    loss, m = get_objective("dual_track_grpo", schema_weight=1.0)(lp, None, torch.zeros(2), None,
                                                                  schema_advantages=torch.tensor([2.0, 5.0]),
                                                                  schema_mask=span)
    assert loss.item() == pytest.approx(-1.0)
    loss.backward()
    torch.testing.assert_close(lp.grad, torch.tensor([[-0.5, -0.5, 0], [0, 0, 0]]))


def _dual_batch(rewards, schema, span, groups):
    from types import SimpleNamespace

    span = torch.tensor(span, dtype=torch.bool)
    return SimpleNamespace(rewards=torch.tensor(rewards), components={"schema": torch.tensor(schema)},
                           spans={"schema": span}, mask=torch.ones_like(span), group_index=torch.tensor(groups))


def test_hand_dual_track_public_advantages():
    """Group of 4 with answer rewards (1.1, 0.3, 0, 1.0): mean 0.6, population std sqrt(0.86 / 4) = 0.4636809;
    schema rewards (1, 0, 0, 0): mean 0.25, std sqrt(0.1875) = 0.4330127."""
    b = _dual_batch([1.1, 0.3, 0.0, 1.0], [1.0, 0.0, 0.0, float("nan")], [[1, 0]] * 4, [0, 0, 0, 0])
    out = get_objective("dual_track_grpo").batch_inputs(b, None)
    sd = 0.4636809
    torch.testing.assert_close(out["advantages"], torch.tensor([0.5, -0.3, -0.6, 0.4]) / (sd + 1e-6))
    torch.testing.assert_close(out["schema_advantages"], torch.tensor([0.75, -0.25, -0.25, -0.25]) / (0.4330127 + 1e-6))
    assert out["schema_mask"].tolist() == [[True, False]] * 4


def test_hand_dual_track_advantage_clamp_and_singletons():
    """200 samples, one reward 1: mean 0.005, std sqrt(0.005 * 0.995) = 0.0705337 -> A = 0.995 / 0.0705337 = 14.1,
    clamped to 10; the others -0.005 / 0.0705337 = -0.0709.  A group of one sample gets 0."""
    r = [1.0] + [0.0] * 199 + [0.7]
    b = _dual_batch(r, [0.0] * 201, [[1]] * 201, [0] * 200 + [1])
    adv = get_objective("dual_track_grpo").batch_inputs(b, None)["advantages"]
    assert adv[0].item() == pytest.approx(10.0)
    assert adv[1].item() == pytest.approx(-0.005 / 0.0705337, rel=1e-4)
    assert adv[200].item() == 0.0


def test_hand_dual_track_other_variants():
    """Two groups of 2, answer rewards (1, 0 | 0, 1) -> A_a = ±0.5 / (0.5 + 1e-6); schema rewards (1, 0 | 0, 0) ->
    A_s = (±1 | 0, 0) scaled the same way; span = the first token.  weighted_advantage: A_a + 0.25 A_s on the span;
    reward_weighted: A_a (1 + 0.25 r_s) on the span."""
    b = _dual_batch([1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0], [[1, 0]] * 4, [0, 0, 1, 1])
    u = 0.5 / (0.5 + 1e-6)
    wa = get_objective("dual_track_grpo", variant="weighted_advantage").batch_inputs(b, None)
    torch.testing.assert_close(wa["advantages"], torch.tensor([[u + 0.25 * u, u], [-u - 0.25 * u, -u],
                                                               [-u, -u], [u, u]]))
    rw = get_objective("dual_track_grpo", variant="reward_weighted").batch_inputs(b, None)
    torch.testing.assert_close(rw["advantages"], torch.tensor([[1.25 * u, u], [-u, -u], [-u, -u], [u, u]]))
    assert set(wa) == set(rw) == {"advantages"}
    with pytest.raises(ValueError, match="inside `advantages`"):
        get_objective("dual_track_grpo", variant="reward_weighted")(torch.zeros(1, 2), None, torch.ones(1), None,
                                                                    schema_mask=torch.ones(1, 2))


def test_dual_track_needs_its_inputs():
    with pytest.raises(ValueError, match="schema_advantages"):
        get_objective("dual_track_grpo")(torch.zeros(1, 2), None, torch.ones(1), None)
    b = _dual_batch([1.0, 0.0], [1.0, 0.0], [[1], [1]], [0, 0])
    b.spans = {}  # no sample of the batch has the span: an empty schema track
    assert not get_objective("dual_track_grpo").batch_inputs(b, None)["schema_mask"].any()
    b.components = {}
    with pytest.raises(ValueError, match="component 'schema'"):
        get_objective("dual_track_grpo").batch_inputs(b, None)


# ------------------------------------------------------------------------------------------------- self-verify

def _groups():
    questions = ["q0", "q1", "q2", "q3", "q4"]
    responses = [["a", "b", "c"], ["d", "e"], ["f", "g"], ["h", "i"], ["j", "k"]]
    correct = [[True, False, True], [True, True], [False, False], [False, True], [True, True]]
    return questions, responses, correct


def test_self_verify_examples_rules():
    q, r, c = _groups()
    ex = O.build_verification_examples(q, r, c, seed=0, balance=False)
    by_group = {}
    for e in ex:
        by_group.setdefault(e.group, []).append(e)
    assert sorted(by_group) == [0, 1, 3, 4]                                   # all-wrong group 2 skipped
    for g in (0, 3):                                                          # mixed: one Yes and one No
        assert sorted(e.label for e in by_group[g]) == ["No", "Yes"]
        for e in by_group[g]:
            assert c[g][r[g].index(e.response)] == (e.label == "Yes")
    for g in (1, 4):                                                          # all-correct: one Yes
        assert [e.label for e in by_group[g]] == ["Yes"]
    assert all(e.question in e.prompt and e.response in e.prompt for e in ex)


def test_self_verify_balance_is_50_50_and_seeded():
    # the old downsampling rule (an option since issue 16; the released fill-with-replacement default is tested in
    # tests/rl/test_self_verify_released.py)
    q, r, c = _groups()
    ex = O.build_verification_examples(q, r, c, seed=3, balance="downsample")
    labels = [e.label for e in ex]
    assert labels.count("Yes") == labels.count("No") == 2                      # 4 Yes, 2 No -> 2 + 2
    assert ex == O.build_verification_examples(q, r, c, seed=3, balance="downsample")  # deterministic for a seed
    many = [tuple((e.group, e.label) for e in O.build_verification_examples(q, r, c, seed=s, balance="downsample"))
            for s in range(20)]
    assert len(set(many)) > 1                                                   # the seed matters
    only_correct = O.build_verification_examples(["x"], [["a", "b"]], [[True, True]], seed=0, balance="downsample")
    assert only_correct == []                                                  # no "No" at all -> nothing balanced


def test_self_verify_reward_and_schedule():
    # the old lenient 0/1 reward and the old replacing schedule (options since issue 16, whose released defaults --
    # strict boxed match x min(pass_rate, 0.5), an extra update -- are tested in tests/rl/test_self_verify_released.py)
    old = dict(strict_boxed=False, pass_rate_cap=None)
    assert O.verification_reward("<think>no idea... yes?</think> The answer is \\boxed{No}.", "No", **old) == 1.0
    assert O.verification_reward("Yes, it is correct.", "No", **old) == 0.0
    assert O.verification_reward("I cannot tell", "Yes", **old) == 0.0
    assert O.parse_verdict("No wait... actually YES") == "Yes"
    sched = O.SelfVerifySchedule(mode="replace")
    kinds = [sched.kind(s) for s in range(12)]
    assert [i for i, k in enumerate(kinds) if k == "verification"] == [5, 11]  # one after every 5 generation steps
    assert [s for s in range(9) if O.SelfVerifySchedule(every=2, mode="replace").is_verification_step(s)] == [2, 5, 8]
    with pytest.raises(ValueError):
        O.SelfVerifySchedule(every=0)
    obj = get_objective("self_verify", base="dapo", **old)
    assert isinstance(obj.loss_objective(), O.DAPO) and obj.reward("yes", "Yes") == 1.0


# ------------------------------------------------------------------------------------------------- bad input

def test_bad_inputs_are_clear():
    lp = torch.zeros(1, 2, requires_grad=True)
    with pytest.raises(ValueError, match="kl_beta=0.04 needs ref_log_prob"):
        get_objective("grpo", kl_beta=0.04)(lp, None, torch.ones(1), None)
    with pytest.raises(ValueError, match="needs entropy="):
        get_objective("dapo", entropy_coef=0.1)(lp, None, torch.ones(1), None)
    with pytest.raises(TypeError, match="unexpected keyword"):
        get_objective("grpo")(lp, None, torch.ones(1), None, schema_mask=torch.ones(1, 2))
    with pytest.raises(ValueError, match="rollout_log_prob"):
        get_objective("lcft_tis")(lp, None, torch.ones(1), None)
    with pytest.raises(ValueError, match="teacher_log_prob"):
        get_objective("aopd")(lp, None, None, None, teacher_logits=torch.zeros(1, 2, 3),
                              student_logits=torch.zeros(1, 2, 3))


# ------------------------------------------------------------------------------------------- issue 16: kernel inputs

def test_token_weight_and_ratio_weighted_kl_need_no_extra_pass(monkeypatch):
    """token_weight is the kernel's pg_weight and the ratio-weighted KL the kernel's kl_ratio_weighted: the fused
    path is one fused_policy_loss call (no fused_logprobs pass, no rollout-correction detour)."""
    p = make_problem(seed=4)
    calls = {"logprobs": 0, "loss": []}
    real_lp, real_loss = lckernels.fused_logprobs, lckernels.fused_policy_loss

    def lp_spy(*a, **k):
        calls["logprobs"] += 1
        return real_lp(*a, **k)

    def loss_spy(*a, **k):
        calls["loss"].append(k)
        return real_loss(*a, **k)

    monkeypatch.setattr(lckernels, "fused_logprobs", lp_spy)
    monkeypatch.setattr(lckernels, "fused_policy_loss", loss_spy)
    wts = torch.rand(B, T, generator=p["g"]) * 2
    for name in ("grpo", "gspo", "maspo"):
        obj = get_objective(name, kl_beta=0.1, kl_ratio_weighted=True)
        obj.fused(p["h"], p["w"], p["y"], p["adv"], None, p["mask"], ref_log_prob=p["ref"], token_weight=wts)
    assert calls["logprobs"] == 0 and len(calls["loss"]) == 3
    for k in calls["loss"]:
        cfg = k["config"]
        assert cfg.rollout_correction is None and k["rollout_logprobs"] is None
        assert cfg.kl_ratio_weighted and cfg.kl_beta == 0.1 and torch.equal(k["pg_weight"], wts)


def test_hand_ratio_weighted_kl_objective():
    """GRPO (k3, seq-mean-token-mean) with kl_beta 0.1 and kl_ratio_weighted, one token, A = 0:
    r = pi / pi_old = 1.5, ref - lp = 1 -> k3 = e - 2 = 0.7182818; loss = 0.1 * 1.5 * 0.7182818 = 0.1077423;
    d loss / d lp = 0.1 * 1.5 * ((1 - e) + (e - 2)) = -0.15 (the ratio's own gradient included).
    Unweighted: 0.1 * 0.7182818 = 0.0718282, d loss / d lp = 0.1 * (1 - e) = -0.1718282."""
    for weighted, want, grad in ((True, 0.1077423, -0.15), (False, 0.0718282, -0.1718282)):
        lp = torch.tensor([[-1.0]], requires_grad=True)
        obj = get_objective("grpo", kl_beta=0.1, kl_ratio_weighted=weighted)
        loss, m = obj(lp, torch.tensor([[-1.0 - math.log(1.5)]]), torch.zeros(1), None,
                      ref_log_prob=torch.tensor([[0.0]]))
        loss.backward()
        assert loss.item() == pytest.approx(want, rel=1e-5) and lp.grad.item() == pytest.approx(grad, rel=1e-5)
        assert m["kl_mean"] == pytest.approx(math.e - 2, rel=1e-5)


def test_token_weight_is_exact_beyond_the_log_ratio_clamp():
    """A token weight is applied as is (the old detour through rollout correction clamped log w to +-20):
    on-policy, A = 1, one token, w = e^25: loss = -e^25, d loss / d lp = -e^25."""
    lp = torch.zeros(1, 1, requires_grad=True)
    loss, _ = get_objective("dapo")(lp, None, torch.ones(1), None, token_weight=torch.tensor([[math.exp(25.0)]]))
    loss.backward()
    assert loss.item() == pytest.approx(-math.exp(25.0), rel=1e-5)
    assert lp.grad.item() == pytest.approx(-math.exp(25.0), rel=1e-5)
    with pytest.raises(ValueError, match="token_weight must have shape"):
        get_objective("dapo")(lp, None, torch.ones(1), None, token_weight=torch.ones(2, 1))
    with pytest.raises(ValueError, match="token_weight must be finite and >= 0"):
        get_objective("dapo")(lp, None, torch.ones(1), None, token_weight=-torch.ones(1, 1))


def test_lckernels_rl_uses_only_the_public_lckernels_api():
    """lckernels_rl imports names of ``lckernels.__all__`` (and the host integrations under lckernels.integrations),
    never the ops' internals."""
    import ast
    from pathlib import Path

    pub = set(lckernels.__all__)
    root = Path(O.__file__).resolve().parents[1]
    bad = []
    for f in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lckernels":
                if node.module == "lckernels":
                    bad += [(f.name, node.lineno, a.name) for a in node.names if a.name not in pub]
                elif not node.module.startswith("lckernels.integrations"):
                    bad.append((f.name, node.lineno, node.module))
            elif isinstance(node, ast.Import):
                bad += [(f.name, node.lineno, a.name) for a in node.names
                        if a.name.startswith("lckernels.") and not a.name.startswith("lckernels.integrations")]
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "lckernels":
                if node.attr not in pub and node.attr != "integrations":
                    bad.append((f.name, node.lineno, node.attr))
    assert not bad, bad
    for name in ("loss_agg_weights", "log_ratio", "kl_estimate"):
        assert name in pub


def test_policy_objectives_take_a_rollout_correction():
    """GRPO with TIS (``rollout_correction="token_truncate"``, C = 2), on-policy (ratio 1), one sequence of two tokens
    with advantage 1 and behaviour log-probs 1.5x and 3x below the policy's: weights min(1.5, 2) = 1.5 and
    min(3, 2) = 2, so loss = -(1.5 + 2) / 2 = -1.75 (seq-mean-token-mean); without the correction -1."""
    lp = torch.log(torch.tensor([[0.5, 0.25]]))
    mu = lp - torch.log(torch.tensor([[1.5, 3.0]]))
    adv, mask = torch.ones(1), torch.ones(1, 2, dtype=torch.bool)
    tis = get_objective("grpo", rollout_correction="token_truncate", rc_threshold=2.0)
    loss, _ = tis(lp, lp, adv, mask, rollout_log_prob=mu)
    assert float(loss) == pytest.approx(-1.75)
    plain, _ = get_objective("grpo")(lp, lp, adv, mask)
    assert float(plain) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="needs rollout_log_prob"):
        tis(lp, lp, adv, mask)
    with pytest.raises(ValueError, match="fixes rollout_correction"):
        get_objective("lcft_tis", rollout_correction="sequence_mask")
