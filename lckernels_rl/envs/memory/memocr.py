"""``memocr``: MemOCR's memory layout objective, text only (MemOCR, syr-cn/MemOCR).

MemOCR's agent drafts its memory as markdown (headings and bold for what matters, "in case the rendered image can be
clearly read"), the memory is rendered to an image, and the question is answered from the image.  Training uses
three answer tasks on one drafted memory, combined in ``verl/trainer/ppo/ray_trainer.py`` (triple-turn branch) as

    reward = (R_full + w_low * R_low + w_cloze * R_cloze) / (1 + w_low + w_cloze),   w_low = 0.7, w_cloze = 0.3

(``scripts/train.sh``: ``SUBSAMPLED_QA_REWARD_WEIGHT=0.7``, ``GAP_FILL_REWARD_WEIGHT=0.3``; syr-cn/MemOCR @
61ceddfd9254e929ab411933ddcd9d4d968ab111) -- so ``/ 2`` with the released weights.  VERIFIED:

* ``R_full``: the question answered from the rendered memory (``memory_img_final_only_triple.py``
  ``TEMPLATE_FINAL_BOXED``), scored by ``verl/utils/reward_score/hotpotqa.py`` (last ``\\boxed{}``, lower-cased,
  spaces removed, exact equality; 1 or 0);
* ``R_low``: the same question from the image downsampled to ``ratio=0.25`` per side and scaled back
  (``recurrent/generation_manager.py`` ``batch_subsample_images``): small plain text becomes unreadable, large /
  bold text survives;
* ``R_cloze`` ("gap fill"): ``recurrent/impls/format_utils.py`` ``make_gap_question_from_html``: the memory's
  markdown is converted to plain text, whitespace collapsed; a random window of ``window_size=300`` characters
  (the whole text when shorter, word-aligned) is taken; up to ``num_blanks=3`` of its words that are alphanumeric and
  longer than 2 characters are blanked (``random.sample``, kept in order); the answer is the blanked words joined
  by ``", "``; it is asked against the FULL-resolution image and scored with the same exact rule (all blanks right,
  in order -> 1, else 0).

Text-only rendering (INFERRED; the paper renders with a markdown-to-image server): :func:`render_memory` keeps
words of emphasised spans (heading lines ``# ...`` and ``**bold**`` spans) first, in order, while they fit the
character budget, then fills what is left of the budget with plain words in order; the rendered memory is the kept
words in their original order.  The full budget is ``full_budget`` characters; the low budget is ``low_ratio`` x
it (``0.25`` as the released ratio; a linear resolution ratio read as a character ratio -- INFERRED).

The reader (INFERRED; in MemOCR the policy itself answers from the image): a deterministic reader, so that the
reward measures the memory layout only: a question ``"<attr> of <entity>?"`` is answered with the word that follows
the first ``<entity> <attr>`` in the rendered memory (none: no answer, 0); a cloze blank is filled iff its word
survived the full-budget rendering.  The advantage bookkeeping of the released trainer (separate GRPO advantages per
answer task, combined with the same weights on the memory turns) is not reproduced: the trainer here sees one scalar
reward per episode (the released logged reward) with the three terms as components.

Task (generated from ``seed``): a short document of ``n_facts`` facts ``"<entity> <attr> <value>"`` (one a line;
entities and values from a fixed pool of ``n_names`` two-syllable names) and a question on one of them.  The agent's single turn is its memory draft; the episode ends after it.  Empty
memory -> reward 0 with reason ``empty_memory``.  The demonstration copies every fact and bolds the asked one with
probability ``demo_emphasis_p`` (so RL has something to improve: bolding the asked fact keeps it readable at the low
budget).

Components: ``r_full``, ``r_low``, ``r_cloze``, ``emphasised_key`` (the asked fact is inside an emphasised span),
``memory_chars``; ``info``: the renderings, the cloze blanks, ``reason``.
"""

from __future__ import annotations

import random
import re
from typing import Any, ClassVar, Optional, Sequence

import numpy as np

from lckernels_rl.agents.types import Message

from ..tool_env import StepResult, ToolEnv, Verdict

