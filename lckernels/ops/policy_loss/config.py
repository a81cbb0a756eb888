"""``PolicyLossConfig``: every knob of ``fused_policy_loss`` in one validated dataclass."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

MODES = ("clip", "dual_clip", "gspo", "cispo", "sapo", "maspo", "hispo")
LOSS_AGGS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
ROLLOUT_CORRECTIONS = (None, "token_truncate", "token_mask", "sequence_truncate", "sequence_mask")
KLS = (None, "k1", "k3")


@dataclass(frozen=True)
class PolicyLossConfig:
    """Configuration of :func:`lckernels.fused_policy_loss`.

    Policy-gradient term (``mode``), with r = exp(clamp(log pi - log pi_old, +-20)) and A the advantage:

    * ``"clip"``      PPO / GRPO / DAPO: max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high)).  DAPO = eps_high 0.28
                      with ``loss_agg="token-mean"``.
    * ``"dual_clip"`` the above, and for A < 0 capped at -A * clip_c (Ye et al. 2020, as verl).
    * ``"gspo"``      sequence-level ratio s = exp(mean_t(log pi - log pi_old)) clipped with eps_low/eps_high
                      (the GSPO paper uses 3e-4 / 4e-4 and ``loss_agg="seq-mean-token-mean"``); per-token form
                      s_t = sg(s) * pi_t / sg(pi_t), so every token of a sequence shares the sequence's clip.
    * ``"cispo"``     MiniMax-M1: -sg(clip(r, 1 - cispo_eps_low, 1 + cispo_eps_high)) * A * log pi (the IS weight is
                      truncated and detached, every token keeps a gradient).
    * ``"sapo"``      soft gate -A * sigmoid(tau (r - 1)) * 4 / tau, tau = tau_pos for A > 0 else tau_neg.
    * ``"maspo"``     -A * sg(w) * r with the mass-adaptive Gaussian gate w (see
                      :func:`lckernels.soft_gaussian_gate`).
    * ``"hispo"``     LongCat-Flash-Prover HisPO: r = r_stale = pi / pi_old_train; tokens kept by the hierarchical mask
                      H = 1[|exp(mean_t log r_dis) - 1| < hispo_delta_seq] * 1[|r_dis_t - 1| < hispo_delta_tok],
                      r_dis = pi_old_train / mu_infer (needs ``rollout_logprobs``); triplet clip
                      min(r A, clip(r, 1 - eps_neg_low, 1 + eps_pos_high) A), and for A < 0 at most -A * eps_neg_high
                      in the loss (a dual clip).  The report publishes no values: the defaults here are ours.

    ``loss_agg`` (how per-token terms become one scalar; masked tokens never count):
    ``"token-mean"`` (sum over tokens / number of valid tokens), ``"seq-mean-token-sum"`` (mean over sequences with a
    valid token of the per-sequence token sum), ``"seq-mean-token-mean"`` (mean over such sequences of per-sequence
    token means), ``"seq-mean-token-sum-norm"`` (Dr. GRPO: sum over all tokens / (B * loss_norm_constant), a constant
    denominator; ``loss_norm_constant=None`` means T, the padded length).

    ``rollout_correction`` (train/inference mismatch, weights w = pi_old / mu from ``old_logprobs`` and
    ``rollout_logprobs``, log-ratios clamped to +-20): ``"token_truncate"`` multiplies each token's term by
    min(w_t, rc_threshold) (TIS); ``"token_mask"`` drops tokens with w_t outside [rc_threshold_low, rc_threshold];
    ``"sequence_truncate"`` multiplies by min(prod_t w_t, rc_threshold); ``"sequence_mask"`` drops sequences whose
    prod_t w_t is outside [rc_threshold_low, rc_threshold].  ``rc_threshold_low=None`` means 1 / rc_threshold.

    ``kl``: ``"k1"`` (log pi - log pi_ref) or ``"k3"`` (exp(ref - lp) - (ref - lp) - 1), added as ``kl_beta`` times
    the same aggregation; needs ``ref_logprobs``.  ``kl_ratio_weighted=True`` multiplies each token's KL in the loss
    by the importance ratio r = exp(clamp(log pi - log pi_old, +-20)), differentiable (not detached; on-policy
    r = 1 with its gradient) -- the unbiased reverse-KL gradient of DeepSeek-V3.2 (TRL's ``use_bias_correction_kl``);
    for mode ``"gspo"`` r is the sequence ratio s = exp(clamp(mean_t(log pi - log pi_old), +-20)), differentiable
    through every token of the sequence.  ``stats["kl_mean"]`` stays the unweighted KL; without ``kl`` / with
    ``kl_beta=0`` the option has no effect.  ``entropy_coef`` subtracts coef * aggregated entropy.

    ``nonfinite``: what to do with NaN/inf in ``old_logprobs``/``rollout_logprobs``/``ref_logprobs``/``advantages``
    /``pg_weight`` on valid tokens: ``"error"`` (default, a ValueError naming the tensor) or ``"mask"`` (drop those
    tokens, counted in ``stats["nonfinite_frac"]``).
    """

    mode: str = "clip"
    eps_low: float = 0.2
    eps_high: float = 0.2
    clip_c: float = 3.0
    cispo_eps_low: float = 1.0
    cispo_eps_high: float = 4.0
    tau_pos: float = 1.0
    tau_neg: float = 1.05
    # MASPO (arXiv 2602.17550; defaults from the authors' code)
    maspo_sigma_base: float = 1.0
    maspo_alpha: float = 0.3
    maspo_beta_pos: float = 0.03
    maspo_beta_neg: float = 0.03
    maspo_sigma_high: float = 10.0
    maspo_a_low: float = 0.1
    maspo_a_high: float = 10.0
    # HisPO (LongCat-Flash-Prover report, section 3.3; no published defaults -- ours)
    hispo_delta_seq: float = 0.1
    hispo_delta_tok: float = 1.0
    hispo_eps_neg_low: float = 0.2
    hispo_eps_neg_high: float = 3.0
    hispo_eps_pos_high: float = 0.28
    temperature: float = 1.0
    loss_agg: str = "token-mean"
    loss_norm_constant: Optional[float] = None
    rollout_correction: Optional[str] = None
    rc_threshold: float = 2.0
    rc_threshold_low: Optional[float] = None
    kl: Optional[str] = None
    kl_beta: float = 0.0
    kl_ratio_weighted: bool = False
    entropy_coef: float = 0.0
    nonfinite: str = "error"
    ignore_index: int = -100

    def __post_init__(self):
        def choice(name, allowed):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"PolicyLossConfig.{name} must be one of {', '.join(map(repr, allowed))}; "
                                 f"got {value!r}")

        choice("mode", MODES)
        choice("loss_agg", LOSS_AGGS)
        choice("rollout_correction", ROLLOUT_CORRECTIONS)
        choice("kl", KLS)
        choice("nonfinite", ("error", "mask"))
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("mode", "loss_agg", "rollout_correction", "kl", "nonfinite", "ignore_index",
                          "kl_ratio_weighted"):
                continue
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or abs(v) == float("inf"):
                raise TypeError(f"PolicyLossConfig.{f.name} must be a finite number; got {v!r}")
        for name in ("eps_low", "eps_high", "cispo_eps_low", "cispo_eps_high", "hispo_eps_neg_low",
                     "hispo_eps_pos_high", "kl_beta", "maspo_alpha", "maspo_beta_pos", "maspo_beta_neg"):
            if getattr(self, name) < 0:
                raise ValueError(f"PolicyLossConfig.{name} must be >= 0; got {getattr(self, name)}")
        for name in ("clip_c", "tau_pos", "tau_neg", "maspo_sigma_base", "maspo_sigma_high", "maspo_a_low",
                     "maspo_a_high", "hispo_delta_seq", "hispo_delta_tok", "hispo_eps_neg_high", "temperature",
                     "rc_threshold"):
            if getattr(self, name) <= 0:
                raise ValueError(f"PolicyLossConfig.{name} must be > 0; got {getattr(self, name)}")
        if self.eps_low >= 1 and self.mode in ("clip", "dual_clip", "gspo"):
            raise ValueError(f"PolicyLossConfig.eps_low must be < 1 (lower clip bound 1 - eps_low > 0); got {self.eps_low}")
        if self.mode == "dual_clip" and self.clip_c <= 1:
            raise ValueError(f"PolicyLossConfig.clip_c must be > 1 for dual_clip; got {self.clip_c}")
        if self.loss_norm_constant is not None and self.loss_norm_constant <= 0:
            raise ValueError(f"PolicyLossConfig.loss_norm_constant must be > 0; got {self.loss_norm_constant}")
        if self.rc_threshold_low is not None and not (0 < self.rc_threshold_low < self.rc_threshold):
            raise ValueError("PolicyLossConfig.rc_threshold_low must lie in (0, rc_threshold); "
                             f"got {self.rc_threshold_low}")
        if self.maspo_a_low > self.maspo_a_high or self.maspo_sigma_base > self.maspo_sigma_high:
            raise ValueError("PolicyLossConfig: MASPO bounds need maspo_a_low <= maspo_a_high and "
                             "maspo_sigma_base <= maspo_sigma_high")
        if not isinstance(self.kl_ratio_weighted, bool):
            raise TypeError(f"PolicyLossConfig.kl_ratio_weighted must be a bool; got {self.kl_ratio_weighted!r}")
        if isinstance(self.ignore_index, bool) or not isinstance(self.ignore_index, int):
            raise TypeError(f"PolicyLossConfig.ignore_index must be an int; got {self.ignore_index!r}")

    @property
    def needs_rollout_logprobs(self) -> bool:
        return self.mode == "hispo" or self.rollout_correction is not None

    @property
    def sequence_coupled(self) -> bool:
        """True when a token's loss depends on other tokens' current log-probs (GSPO's sequence ratio)."""
        return self.mode == "gspo"
