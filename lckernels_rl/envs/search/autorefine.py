"""``autorefine``: search and refine during thinking (AutoRefine, arXiv 2505.11277), the released code's rules.

Protocol (each assistant turn is plain text; no tool-call parser):

* ``<think>...</think>`` reasoning, ``<search>query</search>`` -> the environment answers the top ``topk`` BM25
  documents as ``<documents>Doc 1(Title: t) text ...</documents>``; after documents the agent distils them in
  ``<refine>...</refine>``; ``<answer>...</answer>`` ends the episode.
* A turn's action is its FIRST ``<search>...</search>`` or ``<answer>...</answer>`` block and the turn ends there:
  text after the first ``</search>`` / ``</answer>`` is ignored (for the action and for the reward).  VERIFIED:
  ``search_r1/llm_agent/generation.py`` ``_postprocess_responses`` / ``postprocess_predictions`` (syr-cn/AutoRefine
  @ 83637883d98801dab1bd2dc36b9186a25efdaa98).
* A turn with neither is invalid: the observation is the released "My previous action is invalid ..." text (tool
  message with ``is_error``); it uses a turn.  VERIFIED: ``execute_predictions``.
* Turns: ``max_turns`` (5, ``cmd/train.sh``) turns may search; if the episode is still open after them, one more
  (final) turn is sampled whose search is NOT run, and the episode ends after it whatever it did.  VERIFIED:
  ``run_llm_loop`` (the loop over ``max_turns`` + the "final LLM rollout" with ``do_search=False``).  Set the
  agent loop's ``max_turns`` to ``max_turns + 1``.
* A query no corpus word matches gets ``<documents>No documents match the query.</documents>`` (the released dense
  retriever always returns ``topk`` documents; a BM25 with no overlapping term has nothing to rank -- ours).

Reward (:func:`autorefine_reward`; VERIFIED: ``verl/utils/reward_score/qa_em.py`` ``compute_reward`` called from
``verl/trainer/main_ppo.py`` ``RewardManager.__call__`` with ``cmd/train.sh``'s ``reward_style="F1"``,
``refine_score=0.1``, ``format_score=0.0``):

1. the answer is the LAST ``<answer>...</answer>`` of the response (stripped); none -> reward 0;
2. ``answer_score`` = token F1 of the SQuAD-normalised answer against the gold answers (max over golds; ``yes`` /
   ``no`` / ``noanswer`` must match exactly) -- ``answer_metric="f1"``; ``"em"`` (normalised equality) and ``"cem"``
   (normalised gold is a substring of the normalised answer) are the released alternatives;
3. ``answer_score > 0`` -> reward = ``answer_score`` (the format is not checked);
4. else reward = ``format_score`` x format-valid + ``refine_score`` x refine-hit, where refine-hit = the
   normalised gold answer is a SUBSTRING of the normalised text of all ``<refine>`` blocks joined by a space
   (``compute_refine_score_subem`` -> ``cover_em_check``), and format-valid = each of ``think``, ``search``,
   ``refine``, ``answer`` occurs at least once with as many opening as closing tags (``validate_format``, the
   ``<refine>`` prompt branch).  In the released code the refine reward is NOT gated by the format check;
   ``refine_requires_format=True`` gates it (the reading "0.1 when a refine holds the answer, format valid").

Normalisation (``normalize_answer``): lower case, punctuation removed, articles ``a|an|the`` removed, whitespace
collapsed.  VERIFIED (same file).

Deviations (ours): the response is the concatenation of the assistant turns (the released response string also
holds the ``<documents>`` observations, which contain none of the scored tags); BM25 over a generated corpus instead
of an E5 index over Wikipedia; the prompt template is the released one (``preprocess/data_process/utils.py``
``make_prefix``) only when ``instructions=True`` (off for tiny policies: the demonstrations teach the protocol).

Verdict components: ``answer_score``, ``answer_em``, ``refine_hit``, ``format_valid``, ``refine_blocks`` (count),
``refine_blocks_with_answer`` (fraction of refine blocks holding the gold answer), ``searches``, ``no_hit_searches``,
``invalid_turns``, ``hops``, ``em_hop{k}`` (the EM of a ``k``-hop task; eval means give accuracy per hop count);
``info["reason"]`` names why the reward is what it is (``correct``, ``partial_f1``, ``refine_hit``, ``no_answer``,
``wrong_answer``).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any, ClassVar, Optional, Sequence

import numpy as np

from lckernels_rl.agents.types import Message

from ..tool_env import StepResult, ToolEnv, Verdict
from .corpus import RELATIONS, BM25Index, Question, format_documents, make_corpus, make_question

__all__ = ["AutoRefineEnv", "normalize_answer", "f1_score", "em_check", "cover_em_check", "validate_format",
           "extract_answer", "extract_refines", "autorefine_reward", "INSTRUCTIONS", "INVALID_ACTION"]

INSTRUCTIONS = (
    "You are a helpful assistant excel at answering questions with multi-turn search engine calling. To answer "
    "questions, you must first reason through the available information using <think> and </think>. If you identify "
    "missing knowledge, you may issue a search request using <search> query </search> at any time. The retrieval "
    "system will provide you with the three most relevant documents enclosed in <documents> and </documents>. After "
    "each search, you need to summarize and refine the existing documents in <refine> and </refine>. You may send "
    "multiple search requests if needed. Once you have sufficient information, provide a concise final answer using "
    "<answer> and </answer>. For example, <answer> Donald Trump </answer>. Question: ")
INVALID_ACTION = ("My previous action is invalid. If I want to search, I should put the query between <search> and "
                  "</search>. If I want to give the final answer, I should put the answer between <answer> and "
                  "</answer>. Let me try again.")
NO_HIT = "No documents match the query."
FORMAT_TAGS = ("think", "search", "refine", "answer")
ANSWER_METRICS = ("f1", "em", "cem")
_ACTION = re.compile(r"<(search|answer)>(.*?)</\1>", re.DOTALL)


# ---------------------------------------------------------------------------------------------- reward rules
def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lower, drop punctuation, drop articles, collapse whitespace (qa_em.normalize_answer)."""
    s = str(s).lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _golds(golds) -> list[str]:
    return [golds] if isinstance(golds, str) else [str(g) for g in golds]