__all__ = ["MemOCREnv", "memory_words", "render_memory", "plain_text", "make_cloze", "read_answer",
           "memocr_reward", "W_LOW", "W_CLOZE"]

W_LOW, W_CLOZE = 0.7, 0.3  # scripts/train.sh
CONS, VOWS = "bdfgklmnprstvz", "aeiou"
ATTRS = ("city", "food", "pet", "car", "job", "team")
_BOLD = re.compile(r"\*\*(.+?)\*\*|__(.+?)__")


def memory_words(memory: str) -> list[tuple[str, bool]]:
    """The memory's words with whether each is emphasised (a heading line, or inside ``**...**`` / ``__...__``);
    markdown markers removed."""
    if not isinstance(memory, str):
        raise TypeError(f"memory_words: `memory` must be a str; got {type(memory).__name__}")
    out: list[tuple[str, bool]] = []
    for line in memory.splitlines():
        s = line.strip()
        heading = bool(re.match(r"#{1,6}\s", s))
        if heading:
            s = re.sub(r"^#{1,6}\s+", "", s)
        pos = 0
        for m in _BOLD.finditer(s):
            out += [(w, heading) for w in _clean(s[pos:m.start()]).split()]
            out += [(w, True) for w in _clean(m.group(1) or m.group(2)).split()]
            pos = m.end()
        out += [(w, heading) for w in _clean(s[pos:]).split()]
    return out


def _clean(text: str) -> str:
    return re.sub(r"[*_`#>]+", " ", text)


def plain_text(memory: str) -> str:
    """The memory as plain text (markers removed, whitespace collapsed) -- the cloze source."""
    return " ".join(w for w, _ in memory_words(memory))


def render_memory(memory: str, budget: int) -> list[bool]:
    """Per word of :func:`memory_words`: kept by a rendering of ``budget`` characters (a word costs its length + 1).
    Emphasised words are placed first (in order), plain words fill the rest (in order)."""
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        raise ValueError(f"render_memory: `budget` must be an int >= 0; got {budget!r}")
    words = memory_words(memory)
    kept = [False] * len(words)
    left = budget
    for emph_pass in (True, False):
        for i, (w, e) in enumerate(words):
            if e == emph_pass and not kept[i]:
                if len(w) + 1 > left:
                    if emph_pass:
                        continue  # a later, shorter emphasised word may still fit
                    left = -1
                    break
                kept[i] = True
                left -= len(w) + 1
    return kept


def rendered_text(memory: str, budget: int) -> str:
    words = memory_words(memory)
    return " ".join(w for (w, _), k in zip(words, render_memory(memory, budget)) if k)


def read_answer(rendered: str, entity: str, attr: str) -> Optional[str]:
    """The word after the first ``<entity> <attr>`` in the rendered text (lower-cased), ``None`` when absent."""
    ws = [w.lower().strip(".,;:") for w in rendered.split()]
    for i in range(len(ws) - 2):
        if ws[i] == entity and ws[i + 1] == attr:
            return ws[i + 2]
    return None


def make_cloze(memory: str, rng: random.Random, window_size: int = 300, num_blanks: int = 3) -> list[int]:
    """Indices (into :func:`memory_words`) of the blanked words, as ``make_gap_question_from_html`` picks them."""
    words = [w for w, _ in memory_words(memory)]
    text = " ".join(words)
    if not text:
        return []
    # the window, in word indices: word-aligned characters [start, start + window_size)
    starts, pos = [], 0
    for w in words:
        starts.append(pos)
        pos += len(w) + 1
    if len(text) <= window_size:
        lo, hi = 0, len(words)
    else:
        start = rng.randint(0, len(text) - window_size)
        lo = max(i for i, s in enumerate(starts) if s <= start)
        end = start + window_size
        hi = next((i for i, s in enumerate(starts) if s > end), len(words))
    cands = [i for i in range(lo, hi) if words[i].isalnum() and len(words[i]) > 2]
    return sorted(cands if len(cands) < num_blanks else rng.sample(cands, num_blanks))


