"""An in-context value model: predict a policy's success rate on new prompts from its (instruction, score) history.

Paper: Zhang et al. 2026, *V0: A Generalist Value Model for Any Policy at State Zero* (arXiv 2602.03584).  V0 reads
the policy's capability from a history of instruction-performance pairs given as context (no parameter update as
the policy changes) and predicts the success rate of an unseen prompt before any rollout.  Their model (a semantic
encoder, a residual query adapter and TabPFN-style in-context inference) needs weights we do not ship; this module
is the **download-free stand-in** with the same interface ``predict(prompts, history) -> p_hat``.  Source status:
interface from the abstract; the estimator is **ours**:

* features: hashed character n-grams (3-5, over the lower-cased text padded with spaces) and word uni/bi-grams,
  counted into ``2**12`` buckets with a stable hash (``zlib.crc32``, not Python's salted ``hash``), L2-normalized;
* kernel between a prompt and a history instruction, from the cosine of their features: ``w = max(cos, 0)^power``
  (``kernel="power"``, ``power = 2``: identical text -> 1, a paraphrase sharing a third of its n-grams (cos ~0.4)
  -> ~0.15, unrelated text (cos < 0.05) -> < 0.003) or ``w = exp((cos - 1) / bandwidth)`` (``kernel="exp"``);
  optionally only the ``top_k`` nearest.  ``w`` counts as a fraction of an observation, so many weakly related
  items add up to a pull toward the overall rate;
* kernel-weighted Beta posterior over the history's scores ``s_j in [0, 1]``::

      alpha = m * mu0 + sum_j w_j s_j,   beta = m * (1 - mu0) + sum_j w_j (1 - s_j),   p_hat = alpha / (alpha + beta)
      mu0   = (sum_j s_j + 1) / (N + 2)         (the policy's overall smoothed success rate; prior strength m = 1)

  so a prompt like nothing in the history falls back to the policy's overall rate, and an empty history gives 0.5.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from typing import Protocol

import numpy as np

__all__ = ["ValueModel", "hashed_features", "InContextValueModel"]

History = Sequence[tuple[str, float]]


class ValueModel(Protocol):
    """Anything with ``predict(prompts, history) -> [P]`` success probabilities in [0, 1]."""

    def predict(self, prompts: Sequence[str], history: History) -> np.ndarray: ...


_WORD = re.compile(r"\w+", re.UNICODE)


def hashed_features(texts: Sequence[str], *, n_features: int = 4096, char_ngrams: tuple[int, int] = (3, 5),
                    word_ngrams: tuple[int, int] = (1, 2)) -> np.ndarray:
    """``[N, n_features]`` L2-normalized hashed n-gram counts (all-zero rows stay zero)."""
    if isinstance(texts, str):
        raise ValueError("texts must be a sequence of strings, not a string")
    out = np.zeros((len(texts), n_features), dtype=np.float64)
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"texts[{row}] must be a string, got {type(text).__name__}")
        t = " " + " ".join(text.lower().split()) + " "
        grams = [f"c:{t[i:i + n]}" for n in range(char_ngrams[0], char_ngrams[1] + 1)
                 for i in range(max(len(t) - n + 1, 0))]
        words = _WORD.findall(text.lower())
        grams += ["w:" + " ".join(words[i:i + n]) for n in range(word_ngrams[0], word_ngrams[1] + 1)
                  for i in range(max(len(words) - n + 1, 0))]
        for g in grams:
            out[row, zlib.crc32(g.encode("utf-8")) % n_features] += 1.0
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return np.divide(out, norm, out=np.zeros_like(out), where=norm > 0)


class InContextValueModel:
    """Kernel-weighted Beta posterior over the current policy's (instruction, score) history.

    Example:
        >>> vm = InContextValueModel()
        >>> history = [("add 2 and 3", 1.0), ("add 5 and 7", 1.0), ("prove the Riemann hypothesis", 0.0)]
        >>> p = vm.predict(["add 4 and 9", "prove the Riemann hypothesis"], history)
        >>> bool(p[0] > 0.5 > p[1])
        True
    """

    def __init__(self, *, kernel: str = "power", power: float = 2.0, bandwidth: float = 0.1,
                 prior_strength: float = 1.0, top_k: int | None = None, n_features: int = 4096,
                 char_ngrams: tuple[int, int] = (3, 5), word_ngrams: tuple[int, int] = (1, 2)):
        if kernel not in ("power", "exp"):
            raise ValueError(f"kernel must be 'power' or 'exp', got {kernel!r}")
        if power <= 0 or bandwidth <= 0 or prior_strength <= 0:
            raise ValueError("power, bandwidth and prior_strength must be > 0")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
        self.kernel_name, self.power, self.bandwidth = kernel, power, bandwidth
        self.prior_strength, self.top_k = prior_strength, top_k
        self.feature_kw = dict(n_features=n_features, char_ngrams=char_ngrams, word_ngrams=word_ngrams)

    def _history(self, history: History):
        instr, scores = [], []
        for j, pair in enumerate(history):
            if len(pair) != 2:
                raise ValueError(f"history[{j}] must be an (instruction, score) pair")
            instr.append(pair[0])
            scores.append(float(pair[1]))
        s = np.asarray(scores, dtype=np.float64)
        if np.isnan(s).any() or (s < 0).any() or (s > 1).any():
            raise ValueError("history scores must lie in [0, 1]")
        return instr, s

    def kernel(self, prompts: Sequence[str], instructions: Sequence[str]) -> np.ndarray:
        """``[P, N]`` kernel weights (module docstring), top-k truncated if set."""
        fp = hashed_features(prompts, **self.feature_kw)
        fh = hashed_features(instructions, **self.feature_kw)
        cos = np.clip(fp @ fh.T, 0.0, 1.0)
        w = cos ** self.power if self.kernel_name == "power" else np.exp((cos - 1.0) / self.bandwidth)
        if self.top_k is not None and w.shape[1] > self.top_k:
            drop = np.argsort(-w, axis=1, kind="stable")[:, self.top_k:]
            np.put_along_axis(w, drop, 0.0, axis=1)
        return w

    def predict_beta(self, prompts: Sequence[str], history: History) -> tuple[np.ndarray, np.ndarray]:
        """Posterior ``(alpha, beta)``, each ``[P]``."""
        instr, s = self._history(history)
        mu0 = (s.sum() + 1.0) / (s.size + 2.0)
        a = np.full(len(prompts), self.prior_strength * mu0)
        b = np.full(len(prompts), self.prior_strength * (1.0 - mu0))
        if s.size and len(prompts):
            w = self.kernel(prompts, instr)
            a = a + w @ s
            b = b + w @ (1.0 - s)
        elif len(prompts):
            hashed_features(prompts, **self.feature_kw)     # validate the prompts
        return a, b

    def predict(self, prompts: Sequence[str], history: History) -> np.ndarray:
        """``[P]`` predicted success rates (posterior means)."""
        a, b = self.predict_beta(prompts, history)
        return a / (a + b)