def f1_score(prediction: str, golds) -> float:
    """Max token F1 over the gold answers (``yes``/``no``/``noanswer`` only match exactly)."""
    best = 0.0
    p = normalize_answer(prediction)
    for g in _golds(golds):
        gn = normalize_answer(g)
        if (p in ("yes", "no", "noanswer") or gn in ("yes", "no", "noanswer")) and p != gn:
            continue
        pt, gt = p.split(), gn.split()
        same = sum((Counter(pt) & Counter(gt)).values())
        if same == 0:
            continue
        prec, rec = same / len(pt), same / len(gt)
        best = max(best, 2 * prec * rec / (prec + rec))
    return best


def em_check(prediction: str, golds) -> float:
    p = normalize_answer(prediction)
    return float(any(normalize_answer(g) == p for g in _golds(golds)))


def cover_em_check(prediction: str, golds) -> float:
    """1.0 when a normalised gold answer is a substring of the normalised prediction."""
    p = normalize_answer(prediction)
    return float(any(normalize_answer(g) in p for g in _golds(golds)))


def validate_format(response: str) -> bool:
    """Every tag of :data:`FORMAT_TAGS` occurs at least once, with as many openings as closings."""
    if not response:
        return False
    for t in FORMAT_TAGS:
        n_open, n_close = response.count(f"<{t}>"), response.count(f"</{t}>")
        if n_open != n_close or n_open == 0:
            return False
    return True


def extract_answer(response: str) -> Optional[str]:
    """The last ``<answer>...</answer>`` (stripped), ``None`` without one."""
    found = re.findall(r"<answer>(.*?)</answer>", response, re.DOTALL)
    return found[-1].strip() if found else None


def extract_refines(response: str) -> list[str]:
    return re.findall(r"<refine>(.*?)</refine>", response, re.DOTALL)


def autorefine_reward(response: str, golds, *, answer_metric: str = "f1", refine_score: float = 0.1,
                      format_score: float = 0.0, refine_requires_format: bool = False) -> tuple[float, dict]:
    """The released AutoRefine reward of one response (see the module docstring) -> ``(reward, details)``."""
    if answer_metric not in ANSWER_METRICS:
        raise ValueError(f"autorefine_reward: `answer_metric` must be one of {ANSWER_METRICS}; got {answer_metric!r}")
    refines = extract_refines(response)
    refine_hit = cover_em_check(" ".join(refines).strip(), golds) if refines else 0.0
    valid = validate_format(response)
    answer = extract_answer(response)
    details = {"answer": answer, "format_valid": float(valid), "refine_hit": refine_hit,
               "refine_blocks": float(len(refines)),
               "refine_blocks_with_answer": (float(np.mean([cover_em_check(r, golds) for r in refines]))
                                             if refines else 0.0)}
    if answer is None:
        details.update(answer_score=0.0, answer_em=0.0, reason="no_answer")
        return 0.0, details
    score = {"f1": f1_score, "em": em_check, "cem": cover_em_check}[answer_metric](answer, golds)
    details.update(answer_score=float(score), answer_em=em_check(answer, golds))
    if score > 0:
        details["reason"] = "correct" if score >= 1.0 else "partial_" + answer_metric
        return float(score), details
    reward = format_score * float(valid)
    if refine_hit > 0 and (valid or not refine_requires_format):
        reward += refine_score
        details["reason"] = "refine_hit"
    else:
        details["reason"] = "wrong_answer" if valid or not refine_hit else "refine_hit_invalid_format"
    return float(reward), details


