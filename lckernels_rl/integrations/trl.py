"""TRL adapter: :class:`LckGRPOTrainer`, TRL's ``GRPOTrainer`` whose ``_compute_loss`` runs the objective through
:func:`lckernels.fused_policy_loss` on the model's last hidden states and lm_head weight (the [B, T, V] logits of the
completion are never built; the gradients w.r.t. hidden states and lm_head come out of the same streaming pass).

TRL is imported lazily: ``LckGRPOTrainer`` is built on first access, so ``import lckernels_rl`` works without TRL.

Written against TRL 1.16's ``GRPOTrainer._compute_loss`` (verified by reading the installed source, and tested:
the loss and every parameter gradient equal TRL's own ``_compute_loss``).  The inputs it reads are TRL's:
``prompt_ids``, ``prompt_mask``, ``completion_ids``, ``completion_mask``, optional ``tool_mask``, ``advantages``
([B] or [B, T]), optional ``old_per_token_logps`` (``None`` = on-policy), ``ref_per_token_logps`` (when
``beta != 0``), ``num_items_in_batch`` (dapo / cispo), ``importance_sampling_ratio`` and
``sampling_per_token_logps`` (vLLM importance-sampling correction).

Objective: ``objective=None`` (default) follows the TRL config, so the trainer is a drop-in replacement:

=================================  =====================================================================
TRL ``loss_type``                   lckernels_rl objective
=================================  =====================================================================
``grpo``                            ``grpo`` (seq-mean-token-mean), ε = ``epsilon`` / ``epsilon_high``
``bnpo``                            ``grpo`` with ``loss_agg="token-mean"``
``dr_grpo``                         ``dr_grpo``, ``loss_norm_constant = max_completion_length``
``dapo``                            ``dapo`` (token-mean, then TRL's ``num_items_in_batch`` normalizer)
``cispo``                           ``cispo``: TRL clamps the IS weight at ``epsilon_high`` from above only,
                                    i.e. ``eps_low=1`` (bound 0), ``eps_high=epsilon_high - 1``
``sapo``                            ``sapo`` (``sapo_temperature_pos`` / ``_neg``)
``grpo`` + sequence IS level        ``gspo`` (seq-mean-token-mean)
=================================  =====================================================================

``beta`` becomes the objective's ``kl_beta`` (k3, as TRL) and ``use_bias_correction_kl`` (TRL's default) its
``kl_ratio_weighted`` (KL times the differentiable ratio, inside the fused kernel: ``PolicyLossConfig.kl_ratio_weighted``); ``temperature``
divides the logits.  The vLLM IS
correction is TRL's precomputed ``importance_sampling_ratio`` applied as a per-token factor (``token_weight``) --
or, for objectives that read the inference log-probs themselves (lcft_tis, hispo), ``sampling_per_token_logps`` is
passed as ``rollout_log_prob``.  Any registered objective (name or instance) can be given instead with
``objective=``; its extra inputs are read from the batch dict under their own names.  The loss is scaled like TRL's:
/ gradient-accumulation steps in training, or TRL's ``num_items_in_batch`` normalizer for dapo / cispo.  MoE models
with ``output_router_logits`` get the same load-balancing auxiliary loss as TRL.

Not supported (a clear ``NotImplementedError``): ``loss_type`` luspo / vespo, ``top_entropy_quantile < 1``,
``off_policy_mask_threshold``, the entropy bonus (``entropy_coef`` / adaptive entropy), ``delta``, multimodal
inputs, logit soft-capping / scaling and an lm_head bias.
"""

from __future__ import annotations

import functools
import types
from typing import Optional, Union

import torch

from ..objectives import CISPO, DAPO, GRPO, GSPO, SAPO, DrGRPO, Objective, get_objective

__all__ = ["LckGRPOTrainer", "objective_from_trl", "add_hidden_states_forward"]

_MULTIMODAL_KEYS = ("pixel_values", "image_grid_thw", "pixel_attention_mask", "image_sizes", "spatial_shapes",
                    "num_images", "num_tiles", "token_type_ids", "mm_token_type_ids", "image_position_ids")
_NUM_ITEMS_LOSSES = ("dapo", "cispo")


