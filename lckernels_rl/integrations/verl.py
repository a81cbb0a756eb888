"""verl adapter: every objective as a verl policy loss ``lck_<name>``, the outcome-reward advantage estimators as
``lck_<name>`` advantage estimators.

verl is imported lazily (only by :func:`register`), so ``import lckernels_rl`` works without it.  Installing
lckernels adds the module :mod:`lckernels_rl.integrations.verl_plugin` to the ``verl.plugins`` entry-point group;
``import verl`` loads that group, so the names are registered in the driver and in every Ray worker without any
import in the user's script.  Select one with ``actor_rollout_ref.actor.policy_loss.loss_mode=lck_dapo``.

What verl passes, verified against ``verl/trainer/ppo/core_algos.py`` and ``verl/workers/actor/dp_actor.py``
(verl-project/verl main, 2026), and tested against verl 0.9.1, where the caller is ``ppo_loss`` in
``verl/workers/utils/losses.py`` (tests/rl/test_integrations_verl.py): ``register_policy_loss(name)`` and
``register_adv_est(name)`` are decorator factories; the actor calls ``policy_loss_fn(old_log_prob=, log_prob=,
advantages=, response_mask=, loss_agg_mode=, config=, rollout_is_weights=)`` -> ``(pg_loss, metrics: dict)``,
where ``config`` is the actor config (``clip_ratio``, ``clip_ratio_low``, ``clip_ratio_high``, ``clip_ratio_c``,
``tau_pos``, ``tau_neg``,
``global_batch_info`` = {dp_size, batch_num_tokens, global_batch_size, loss_scale_factor}) and ``rollout_is_weights``
are precomputed per-token train/inference weights that multiply the policy-gradient term.  Advantage estimators are
called as ``fn(token_level_rewards=, response_mask=, config=, index=uid array[, reward_baselines=])`` ->
``(advantages, returns)``.  KL (``use_kl_loss``) and the entropy bonus are added by verl outside the policy loss, so
the objectives run here without them.

Mapping of verl's config onto the objectives (``host_config=True``, the default; ``False`` keeps the objectives'
own values):

* clip ranges: ``clip_ratio_low`` / ``clip_ratio_high`` (each falling back to ``clip_ratio``) -> ``eps_low`` /
  ``eps_high`` of grpo, dapo, dr_grpo, gspo, cispo (its IS-weight clip, as verl's own cispo), dual_track_grpo, aopd
  and self_verify's base; -> ``eps_neg_low`` / ``eps_pos_high`` of hispo and lcft_tis, whose ``eps_neg_high`` is
  ``clip_ratio_c``.  ``tau_pos`` / ``tau_neg`` -> sapo.  maspo keeps its own parameters.  As with verl's own losses,
  DAPO's clip-higher is ``clip_ratio_high=0.28`` in the verl config.
* aggregation: ``loss_agg_mode`` is used, except by the objectives that fix it by definition -- dapo (token-mean),
  dr_grpo and lcft_tis (seq-mean-token-sum-norm), gspo and sapo (seq-mean-token-mean, as verl's own sapo;
  verl 0.9.1's gspo follows ``loss_agg_mode`` and only recommends it).  ``"token-sum"`` is supported (the pinned
  ones ignore it).  The local loss is rescaled to verl's global normalization when
  ``config.global_batch_info`` carries ``dp_size`` / ``batch_num_tokens`` / ``global_batch_size`` (token-mean:
  x n_local_tokens * dp / batch_num_tokens; seq-mean-*: x n_local_seqs * dp / global_batch_size;
  seq-mean-token-sum-norm: verl divides by the number of non-empty sequences (or global_batch_size) times
  ``loss_scale_factor`` (default T) -- followed exactly, ``loss_scale_factor`` filling an unset ``loss_norm_constant``).
* ``rollout_is_weights``: a multiplicative factor on each token's policy-gradient term (exact for every mode; see
  :class:`~lckernels_rl.objectives.base.PolicyObjective`'s ``token_weight``).  lcft_tis and hispo read it as the
  train/inference ratio r(µ) = π_old/µ instead (``rollout_log_prob = old_log_prob - log w``): lcft_tis then applies
  its own min(r(µ), C); hispo's masks need the *untruncated* ratio, so configure verl's token-level rollout IS with a
  threshold above ``delta_tok``'s range.  Without weights both run with r(µ) = 1.
* Extra inputs (aopd's teacher, dual_track_grpo's schema track) are taken from keyword arguments of the call when
  a custom actor passes them; verl's stock actor does not, and the loss then raises a ``ValueError`` naming them.

Metrics: ``actor/pg_clipfrac`` (clip_frac_low + clip_frac_high), ``actor/ppo_kl`` (masked mean of
old − new log-prob), ``actor/pg_clipfrac_lower`` (dual-clip fraction for lcft_tis / hispo, else 0) and every finite
objective metric as ``actor/lck/<key>``.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable, Iterable, Mapping, Optional

import torch

import lckernels

from ..objectives import get_objective, list_objectives
from ..objectives.self_verify import SelfVerify

__all__ = ["register", "make_policy_loss", "make_adv_estimator", "OUTCOME_ESTIMATORS", "PREFIX"]

PREFIX = "lck_"
CORE_ALGOS = "verl.trainer.ppo.core_algos"
# estimators of lckernels_rl.advantages whose inputs verl provides (one scalar reward per response + group uid)
OUTCOME_ESTIMATORS = ("grpo", "dr_grpo", "batch_std")

_CLIP = {"eps_low": "clip_ratio_low", "eps_high": "clip_ratio_high"}
_TRIPLET = {"eps_neg_low": "clip_ratio_low", "eps_pos_high": "clip_ratio_high", "eps_neg_high": "clip_ratio_c"}
HOST_KEYS: dict[str, dict[str, str]] = {
    "grpo": _CLIP, "dapo": _CLIP, "dr_grpo": _CLIP, "gspo": _CLIP, "cispo": _CLIP, "dual_track_grpo": _CLIP,
    "aopd": _CLIP, "sapo": {"tau_pos": "tau_pos", "tau_neg": "tau_neg"}, "hispo": _TRIPLET, "lcft_tis": _TRIPLET,
    "maspo": {},
}
PINNED_AGG = ("dapo", "dr_grpo", "lcft_tis", "gspo", "sapo")

_CACHE: dict[tuple, Callable] = {}  # same function object on every register(): verl's register_adv_est demands it


def _core_algos():
    try:
        return importlib.import_module(CORE_ALGOS)
    except ImportError as e:
        raise ImportError("lckernels_rl.integrations.verl.register() needs verl (pip install 'lckernels[verl]'); "
                          f"importing {CORE_ALGOS} failed: {e}") from e


def _cfg_get(config, key: str, default=None):
    """``config.key`` for verl's dataclass configs, omegaconf DictConfigs and plain mappings."""
    if config is None:
        return default
    if isinstance(config, Mapping):
        return config.get(key, default)
    value = getattr(config, key, None)
    if value is None and callable(getattr(config, "get", None)):
        try:
            value = config.get(key, None)
        except Exception:  # noqa: BLE001 -- a config whose get() rejects unknown keys
            value = None
    return default if value is None else value


