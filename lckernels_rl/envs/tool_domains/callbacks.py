"""``NoiseCurriculumCallback``: the trainer drives the noise curriculum of :class:`~.noise.NoiseWrapper`.

LongCat-Flash-Thinking-2601 (arXiv 2601.16725) §3.3.3 trains with noise on part of the rollouts and raises the noise
difficulty as the policy copes (INFERRED from third-party summaries; the report text was not readable here).  The
rule (ours, INFERRED): after each RL step, the step's verified episodes feed a :class:`~.noise.NoiseCurriculum`
(clean and noisy windows); when ``mean(clean) - mean(noisy) < threshold`` over at least ``min_episodes`` of each,
the level moves to the next of ``levels`` and the callback calls ``trainer.set_env_args(noise={..., level: new})``,
so the environments built from then on use it.

Where the clean / noisy success comes from: the trainer's step metrics have no clean/noisy split, so the callback
sets ``noise.outcomes`` to its channel; every training environment's wrapper records ``(noisy, reward)`` there on
``verify()`` (:func:`~.noise.record_outcome`), and the callback drains the channel at each step's end (outcomes of
warm-up steps are dropped).  It writes ``noise_level``, ``noise_clean_success``, ``noise_noisy_success``,
``noise_gap`` and ``noise_level_raised`` into the step's metrics (so they are logged).  Evaluation environments
keep ``task.eval_env_args`` (give them a fixed ``noise`` or ``null``).  The internal ``curriculum`` option of the
wrapper (a process-wide curriculum without a trainer) is removed from the noise arguments the callback sets.

Config::

    callbacks:
      - target: noise_curriculum   # or lckernels_rl.envs.tool_domains.callbacks:NoiseCurriculumCallback
        args: {levels: [0.2, 0.4, 0.6], threshold: 0.1, window: 64, min_episodes: 16}
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

from lckernels_rl.train.callbacks import TrainerCallback, register_callback

from .noise import NoiseCurriculum, drain_outcomes

__all__ = ["NoiseCurriculumCallback"]


class NoiseCurriculumCallback(TrainerCallback):
    """Raise the training noise level as the clean-minus-noisy success gap closes.

    Args:
        levels / threshold / window / min_episodes: the :class:`~.noise.NoiseCurriculum`.
        noise: the base :class:`~.noise.NoiseWrapper` arguments when the config's ``task.env_args.noise`` is
            ``null`` (default ``{"fraction": 0.5}``); the config's own noise dict wins otherwise.
        channel: the outcome channel name (one per concurrently running trainer in a process).
    """

    def __init__(self, levels: Sequence[float] = (0.2, 0.4, 0.6, 0.8, 1.0), threshold: float = 0.1,
                 window: int = 64, min_episodes: int = 16, noise: Optional[dict] = None,
                 channel: str = "noise_curriculum"):
        if noise is not None and not isinstance(noise, dict):
            raise TypeError(f"NoiseCurriculumCallback: `noise` must be None or a dict; got {type(noise).__name__}")
        if not isinstance(channel, str) or not channel:
            raise ValueError(f"NoiseCurriculumCallback: `channel` must be a non-empty str; got {channel!r}")
        self.curriculum = NoiseCurriculum(levels, threshold, window, min_episodes)
        self.default_noise = dict(noise or {"fraction": 0.5})
        self.channel = channel
        self.base: dict = {}

    def _noise_args(self, trainer) -> dict:
        args = dict(getattr(trainer.config.task, "env_args", {}) or {})
        args.update((getattr(trainer, "env_overrides", None) or {}).get("train", {}))
        noise = args.get("noise")
        if noise is not None and not isinstance(noise, dict):
            raise TypeError(f"NoiseCurriculumCallback: task.env_args.noise must be a dict or null; got {noise!r}")
        return dict(noise) if noise else dict(self.default_noise)

    def _apply(self, trainer) -> None:
        trainer.set_env_args(noise={**self.base, "level": self.curriculum.level, "outcomes": self.channel})

    def on_train_begin(self, trainer) -> None:
        base = self._noise_args(trainer)
        base.pop("curriculum", None)  # the wrapper's own process-wide curriculum would fight this one
        self.base = {k: v for k, v in base.items() if k not in ("level", "outcomes")}
        drain_outcomes(self.channel)  # nothing from an earlier run of this process
        self._apply(trainer)

    def on_step_end(self, trainer, metrics: dict) -> None:
        outcomes = drain_outcomes(self.channel)
        if metrics.get("phase") != "rl":  # the warm-up's scripted demonstrations are not the policy's outcomes
            return
        clean = [r for n, r in outcomes if not n]
        noisy = [r for n, r in outcomes if n]
        before = self.curriculum.stage
        for n, r in outcomes:
            self.curriculum.record(n, r)
        mean = (lambda xs: sum(xs) / len(xs) if xs else math.nan)
        metrics.update(noise_level=self.curriculum.level, noise_clean_success=mean(clean),
                       noise_noisy_success=mean(noisy), noise_gap=mean(clean) - mean(noisy),
                       noise_level_raised=float(self.curriculum.stage != before))
        if self.curriculum.stage != before:
            self._apply(trainer)

    def state_dict(self) -> dict:
        return {"curriculum": self.curriculum.state_dict(), "base": dict(self.base)}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or "curriculum" not in state:
            raise ValueError(f"NoiseCurriculumCallback.load_state_dict: expected {{curriculum, base}}; got {state!r}")
        self.curriculum.load_state_dict(state["curriculum"])
        self.base = dict(state.get("base") or {})


register_callback("noise_curriculum", NoiseCurriculumCallback)
