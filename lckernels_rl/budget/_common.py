"""Shared validation and integer-allocation helpers of the budget allocators."""

from __future__ import annotations

import heapq
from collections.abc import Callable

import numpy as np

__all__ = ["check_budget", "as_prob_array", "spread_evenly", "waterfill", "heap_greedy"]


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def check_budget(budget, num_prompts: int, n_min: int, n_max: int | None) -> None:
    """``ValueError`` unless ``n_min * P <= budget <= n_max * P`` with non-negative integers."""
    for name, v in (("budget", budget), ("n_min", n_min)):
        if not _is_int(v):
            raise ValueError(f"{name} must be an integer, got {v!r}")
        if v < 0:
            raise ValueError(f"{name} must be >= 0, got {v}")
    if n_max is not None:
        if not _is_int(n_max):
            raise ValueError(f"n_max must be an integer or None, got {n_max!r}")
        if n_max < n_min:
            raise ValueError(f"n_max ({n_max}) must be >= n_min ({n_min})")
    if num_prompts < 0:
        raise ValueError(f"number of prompts must be >= 0, got {num_prompts}")
    if budget < n_min * num_prompts:
        raise ValueError(f"infeasible budget: {budget} < n_min * P = {n_min} * {num_prompts} = {n_min * num_prompts}")
    if n_max is not None and budget > n_max * num_prompts:
        raise ValueError(f"infeasible budget: {budget} > n_max * P = {n_max} * {num_prompts} = {n_max * num_prompts}")


def as_prob_array(x, name: str, allow_nan: bool = False) -> np.ndarray:
    """1-D float64 array with values in [0, 1] (NaN allowed only when ``allow_nan``)."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D [P], got shape {a.shape}")
    finite = a[~np.isnan(a)] if allow_nan else a
    if not allow_nan and np.isnan(a).any():
        raise ValueError(f"{name} contains NaN")
    if np.isinf(a).any() or (finite < 0).any() or (finite > 1).any():
        raise ValueError(f"{name} must lie in [0, 1]")
    return a


def spread_evenly(amount: int, idx: np.ndarray, counts: np.ndarray, cap: np.ndarray, rng) -> int:
    """Add ``amount`` units as evenly as possible over ``idx`` (in place), never above ``cap``; the remainder of
    each round goes to a seeded random subset.  Returns what could not be placed."""
    idx = np.asarray(idx, dtype=np.int64)
    while amount > 0:
        room = idx[counts[idx] < cap[idx]]
        if room.size == 0:
            break
        q, r = divmod(amount, room.size)
        add = np.minimum(np.full(room.size, q), cap[room] - counts[room])
        counts[room] += add
        amount -= int(add.sum())
        if r and amount:
            room = room[counts[room] < cap[room]]
            if room.size == 0:
                break
            pick = rng.permutation(room)[: min(amount, room.size, r)]
            counts[pick] += 1
            amount -= pick.size
    return amount


def waterfill(amount: int, weights: np.ndarray, counts: np.ndarray, cap: np.ndarray, rng) -> int:
    """Add ``amount`` units in proportion to ``weights`` (in place), capped at ``cap``; capacity freed by capped
    entries is re-poured over the others (water-filling).  Integer rounding: floors, then the largest fractional
    parts (ties in seeded random order).  Entries with zero weight get nothing unless every weighted entry is
    full, then the rest is spread evenly.  Returns what could not be placed."""
    weights = np.asarray(weights, dtype=np.float64)
    tie = rng.random(weights.size)
    while amount > 0:
        active = np.flatnonzero((counts < cap) & (weights > 0))
        if active.size == 0:
            return spread_evenly(amount, np.flatnonzero(counts < cap), counts, cap, rng)
        ideal = amount * weights[active] / weights[active].sum()
        add = np.floor(ideal).astype(np.int64)
        rem = amount - int(add.sum())
        if rem > 0:
            order = np.lexsort((tie[active], -(ideal - add)))
            add[order[:rem]] += 1
        add = np.minimum(add, cap[active] - counts[active])
        counts[active] += add
        amount -= int(add.sum())
    return amount


def heap_greedy(value: Callable[[int, int], float], counts: np.ndarray, cap: np.ndarray, amount: int, rng) -> int:
    """Add ``amount`` units one at a time (in place), each to the entry with the largest marginal gain
    ``value(i, n + 1) - value(i, n)``; ties in seeded random order.  Optimal when every ``value(i, .)`` is concave
    (separable concave maximization under a sum constraint).  Returns what could not be placed."""
    tie = rng.random(counts.size)
    heap = [(-(value(i, int(counts[i]) + 1) - value(i, int(counts[i]))), tie[i], i)
            for i in range(counts.size) if counts[i] < cap[i]]
    heapq.heapify(heap)
    while amount > 0 and heap:
        _, t, i = heapq.heappop(heap)
        counts[i] += 1
        amount -= 1
        n = int(counts[i])
        if n < cap[i]:
            heapq.heappush(heap, (-(value(i, n + 1) - value(i, n)), t, i))
    return amount