def _configure(base, config, loss_agg_mode: str, host_config: bool):
    obj = base.loss_objective() if isinstance(base, SelfVerify) else base
    fields = {f.name for f in dataclasses.fields(obj)}
    changes = {}
    if host_config:
        for field, key in HOST_KEYS.get(obj.name, {}).items():
            value = _cfg_get(config, key)
            if value is None and key in ("clip_ratio_low", "clip_ratio_high"):
                value = _cfg_get(config, "clip_ratio")
            if value is not None:
                changes[field] = float(value)
    if "loss_agg" in fields and obj.name not in PINNED_AGG:
        changes["loss_agg"] = "token-mean" if loss_agg_mode == "token-sum" else loss_agg_mode
    gbi = _cfg_get(config, "global_batch_info") or {}
    lsf = gbi.get("loss_scale_factor") if isinstance(gbi, Mapping) else None
    if lsf and "loss_norm_constant" in fields and obj.loss_norm_constant is None \
            and getattr(obj, "t_max", None) is None:
        changes["loss_norm_constant"] = float(lsf)
    return (obj.replace(**changes) if changes else obj), (gbi if isinstance(gbi, Mapping) else {})


def _global_scale(loss_agg: str, loss_agg_mode: str, mask: torch.Tensor, gbi: Mapping) -> float:
    """Factor turning our local aggregation into verl's ``agg_loss`` over the global batch."""
    valid = mask.bool()
    n_tok = int(valid.sum())
    n_seq = int((valid.sum(-1) > 0).sum())
    dp = gbi.get("dp_size") or 1
    if loss_agg == "token-mean":
        if loss_agg_mode == "token-sum":
            return float(n_tok * dp)
        bnt = gbi.get("batch_num_tokens")
        return float(n_tok * dp / bnt) if bnt else 1.0
    if loss_agg in ("seq-mean-token-sum", "seq-mean-token-mean"):
        gbs = gbi.get("global_batch_size")
        return float(n_seq * dp / gbs) if gbs else 1.0
    # seq-mean-token-sum-norm: ours divides by B * C, verl by (global_batch_size or n_seq) * C
    gbs = gbi.get("global_batch_size") or n_seq
    return float(mask.shape[0] * dp / max(gbs, 1))