def memocr_reward(r_full: float, r_low: float, r_cloze: float, w_low: float = W_LOW, w_cloze: float = W_CLOZE) -> float:
    """``(R_full + w_low R_low + w_cloze R_cloze) / (1 + w_low + w_cloze)`` (released: /2)."""
    return (r_full + w_low * r_low + w_cloze * r_cloze) / (1.0 + w_low + w_cloze)


def _name(rng: np.random.Generator) -> str:
    return "".join(CONS[int(rng.integers(len(CONS)))] + VOWS[int(rng.integers(len(VOWS)))] for _ in range(2))


class MemOCREnv(ToolEnv):
    """Draft a memory whose asked fact survives a low-budget rendering.

    Args:
        n_facts: facts in the document (each ``"<entity> <attr> <value>"``, one a line).
        full_budget: characters of the full rendering.
        low_ratio: the low budget as a fraction of ``full_budget`` (0.25, the released subsampling ratio).
        w_low / w_cloze: weights of ``R_low`` and ``R_cloze`` (0.7 / 0.3 released; 0 / 0: the full-only baseline).
        window_size / num_blanks: the cloze window (characters) and blanks (300 / 3 released).
        demo_emphasis_p: probability that a demonstration bolds the asked fact.
        n_names: entities and values are drawn from a fixed pool of this many names (``None``: a fresh name each
            time); a small pool makes every name a whole token, which tiny policies can copy.

    Example:
        >>> env = MemOCREnv()
        >>> msgs, info = env.reset(seed=0)
        >>> msgs[0].content.splitlines()[-1].endswith("?")
        True
    """

    name: ClassVar[str] = "memocr"
    blocking = False
    tool_format: ClassVar[Optional[str]] = None
    protocol_tokens: ClassVar[tuple[str, ...]] = ("**", "# ", "memory")

    def __init__(self, n_facts: int = 4, full_budget: int = 96, low_ratio: float = 0.25, w_low: float = W_LOW,
                 w_cloze: float = W_CLOZE, window_size: int = 300, num_blanks: int = 3,
                 demo_emphasis_p: float = 0.5, n_names: Optional[int] = 12):
        for n, v, lo in (("n_facts", n_facts, 1), ("full_budget", full_budget, 1), ("window_size", window_size, 1),
                         ("num_blanks", num_blanks, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"MemOCREnv: `{n}` must be an int >= {lo}; got {v!r}")
        for n, v in (("low_ratio", low_ratio), ("w_low", w_low), ("w_cloze", w_cloze),
                     ("demo_emphasis_p", demo_emphasis_p)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"MemOCREnv: `{n}` must be a number >= 0; got {v!r}")
        if n_names is not None and (isinstance(n_names, bool) or not isinstance(n_names, int) or n_names < n_facts):
            raise ValueError(f"MemOCREnv: `n_names` must be None or an int >= n_facts; got {n_names!r}")
        if low_ratio > 1 or demo_emphasis_p > 1:
            raise ValueError("MemOCREnv: `low_ratio` and `demo_emphasis_p` must be <= 1")
        self.n_facts, self.full_budget = n_facts, full_budget
        self.low_budget = int(round(full_budget * low_ratio))
        self.w_low, self.w_cloze = float(w_low), float(w_cloze)
        self.window_size, self.num_blanks = window_size, num_blanks
        self.demo_emphasis_p = float(demo_emphasis_p)
        self.names: Optional[list[str]] = None
        if n_names is not None:
            prng, self.names = np.random.default_rng([0, 5]), []
            while len(self.names) < n_names:
                w = _name(prng)
                if w not in self.names:
                    self.names.append(w)
        self.task: Optional[dict] = None
        self.seed: Optional[int] = None
        self.memory: Optional[str] = None
        self.tools = []

    def reset(self, seed: Optional[int] = None, task: Any = None) -> tuple[list[Message], dict]:
        if task is None:
            rng = np.random.default_rng([0 if seed is None else abs(int(seed)), 3])
            if self.names is not None:
                ents = [self.names[int(i)] for i in rng.choice(len(self.names), size=self.n_facts, replace=False)]
            else:
                ents = []
                while len(ents) < self.n_facts:
                    e = _name(rng)
                    if e not in ents:
                        ents.append(e)
            pick = (lambda: self.names[int(rng.integers(len(self.names)))]) if self.names is not None else \
                (lambda: _name(rng))
            facts = [[e, ATTRS[int(rng.integers(len(ATTRS)))], pick()] for e in ents]
            task = {"facts": facts, "ask": int(rng.integers(self.n_facts))}
        if not isinstance(task, dict) or "facts" not in task or "ask" not in task:
            raise TypeError("MemOCREnv.reset: `task` must be a dict with 'facts' and 'ask'")
        if not (isinstance(task["ask"], int) and 0 <= task["ask"] < len(task["facts"])):
            raise ValueError(f"MemOCREnv.reset: task['ask'] must index task['facts']; got {task['ask']!r}")
        self.task, self.seed, self.memory = task, seed, None
        e, a, v = task["facts"][task["ask"]]
        doc = "\n".join(" ".join(f) for f in task["facts"])
        return [Message("user", f"{doc}\n{a} of {e}?")], {"answer": v, "task": task}

    def step(self, turn: Message) -> StepResult:
        if self.task is None:
            raise RuntimeError("MemOCREnv.step: call reset() first")
        self.memory = turn.content or ""
        return StepResult(terminated=True, info={"memory_chars": len(self.memory)})

    def verify(self, trajectory=None) -> Verdict:
        e, a, gold = self.task["facts"][self.task["ask"]]
        memory = self.memory or ""
        words = memory_words(memory)
        if not words:
            return Verdict(reward=0.0, components={"r_full": 0.0, "r_low": 0.0, "r_cloze": 0.0,
                                                   "emphasised_key": 0.0, "memory_chars": float(len(memory))},
                           info={"reason": "empty_memory"})
        full, low = rendered_text(memory, self.full_budget), rendered_text(memory, self.low_budget)
        r_full = float(read_answer(full, e, a) == gold)
        r_low = float(read_answer(low, e, a) == gold)
        rng = random.Random(f"memocr-cloze-{self.seed}-{memory}")
        blanks = make_cloze(memory, rng, self.window_size, self.num_blanks)
        kept = render_memory(memory, self.full_budget)
        r_cloze = float(bool(blanks) and all(kept[i] for i in blanks))  # no blank: the reader has nothing to fill
        lw = [w.lower() for w, _ in words]
        key = next((i for i in range(len(lw) - 2) if lw[i:i + 3] == [e, a, gold]), None)
        emph = float(key is not None and all(words[j][1] for j in range(key, key + 3)))
        reward = memocr_reward(r_full, r_low, r_cloze, self.w_low, self.w_cloze)
        reason = "all" if r_full and r_low and r_cloze else ("lost_at_low_budget" if r_full and not r_low else
                                                             ("not_in_memory" if not r_full else "cloze_miss"))
        return Verdict(reward=reward, components={"r_full": r_full, "r_low": r_low, "r_cloze": r_cloze,
                                                  "emphasised_key": emph, "memory_chars": float(len(memory))},
                       info={"reason": reason, "full": full, "low": low, "blanks": [words[i][0] for i in blanks]})

    def state(self) -> dict:
        return {"task": self.task, "memory": self.memory}

    def demo_memory(self) -> str:
        rng = np.random.default_rng([0 if self.seed is None else abs(int(self.seed)), 4])
        bold = rng.random() < self.demo_emphasis_p
        lines = []
        for i, f in enumerate(self.task["facts"]):
            s = " ".join(f)
            lines.append(f"**{s}**" if bold and i == self.task["ask"] else s)
        return "\n".join(lines)

    def demonstration(self, messages: Sequence[Message]) -> Optional[str]:
        if self.task is None or any(m.role == "assistant" for m in messages):
            return None
        return self.demo_memory()

    def tokenizer_corpus(self, n: int = 64) -> list[str]:
        out = []
        for s in range(n):
            msgs, _ = self.reset(seed=10**7 + s)
            mem = self.demo_memory()
            out += [msgs[0].content, mem, "\n".join(f"**{' '.join(f)}**" for f in self.task["facts"])]
        self.task = None
        return out
