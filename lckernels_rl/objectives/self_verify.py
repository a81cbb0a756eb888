"""Self-verification training.

Paper: Chen et al., "Learning to Self-Verify Makes Language Models Better Reasoners", arXiv 2602.07594.

Status: **verified** against the authors' released code, read for this module: repository
``chenyuxin1999/Learning-to-Self-Verify`` at commit ``1c6f762`` -- ``Learning_to_self_verify_w_generation.sh``
(the joint generation + verification run), ``recipe/dapo/dapo_self_verification_answeronly_ray_trainer.py``
(``_add_verification_buffer``, ``_fill_samples_from_pool``, ``fit``), ``verl/utils/reward_score/__init__.py``
(``data_source == "verification"``) and ``verl/utils/reward_score/math_dapo.py`` (``compute_score``,
``is_correct_strict_box``).  **Inferred** (ours) where marked.  The defaults are the released behaviour; the
behaviour of this module before it was checked against that code stays available as options (``schedule="replace"``,
``balance="downsample"``, ``strict_boxed=False, pass_rate_cap=None``, ``base="grpo"``).

The model is trained, besides its generation steps, to verify its own rollouts:

* **Data** (:func:`build_verification_examples`), per generation group (one prompt, its rollouts and a correctness
  label each, correct = reward >= 0.5 as released): a *mixed* group gives one "Yes" (a random correct rollout) and
  one "No" (a random wrong rollout) to the step's examples, and -- when it has another correct / wrong rollout left --
  one more of each to a reserve pool; an *all-correct* group gives one "Yes" to the reserve pool; an *all-wrong* group
  is skipped.  ``balance="replacement"`` (released): each label is filled up to ``target = ⌊#groups / 2⌋`` from its
  reserve pool, first without replacement, then with replacement; each label is cut to ``target``; the ``2 target``
  examples are shuffled.  A label with an empty pool stays short.  Every example carries its group's
  ``pass_rate`` (correct / rollouts of the group).  ``balance="downsample"`` (the old rule, inferred): the majority
  label is downsampled to the minority's count (all-correct groups' "Yes" count as step examples, no reserve pool).
  ``balance="none"``: the unbalanced old set.  Inferred: the draws use ``random.Random(seed)`` (the authors use
  Python's global ``random``); the prompt wording (:data:`DEFAULT_TEMPLATE`) is ours -- like the authors' it asks for
  a last line ``Answer: \\boxed{Yes}`` / ``\\boxed{No}``; the judged text is the decoded final assistant turn (the
  authors' "answer only" trainer judges the normalized boxed answer of the response; our environments' answers are
  not boxed).
* **Reward** (:func:`verification_reward`), released: strict boxed match -- the content of the last ``\\boxed{...}``
  in the last 200 characters of the answer, normalized, must equal the label exactly (case-sensitive) -- times
  ``min(pass_rate, 0.5)``.  Inferred: the normalization keeps only the rules of ``math_dapo.normalize_final_answer``
  that can change a Yes/No verdict (text after the last ``=``, ``\\text{}``/``\\textbf{}`` unwrapped, ``$`` and
  spaces removed).  ``strict_boxed=False``: the old lenient parser (:func:`parse_verdict`: last boxed verdict, else
  last standalone yes/no, case-insensitive, after any ``</think>``); ``pass_rate_cap=None``: no scaling.
* **Schedule** (:class:`SelfVerifySchedule`), ``schedule="extra"`` (released): every RL step is a generation step;
  after the generation update of 1-based steps ``every``, ``2 every``, ... (0-based steps ``s`` with
  ``(s + 1) % every == 0``; ``every`` = 5 in the released script) comes one *extra* verification update from a
  buffer of the examples of the generation steps since the previous verification step (steps 1..4 at step 5, then
  5..9 at step 10: the current step's examples join the buffer after its verification); the buffer is shuffled, at
  most ``loops`` (released ``verification_looplen`` = 1) chunks of ``2 target`` examples (``target`` of the latest
  buffered step) are rolled out and trained, then the whole buffer is flushed.  Each example gets the generation
  group size ``rollouts_per_step // prompts_per_step`` rollouts (released: ``rollout.n`` for both; inferred mapping for
  a non-uniform allocator).  ``schedule="replace"`` (the old rule, inferred): a verification step *replaces* a
  generation step after every ``every`` generation steps (0-based steps 5, 11, 17, ... for ``every=5``), built from
  the previous generation step only, the step's budget split over its examples.
* **Loss**: the same actor update as generation (released: one verl actor config for both) -- GRPO advantages
  within each verification example's rollouts and the ``base`` objective, by default ``"dapo"``: clip 0.2 / 0.28 and
  token-mean aggregation (the released script's ``clip_ratio_low/high`` and ``loss_agg_mode``; its
  ``clip_ratio_c = 10`` dual clip is not modelled).  ``base="grpo"``: the old clip 0.2 / 0.2, sequence-mean loss.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import ClassVar, Optional, Sequence

from .base import Objective
from .registry import get_objective, register_objective

__all__ = ["SelfVerify", "SelfVerifySchedule", "VerificationExample", "build_verification_examples",
           "verification_reward", "parse_verdict", "strict_boxed_verdict", "DEFAULT_TEMPLATE", "PLAIN_TEMPLATE",
           "BALANCE_MODES", "SCHEDULE_MODES"]

DEFAULT_TEMPLATE = ("You are grading a student's answer to a question: is it correct?\n\nQuestion: {question}\n"
                    "Student's answer: {response}\n\nExplain your judgement; the last line of your response must be "
                    "Answer: \\boxed{{Yes}} or Answer: \\boxed{{No}}.")
PLAIN_TEMPLATE = ("{question}\n\nHere is a proposed solution:\n{response}\n\nIs this solution correct? "
                  "Answer with Yes or No.")  # the template before the released code was read
BALANCE_MODES = ("replacement", "downsample", "none")
SCHEDULE_MODES = ("extra", "replace")
CORRECT_THRESHOLD = 0.5  # released: a rollout is correct when its reward >= 0.5


@dataclass(frozen=True)
class VerificationExample:
    """One verification prompt: ``prompt`` (what the model sees), ``label`` ("Yes" / "No"), the source ``question``,
    ``response``, ``group`` index and the group's ``pass_rate`` (correct rollouts / rollouts)."""

    prompt: str
    label: str
    question: str
    response: str
    group: int
    pass_rate: float = 1.0