def _as_float(x) -> float:
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


def make_policy_loss(name: str, *, params: Optional[dict] = None, host_config: bool = True) -> Callable:
    """A verl policy-loss function for objective ``name`` (``params`` override its defaults)."""
    base = get_objective(name, **(params or {}))

    def lck_policy_loss(old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor,
                        response_mask: torch.Tensor, loss_agg_mode: str = "token-mean", config=None,
                        rollout_is_weights: Optional[torch.Tensor] = None, **kwargs):
        obj, gbi = _configure(base, config, loss_agg_mode, host_config)
        extra = {k: kwargs.pop(k) for k in list(kwargs) if k in obj.extra_inputs}
        if kwargs:
            raise TypeError(f"{PREFIX}{name}: unexpected keyword argument(s) {sorted(kwargs)}")
        mask = response_mask
        adv = advantages
        call_kw = dict(extra)
        if obj.uses_rollout_log_prob:
            old = old_log_prob.detach().float()
            if rollout_is_weights is None:
                rollout = old
            else:
                w = rollout_is_weights.detach().float().expand_as(old)
                keep = w > 0
                rollout = old - torch.log(torch.where(keep, w, torch.ones_like(w)))
                adv = torch.where(keep, adv.float().expand_as(old), torch.zeros((), device=old.device))
            call_kw["rollout_log_prob"] = rollout
        elif rollout_is_weights is not None:
            if not obj.supports_token_weight:
                raise ValueError(f"{PREFIX}{name} does not support verl's rollout_is_weights; disable "
                                 "algorithm.rollout_correction for it")
            call_kw["token_weight"] = rollout_is_weights.expand_as(log_prob)
        missing = [k for k in obj.required_inputs if k not in extra]
        if missing:
            raise ValueError(f"{PREFIX}{name} needs extra inputs {missing} that verl's stock actor does not pass; "
                             "call it from an actor that passes them as keyword arguments")
        loss, m = obj(log_prob, old_log_prob, adv, mask, **call_kw)
        loss_agg = getattr(obj, "loss_agg", "token-mean")
        # a pinned aggregation ignores loss_agg_mode, "token-sum" included (DAPO stays a token-mean)
        host_mode = loss_agg if obj.name in PINNED_AGG else loss_agg_mode
        loss = loss * _global_scale(loss_agg, host_mode, mask, gbi)
        valid = mask.bool()
        n = max(int(valid.sum()), 1)
        with torch.no_grad():
            log_r = lckernels.log_ratio(log_prob.detach().float(), old_log_prob.float())  # +-20, as verl
            ppo_kl = float(torch.where(valid, -log_r, torch.zeros((), device=log_r.device)).sum()) / n
            lower = 0.0
            c = getattr(obj, "eps_neg_high", None)
            if c is not None:
                a = adv.float().expand_as(log_r)
                lower = float((valid & (a < 0) & (log_r.exp() > c)).sum()) / n
        metrics = {
            "actor/pg_clipfrac": m.get("clip_frac_low", 0.0) + m.get("clip_frac_high", 0.0),
            "actor/ppo_kl": ppo_kl,
            "actor/pg_clipfrac_lower": lower,
        }
        metrics.update({f"actor/lck/{k}": v for k, v in m.items() if v == v})
        return loss, metrics

    lck_policy_loss.__name__ = f"{PREFIX}{name}"
    lck_policy_loss.__qualname__ = lck_policy_loss.__name__
    lck_policy_loss.__doc__ = f"verl policy loss of objective {name!r} (see lckernels_rl.integrations.verl)."
    return lck_policy_loss


