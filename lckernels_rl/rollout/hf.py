"""Rollouts with HF transformers' ``generate`` on the training model itself (the default backend)."""

from __future__ import annotations

from typing import Sequence

import torch

from .base import Rollouts, check_generate_args, left_pad

__all__ = ["HFGenerateBackend"]


class HFGenerateBackend:
    """Sample with ``model.generate`` (multinomial sampling, temperature, no top-k/top-p) and return the sampled
    tokens with their log-probs ``log_softmax(logits / temperature)``.

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
        sampling = dict(do_sample=False) if self.greedy else dict(do_sample=True, temperature=temperature, top_k=0,
                                                                   top_p=1.0)
        if self.vocab_limit is not None:
            sampling["suppress_tokens"] = list(range(self.vocab_limit, int(self.model.config.vocab_size)))
        gen = self.model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), **sampling,
            max_new_tokens=max_new_tokens, eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id, return_dict_in_generate=True, output_logits=True)
        new = gen.sequences[:, width:].cpu()
        logits = torch.stack(gen.logits, 1).float().cpu()[:, :new.shape[1]]  # [B, steps, V], raw (unprocessed)
        if self.vocab_limit is not None:  # the distribution that was sampled: padded rows excluded
            logits[..., self.vocab_limit:] = float("-inf")
        lp = torch.log_softmax(logits / temperature, -1).gather(-1, new[..., None]).squeeze(-1)
        for r, i in enumerate(index):
            toks = new[r].tolist()
            n = toks.index(self.eos_token_id) + 1 if self.eos_token_id in toks else len(toks)
            out.prompt_index.append(i)
            out.prompt_ids.append(prompts[r])
            out.response_ids.append(toks[:n])
            out.logprobs.append(lp[r, :n].tolist())
            out.finished.append(n > 0 and toks[n - 1] == self.eos_token_id)