def _balance_mode(balance) -> str:
    if balance is True:  # the old boolean flag: True meant downsampling
        return "downsample"
    if balance is False or balance is None:
        return "none"
    if balance not in BALANCE_MODES:
        raise ValueError(f"balance must be one of {', '.join(BALANCE_MODES)} (or a bool); got {balance!r}")
    return balance


def build_verification_examples(questions: Sequence[str], responses: Sequence[Sequence[str]],
                                correct: Sequence[Sequence[bool]], *, seed: int, template: str = DEFAULT_TEMPLATE,
                                balance="replacement") -> list[VerificationExample]:
    """Verification examples from generation groups (``questions[g]`` with rollouts ``responses[g]`` and labels
    ``correct[g]``); deterministic for a given ``seed``.  See the module docstring for the rules of each ``balance``
    mode (``"replacement"``: released; ``"downsample"``, ``"none"``: the old rules; ``True`` / ``False`` are the old
    flag's ``"downsample"`` / ``"none"``)."""
    if not (len(questions) == len(responses) == len(correct)):
        raise ValueError("build_verification_examples: questions, responses and correct must have the same length")
    mode = _balance_mode(balance)
    rng = random.Random(seed)
    yes: list[VerificationExample] = []  # the step's own examples (one of each label per mixed group)
    no: list[VerificationExample] = []
    pool_yes: list[VerificationExample] = []  # released: the reserve pools the labels are filled from
    pool_no: list[VerificationExample] = []
    n_groups = 0

    def make(g, i, label, rate):
        q, r = questions[g], responses[g][i]
        return VerificationExample(template.format(question=q, response=r), label, q, r, g, rate)

    for g, (rs, cs) in enumerate(zip(responses, correct)):
        if len(rs) != len(cs):
            raise ValueError(f"group {g}: {len(rs)} responses but {len(cs)} correctness labels")
        if not rs:
            continue
        n_groups += 1
        rate = sum(bool(c) for c in cs) / len(cs)
        right = [i for i, c in enumerate(cs) if c]
        wrong = [i for i, c in enumerate(cs) if not c]
        if not right:  # all wrong: skipped
            continue
        if not wrong:  # all correct: one "Yes" (released: to the reserve pool)
            (pool_yes if mode == "replacement" else yes).append(make(g, rng.choice(right), "Yes", rate))
            continue
        i = right.pop(rng.randrange(len(right)))
        yes.append(make(g, i, "Yes", rate))
        j = wrong.pop(rng.randrange(len(wrong)))
        no.append(make(g, j, "No", rate))
        if mode == "replacement":  # one more of each label, when left, to the reserve pools
            if right:
                pool_yes.append(make(g, rng.choice(right), "Yes", rate))
            if wrong:
                pool_no.append(make(g, rng.choice(wrong), "No", rate))
    if mode == "replacement":
        target = n_groups // 2
        for final, pool in ((no, pool_no), (yes, pool_yes)):
            if pool and len(final) < target:  # first without replacement, then with replacement
                final.extend(rng.sample(pool, min(target - len(final), len(pool))))
            if pool and len(final) < target:
                final.extend(rng.choices(pool, k=target - len(final)))
        out = no[:target] + yes[:target]
    elif mode == "downsample":
        k = min(len(yes), len(no))
        yes = sorted(rng.sample(yes, k), key=lambda e: e.group) if len(yes) > k else yes
        no = sorted(rng.sample(no, k), key=lambda e: e.group) if len(no) > k else no
        out = yes + no
    else:
        out = yes + no
    rng.shuffle(out)
    return out