def objective_from_trl(args) -> Objective:
    """The objective equivalent to a TRL ``GRPOConfig`` (see the module table)."""
    loss_type = args.loss_type
    eps_low = args.epsilon
    eps_high = args.epsilon_high if args.epsilon_high is not None else args.epsilon
    common = dict(kl_beta=float(args.beta), temperature=float(args.temperature),
                  kl_ratio_weighted=bool(args.beta) and bool(getattr(args, "use_bias_correction_kl", False)))
    if args.importance_sampling_level == "sequence":
        if loss_type != "grpo":
            raise NotImplementedError(f"LckGRPOTrainer: importance_sampling_level='sequence' is supported with "
                                      f"loss_type='grpo' (GSPO) only; got {loss_type!r}")
        return GSPO(eps_low=eps_low, eps_high=eps_high, **common)
    if args.importance_sampling_level != "token":
        raise NotImplementedError(f"LckGRPOTrainer: importance_sampling_level={args.importance_sampling_level!r}")
    if loss_type == "grpo":
        return GRPO(eps_low=eps_low, eps_high=eps_high, loss_agg="seq-mean-token-mean", **common)
    if loss_type == "bnpo":
        return GRPO(eps_low=eps_low, eps_high=eps_high, loss_agg="token-mean", **common)
    if loss_type == "dr_grpo":
        return DrGRPO(eps_low=eps_low, eps_high=eps_high, loss_norm_constant=float(args.max_completion_length),
                      **common)
    if loss_type == "dapo":
        return DAPO(eps_low=eps_low, eps_high=eps_high, **common)
    if loss_type == "cispo":
        if eps_high < 1:
            raise ValueError(f"LckGRPOTrainer: cispo clamps the IS weight at epsilon_high, which must be >= 1; "
                             f"got {eps_high}")
        return CISPO(eps_low=1.0, eps_high=eps_high - 1.0, **common)
    if loss_type == "sapo":
        return SAPO(tau_pos=args.sapo_temperature_pos, tau_neg=args.sapo_temperature_neg, **common)
    raise NotImplementedError(f"LckGRPOTrainer: loss_type={loss_type!r} has no fused objective (supported: grpo, "
                              "bnpo, dr_grpo, dapo, cispo, sapo)")


def add_hidden_states_forward(model) -> None:
    """Patch ``model.forward`` so ``model(..., lck_hidden=True)`` returns ``(last_hidden_state, aux_loss)`` from the
    backbone (no lm_head); any other call is the previous forward (TRL's fused-head patch included), so generation
    and TRL's own paths are unchanged.  Going through ``model(...)`` keeps DDP / FSDP / PEFT wrappers in the loop."""
    prev = model.forward
    if getattr(prev, "_lck_hidden", False):
        return
    text_config = model.config.get_text_config()

    @functools.wraps(type(model).forward)
    def forward(self, *args, lck_hidden=False, **kwargs):
        if not lck_hidden:
            return prev(*args, **kwargs)
        kwargs["use_cache"] = False
        if getattr(text_config, "output_router_logits", False):
            kwargs.setdefault("output_router_logits", True)
        out = self.base_model(*args, **kwargs)
        aux = None
        if kwargs.get("output_router_logits"):
            from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

            aux = load_balancing_loss_func(out.router_logits, text_config.num_experts,
                                           text_config.num_experts_per_tok, kwargs.get("attention_mask"))
        return out.last_hidden_state, aux

    forward._lck_hidden = True
    model.forward = types.MethodType(forward, model)


def _check_supported(trainer):
    args = trainer.args
    problems = []
    if trainer.top_entropy_quantile < 1.0:
        problems.append("top_entropy_quantile < 1")
    if trainer.off_policy_mask_threshold is not None:
        problems.append("off_policy_mask_threshold")
    if trainer._entropy_bonus_enabled:
        problems.append("the entropy bonus (entropy_coef / adaptive entropy)")
    if getattr(args, "delta", None) is not None:
        problems.append("delta (two-sided clipping)")
    text_config = trainer.model.config.get_text_config()
    for name in ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                 "logits_scaling"):
        if getattr(text_config, name, None) not in (None, 1.0):
            problems.append(f"{name} on the model config")
    if problems:
        raise NotImplementedError("LckGRPOTrainer does not support " + ", ".join(problems) +
                                  "; use trl.GRPOTrainer for these")