def cut_turn(text: str) -> str:
    """A turn as the released loop keeps it: up to its first ``</search>``, else its first ``</answer>``."""
    if "</search>" in text:
        return text.split("</search>")[0] + "</search>"
    if "</answer>" in text:
        return text.split("</answer>")[0] + "</answer>"
    return text


# ---------------------------------------------------------------------------------------------- the environment
class AutoRefineEnv(ToolEnv):
    """Multi-hop QA over a generated entity-relation corpus with BM25 search and refine blocks.

    Args:
        n_entities / relations / corpus_seed: the generated world (:func:`~.corpus.make_corpus`; the same world for
            every task of an environment, as one Wikipedia index serves every question).
        hops: the hop counts tasks are drawn from (uniformly; ``1..3``).
        topk: documents per search (3, ``cmd/train.sh`` ``retriever.topk``).
        max_turns: turns whose search runs (5, ``cmd/train.sh``); one final turn follows.
        answer_metric: ``f1`` (released ``reward_style="F1"``), ``em`` or ``cem``.
        refine_score: reward of a wrong answer whose refine blocks hold the gold answer (0.1 released; 0.0: the
            exact-match-only baseline of the paper's ablation).
        format_score: reward of a wrong answer in a valid format (0.0 released).
        refine_requires_format: gate the refine reward on the format check (False released).
        instructions: put the released prompt template before the question (off for tiny policies).
        think: the demonstrations open with a ``<think>`` block (the format check needs one).

    Example:
        >>> env = AutoRefineEnv(hops=(1,))
        >>> msgs, info = env.reset(seed=0)
        >>> msgs[0].content.endswith("?"), info["hops"]
        (True, 1)
    """

    name: ClassVar[str] = "autorefine"
    blocking = False  # in-memory BM25
    concurrent_tools = False
    tool_format: ClassVar[Optional[str]] = None
    protocol_tokens: ClassVar[tuple[str, ...]] = (
        "<think>", "</think>", "<search>", "</search>", "<refine>", "</refine>", "<answer>", "</answer>",
        "<documents>", "</documents>")

    def __init__(self, n_entities: int = 12, relations: Sequence[str] = RELATIONS, corpus_seed: int = 0,
                 hops: Sequence[int] = (1, 2, 3), topk: int = 3, max_turns: int = 5, answer_metric: str = "f1",
                 refine_score: float = 0.1, format_score: float = 0.0, refine_requires_format: bool = False,
                 instructions: bool = False, think: bool = True):
        if not isinstance(hops, (list, tuple)) or not hops or not all(
                isinstance(h, int) and not isinstance(h, bool) and 1 <= h <= 3 for h in hops):
            raise ValueError(f"AutoRefineEnv: `hops` must be a non-empty list of ints in 1..3; got {hops!r}")
        for n, v in (("topk", topk), ("max_turns", max_turns)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"AutoRefineEnv: `{n}` must be a positive int; got {v!r}")
        if answer_metric not in ANSWER_METRICS:
            raise ValueError(f"AutoRefineEnv: `answer_metric` must be one of {ANSWER_METRICS}; got {answer_metric!r}")
        for n, v in (("refine_score", refine_score), ("format_score", format_score)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"AutoRefineEnv: `{n}` must be a number >= 0; got {v!r}")
        self.corpus = make_corpus(n_entities, tuple(relations), seed=corpus_seed)
        self.index = BM25Index(self.corpus.documents)
        self.hops, self.topk, self.max_turns = tuple(int(h) for h in hops), int(topk), int(max_turns)
        self.answer_metric = answer_metric
        self.refine_score, self.format_score = float(refine_score), float(format_score)
        self.refine_requires_format = bool(refine_requires_format)
        self.instructions, self.think = bool(instructions), bool(think)
        self.question: Optional[Question] = None
        self.turns: list[str] = []       # the assistant turns as kept (cut after the first action block)
        self.actions: list[Optional[str]] = []
        self.no_hits = 0
        self.tools = []

    # ------------------------------------------------------------------ tasks
    def reset(self, seed: Optional[int] = None, task: Any = None) -> tuple[list[Message], dict]:
        if task is None:
            rng = np.random.default_rng([0 if seed is None else abs(int(seed)), 2])
            task = make_question(self.corpus, self.hops[int(rng.integers(len(self.hops)))], rng)
        elif isinstance(task, dict):
            task = Question.from_dict(task)
        if not isinstance(task, Question):
            raise TypeError(f"AutoRefineEnv.reset: `task` must be a Question or its dict; got {type(task).__name__}")
        self.question = task
        self.turns, self.actions, self.no_hits = [], [], 0
        text = (INSTRUCTIONS if self.instructions else "") + task.text
        return [Message("user", text)], {"answer": task.answer, "hops": task.hops, "task": task.to_dict()}

    # ------------------------------------------------------------------ one turn
    def step(self, turn: Message) -> StepResult:
        if self.question is None:
            raise RuntimeError("AutoRefineEnv.step: call reset() first")
        text = cut_turn(turn.content or "")
        self.turns.append(text)
        m = _ACTION.search(text)
        action, content = (m.group(1), m.group(2).strip()) if m else (None, "")
        self.actions.append(action)
        if action == "answer":
            return StepResult(terminated=True, info={"action": "answer"})
        if len(self.turns) > self.max_turns:  # the final turn: its search is not run
            return StepResult(truncated=True, info={"action": action, "reason": "max_turns"})
        if action == "search":
            hits = self.index.search(content, self.topk)
            if not hits:
                self.no_hits += 1
            return StepResult(messages=[Message("tool", format_documents(hits, NO_HIT))],
                              info={"action": "search", "hits": len(hits)})
        return StepResult(messages=[Message("tool", INVALID_ACTION, is_error=True)], info={"action": None})

    # ------------------------------------------------------------------ the verdict
    def verify(self, trajectory=None) -> Verdict:
        response = "".join(self.turns)
        reward, d = autorefine_reward(response, [self.question.answer], answer_metric=self.answer_metric,
                                      refine_score=self.refine_score, format_score=self.format_score,
                                      refine_requires_format=self.refine_requires_format)
        hops = self.question.hops
        comps = {k: float(d[k]) for k in ("answer_score", "answer_em", "refine_hit", "format_valid", "refine_blocks",
                                          "refine_blocks_with_answer")}
        comps.update(searches=float(sum(a == "search" for a in self.actions)), no_hit_searches=float(self.no_hits),
                     invalid_turns=float(sum(a is None for a in self.actions)), hops=float(hops))
        comps[f"em_hop{hops}"] = comps["answer_em"]
        return Verdict(reward=reward, components=comps,
                       info={"reason": d["reason"], "answer": d["answer"], "gold": self.question.answer})

    def state(self) -> dict:
        return {"question": None if self.question is None else self.question.to_dict(), "turns": self.turns}

    # ------------------------------------------------------------------ demonstrations
    def demo_plan(self) -> list[str]:
        """The scripted turns: search ``<entity> <relation>`` per hop, refine the fact found, answer."""
        q = self.question
        plan = []
        for i, (e, r) in enumerate(zip(q.chain[:-1], q.relations)):
            head = (f"<think>{r} of {e}</think>" if self.think else "") if i == 0 else \
                f"<refine>{q.chain[i - 1]} {q.relations[i - 1]} {e}</refine>"
            plan.append(f"{head}<search>{e} {r}</search>")
        k = q.hops - 1
        plan.append(f"<refine>{q.chain[k]} {q.relations[k]} {q.chain[k + 1]}</refine><answer>{q.answer}</answer>")
        return plan

    def demonstration(self, messages: Sequence[Message]) -> Optional[str]:
        if self.question is None:
            return None
        k = sum(1 for m in messages if m.role == "assistant")
        plan = self.demo_plan()
        return plan[k] if k < len(plan) else None

    def tokenizer_corpus(self, n: int = 64) -> list[str]:
        out = [INSTRUCTIONS, INVALID_ACTION, format_documents([], NO_HIT)]
        out += [format_documents([(d, 1.0)]) for d in self.corpus.documents]
        for s in range(n):
            env = AutoRefineEnv.__new__(AutoRefineEnv)
            env.__dict__.update(self.__dict__)
            msgs, _ = env.reset(seed=10**7 + s)
            out.append(msgs[0].content)
            for t in env.demo_plan():
                out.append(t)
                out += [m.content for m in env.step(Message("assistant", t)).messages]
        return out