_BOXED = re.compile(r"\\boxed\{\s*(yes|no)\s*\}", re.IGNORECASE)
_WORD = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def parse_verdict(text: str) -> Optional[str]:
    """"Yes" / "No" / None from a verification response, leniently (last ``\\boxed{}``, else last yes/no word, after
    any ``</think>``; case-insensitive) -- the old reward's parser."""
    tail = text.rsplit("</think>", 1)[-1]
    found = _BOXED.findall(tail) or _WORD.findall(tail)
    return found[-1].capitalize() if found else None


def _last_boxed(text: str) -> Optional[str]:
    """The content of the last ``\\boxed{...}`` (braces matched), or None when there is none or it is unclosed."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth = 0
    for k in range(start + len("\\boxed"), len(text)):
        if text[k] == "{":
            depth += 1
        elif text[k] == "}":
            depth -= 1
            if depth == 0:
                return text[start + len("\\boxed{"):k]
    return None


def _normalize(answer: str) -> str:
    answer = answer.split("=")[-1]
    answer = re.sub(r"\\text(?:bf)?\{(.*?)\}", r"\1", answer)
    return answer.replace("$", "").replace("\\ ", "").replace(" ", "").strip()


def strict_boxed_verdict(text: str) -> Optional[str]:
    """The normalized content of the last ``\\boxed{...}`` in the last 200 characters of ``text`` (released: the
    reward looks at the last 300 characters, the strict box check at the last 200 of those), or None."""
    boxed = _last_boxed(text[-200:])
    return None if boxed is None else _normalize(boxed)


def verification_reward(text: str, label: str, pass_rate: float = 1.0, *, strict_boxed: bool = True,
                        pass_rate_cap: Optional[float] = 0.5) -> float:
    """The verification reward of answer ``text`` for an example labelled ``label`` ("Yes" / "No").

    Released (the defaults): ``1[strict boxed verdict == label] * min(pass_rate, 0.5)``.  ``strict_boxed=False``:
    the lenient :func:`parse_verdict`; ``pass_rate_cap=None``: no pass-rate factor (0 / 1).
    """
    if label not in ("Yes", "No"):
        raise ValueError(f"label must be 'Yes' or 'No'; got {label!r}")
    verdict = strict_boxed_verdict(text) if strict_boxed else parse_verdict(text)
    if verdict != label:
        return 0.0
    return 1.0 if pass_rate_cap is None else float(min(float(pass_rate), float(pass_rate_cap)))


@dataclass(frozen=True)
class SelfVerifySchedule:
    """When verification updates happen (steps numbered from 0).

    ``mode="extra"`` (released): an extra verification update after the generation update of every step ``s`` with
    ``(s + 1) % every == 0``.  ``mode="replace"`` (old): step ``s`` is a verification step *instead of* a generation
    step when ``(s + 1) % (every + 1) == 0``.
    """

    every: int = 5
    mode: str = "extra"

    def __post_init__(self):
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise ValueError(f"SelfVerifySchedule.every must be an int >= 1; got {self.every!r}")
        if self.mode not in SCHEDULE_MODES:
            raise ValueError(f"SelfVerifySchedule.mode must be one of {', '.join(SCHEDULE_MODES)}; got {self.mode!r}")

    def is_verification_step(self, step: int) -> bool:
        period = self.every if self.mode == "extra" else self.every + 1
        return (step + 1) % period == 0

    def kind(self, step: int) -> str:
        """``"generation"``, ``"verification"`` (replace mode) or ``"generation+verification"`` (extra mode)."""
        if not self.is_verification_step(step):
            return "generation"
        return "generation+verification" if self.mode == "extra" else "verification"


@register_objective
@dataclass(kw_only=True)
class SelfVerify(Objective):
    """Self-verification: the policy loss (``base`` objective, DAPO's clip 0.2 / 0.28 token-mean by default) plus the
    data builder, reward and schedule as methods.  ``loops``: verification chunks per verification step (released
    ``verification_looplen``)."""

    name: ClassVar[str] = "self_verify"
    source: ClassVar[str] = "verified"
    every: int = 5
    schedule_mode: str = "extra"
    loops: int = 1
    base: str = "dapo"
    base_params: dict = field(default_factory=dict)
    template: str = DEFAULT_TEMPLATE
    balance: str = "replacement"
    strict_boxed: bool = True
    pass_rate_cap: Optional[float] = 0.5

    def __post_init__(self):
        self.schedule()
        _balance_mode(self.balance)
        if isinstance(self.loops, bool) or not isinstance(self.loops, int) or self.loops < 1:
            raise ValueError(f"SelfVerify.loops must be an int >= 1; got {self.loops!r}")
        if self.pass_rate_cap is not None and not 0 < float(self.pass_rate_cap) <= 1:
            raise ValueError(f"SelfVerify.pass_rate_cap must be in (0, 1] or None; got {self.pass_rate_cap!r}")
        if self.base == self.name:
            raise ValueError("SelfVerify.base cannot be 'self_verify'")
        self.loss_objective()

    def schedule(self) -> SelfVerifySchedule:
        return SelfVerifySchedule(self.every, self.schedule_mode)

    def loss_objective(self) -> Objective:
        return get_objective(self.base, **self.base_params)

    def build_examples(self, questions, responses, correct, *, seed: int) -> list[VerificationExample]:
        return build_verification_examples(questions, responses, correct, seed=seed, template=self.template,
                                           balance=self.balance)

    def context_requirements(self) -> frozenset:
        return self.loss_objective().context_requirements()

    def batch_inputs(self, batch, ctx) -> dict:
        return self.loss_objective().batch_inputs(batch, ctx)

    def tokenizer_text(self) -> str:
        return self.template.replace("{question}", "").replace("{response}", "") + "YesNo"

    def wrap_source(self, source):
        """Verification updates on the schedule around the trainer's generation source."""
        from lckernels_rl.train.sources import SelfVerificationSource

        return SelfVerificationSource(source, self)

    def reward(self, text: str, label: str, pass_rate: float = 1.0) -> float:
        return verification_reward(text, label, pass_rate, strict_boxed=self.strict_boxed,
                                   pass_rate_cap=self.pass_rate_cap)

    def __call__(self, log_prob, old_log_prob, advantages, response_mask, rollout_log_prob=None, ref_log_prob=None,
                 **extra):
        return self.loss_objective()(log_prob, old_log_prob, advantages, response_mask, rollout_log_prob,
                                     ref_log_prob, **extra)

    def fused(self, hidden, lm_head_weight, targets, advantages, old_log_prob=None, response_mask=None,
              rollout_log_prob=None, ref_log_prob=None, **kwargs):
        return self.loss_objective().fused(hidden, lm_head_weight, targets, advantages, old_log_prob, response_mask,
                                           rollout_log_prob, ref_log_prob, **kwargs)
