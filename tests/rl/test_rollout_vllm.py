"""The vLLM rollout backend against a real vLLM engine (CPU).

Skipped unless vLLM is installed (``pip install lckernels[vllm]``; ``make test`` does not install it).  One engine
serves the whole module (it starts in a few seconds): a tiny dense Qwen3 (head_dim 64, which vLLM's CPU attention
accepts) with a character tokenizer.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import sys

import pytest
import torch

vllm = pytest.importorskip("vllm")

from lckernels_rl.models import build_char_tokenizer, build_policy  # noqa: E402
from lckernels_rl.rollout import Rollouts, make_backend  # noqa: E402
from lckernels_rl.rollout.vllm import VLLMBackend  # noqa: E402

ALPHABET = "abcdefghijklmnop"
EOS = 2
PROMPTS = [[1, 5, 6, 7], [1, 9], [1, 12, 4, 8, 10]]
# vLLM's prefix cache keeps full KV blocks only: the module's engine uses 32-token blocks (the CPU default is 128;
# its attention needs a multiple of 32) so that this prompt's first block is cached, and a stale cache after
# `sync_weights` would show.
BLOCK_SIZE = 32
LONG_PROMPT = [1] + [4 + i % 16 for i in range(39)]

# Both sides run in fp32; the engine's log-probs differ from the HF forward only by summation order (vLLM fuses
# q/k/v and gate/up into single GEMMs and has its own CPU attention and RMSNorm kernels): ~1e-6 observed.  1e-4
# leaves two orders of margin and is still far below what a wrong distribution would give (the temperature missing
# is off by ~0.1 and more, see test_logprobs_are_tempered).
FP32_ATOL = 1e-4
# bf16 engine vs fp32 trainer: bf16's 8-bit mantissa (relative error 2^-9 per rounding) through two layers and the
# 20-way softmax: ~1e-2 observed.
BF16_ATOL = 0.1


@pytest.fixture
def nan_fill_empty():
    """Overrides the conftest fixture that poisons every ``torch.empty``: vLLM allocates its per-step buffers with
    ``torch.empty`` (thousands per ``generate``), and filling each with NaN doubles this module's time.  (The module
    passes with the poisoning on as well.)"""
    yield


@pytest.fixture(scope="module", autouse=True)
def _eager_vllm_helpers():
    """vLLM ``torch.compile``s (inductor) a tiny sampler helper even with ``enforce_eager`` -- the rank of each
    sampled token among the logits, which the backend does not use.  On a 2-core CPU that costs ~5 s per
    (re)compilation and would dominate this module; eager gives the same results.  (The backend keeps vLLM's
    default: the (re)compilations are paid in the first few calls of a process.)"""
    with torch.compiler.set_stance("force_eager"):
        yield


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer(ALPHABET)


@pytest.fixture(scope="module")
def policy(tokenizer):
    return build_policy("qwen3", vocab_size=len(tokenizer), seed=0).eval()


@pytest.fixture(scope="module")
def backend(policy, tokenizer):
    be = make_backend("vllm", policy, tokenizer, seed=0, block_size=BLOCK_SIZE)  # engine kwargs pass through
    yield be
    be.close()


def hf_logprobs(model, prompt: list[int], response: list[int], temperature: float) -> torch.Tensor:
    """The trainer-side recomputation: log_softmax(logits / T) of the response tokens, by the HF forward."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1:-1].float()
    return torch.log_softmax(logits / temperature, -1).gather(-1, torch.tensor(response)[:, None])[:, 0]


def max_logprob_error(model, ro: Rollouts, temperature: float) -> float:
    return max((hf_logprobs(model, p, r, temperature) - torch.tensor(lp)).abs().max().item()
               for p, r, lp in zip(ro.prompt_ids, ro.response_ids, ro.logprobs))


def test_generate_is_well_formed(backend, tokenizer):
    counts = [5, 0, 11]
    ro = backend.generate(PROMPTS, counts, max_new_tokens=12, temperature=0.9)
    assert isinstance(ro, Rollouts) and len(ro) == 16
    assert ro.prompt_index == [0] * 5 + [2] * 11
    assert ro.prompt_ids == [PROMPTS[i] for i in ro.prompt_index]
    assert len(ro.logprobs) == len(ro.finished) == len(ro.response_ids) == 16
    for resp, lps, fin in zip(ro.response_ids, ro.logprobs, ro.finished):
        assert 1 <= len(resp) <= 12 and len(lps) == len(resp)
        assert all(0 <= t < len(tokenizer) for t in resp)
        assert all(math.isfinite(x) and x <= 0 for x in lps)
        assert EOS not in resp[:-1]  # EOS ends a response ...
        assert fin == (resp[-1] == EOS)  # ... and is kept in it
        if not fin:
            assert len(resp) == 12  # cut at max_new_tokens
    # a random 20-token policy emits EOS with p ~ 1/20 per token: some responses finish, some are cut
    assert any(ro.finished) and not all(ro.finished)
    assert ro.num_response_tokens() == sum(len(r) for r in ro.response_ids)


def test_zero_counts_give_empty_rollouts(backend):
    ro = backend.generate(PROMPTS, [0, 0, 0], max_new_tokens=4)
    assert len(ro) == 0 and ro.prompt_index == [] and ro.logprobs == []


@pytest.mark.parametrize("temperature", [1.0, 0.6], ids=["T=1", "T=0.6"])
def test_logprobs_match_hf_forward(backend, policy, temperature):
    ro = backend.generate(PROMPTS, [4, 4, 4], max_new_tokens=10, temperature=temperature)
    assert max_logprob_error(policy, ro, temperature) < FP32_ATOL


