"""Packing TrainSamples into an RLBatch (every tensor written by hand) and the fused GRPO loss on a packed batch
against log_softmax of explicitly materialized logits and the clipped surrogate written here."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from lckernels_rl.agents.trajectory import TrainSample
from lckernels_rl.objectives.grpo import GRPO
from lckernels_rl.train.batch import pack_samples

PAD = 99
NAN = float("nan")


def hand_samples():
    s0 = TrainSample(input_ids=[10, 11, 12, 13, 14, 15, 16], loss_mask=[0, 0, 1, 1, 0, 1, 0],
                     rollout_logprobs=[0.0, 0.0, -0.5, -0.6, 0.0, -0.7, 0.0],
                     token_versions=[-1, -1, 3, 3, -1, 4, -1], reward=1.0, group_id="g",
                     reward_components={"correct": 1.0}, spans={"phase": [(2, 4)]})
    s1 = TrainSample(input_ids=[20, 21, 22, 23], loss_mask=[0, 1, 0, 1], rollout_logprobs=[0.0, -1.1, 0.0, -1.2],
                     token_versions=[-1, 5, -1, 5], reward=0.0, group_id="h")
    s2 = TrainSample(input_ids=[30, 31], loss_mask=[0, 1], rollout_logprobs=[0.0, -1.3], token_versions=[-1, 6],
                     reward=0.5, group_id="g", reward_components={"correct": 0.0}, spans={"phase": [(0, 2)]})
    return [s0, s1, s2]


def eq(a, b):
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.equal(a, b), (a, b)


def test_pack_samples_by_hand():
    b = pack_samples(hand_samples(), pad_id=PAD)
    P = PAD
    eq(b.input_ids, torch.tensor([[10, 11, 12, 13, 14, 15, 16],
                                  [20, 21, 22, 23, P, P, P],
                                  [30, 31, P, P, P, P, P]]))
    eq(b.attention_mask, torch.tensor([[1, 1, 1, 1, 1, 1, 1],
                                       [1, 1, 1, 1, 0, 0, 0],
                                       [1, 1, 0, 0, 0, 0, 0]]))
    eq(b.position_ids, torch.tensor([[0, 1, 2, 3, 4, 5, 6],
                                     [0, 1, 2, 3, 3, 3, 3],
                                     [0, 1, 1, 1, 1, 1, 1]]))
    eq(b.positions, torch.tensor([[2, 3, 5], [1, 3, -1], [1, -1, -1]]))
    eq(b.gather, torch.tensor([[1, 2, 4], [0, 2, 0], [0, 0, 0]]))
    eq(b.targets, torch.tensor([[12, 13, 15], [21, 23, 0], [31, 0, 0]]))
    eq(b.mask, torch.tensor([[True, True, True], [True, True, False], [True, False, False]]))
    eq(b.rollout_logprobs, torch.tensor([[-0.5, -0.6, -0.7], [-1.1, -1.2, 0.0], [-1.3, 0.0, 0.0]]))
    eq(b.token_versions, torch.tensor([[3, 3, 4], [5, 5, -1], [6, -1, -1]]))
    eq(b.rewards, torch.tensor([1.0, 0.0, 0.5]))
    eq(b.group_index, torch.tensor([0, 1, 0]))
    assert set(b.spans) == {"phase"}
    eq(b.spans["phase"], torch.tensor([[True, True, False], [False, False, False], [True, False, False]]))
    assert set(b.components) == {"correct"}
    c = b.components["correct"]
    assert c.dtype == torch.float32 and c[0] == 1.0 and math.isnan(c[1]) and c[2] == 0.0
    assert len(b) == 3 and b.num_tokens == 6 and len(b.samples) == 3


def test_pack_samples_without_trained_tokens_and_without_groups():
    s = TrainSample(input_ids=[7, 8, 9], loss_mask=[0, 0, 0], rollout_logprobs=[0.0] * 3, token_versions=[-1] * 3)
    t = TrainSample(input_ids=[7, 8], loss_mask=[0, 1], rollout_logprobs=[0.0, -0.2], token_versions=[-1, 1])
    b = pack_samples([s, t], pad_id=0)
    eq(b.mask, torch.tensor([[False], [True]]))
    eq(b.positions, torch.tensor([[-1], [1]]))
    eq(b.gather, torch.tensor([[0], [0]]))
    eq(b.targets, torch.tensor([[0], [8]]))
    eq(b.group_index, torch.tensor([0, 1]))  # no group id: every sample its own group
    with pytest.raises(ValueError):
        pack_samples([], pad_id=0)


class FakeCausalLM:
    """``.model(...)`` returns a fixed hidden-state tensor (the policy's final hidden states)."""

    def __init__(self, hidden):
        self.hidden, self.seen = hidden, []
        self.model = self._forward

    def _forward(self, input_ids, attention_mask, position_ids, use_cache):
        self.seen.append((input_ids, attention_mask, position_ids, use_cache))
        return SimpleNamespace(last_hidden_state=self.hidden)


def hand_grpo_loss(samples, H, W, adv, old_by_sample, eps=0.2):
    """GRPO, seq-mean-token-mean, from log_softmax(H[b, p - 1] @ W.T) at each sampled position p of each sample."""
    per_seq = []
    for b, s in enumerate(samples):
        terms = []
        trained = [p for p, m in enumerate(s.loss_mask) if m]
        for j, p in enumerate(trained):
            logits = H[b, p - 1] @ W.T
            lp = torch.log_softmax(logits, dim=-1)[s.input_ids[p]]
            ratio = torch.exp(lp - old_by_sample[b][j])
            a = adv[b]
            terms.append(-torch.minimum(ratio * a, torch.clamp(ratio, 1 - eps, 1 + eps) * a))
        if terms:
            per_seq.append(torch.stack(terms).mean())
    return torch.stack(per_seq).mean()


def test_fused_grpo_on_a_packed_batch_matches_the_hand_loss():
    torch.manual_seed(0)
    samples = hand_samples()
    B, L, D, V = 3, 7, 6, 40
    H0 = torch.randn(B, L, D, dtype=torch.float32)
    W0 = torch.randn(V, D, dtype=torch.float32) * 0.7
    adv = torch.tensor([1.0, -0.7, 0.4])

    # current log-probs of the trained tokens (hand path), then old = current + offsets (ratio = exp(-offset))
    with torch.no_grad():
        cur = [[torch.log_softmax(H0[b, p - 1] @ W0.T, -1)[s.input_ids[p]].item()
                for p, m in enumerate(s.loss_mask) if m] for b, s in enumerate(samples)]
    offsets = [[0.5, -0.5, 0.05], [0.4, -0.3], [-0.6]]
    old_by_sample = [[c + o for c, o in zip(cs, os)] for cs, os in zip(cur, offsets)]
    # the clip is active (flat, no gradient) on some tokens and not on others
    clipped = []
    for b, os in enumerate(offsets):
        for o in os:
            r = math.exp(-o)
            a = float(adv[b])
            clipped.append((a > 0 and r > 1.2) or (a < 0 and r < 0.8))
    assert any(clipped) and not all(clipped)
    old = torch.tensor([[old_by_sample[0][0], old_by_sample[0][1], old_by_sample[0][2]],
                        [old_by_sample[1][0], old_by_sample[1][1], 0.0],
                        [old_by_sample[2][0], 0.0, 0.0]])

    # fused path on the packed batch
    H1, W1 = H0.clone().requires_grad_(True), W0.clone().requires_grad_(True)
    batch = pack_samples(samples, pad_id=PAD)
    fake = FakeCausalLM(H1)
    hidden = batch.hidden(fake)
    assert hidden.shape == (3, 3, D)
    assert fake.seen[0][3] is False and torch.equal(fake.seen[0][0], batch.input_ids)
    loss, metrics = GRPO().fused(hidden, W1, batch.targets, adv, old, batch.mask)
    loss.backward()

    # hand path on the raw samples
    H2, W2 = H0.clone().requires_grad_(True), W0.clone().requires_grad_(True)
    ref = hand_grpo_loss(samples, H2, W2, adv, old_by_sample)
    ref.backward()

    assert loss.item() == pytest.approx(ref.item(), abs=1e-5)
    torch.testing.assert_close(H1.grad, H2.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(W1.grad, W2.grad, atol=1e-5, rtol=1e-4)
    # rows never used (prompt/tool positions, padding) get no gradient
    used = {(0, 1), (0, 2), (0, 4), (1, 0), (1, 2), (2, 0)}
    for b in range(B):
        for t in range(L):
            if (b, t) not in used:
                assert torch.count_nonzero(H1.grad[b, t]) == 0, (b, t)
    assert metrics["valid_tokens"] == 6

    # the per-token objective on the explicitly materialized log-probs agrees too
    H3, W3 = H0.clone().requires_grad_(True), W0.clone().requires_grad_(True)
    lp = torch.zeros(3, 3)
    for b, s in enumerate(samples):
        for j, p in enumerate([p for p, m in enumerate(s.loss_mask) if m]):
            lp[b, j] = torch.log_softmax(H3[b, p - 1] @ W3.T, -1)[s.input_ids[p]]
    loss_tok, _ = GRPO()(lp, old, adv, batch.mask)
    assert loss_tok.item() == pytest.approx(ref.item(), abs=1e-5)
    loss_tok.backward()
    torch.testing.assert_close(W3.grad, W2.grad, atol=1e-5, rtol=1e-4)
