"""Token-level generation engines for the agent loop: token ids in, token ids + log-probs out.

An :class:`Engine` takes a batch of :class:`GenerationRequest` s -- one per live episode, each with its own exact token
prefix and its own new-token budget -- and returns one :class:`Generation` per request: the sampled ids exactly as
sampled (never decoded and re-encoded), the engine's log-prob of each, why it stopped (``"stop"``: a stop token was
sampled and is included; ``"length"``: the budget ran out) and the policy version that sampled it.

* :class:`BackendEngine` wraps a :class:`~lckernels_rl.rollout.base.RolloutBackend` (HF ``generate`` -- the default
  -- or vLLM; both already take token-id prompts), batching every request of a round in one call.
* :class:`ScriptedEngine` replays given token ids: deterministic tests and supervised demonstrations through the
  same loop.

``version`` is the policy version; :meth:`Engine.sync_weights` loads new weights and bumps it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Sequence

__all__ = ["GenerationRequest", "Generation", "Engine", "BackendEngine", "ScriptedEngine", "FINISH_REASONS"]

FINISH_REASONS = ("stop", "length")


def _cut(ids: Sequence[int], budget: int, stop_ids: set) -> tuple[int, str]:
    """How many of ``ids`` a turn keeps and why it ends: through the first stop id within ``budget`` (``"stop"``),
    else the first ``budget`` ids (``"length"``)."""
    for k, t in enumerate(ids[:budget]):
        if t in stop_ids:
            return k + 1, "stop"
    return min(len(ids), budget), "length"


@dataclass
class GenerationRequest:
    """Sample one continuation of ``prompt_ids`` with at most ``max_new_tokens`` tokens.

    ``key`` identifies who asks (the loop passes ``(episode index, turn)``) and ``messages`` is the conversation so
    far; engines that replay scripts use them, sampling engines ignore them.
    """

    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float = 1.0
    key: Any = None
    messages: Any = None  # the conversation so far (read-only; scripted engines may use it)

    def __post_init__(self):
        if not self.prompt_ids:
            raise ValueError("GenerationRequest: `prompt_ids` is empty")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or \
                self.max_new_tokens < 1:
            raise ValueError(f"GenerationRequest: `max_new_tokens` must be a positive int; got "
                             f"{self.max_new_tokens!r}")
        if not self.temperature > 0:
            raise ValueError(f"GenerationRequest: `temperature` must be > 0; got {self.temperature!r}")


@dataclass
class Generation:
    ids: list[int]
    logprobs: list[float]
    finish_reason: str
    version: int
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if len(self.ids) != len(self.logprobs):
            raise ValueError(f"Generation: {len(self.ids)} ids but {len(self.logprobs)} log-probs")
        if self.finish_reason not in FINISH_REASONS:
            raise ValueError(f"Generation: unknown finish_reason {self.finish_reason!r}; valid: {FINISH_REASONS}")


class Engine(Protocol):
    version: int

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]: ...

    def sync_weights(self, model) -> None: ...

    def close(self) -> None: ...


class BackendEngine:
    """An :class:`Engine` over a rollout backend (``generate(prompt_ids, counts, max_new_tokens, temperature)``).

    One backend call per distinct temperature in a round (usually one), with the round's largest budget; a
    continuation longer than its own request's budget is cut there (sampling is autoregressive, so a cut prefix has
    exactly the distribution and log-probs of a shorter generation) and reported as ``"length"``.

    Args:
        backend: an :class:`~lckernels_rl.rollout.HFGenerateBackend` or a vLLM backend.
        stop_token_ids: ids that end a turn when sampled (the backend's EOS must be one of them).
        version: the initial policy version.
    """

    def __init__(self, backend, *, stop_token_ids: Sequence[int], version: int = 0):
        if not stop_token_ids:
            raise ValueError("BackendEngine: `stop_token_ids` is empty")
        self.backend = backend
        self.stop_token_ids = set(int(t) for t in stop_token_ids)
        self.version = int(version)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        out: list[Optional[Generation]] = [None] * len(requests)
        by_temp: dict[float, list[int]] = {}
        for i, r in enumerate(requests):
            by_temp.setdefault(float(r.temperature), []).append(i)
        for temp, idx in by_temp.items():
            budget = max(requests[i].max_new_tokens for i in idx)
            res = self.backend.generate([requests[i].prompt_ids for i in idx], [1] * len(idx),
                                        max_new_tokens=budget, temperature=temp)
            for j, i in enumerate(idx):
                out[i] = self._finish(res.response_ids[j], res.logprobs[j], requests[i].max_new_tokens)
        return out  # type: ignore[return-value]

    def _finish(self, ids: list[int], lps: list[float], budget: int) -> Generation:
        n, finish = _cut(ids, budget, self.stop_token_ids)
        return Generation(list(ids[:n]), list(lps[:n]), finish, self.version)

    def sync_weights(self, model) -> None:
        self.backend.sync_weights(model)
        self.version += 1

    def close(self) -> None:
        self.backend.close()


class ScriptedEngine:
    """Replays scripted turns: ``script(request) -> list[int]`` (token ids) or a list of id lists consumed in order.

    A scripted turn longer than the request's budget is cut (``"length"``); one ending in a stop token is
    ``"stop"``, else ``"length"``.  Log-probs are ``logprob(request, ids)`` when given, else 0.0 per token.
    ``calls`` records every request (for tests).
    """

    def __init__(self, script: Callable[[GenerationRequest], Sequence[int]] | Sequence[Sequence[int]], *,
                 stop_token_ids: Sequence[int], logprob: Optional[Callable[[GenerationRequest, list[int]],
                                                                            list[float]]] = None,
                 version: int = 0):
        self._queue = None if callable(script) else [list(map(int, s)) for s in script]
        self._fn = script if callable(script) else None
        self.stop_token_ids = set(int(t) for t in stop_token_ids)
        self.logprob = logprob
        self.version = int(version)
        self.calls: list[GenerationRequest] = []

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        out = []
        for r in requests:
            self.calls.append(r)
            if self._fn is not None:
                ids = [int(t) for t in self._fn(r)]
            else:
                if not self._queue:
                    raise RuntimeError("ScriptedEngine: the script has no turns left")
                ids = self._queue.pop(0)
            n, finish = _cut(ids, r.max_new_tokens, self.stop_token_ids)
            ids = ids[:n]
            lps = list(self.logprob(r, ids)) if self.logprob is not None else [0.0] * len(ids)
            out.append(Generation(ids, lps, finish, self.version))
        return out

    def sync_weights(self, model) -> None:
        self.version += 1

    def close(self) -> None:
        pass