def _build():
    try:
        from accelerate.utils import is_peft_model
        from trl import GRPOTrainer
    except ImportError as e:
        raise ImportError("LckGRPOTrainer needs TRL (pip install 'lckernels[trl]')") from e

    class LckGRPOTrainer(GRPOTrainer):
        """``trl.GRPOTrainer`` with the policy loss from :func:`lckernels.fused_policy_loss`.

        Args (beyond ``GRPOTrainer``'s):
            objective: ``None`` (follow ``args.loss_type`` etc., see :mod:`lckernels_rl.integrations.trl`), a
                registered objective name, or an :class:`~lckernels_rl.objectives.Objective` instance.
            objective_params: parameters for a named objective.
            lck_backend: ``backend`` of the fused op (``"auto"``).
        """

        def __init__(self, *args, objective: Union[str, Objective, None] = None,
                     objective_params: Optional[dict] = None, lck_backend: str = "auto", **kwargs):
            super().__init__(*args, **kwargs)
            self.lck_objective = None if objective is None else get_objective(objective, **(objective_params or {}))
            self.lck_backend = lck_backend
            _check_supported(self)
            if self.lck_objective is None:
                objective_from_trl(self.args)  # fail now, not at the first step
            add_hidden_states_forward(self.model.get_base_model() if is_peft_model(self.model) else self.model)

        def current_objective(self) -> Objective:
            """The objective in use (derived from the TRL config when none was given)."""
            if self.lck_objective is not None:
                return self.lck_objective
            args = self.args
            # read the trainer's live values (TRL keeps copies: epsilon_low/high, beta, temperature, loss_type)
            view = types.SimpleNamespace(
                loss_type=self.loss_type, epsilon=self.epsilon_low, epsilon_high=self.epsilon_high,
                beta=self.beta, temperature=self.temperature, importance_sampling_level=self.importance_sampling_level,
                max_completion_length=self.max_completion_length,
                sapo_temperature_pos=args.sapo_temperature_pos, sapo_temperature_neg=args.sapo_temperature_neg,
                use_bias_correction_kl=args.use_bias_correction_kl)
            return objective_from_trl(view)

        def _compute_loss(self, model, inputs):
            bad = [k for k in _MULTIMODAL_KEYS if inputs.get(k) is not None]
            if bad:
                raise NotImplementedError(f"LckGRPOTrainer: multimodal inputs {bad} are not supported")
            objective = self.current_objective()
            prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
            completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
            input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
            attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
            k = completion_ids.size(1)
            mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]

            device_type = input_ids.device.type
            with self.accelerator.autocast():
                hidden, aux_loss = model(input_ids=input_ids, attention_mask=attention_mask, lck_hidden=True)
                autocast_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) \
                    else None
            hidden = hidden[:, -k - 1:-1]  # position t predicts completion token t
            lm_head = self.accelerator.unwrap_model(model).get_output_embeddings()
            if getattr(lm_head, "bias", None) is not None:
                raise NotImplementedError("LckGRPOTrainer: an lm_head bias is not supported")
            weight = lm_head.weight
            if self.args.cast_lm_head_to_fp32:
                hidden, weight = hidden.float(), weight.float()
            elif autocast_dtype is not None:  # what autocast would do to the lm_head matmul
                hidden, weight = hidden.to(autocast_dtype), weight.to(autocast_dtype)
            hidden = hidden.to(weight.dtype)
            targets = completion_ids.masked_fill(mask == 0, -100)

            kw = {}
            if self.beta != 0.0 and getattr(objective, "kl_beta", 0.0):
                kw["ref_log_prob"] = inputs["ref_per_token_logps"]
            is_correction = self.use_vllm and self.vllm_importance_sampling_correction
            if objective.uses_rollout_log_prob:
                rollout = inputs.get("sampling_per_token_logps")
                if rollout is None:
                    raise ValueError(f"objective {objective.name!r} needs the inference engine's log-probs "
                                     "(inputs['sampling_per_token_logps'], produced with use_vllm=True)")
                kw["rollout_log_prob"] = rollout
            elif is_correction:
                if not objective.supports_token_weight:
                    raise NotImplementedError(f"objective {objective.name!r} does not take the vLLM IS correction")
                kw["token_weight"] = inputs["importance_sampling_ratio"].expand_as(mask).float()
            extra = {name: inputs[name] for name in objective.extra_inputs if name in inputs}
            loss, metrics = objective.fused(hidden, weight, targets, inputs["advantages"],
                                            inputs.get("old_per_token_logps"), mask, backend=self.lck_backend,
                                            **kw, **extra)

            mode = "train" if self.model.training else "eval"
            accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1.0
            if self.lck_objective is None and self.loss_type in _NUM_ITEMS_LOSSES:
                # TRL: sum over tokens / (num_items_in_batch / num_processes [* GA / steps_per_generation in train])
                normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
                if mode == "train":
                    normalizer = normalizer * self.current_gradient_accumulation_steps / self.args.steps_per_generation
                loss = loss * mask.sum().clamp(min=1.0) / normalizer
            else:
                loss = loss / accumulation
            if self.aux_loss_enabled and aux_loss is not None:
                loss = loss + self.router_aux_loss_coef * aux_loss / accumulation
                self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(aux_loss).mean().item())
            self._log_lck_metrics(mode, metrics)
            return loss

        def _log_lck_metrics(self, mode, m):
            def add(key, value):
                t = torch.tensor(float(value), device=self.accelerator.device)
                self._metrics[mode][key].append(self.accelerator.gather(t).nanmean().item())

            add("entropy", m.get("entropy_mean", float("nan")))
            if self.beta != 0.0:
                add("kl", m.get("kl_mean", float("nan")))
            low, high = m.get("clip_frac_low", 0.0), m.get("clip_frac_high", 0.0)
            if self.lck_objective is None and self.loss_type == "cispo":
                add("cispo_clip_ratio", high)
            else:
                add("clip_ratio/low_mean", low)
                add("clip_ratio/high_mean", high)
                add("clip_ratio/region_mean", low + high)
            add("lck/loss", m.get("loss", float("nan")))

    return LckGRPOTrainer


_CLASS = None


def __getattr__(name):
    global _CLASS
    if name == "LckGRPOTrainer":
        if _CLASS is None:
            _CLASS = _build()
        return _CLASS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
