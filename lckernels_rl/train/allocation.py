"""The training prompt pool and the glue between the trainer and :mod:`lckernels_rl.budget`'s allocators.

Every allocator gets its inputs from the pool's running statistics of the current policy:

==================  ================================================================================================
allocator           inputs built here
==================  ================================================================================================
``uniform``         the number of prompts
``dapo_filter``     with dynamic sampling on (``rl.dynamic_sampling: auto`` / ``filter``, the default for this
                    allocator): nothing is degenerate (an even split) -- the step's own zero-std groups are dropped
                    and refilled by the rollout source (DAPO's recipe); ``rl.dynamic_sampling: off`` (the old
                    predictive mode): ``degenerate`` = the prompt's last group was all-0 or all-1 (unseen prompts:
                    not degenerate)
``coba``            ``success_rate``: successes / attempts (``NaN`` when unseen: CoBA's own ``unseen_p``)
``dynamo``          cumulative ``successes`` and ``counts``; ``n`` = budget / prompts, ``n_low`` = ``rl.n_min``,
                    ``n_high`` = ``rl.n_max`` (default 2 n)
``v0``              ``p_hat``: the in-context value model's prediction from the recent (prompt, reward) history
``v05_sequential``  ``v0`` as for ``v0``; ``sample_fn`` samples the rollouts on demand (they are the step's batch)
==================  ================================================================================================

``rl.allocator_args`` are passed on as extra keyword arguments (they override the ones above).

Dynamic sampling (``rl.dynamic_sampling``, :func:`dynamic_sampling_on`) is the rollout source's filter-and-refill of
the step's zero-std groups (:meth:`lckernels_rl.train.sources.EpisodeSource._dynamic`); it works with any allocator
(each round is allocated as above) and is on by default (``auto``) for ``dapo_filter`` only.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from lckernels_rl.budget import get_allocator

__all__ = ["PromptPool", "allocate_rollouts", "allocator_inputs", "dynamic_sampling_on"]

HISTORY = 512  # (prompt, reward) pairs the value model sees


class PromptPool:
    """``size`` tasks of an environment (environment seeds ``seed_offset .. seed_offset + size - 1``) with
    per-task statistics of the rewards seen so far.

    ``prompts[i]`` is the text of task ``i``'s opening messages (what the value model conditions on).
    """

    def __init__(self, make_env, size: int, *, seed_offset: int = 0):
        self.seed_offset, self.size = seed_offset, size
        env = make_env()
        self.prompts: list[str] = []
        for i in range(size):
            messages, _ = env.reset(seed=seed_offset + i)
            self.prompts.append("\n".join(m.content for m in messages))
        env.close()
        self.successes = np.zeros(size, dtype=np.float64)
        self.attempts = np.zeros(size, dtype=np.int64)
        self.last_group: dict[int, list[float]] = {}
        self.history: deque = deque(maxlen=HISTORY)

    def seed(self, i: int) -> int:
        return self.seed_offset + int(i)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.choice(self.size, size=n, replace=False)

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


def dynamic_sampling_on(rl) -> bool:
    """Whether a step drops its zero-std groups and samples again (``rl.dynamic_sampling``: ``filter``, or ``auto``
    with the ``dapo_filter`` allocator)."""
    mode = getattr(rl, "dynamic_sampling", "off")
    return mode == "filter" or (mode == "auto" and rl.allocator == "dapo_filter")


def _value_prediction(pool: PromptPool, idx: np.ndarray) -> np.ndarray:
    from lckernels_rl.value import InContextValueModel

    p = InContextValueModel().predict([pool.prompts[i] for i in idx], list(pool.history))
    return np.clip(np.asarray(p, dtype=np.float64), 1e-3, 1 - 1e-3)


def allocator_inputs(name: str, pool: PromptPool, idx: np.ndarray, budget: int, n_min: int, n_max: int | None,
                     seed: int, *, predict_degenerate: bool = True) -> tuple[tuple, dict]:
    """(positional args after ``budget``, keyword args) of allocator ``name`` for prompts ``idx`` of ``pool``;
    ``predict_degenerate=False``: ``dapo_filter`` predicts nothing from the previous step (dynamic sampling filters
    the current one)."""
    p = len(idx)
    if name == "uniform":
        return (p,), dict(n_min=n_min, n_max=n_max, seed=seed)
    if name == "dapo_filter":
        deg = np.array([predict_degenerate and len(set(pool.last_group.get(int(i), []))) == 1
                        and len(pool.last_group[int(i)]) > 1 for i in idx], dtype=bool)
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


def allocate_rollouts(rl, pool: PromptPool, prompt_idx: np.ndarray, seed: int, sample_fn):
    """Split the step's budget over ``prompt_idx`` and sample.

    Args:
        rl: the :class:`~lckernels_rl.train.config.RLConfig` (allocator, budget, bounds).
        pool: the task pool (its statistics are the allocator's inputs).
        prompt_idx: the step's tasks (pool indices).
        seed: the allocator's seed.
        sample_fn: ``sample_fn(counts) -> (items, prompt_index, rewards)``: runs ``counts[i]`` episodes of task
            ``prompt_idx[i]``; ``prompt_index[k]`` is the position in ``prompt_idx`` of item ``k``.

    Returns:
        ``(items, prompt_index, rewards [N], counts [P])``.
    """
    if rl.allocator == "v05_sequential":
        from lckernels_rl.budget import v05_sequential

        items: list = []
        index: list[int] = []
        rewards: list[float] = []

        def one_prompt(i: int, m: int) -> np.ndarray:
            counts = [0] * len(prompt_idx)
            counts[i] = m
            it, pi, rw = sample_fn(counts)
            items.extend(it)
            index.extend(pi)
            rewards.extend(float(x) for x in rw)
            return np.asarray(rw, dtype=np.float64)

        kw = dict(n_init=max(rl.n_min, 1), n_max=rl.n_max if rl.n_max is not None else 2 * rl.rollouts_per_step //
                  len(prompt_idx), seed=seed)
        kw.update(rl.allocator_args)
        res = v05_sequential(_value_prediction(pool, prompt_idx), one_prompt, budget=rl.rollouts_per_step, **kw)
        return items, index, np.asarray(rewards, dtype=np.float64), np.asarray(res.counts)

    args, kw = allocator_inputs(rl.allocator, pool, prompt_idx, rl.rollouts_per_step, rl.n_min, rl.n_max, seed,
                                predict_degenerate=not dynamic_sampling_on(rl))
    kw.update(rl.allocator_args)
    counts = np.asarray(get_allocator(rl.allocator)(rl.rollouts_per_step, *args, **kw))
    items, index, rewards = sample_fn([int(c) for c in counts])
    return items, list(index), np.asarray(rewards, dtype=np.float64), counts
