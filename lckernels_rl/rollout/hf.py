"""Rollouts with HF transformers' ``generate`` on the training model itself (the default backend)."""

from __future__ import annotations

from typing import Sequence

import torch

from .base import Rollouts, check_generate_args, left_pad

__all__ = ["HFGenerateBackend"]


class _SampleAndScore:
    """A logits processor that does the sampling itself and records each chosen token's log-prob, so
    ``model.generate`` runs in greedy mode (an argmax over a one-hot row) around it.

    Why: at a real vocabulary (V = 32000) transformers' sampler (``softmax`` + ``torch.multinomial``) was about half
    of the rollout's time on CPU, and keeping ``output_logits`` stacks a [B, steps, V] fp32 tensor only to gather B x
    steps values from it.  Here each step is one ``log_softmax`` of the [B, V] scores, and sampling is by inverse CDF:
    one uniform draw per row (torch's global RNG) against the running sum of the probabilities (``cumsum`` +
    ``searchsorted``; a zero-probability token is never chosen).  The distribution is the same categorical
    ``softmax(scores / temperature)`` (tested against the probabilities); ``greedy`` takes its argmax instead.
    ``scores`` arrive after transformers' own processors (``suppress_tokens`` for ``vocab_limit``), so the log-probs
    are those of the distribution that was sampled.
    """

    def __init__(self, temperature: float, greedy: bool):
        self.temperature, self.greedy = float(temperature), bool(greedy)
        self.logprobs: list[torch.Tensor] = []  # per step: [B] log-prob of the chosen token

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(scores.float() / self.temperature, -1)
        if self.greedy:
            idx = logp.argmax(-1, keepdim=True)
        else:
            cdf = logp.exp().cumsum(-1)
            u = torch.rand((cdf.shape[0], 1), device=cdf.device, dtype=cdf.dtype) * cdf[:, -1:]
            idx = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[-1] - 1)
        self.logprobs.append(logp.gather(-1, idx).squeeze(-1))
        return torch.full_like(scores, float("-inf")).scatter_(-1, idx, 0.0)


class HFGenerateBackend:
    """Sample with ``model.generate`` (temperature, no top-k/top-p) and return the sampled tokens with their
    log-probs ``log_softmax(logits / temperature)``.  The sampling itself is :class:`_SampleAndScore`'s (inverse-CDF
    draws inside a logits processor; ``generate`` runs in greedy mode around it).

    Uses torch's global RNG (seed it, or restore its state, for reproducible rollouts).  The model is shared with the
    trainer, so :meth:`sync_weights` has nothing to copy.

    Args:
        model: a ``*ForCausalLM``; put in eval mode while sampling, its previous mode restored after.
        eos_token_id / pad_token_id: token ids (EOS ends a response and is kept in it).
        batch_size: the most sequences per ``generate`` call (memory bound; 0 = all at once).
        greedy: decode greedily instead of sampling (evaluation; ``temperature`` then only scales the log-probs,
            and no RNG is touched).
        vocab_limit: sample only ids below it (e.g. the tokenizer's size when the lm_head is padded beyond it);
            the returned log-probs are those of that masked distribution.  Off by default: the trainer's loss is a
            softmax over every lm_head row (as vLLM samples over the model's whole ``vocab_size``), so masking here
            is a deliberate train/inference mismatch that rollout corrections (TIS, HisPO's masks) then see.
    """

    def __init__(self, model, *, eos_token_id: int, pad_token_id: int, batch_size: int = 0, greedy: bool = False,
                 vocab_limit: int | None = None):
        self.model = model
        self.greedy = bool(greedy)
        v = int(model.config.vocab_size) if hasattr(model, "config") else None
        if vocab_limit is not None and (vocab_limit < 1 or (v is not None and vocab_limit > v)):
            raise ValueError(f"HFGenerateBackend: `vocab_limit` must be in [1, vocab_size={v}]; got {vocab_limit}")
        self.vocab_limit = None if vocab_limit is None or vocab_limit == v else int(vocab_limit)
        self.eos_token_id = int(eos_token_id)
        self.pad_token_id = int(pad_token_id)
        self.batch_size = int(batch_size)

    def sync_weights(self, model) -> None:
        if model is None:
            raise TypeError("HFGenerateBackend.sync_weights: `model` must be the policy module to generate with; "
                            "got None")
        if model is not self.model:
            self.model = model

    def close(self) -> None:
        pass

    @torch.no_grad()
    def generate(self, prompt_ids: Sequence[Sequence[int]], counts: Sequence[int], *, max_new_tokens: int,
                 temperature: float = 1.0) -> Rollouts:
        counts = check_generate_args(prompt_ids, counts, max_new_tokens, temperature)
        index = [i for i, c in enumerate(counts) for _ in range(c)]
        out = Rollouts()
        if not index:
            return out
        was_training = self.model.training
        self.model.eval()
        try:
            step = self.batch_size if self.batch_size > 0 else len(index)
            for s in range(0, len(index), step):
                self._generate_chunk(prompt_ids, index[s:s + step], max_new_tokens, float(temperature), out)
        finally:
            self.model.train(was_training)
        return out

    def _generate_chunk(self, prompt_ids, index, max_new_tokens, temperature, out: Rollouts) -> None:
        device = next(self.model.parameters()).device
        prompts = [list(map(int, prompt_ids[i])) for i in index]
        ids, mask = left_pad(prompts, self.pad_token_id)
        width = ids.shape[1]
        from transformers import LogitsProcessorList

        sampler = _SampleAndScore(temperature, self.greedy)
        extra = {}
        if self.vocab_limit is not None:  # the distribution that is sampled: padded rows excluded
            extra["suppress_tokens"] = list(range(self.vocab_limit, int(self.model.config.vocab_size)))
        gen = self.model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
            logits_processor=LogitsProcessorList([sampler]), **extra,
            max_new_tokens=max_new_tokens, eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id, return_dict_in_generate=True)
        new = gen.sequences[:, width:].cpu()
        lp = torch.stack(sampler.logprobs, 1).cpu()[:, :new.shape[1]]  # [B, steps]
        for r, i in enumerate(index):
            toks = new[r].tolist()
            n = toks.index(self.eos_token_id) + 1 if self.eos_token_id in toks else len(toks)
            out.prompt_index.append(i)
            out.prompt_ids.append(prompts[r])
            out.response_ids.append(toks[:n])
            out.logprobs.append(lp[r, :n].tolist())
            out.finished.append(n > 0 and toks[n - 1] == self.eos_token_id)