def test_logprobs_are_tempered(backend, policy):
    """The engine returns log_softmax(logits / T) of the sampled token (vLLM's "processed_logprobs"), not the raw
    log_softmax(logits) (its default, "raw_logprobs")."""
    ro = backend.generate(PROMPTS, [4, 4, 4], max_new_tokens=10, temperature=0.5)
    assert max_logprob_error(policy, ro, 0.5) < FP32_ATOL
    assert max_logprob_error(policy, ro, 1.0) > 100 * FP32_ATOL


def test_reproducible_under_torch_seed(backend):
    def run(seed):
        torch.manual_seed(seed)
        return backend.generate(PROMPTS, [6, 2, 6], max_new_tokens=8)

    a, b, c = run(3), run(3), run(4)
    assert a.response_ids == b.response_ids and a.logprobs == b.logprobs
    assert a.response_ids != c.response_ids
    assert len(set(map(tuple, a.response_ids[:6]))) > 1  # the samples of one prompt differ from each other


def test_bad_input(backend, policy, tokenizer):
    gen = backend.generate
    with pytest.raises(ValueError, match="empty"):
        gen([], [], max_new_tokens=4)
    with pytest.raises(ValueError, match="one entry per prompt"):
        gen(PROMPTS, [1, 1], max_new_tokens=4)
    with pytest.raises(ValueError, match=">= 0"):
        gen(PROMPTS, [1, -1, 1], max_new_tokens=4)
    with pytest.raises(ValueError, match="at least one token"):
        gen([[1], []], [1, 1], max_new_tokens=4)
    for bad in (0, True, 2.0):
        with pytest.raises(ValueError, match="max_new_tokens"):
            gen(PROMPTS, [1, 1, 1], max_new_tokens=bad)
    with pytest.raises(ValueError, match="temperature"):
        gen(PROMPTS, [1, 1, 1], max_new_tokens=4, temperature=0.0)
    for tok in (len(tokenizer), -1):
        with pytest.raises(ValueError, match="token id outside"):
            gen([[1, tok]], [1], max_new_tokens=4)
    with pytest.raises(ValueError, match="max_model_len"):
        gen([[1] * (backend.max_model_len - 3)], [1], max_new_tokens=4)
    other = build_policy("qwen3", vocab_size=len(tokenizer) + 4, seed=0)
    with pytest.raises(ValueError, match="do not match"):
        backend.sync_weights(other)
    # rejected before any engine starts
    with pytest.raises(ValueError, match="dtype"):
        VLLMBackend(policy, tokenizer, dtype="int8")
    with pytest.raises(ValueError, match="logprobs_mode"):
        VLLMBackend(policy, tokenizer, logprobs_mode="raw_logprobs")


def _file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_sync_weights_in_memory(backend, policy):
    """Train a copy of the policy to always emit one token; the engine follows only after sync_weights, and the
    checkpoint it was started from is untouched (the update is in memory).  Syncing back to the policy then checks
    the prefix-cache reset: LONG_PROMPT's first KV block was cached under the trained weights, and the policy's
    log-probs after it come out wrong unless the cache was dropped."""
    target, vocab = 7, policy.config.vocab_size
    trained = copy.deepcopy(policy).train()
    opt = torch.optim.Adam(trained.parameters(), lr=1e-2)
    x = torch.randint(3, vocab, (16, 12))
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(trained(x).logits.reshape(-1, vocab),
                                                 torch.full((x.numel(),), target))
        opt.zero_grad()
        loss.backward()
        opt.step()
    trained.eval()

    def target_rate(ro):
        toks = [t for r in ro.response_ids for t in r]
        return sum(t == target for t in toks) / len(toks)

    ckpt = os.path.join(backend.workdir, "model.safetensors")
    digest = _file_digest(ckpt)
    version = backend.weight_version
    before = backend.generate(PROMPTS, [8, 8, 8], max_new_tokens=8)
    assert target_rate(before) < 0.3  # still the old weights (~1/20)
    prompts = PROMPTS + [LONG_PROMPT]
    try:
        backend.sync_weights(trained)
        assert backend.weight_version == version + 1
        after = backend.generate(prompts, [8, 8, 8, 8], max_new_tokens=8)
        assert target_rate(after) > 0.95
        assert max_logprob_error(trained, after, 1.0) < FP32_ATOL  # vLLM now computes with the trained weights
        assert _file_digest(ckpt) == digest  # nothing was written to disk
    finally:
        backend.sync_weights(policy)  # back to the module's policy for the other tests
    back = backend.generate(prompts, [4, 4, 4, 4], max_new_tokens=8)
    assert target_rate(back) < 0.3
    assert max_logprob_error(policy, back, 1.0) < FP32_ATOL


def test_import_error_without_vllm(policy, tokenizer, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install lckernels\[vllm\]"):
        VLLMBackend(policy, tokenizer)


# Keep last: it closes the module's engine (one vLLM engine per process at a time) before starting its own.
def test_close_then_restart_bf16(backend, policy, tokenizer, tmp_path):
    tmp = backend.workdir
    backend.close()
    backend.close()  # idempotent
    assert not os.path.exists(tmp)  # the temporary checkpoint directory is removed
    with pytest.raises(RuntimeError, match="closed"):
        backend.generate(PROMPTS, [1, 1, 1], max_new_tokens=2)

    workdir = tmp_path / "ckpt"
    with VLLMBackend(policy, tokenizer, workdir=workdir, dtype="bfloat16") as be:
        ro = be.generate(PROMPTS, [4, 4, 4], max_new_tokens=10, temperature=0.8)
        err = max_logprob_error(policy, ro, 0.8)
        assert FP32_ATOL / 100 < err < BF16_ATOL  # bf16 engine: a real, small train/inference mismatch
    assert (workdir / "config.json").exists()  # a user-given workdir is kept