def make_adv_estimator(name: str) -> Callable:
    """A verl advantage estimator around ``lckernels_rl.advantages.get_estimator(name)`` for outcome rewards:
    scores = token_level_rewards.sum(-1), grouped by ``index`` (the prompt uid), broadcast over the response mask."""
    from .. import advantages as A

    fn = A.get_estimator(name)

    def lck_adv_estimator(token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index=None,
                          epsilon: float = 1e-6, config=None, **kwargs):
        scores = token_level_rewards.sum(dim=-1)
        idx = index if index is not None else [0] * scores.shape[0]
        with torch.no_grad():
            adv = fn(scores, idx, eps=epsilon).to(device=scores.device, dtype=scores.dtype)
            adv = adv[:, None] * response_mask
        return adv, adv

    lck_adv_estimator.__name__ = f"{PREFIX}{name}"
    lck_adv_estimator.__qualname__ = lck_adv_estimator.__name__
    return lck_adv_estimator


def register(objectives: Optional[Iterable[str]] = None, *, estimators: Optional[Iterable[str]] = None,
             params: Optional[dict] = None, host_config: bool = True) -> dict[str, list[str]]:
    """Register objectives with verl's ``register_policy_loss`` and estimators with ``register_adv_est``.

    Args:
        objectives: names (default: every objective of :func:`lckernels_rl.objectives.list_objectives`).
        estimators: names (default: :data:`OUTCOME_ESTIMATORS` present in :mod:`lckernels_rl.advantages`).
        params: ``{objective name: {parameter: value}}`` overriding the objectives' defaults.
        host_config: map verl's clip ratios / taus onto the objectives (module docstring).

    Returns:
        ``{"policy_losses": [...], "adv_estimators": [...]}``, the registered verl names.  Idempotent.
    """
    core = _core_algos()
    params = params or {}
    losses = []
    for name in (list_objectives() if objectives is None else list(objectives)):
        p = params.get(name, {})
        key = ("loss", name, repr(sorted(p.items())), host_config)
        if key not in _CACHE:
            _CACHE[key] = make_policy_loss(name, params=p, host_config=host_config)
        core.register_policy_loss(PREFIX + name)(_CACHE[key])
        losses.append(PREFIX + name)
    advs = []
    try:
        from .. import advantages as A
    except ImportError:  # the estimators are optional for the adapter
        A = None
    if A is not None:
        names = [n for n in OUTCOME_ESTIMATORS if n in A.list_estimators()] if estimators is None else list(estimators)
        for name in names:
            key = ("adv", name)
            if key not in _CACHE:
                _CACHE[key] = make_adv_estimator(name)
            core.register_adv_est(PREFIX + name)(_CACHE[key])
            advs.append(PREFIX + name)
    return {"policy_losses": losses, "adv_estimators": advs}
