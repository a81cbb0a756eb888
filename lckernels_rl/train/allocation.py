"""The training prompt pool and the glue between the trainer and :mod:`lckernels_rl.budget`'s allocators.

Every allocator gets its inputs from the pool's running statistics of the current policy:

==================  ================================================================================================
allocator           inputs built here
==================  ================================================================================================
``uniform``         the number of prompts
``dapo_filter``     ``degenerate``: the prompt's last group was all-0 or all-1 (unseen prompts: not degenerate)
``coba``            ``success_rate``: successes / attempts (``NaN`` when unseen: CoBA's own ``unseen_p``)
``dynamo``          cumulative ``successes`` and ``counts``; ``n`` = budget / prompts, ``n_low`` = ``rl.n_min``,
                    ``n_high`` = ``rl.n_max`` (default 2 n)
``v0``              ``p_hat``: the in-context value model's prediction from the recent (prompt, reward) history
``v05_sequential``  ``v0`` as for ``v0``; ``sample_fn`` samples the rollouts on demand (they are the step's batch)
==================  ================================================================================================

``rl.allocator_args`` are passed on as extra keyword arguments (they override the ones above).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from lckernels_rl.budget import get_allocator
from lckernels_rl.rollout import Rollouts

__all__ = ["PromptPool", "allocate_rollouts", "allocator_inputs"]

HISTORY = 512  # (prompt, reward) pairs the value model sees


class PromptPool:
    """``size`` problems of ``env`` (environment seeds ``seed_offset .. seed_offset + size - 1``), tokenized, with
    per-prompt statistics of the rewards seen so far."""

    def __init__(self, env, tokenizer, size: int, *, seed_offset: int = 0):
        self.env, self.seed_offset, self.size = env, seed_offset, size
        self.prompts: list[str] = []
        self.answers: list[str] = []
        for i in range(size):
            obs, _ = env.reset(seed=seed_offset + i)
            self.prompts.append(obs)
            self.answers.append(env.demonstration())
        self.prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in self.prompts]
        self.answer_ids = [tokenizer(a, add_special_tokens=False)["input_ids"] for a in self.answers]
        self.successes = np.zeros(size, dtype=np.float64)
        self.attempts = np.zeros(size, dtype=np.int64)
        self.last_group: dict[int, list[float]] = {}
        self.history: deque = deque(maxlen=HISTORY)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.choice(self.size, size=n, replace=False)

    def reward(self, i: int, text: str) -> float:
        self.env.reset(seed=self.seed_offset + int(i))
        return float(self.env.step(text)[1])

    def update(self, prompt_idx: np.ndarray, prompt_index: list[int], rewards: np.ndarray) -> None:
        groups: dict[int, list[float]] = {}
        for pi, r in zip(prompt_index, rewards):
            groups.setdefault(int(prompt_idx[pi]), []).append(float(r))
        for i, rs in groups.items():
            self.successes[i] += sum(rs)
            self.attempts[i] += len(rs)
            self.last_group[i] = rs
            self.history.extend((self.prompts[i], r) for r in rs)

    def state_dict(self) -> dict:
        return {"successes": self.successes.copy(), "attempts": self.attempts.copy(),
                "last_group": dict(self.last_group), "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.successes = np.asarray(state["successes"], dtype=np.float64).copy()
        self.attempts = np.asarray(state["attempts"], dtype=np.int64).copy()
        self.last_group = dict(state["last_group"])
        self.history = deque(state["history"], maxlen=HISTORY)


def _value_prediction(pool: PromptPool, idx: np.ndarray) -> np.ndarray:
    from lckernels_rl.value import InContextValueModel

    p = InContextValueModel().predict([pool.prompts[i] for i in idx], list(pool.history))
    return np.clip(np.asarray(p, dtype=np.float64), 1e-3, 1 - 1e-3)


def allocator_inputs(name: str, pool: PromptPool, idx: np.ndarray, budget: int, n_min: int, n_max: int | None,
                     seed: int) -> tuple[tuple, dict]:
    """(positional args after ``budget``, keyword args) of allocator ``name`` for prompts ``idx`` of ``pool``."""
    p = len(idx)
    if name == "uniform":
        return (p,), dict(n_min=n_min, n_max=n_max, seed=seed)
    if name == "dapo_filter":
        deg = np.array([len(set(pool.last_group.get(int(i), []))) == 1 and len(pool.last_group[int(i)]) > 1
                        for i in idx])
        return (), dict(degenerate=deg, n_min=n_min, n_max=n_max, seed=seed)
    if name == "coba":
        att = pool.attempts[idx]
        rate = np.where(att > 0, pool.successes[idx] / np.maximum(att, 1), np.nan)
        return (rate,), dict(n_min=n_min, n_max=n_max, seed=seed)
    if name == "dynamo":
        n = budget // p
        return (pool.successes[idx].round().astype(np.int64), pool.attempts[idx]), \
            dict(n=n, n_low=n_min, n_high=n_max if n_max is not None else 2 * n, seed=seed)
    if name == "v0":
        return (_value_prediction(pool, idx),), dict(n_min=max(n_min, 1), n_max=n_max, seed=seed)
    raise ValueError(f"allocator {name!r} has no trainer inputs")  # v05_sequential is handled by the caller


def allocate_rollouts(trainer, prompt_idx: np.ndarray) -> tuple[Rollouts, np.ndarray, np.ndarray]:
    """Split the step's budget over ``prompt_idx``, sample, score: ``(rollouts, rewards [B], counts [P])``."""
    c = trainer.config.rl
    pool = trainer.pool
    prompts = [pool.prompt_ids[i] for i in prompt_idx]
    seed = int(trainer.rng.integers(2**31))

    def generate(counts) -> Rollouts:
        return trainer.rollout.generate(prompts, [int(x) for x in counts], max_new_tokens=c.max_new_tokens,
                                        temperature=c.temperature)

    if c.allocator == "v05_sequential":
        from lckernels_rl.budget import v05_sequential

        batch = Rollouts()
        rewards: list[float] = []

        def sample_fn(i: int, m: int) -> np.ndarray:
            counts = [0] * len(prompts)
            counts[i] = m
            r = generate(counts)
            rw = trainer._score(r, prompt_idx)
            for f in ("prompt_index", "prompt_ids", "response_ids", "logprobs", "finished"):
                getattr(batch, f).extend(getattr(r, f))
            rewards.extend(rw.tolist())
            return rw

        kw = dict(n_init=max(c.n_min, 1), n_max=c.n_max if c.n_max is not None else 2 * c.rollouts_per_step //
                  len(prompts), seed=seed)
        kw.update(c.allocator_args)
        res = v05_sequential(_value_prediction(pool, prompt_idx), sample_fn, budget=c.rollouts_per_step, **kw)
        return batch, np.asarray(rewards, dtype=np.float64), np.asarray(res.counts)

    args, kw = allocator_inputs(c.allocator, pool, prompt_idx, c.rollouts_per_step, c.n_min, c.n_max, seed)
    kw.update(c.allocator_args)
    counts = np.asarray(get_allocator(c.allocator)(c.rollouts_per_step, *args, **kw))
    rollouts = generate(counts)
    return rollouts, trainer._score(rollouts, prompt_idx), counts
