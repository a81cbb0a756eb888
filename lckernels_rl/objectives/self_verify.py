"""Self-verification training.

Paper: "Learning to Self-Verify" (its arXiv id is not recorded in issue 6).

Status: **verified** for the data rules and the schedule (the authors' code, as summarized in issue 6; the code was
not re-read for this module); **inferred** (ours) where marked.

The model is trained, besides its generation steps, to verify its own rollouts:

* **Data** (:func:`build_verification_examples`): from each generation group (one prompt, G rollouts with a
  correctness label) -- a *mixed* group gives one "Yes" example (a correct rollout) and one "No" example (a wrong
  rollout); an *all-correct* group gives one "Yes"; an *all-wrong* group is skipped; the set is then balanced 50/50.
  Inferred: which rollout of a group is used is drawn uniformly with the given seed; balancing downsamples the
  majority label uniformly (seeded) to the minority's count -- so a batch without any "No" yields nothing -- and the
  result is shuffled with the same seed.  The prompt wording (:data:`DEFAULT_TEMPLATE`) is ours.
* **Reward** (:func:`verification_reward`): 1 when the verdict matches the label, else 0.  Inferred: the verdict is
  the content of the last ``\\boxed{...}`` if any, else the last standalone "yes"/"no" (case-insensitive) after any
  ``</think>``; no verdict scores 0.
* **Schedule** (:class:`SelfVerifySchedule`): one verification step after every ``every`` = 5 generation steps
  (configurable); steps are numbered from 0, so with ``every=5`` steps 5, 11, 17, ... verify.
* **Loss** (inferred): the verification rollouts are trained with the same policy loss as generation -- by default
  GRPO (``base="grpo"``), with group-relative advantages of the verification rewards.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import ClassVar, Optional, Sequence

from .base import Objective
from .registry import get_objective, register_objective

__all__ = ["SelfVerify", "SelfVerifySchedule", "VerificationExample", "build_verification_examples",
           "verification_reward", "parse_verdict", "DEFAULT_TEMPLATE"]

DEFAULT_TEMPLATE = ("{question}\n\nHere is a proposed solution:\n{response}\n\nIs this solution correct? "
                    "Answer with Yes or No.")


@dataclass(frozen=True)
class VerificationExample:
    """One verification prompt: ``prompt`` (what the model sees), ``label`` ("Yes" / "No"), the source ``question``,
    ``response`` and ``group`` index."""

    prompt: str
    label: str
    question: str
    response: str
    group: int


def build_verification_examples(questions: Sequence[str], responses: Sequence[Sequence[str]],
                                correct: Sequence[Sequence[bool]], *, seed: int, template: str = DEFAULT_TEMPLATE,
                                balance: bool = True) -> list[VerificationExample]:
    """Verification examples from generation groups (``questions[g]`` with rollouts ``responses[g]`` and labels
    ``correct[g]``); deterministic for a given ``seed``.  See the module docstring for the rules."""
    if not (len(questions) == len(responses) == len(correct)):
        raise ValueError("build_verification_examples: questions, responses and correct must have the same length")
    rng = random.Random(seed)
    yes: list[VerificationExample] = []
    no: list[VerificationExample] = []

    def make(g, i, label):
        q, r = questions[g], responses[g][i]
        return VerificationExample(template.format(question=q, response=r), label, q, r, g)

    for g, (rs, cs) in enumerate(zip(responses, correct)):
        if len(rs) != len(cs):
            raise ValueError(f"group {g}: {len(rs)} responses but {len(cs)} correctness labels")
        right = [i for i, c in enumerate(cs) if c]
        wrong = [i for i, c in enumerate(cs) if not c]
        if not right:  # all wrong (or empty): skipped
            continue
        yes.append(make(g, rng.choice(right), "Yes"))
        if wrong:  # mixed group: one of each
            no.append(make(g, rng.choice(wrong), "No"))
    if balance:
        k = min(len(yes), len(no))
        yes = sorted(rng.sample(yes, k), key=lambda e: e.group) if len(yes) > k else yes
        no = sorted(rng.sample(no, k), key=lambda e: e.group) if len(no) > k else no
    out = yes + no
    rng.shuffle(out)
    return out


_BOXED = re.compile(r"\\boxed\{\s*(yes|no)\s*\}", re.IGNORECASE)
_WORD = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def parse_verdict(text: str) -> Optional[str]:
    """"Yes" / "No" / None from a verification response (last ``\\boxed{}``, else last yes/no word, after any
    ``</think>``)."""
    tail = text.rsplit("</think>", 1)[-1]
    found = _BOXED.findall(tail) or _WORD.findall(tail)
    return found[-1].capitalize() if found else None


def verification_reward(text: str, label: str) -> float:
    """1.0 when the parsed verdict equals ``label`` ("Yes" / "No"), else 0.0."""
    if label not in ("Yes", "No"):
        raise ValueError(f"label must be 'Yes' or 'No'; got {label!r}")
    return 1.0 if parse_verdict(text) == label else 0.0


@dataclass(frozen=True)
class SelfVerifySchedule:
    """One verification step after every ``every`` generation steps (steps numbered from 0)."""

    every: int = 5

    def __post_init__(self):
        if not isinstance(self.every, int) or self.every < 1:
            raise ValueError(f"SelfVerifySchedule.every must be an int >= 1; got {self.every!r}")

    def is_verification_step(self, step: int) -> bool:
        return (step + 1) % (self.every + 1) == 0

    def kind(self, step: int) -> str:
        return "verification" if self.is_verification_step(step) else "generation"


@register_objective
@dataclass(kw_only=True)
class SelfVerify(Objective):
    """Self-verification: the policy loss of the verification steps (``base`` objective, GRPO by default) plus the
    data builder, reward and schedule as methods."""

    name: ClassVar[str] = "self_verify"
    source: ClassVar[str] = "verified"
    every: int = 5
    base: str = "grpo"
    base_params: dict = field(default_factory=dict)
    template: str = DEFAULT_TEMPLATE
    balance: bool = True

    def __post_init__(self):
        self.schedule()
        if self.base == self.name:
            raise ValueError("SelfVerify.base cannot be 'self_verify'")
        self.loss_objective()

    def schedule(self) -> SelfVerifySchedule:
        return SelfVerifySchedule(self.every)

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
        """Verification steps on the schedule around the trainer's generation source."""
        from lckernels_rl.train.sources import SelfVerificationSource

        return SelfVerificationSource(source, self)

    @staticmethod
    def reward(text: str, label: str) -> float:
        return verification_reward(text, label)

    def __call__(self, log_prob, old_log_prob, advantages, response_mask, rollout_log_prob=None, ref_log_prob=None,
                 **extra):
        return self.loss_objective()(log_prob, old_log_prob, advantages, response_mask, rollout_log_prob,
                                     ref_log_prob, **extra)

    def fused(self, hidden, lm_head_weight, targets, advantages, old_log_prob=None, response_mask=None,
              rollout_log_prob=None, ref_log_prob=None, **kwargs):
        return self.loss_objective().fused(hidden, lm_head_weight, targets, advantages, old_log_prob, response_mask,
                                           rollout_log_prob, ref_log_prob, **kwargs)
