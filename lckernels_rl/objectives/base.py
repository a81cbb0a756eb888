"""The objective interface shared by every module of :mod:`lckernels_rl.objectives`.

An objective is a small dataclass of its paper's parameters with two entry points that give the same loss and the
same gradients:

* ``objective(log_prob, old_log_prob, advantages, response_mask, rollout_log_prob=None, ref_log_prob=None, **extra)``
  on per-token tensors (``log_prob`` [B, T] differentiable, e.g. from :func:`lckernels.fused_logprobs`);
* ``objective.fused(hidden, lm_head_weight, targets, advantages, old_log_prob=None, response_mask=None, ...)`` from
  the hidden states [B, T, D] and the lm_head weight [V, D] through :func:`lckernels.fused_policy_loss` (the N x V
  logits are never built).

Both return ``(loss, metrics)``: a scalar tensor and a ``dict[str, float]`` (``loss`` plus the kernel's statistics,
see :class:`lckernels.PolicyLossOutput`).  ``fused(..., return_logprobs=True)`` also returns the detached [B, T]
log-probs, the next epoch's ``old_log_prob``.

Conventions: ``old_log_prob=None`` means on-policy (ratio 1 with its gradient); ``response_mask`` nonzero = in the
loss; ``advantages`` is [B] (one per sequence) or [B, T]; ``temperature`` divides the logits in the fused path and
must already be applied to ``log_prob`` in the per-token path.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

import lckernels
from lckernels import PolicyLossConfig

__all__ = ["Objective", "ObjectiveContext", "PolicyObjective", "SOURCES", "to_metrics", "aggregation_weights", "expand_advantages"]

SOURCES = ("verified", "third-party", "inferred")


def to_metrics(loss: torch.Tensor, stats: dict, prefix: str = "") -> dict[str, float]:
    """``{prefix + "loss": float(loss), prefix + stat: float, ...}``."""
    out = {prefix + "loss": float(loss.detach())}
    out.update({prefix + k: float(v) for k, v in stats.items()})
    return out


def expand_advantages(advantages: torch.Tensor, shape) -> torch.Tensor:
    """[B] or [B, T] -> [B, T] fp32."""
    adv = advantages.float()
    if adv.dim() == 1:
        adv = adv[:, None]
    return adv.expand(shape)


# The per-token weights of ``PolicyLossConfig.loss_agg``: the kernel's own (one implementation, in lckernels).
aggregation_weights = lckernels.loss_agg_weights


@dataclass
class ObjectiveContext:
    """What a trainer hands to :meth:`Objective.batch_inputs`.

    Attributes:
        advantage_fn: the configured estimator, ``advantage_fn(rewards [B], group_index [B]) -> [B]``.
        teacher: a frozen ``*ForCausalLM`` (when the objective asked for ``"teacher"``), else ``None``.
        backend: the lckernels backend of the loss.
    """

    advantage_fn: object
    teacher: object = None
    backend: str = "auto"


class Objective:
    """Base of every objective.  Subclasses are keyword-only dataclasses of their parameters and set:

    * ``name`` -- registry name (``get_objective(name)``; verl registers it as ``lck_<name>``);
    * ``source`` -- ``"verified"`` (from the authors' code or report), ``"third-party"`` (from notes by others) or
      ``"inferred"`` (from the abstract); the module docstring details what rests on what;
    * ``extra_inputs`` -- keyword tensors beyond the per-token ones (e.g. ``schema_mask``), all listed so trainers
      can forward them; ``required_inputs`` -- those the per-token path cannot run without;
      ``uses_rollout_log_prob`` -- the objective itself consumes the inference engine's log-probs;
      ``supports_token_weight`` -- accepts ``token_weight=`` (a per-token factor on the policy-gradient term).
    """

    name: ClassVar[str] = ""
    source: ClassVar[str] = ""
    extra_inputs: ClassVar[tuple[str, ...]] = ()
    required_inputs: ClassVar[tuple[str, ...]] = ()
    uses_rollout_log_prob: ClassVar[bool] = False
    supports_token_weight: ClassVar[bool] = False

    def __call__(self, log_prob, old_log_prob, advantages, response_mask, rollout_log_prob=None, ref_log_prob=None,
                 **extra):
        raise NotImplementedError

    def fused(self, hidden, lm_head_weight, targets, advantages, old_log_prob=None, response_mask=None,
              rollout_log_prob=None, ref_log_prob=None, *, backend: str = "auto", return_logprobs: bool = False,
              **extra):
        raise NotImplementedError

    # ---------------------------------------------------------------- trainer hooks
    # A trainer never names an objective: it asks the objective what it needs through these hooks.

    def context_requirements(self) -> frozenset:
        """What the trainer must provide: ``"reference"`` (a frozen reference policy: ``ref_log_prob`` for a KL
        penalty) and/or ``"teacher"`` (a frozen teacher in the :class:`ObjectiveContext`)."""
        return frozenset({"reference"}) if getattr(self, "kl_beta", 0.0) else frozenset()

    def batch_inputs(self, batch, ctx) -> dict:
        """Extra keyword inputs of the loss built from a packed batch (:class:`lckernels_rl.train.RLBatch`) and the
        trainer's :class:`ObjectiveContext`; a key ``"advantages"`` replaces the estimator's advantages."""
        return {}

    def tokenizer_text(self) -> str:
        """Text the objective itself puts in prompts or expects in answers (character tokenizers must cover it)."""
        return ""

    def wrap_source(self, source):
        """The rollout source the trainer should draw from, given its default one (e.g. Self-Verify's schedule)."""
        return source

    def replace(self, **changes) -> "Objective":
        """A copy with some parameters changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def _reject_unknown(self, extra: dict, allowed: tuple[str, ...] = ()):
        unknown = sorted(set(extra) - set(allowed))
        if unknown:
            raise TypeError(f"objective {self.name!r}: unexpected keyword argument(s) {unknown}; it accepts "
                            f"{sorted(allowed) or 'no extra inputs'}")


def _token_weight(cfg: PolicyLossConfig, token_weight: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Check a per-token multiplicative weight w >= 0 on the policy-gradient term (e.g. verl's precomputed
    ``rollout_is_weights``) and return it detached, for the kernel's ``pg_weight`` (exact for every mode)."""
    if cfg.needs_rollout_logprobs:
        raise ValueError("token_weight cannot be combined with an objective that applies its own rollout correction "
                         f"(mode={cfg.mode!r}, rollout_correction={cfg.rollout_correction!r}); pass rollout_log_prob")
    if not isinstance(token_weight, torch.Tensor):
        raise TypeError(f"token_weight must be a torch.Tensor; got {type(token_weight).__name__}")
    w = token_weight.detach().float()
    if tuple(w.shape) != tuple(like.shape):
        raise ValueError(f"token_weight must have shape [B, T] = {tuple(like.shape)}; got {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError("token_weight must be finite and >= 0")
    return w


@dataclass(kw_only=True)
class PolicyObjective(Objective):
    """An objective that is one :class:`lckernels.PolicyLossConfig`: subclasses give ``_mode_config()`` (mode and its
    parameters) and the defaults of the shared fields below.

    Attributes:
        loss_agg: ``PolicyLossConfig.loss_agg``.
        loss_norm_constant: the constant of ``"seq-mean-token-sum-norm"`` (``None`` = T, the padded length).
        kl: KL estimator against the reference policy (``"k1"`` / ``"k3"``); computed whenever ``ref_log_prob`` is
            given (reported as ``kl_mean``), added to the loss with ``kl_beta``.
        kl_beta: KL coefficient (0: no penalty; > 0 requires ``ref_log_prob``).
        kl_ratio_weighted: multiply each token's KL by the importance ratio r = π_θ/π_old (differentiable), the
            unbiased reverse-KL gradient of DeepSeek-V3.2 (TRL's ``use_bias_correction_kl``; for GSPO the sequence
            ratio) -- the kernel's ``PolicyLossConfig.kl_ratio_weighted`` (no extra pass over the logits).
        entropy_coef: subtracts ``entropy_coef`` x aggregated entropy (the per-token path then needs ``entropy=``).
        temperature: logits temperature of the fused path.
        nonfinite: ``PolicyLossConfig.nonfinite``.
        ignore_index: target id that masks a position in the fused path.
        rollout_correction: the kernel's train/inference-mismatch correction from the engine's per-token log-probs
            (``None``, ``"token_truncate"`` (TIS), ``"token_mask"``, ``"sequence_truncate"``, ``"sequence_mask"``;
            ``PolicyLossConfig.rollout_correction``), with ``rc_threshold`` / ``rc_threshold_low``.  With it the
            objective takes ``rollout_log_prob`` -- in asynchronous training, those of the policy version that
            sampled each token, so stale tokens are importance-weighted.  An objective whose mode already fixes a
            correction (``lcft_tis``) rejects a different one.
    """

    loss_agg: str = "token-mean"
    loss_norm_constant: Optional[float] = None
    kl: str = "k3"
    kl_beta: float = 0.0
    kl_ratio_weighted: bool = False
    entropy_coef: float = 0.0
    temperature: float = 1.0
    nonfinite: str = "error"
    ignore_index: int = -100
    rollout_correction: Optional[str] = None
    rc_threshold: float = 2.0
    rc_threshold_low: Optional[float] = None
    supports_token_weight: ClassVar[bool] = True

    def __post_init__(self):
        self.policy_config(with_ref=True)  # validate every parameter now, not at the first batch

    def _mode_config(self) -> dict:
        raise NotImplementedError

    def policy_config(self, *, with_ref: bool = False) -> PolicyLossConfig:
        """The :class:`lckernels.PolicyLossConfig` of this objective (``with_ref``: a reference is available)."""
        kw = dict(loss_agg=self.loss_agg, loss_norm_constant=self.loss_norm_constant,
                  kl=self.kl if with_ref else None, kl_beta=self.kl_beta if with_ref else 0.0,
                  kl_ratio_weighted=self.kl_ratio_weighted,
                  entropy_coef=self.entropy_coef, temperature=self.temperature, nonfinite=self.nonfinite,
                  ignore_index=self.ignore_index)
        if self.rollout_correction is not None:
            kw.update(rollout_correction=self.rollout_correction, rc_threshold=self.rc_threshold,
                      rc_threshold_low=self.rc_threshold_low)
        mode = self._mode_config()  # the mode may pin a shared field (e.g. lcft_tis's T_max)
        if self.rollout_correction is not None and mode.get("rollout_correction", self.rollout_correction) \
                != self.rollout_correction:
            raise ValueError(f"objective {self.name!r} fixes rollout_correction={mode['rollout_correction']!r}; "
                             f"got rollout_correction={self.rollout_correction!r}")
        kw.update(mode)
        return PolicyLossConfig(**kw)

    def _config_for(self, ref_log_prob, rollout_log_prob=None) -> PolicyLossConfig:
        if (self.uses_rollout_log_prob or self.rollout_correction is not None) and rollout_log_prob is None:
            raise ValueError(f"objective {self.name!r} needs rollout_log_prob (the inference engine's log-probs)")
        if self.kl_beta and ref_log_prob is None:
            raise ValueError(f"objective {self.name!r}: kl_beta={self.kl_beta} needs ref_log_prob")
        return self.policy_config(with_ref=ref_log_prob is not None)

    def __call__(self, log_prob, old_log_prob, advantages, response_mask, rollout_log_prob=None, ref_log_prob=None,
                 *, entropy: Optional[torch.Tensor] = None, token_weight: Optional[torch.Tensor] = None, **extra):
        """Per-token path.  ``entropy`` [B, T]: needed when ``entropy_coef != 0``.  ``token_weight`` [B, T] >= 0:
        multiplies each token's policy-gradient term (verl's ``rollout_is_weights``; the kernel's ``pg_weight``)."""
        self._reject_unknown(extra)
        cfg = self._config_for(ref_log_prob, rollout_log_prob)
        if self.entropy_coef and entropy is None:
            raise ValueError(f"objective {self.name!r}: entropy_coef={self.entropy_coef} needs entropy= on the "
                             "per-token path (lckernels.fused_logprobs(..., return_entropy=True))")
        pg_weight = None if token_weight is None else _token_weight(cfg, token_weight, log_prob)
        loss, stats = lckernels.policy_loss_from_logprobs(
            log_prob, advantages, old_log_prob, mask=response_mask, rollout_logprobs=rollout_log_prob,
            ref_logprobs=ref_log_prob, entropy=entropy, pg_weight=pg_weight, config=cfg)
        return loss, to_metrics(loss, stats)

    def fused(self, hidden, lm_head_weight, targets, advantages, old_log_prob=None, response_mask=None,
              rollout_log_prob=None, ref_log_prob=None, *, token_weight: Optional[torch.Tensor] = None,
              backend: str = "auto", return_logprobs: bool = False, **extra):
        """Fused path: ``hidden`` [B, T, D], ``lm_head_weight`` [V, D], ``targets`` [B, T] (``ignore_index``
        masks), the rest as in ``__call__``."""
        self._reject_unknown(extra)
        cfg = self._config_for(ref_log_prob, rollout_log_prob)
        pg_weight = None if token_weight is None else _token_weight(cfg, token_weight, targets)
        out = lckernels.fused_policy_loss(hidden, lm_head_weight, targets, advantages, old_log_prob,
                                          mask=response_mask, rollout_logprobs=rollout_log_prob,
                                          ref_logprobs=ref_log_prob, pg_weight=pg_weight, config=cfg,
                                          backend=backend)
        metrics = to_metrics(out.loss, out.stats)
        return (out.loss, metrics, out.logprobs) if return_logprobs else (out.loss, metrics)
