"""The end-to-end trainer: a tiny HF policy, a generated environment, a supervised warm-up, then RL -- all through
one pipe::

    ToolEnv <-> AgentLoop(engine, renderer, parser, budget) -> Trajectory -> TrainSample -> rollout source (groups)
        -> RLBatch -> objective (its own batch_inputs hook) -> lckernels.fused_policy_loss

A single-turn task (arithmetic) is a one-turn episode through the same pipe (a text environment wrapped in
:class:`~lckernels_rl.envs.TextEnvAdapter`, rendered completion style); a tool environment (``kv_lookup``) runs
multi-turn episodes with tool calls.  The trainer never names an objective: an objective declares what it needs
(``context_requirements``: a frozen reference / teacher; ``batch_inputs``: its extra tensors from the batch;
``wrap_source``: its own rollout source, e.g. Self-Verify's verification steps; ``tokenizer_text``).

One global step counter runs through both phases (``1..sft.steps`` supervised, then ``rl.steps`` RL steps), so a
checkpoint taken anywhere resumes exactly: the model, the optimizer, every RNG (torch, numpy, Python), the rollout
source's state (the task pool's statistics, Self-Verify's last groups), the engine's policy version, the gradient gate
and the metrics file are all restored.

An RL step:

1. the rollout source draws ``prompts_per_step`` tasks, splits the ``rollouts_per_step`` budget over them with the
   configured allocator and runs the episodes with the agent loop (engine log-probs and policy versions kept);
2. the samples are packed (:func:`~lckernels_rl.train.batch.pack_samples`: only sampled tokens are trained) and the
   group advantages computed from the verdicts' rewards;
3. up to ``reuse`` updates on the batch through :func:`lckernels_rl.gating.reuse_rollout_batch` (the optional
   Dynamic Gradient Gate, gradient clipping as its pre-step hook, AdamW);
4. the engine's weights are synced (its policy version bumps);
5. a source with ``after_update(step)`` (Self-Verify's verification update) gets its extra group sets trained the same
   way, one after the other (metrics ``<name>_*``, counted in ``extra_updates``); one JSONL line is logged.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

import lckernels
from lckernels_rl.advantages import get_estimator
from lckernels_rl.agents.loop import AgentLoop, Budget, Episode, TRUNCATION_MARKER
from lckernels_rl.envs import TextEnvAdapter, make_tool_env
from lckernels_rl.gating import reuse_rollout_batch
from lckernels_rl.models import build_policy
from lckernels_rl.objectives import get_objective
from lckernels_rl.objectives.base import ObjectiveContext
from lckernels_rl.rollout import HFGenerateBackend, make_backend
from lckernels_rl.rollout.engine import BackendEngine

from .allocation import PromptPool
from .batch import RLBatch, pack_samples
from .config import ConfigError, TrainConfig
from .sources import DemonstrationEngine, EpisodeSource, SourceContext, episode_metrics

__all__ = ["Trainer", "train"]

EVAL_SEED_OFFSET = 10**6
CORPUS_SEED_OFFSET = 10**7
CHECKPOINT = "checkpoint.pt"


def _set_threads(requested: int) -> dict:
    """torch's intra-op threads for the config's ``threads`` (0: torch's count capped at the cores this process may
    use -- affinity mask and cgroup quota, see :mod:`lckernels_rl._threads`).  The OpenMP wait policy cannot be
    changed here (libgomp read it when torch was imported); ``import lckernels_rl`` before torch sets it."""
    import warnings

    from lckernels_rl import _threads

    plan = _threads.resolve_threads(int(requested), torch.get_num_threads())
    if plan.warning:
        warnings.warn(plan.warning, RuntimeWarning, stacklevel=3)
    if plan.threads != torch.get_num_threads():
        torch.set_num_threads(plan.threads)
    return {"threads": plan.threads, "threads_from": plan.reason, "available_cpus": plan.available,
            **_threads.wait_policy_state()}


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def _adamw(params, **kwargs) -> torch.optim.AdamW:
    """AdamW with torch's fused kernel where it has one for the parameters (CPU or CUDA floating tensors): one pass
    over each tensor per step instead of the ~10 of the for-loop implementation, which is torch's default on CPU --
    that default was 43 % of an RL step at 83.6 M parameters (benchmarks.run --op rl_step --vs trl --profile;
    TRL's GRPOTrainer uses the fused one too).  The update is the same AdamW (up to float rounding)."""
    params = list(params)
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    return torch.optim.AdamW(params, fused=fused or None, **kwargs)


class Trainer:
    """Build everything a :class:`TrainConfig` describes; :meth:`fit` runs (or resumes) the training.

    Args:
        config: the configuration.
        resume: continue from ``<output_dir>/checkpoint.pt`` (``FileNotFoundError`` if there is none).
    """

    def __init__(self, config: TrainConfig, *, resume: bool = False, callbacks=None):
        from .callbacks import TrainerCallback, build_callbacks

        self.config = cfg = config
        self.callbacks = build_callbacks(cfg.callbacks) + list(callbacks or [])
        for i, cb in enumerate(self.callbacks):
            if not isinstance(cb, TrainerCallback):
                raise TypeError(f"Trainer: callbacks[{i}] must be a TrainerCallback; got {type(cb).__name__}")
        self.env_overrides: dict[str, dict] = {"train": {}, "eval": {}}  # set_env_args
        self.out = Path(cfg.log.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.threading = _set_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)

        self.objective = get_objective(cfg.rl.objective, **cfg.rl.objective_args)
        if "temperature" not in cfg.rl.objective_args and getattr(self.objective, "temperature", None) is not None:
            # the loss scores the sampled tokens at the sampling temperature (as verl's actor does): the policy
            # gradient is then taken of the distribution the rollouts were drawn from
            self.objective = self.objective.replace(temperature=cfg.rl.temperature)
        probe = self.make_env()
        self.is_text_env = isinstance(probe, TextEnvAdapter)
        self.renderer_name = cfg.agent.renderer if cfg.agent.renderer != "auto" else \
            ("raw" if self.is_text_env else "plain")
        init = self._init_from()
        self.tokenizer = init["tokenizer"] if init else self._build_tokenizer(probe)
        tok = self.tokenizer
        self.eos_id, self.pad_id = tok.eos_token_id, tok.pad_token_id
        vocab = cfg.model.vocab_size if cfg.model.vocab_size is not None else _round_up(len(tok), 8)
        if vocab < len(tok):
            raise ConfigError(f"model.vocab_size ({vocab}) is smaller than the tokenizer ({len(tok)} ids)")
        self.model = build_policy(cfg.model.arch, vocab_size=vocab, pad_token_id=tok.pad_token_id,
                                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                  experts_implementation=cfg.model.experts_implementation, seed=cfg.seed,
                                  **cfg.model.overrides)
        if init:
            try:
                self.model.load_state_dict(init["model"])
            except RuntimeError as e:
                raise ConfigError(f"model.init_from={cfg.model.init_from!r}: its weights do not fit this model "
                                  f"(model.arch / overrides / vocab_size must match the earlier run): {e}") from None
        from lckernels_rl.agents.renderer import make_renderer

        self.renderer = make_renderer(self.renderer_name, tok)
        self.renderer.self_test()  # fail fast on a format that is not append-only (TemplateError)
        self.parser = self._parser(probe)
        probe.close()
        max_ctx = cfg.agent.max_context_tokens or int(self.model.config.max_position_embeddings)
        self.budget = Budget(max_turns=cfg.agent.max_turns, max_context_tokens=max_ctx,
                             max_new_tokens=cfg.rl.max_new_tokens,
                             max_tool_output_tokens=cfg.agent.max_tool_output_tokens)
        self.pool = PromptPool(self.make_env, cfg.task.train_size, seed_offset=0)
        self.eval_pool = PromptPool(self.make_eval_env, cfg.task.eval_size, seed_offset=EVAL_SEED_OFFSET) \
            if cfg.task.eval_size else None
        self.advantage_fn = get_estimator(cfg.rl.advantage) if cfg.rl.advantage != "hian" else _hian_no_scalar
        self.eval_components: dict[str, float] = {}  # component means of the last evaluation
        self.requirements = self.objective.context_requirements()
        self.gate = None
        if cfg.rl.dgg is not None:
            from lckernels_rl.gating import DynamicGradientGate

            self.gate = DynamicGradientGate(**cfg.rl.dgg)
        self.teacher = None  # frozen post-warm-up policy: the teacher / the KL reference an objective asks for
        base = EpisodeSource(self.make_env, self.pool, SourceContext(cfg.rl, self.rng, self._run_sampling))
        self.source = self.objective.wrap_source(base)
        self.driver = None  # rollout.mode=async: the RolloutDriver (also self.source)
        if cfg.rollout.mode == "async":
            if self.source is not base:
                raise ConfigError(f"rollout.mode=async: objective {cfg.rl.objective!r} brings its own rollout source")
            self.source = self.driver = self._async_driver()
            if cfg.rollout.max_staleness > 0 and not self._wants_rollout_log_prob():
                warnings.warn(
                    f"rollout.mode=async with max_staleness={cfg.rollout.max_staleness}: objective "
                    f"{cfg.rl.objective!r} has no rollout correction, so tokens sampled by older policy versions are "
                    "trained as if on-policy; set a correction (e.g. rl.objective_args: {rollout_correction: "
                    "token_truncate}), or rollout.max_staleness: 0", UserWarning, stacklevel=2)
        self.step = 0
        self.optimizer = None
        self.phase = None
        self.engine = None
        self.metrics_path = self.out / "metrics.jsonl"
        if resume:
            self._load_checkpoint()
        else:
            self.metrics_path.write_text("")
            self._save_artifacts()

    # ------------------------------------------------------------------ set-up helpers
    def _env_args(self, eval: bool = False) -> dict:
        t, o = self.config.task, self.env_overrides
        # the evaluation keeps its own task (a curriculum's train overrides do not move the yardstick)
        return {**t.env_args, **t.eval_env_args, **o["eval"]} if eval else {**t.env_args, **o["train"]}

    def make_env(self):
        """A fresh environment of the task (one per episode)."""
        return make_tool_env(self.config.task.env, **self._env_args())

    def make_eval_env(self):
        """A fresh environment for evaluation (``task.env_args`` updated by ``task.eval_env_args``)."""
        return make_tool_env(self.config.task.env, **self._env_args(eval=True))

    def set_env_args(self, *, eval: bool = False, **kwargs) -> None:
        """Change the arguments of the environments built from now on (a callback's curriculum: a noise level, a
        withdrawn skill set): training environments, or with ``eval=True`` the evaluation ones (on top of
        ``task.eval_env_args``).  The environment is built once with them first (a bad value raises here, not in an
        episode); the task pools keep the prompts they were built with; checkpoints keep the overrides."""
        which = "eval" if eval else "train"
        new = {**self.env_overrides[which], **kwargs}
        old, self.env_overrides[which] = self.env_overrides[which], new
        try:
            (self.make_eval_env if eval else self.make_env)().close()
        except Exception:
            self.env_overrides[which] = old
            raise
        if self.driver is not None and not eval:
            self._sync_driver_envs()

    def _driver_domains(self) -> list[tuple[str, Any, float, float]]:
        """``(label, make_env, weight, oversample)`` per domain of the async driver: one per environment of a
        ``mixture`` task with weight > 0 (``only: <label>`` picks it; DORA draws domains by ``weight * oversample``),
        else the task itself.  ``make_env`` is a ``functools.partial`` (picklable for Ray)."""
        import functools

        name, args = self.config.task.env, self._env_args()
        if name != "mixture":
            return [(name, functools.partial(make_tool_env, name, **args), 1.0, 1.0)]
        from lckernels_rl.envs.mixture import MixtureEnv

        mix = MixtureEnv(**args)
        return [(s["name"], functools.partial(make_tool_env, name, **{**args, "only": s["name"]}), s["weight"],
                 s["oversample"]) for s in mix.specs if s["weight"] > 0]

    def _sync_driver_envs(self) -> None:
        new = {label: make for label, make, _, _ in self._driver_domains()}
        for d in self.driver.domains:
            d.make_env = new[d.name]

    def _init_from(self) -> dict | None:
        """``model.init_from``: the earlier run's tokenizer and model weights (ConfigError if unusable)."""
        src = self.config.model.init_from
        if not src:
            return None
        run = Path(src)
        mdir, ckpt = run / "model", run / CHECKPOINT
        if not (mdir.is_dir() and ckpt.is_file()):
            raise ConfigError(f"model.init_from={src!r}: expected the output directory of an earlier run, with "
                              f"{mdir} and {ckpt}")
        state = torch.load(ckpt, weights_only=False, map_location="cpu")
        theirs, ours = state["config"]["model"], self.config.model
        for key in ("arch", "overrides", "tokenizer"):
            if _plain(theirs.get(key)) != _plain(getattr(ours, key)):
                raise ConfigError(f"model.init_from={src!r}: model.{key} differs from that run's "
                                  f"({theirs.get(key)!r} vs {getattr(ours, key)!r})")
        from transformers import PreTrainedTokenizerFast

        return {"tokenizer": PreTrainedTokenizerFast.from_pretrained(str(mdir)), "model": state["model"]}

    def _build_tokenizer(self, probe):
        from lckernels_rl.agents import renderer as R

        extra = {"plain": R.PLAIN_CHAT_TOKENS, "hf": R.CHATML_TOKENS}.get(self.renderer_name, ())
        tok = self._tokenizer_of_kind(probe, extra)
        if self.renderer_name == "hf":  # our tokenizers have no template: ChatML, "<|im_end|>" ends a turn
            tok.chat_template = R.CHATML_TEMPLATE
            tok.eos_token = "<|im_end|>"
        return tok

    def _tokenizer_of_kind(self, probe, extra):
        from lckernels_rl.models.tokenizer import build_tokenizer

        text = self.objective.tokenizer_text() + ("" if self.is_text_env else TRUNCATION_MARKER)
        if self.renderer_name == "hf":
            text += "\n" + "".join(sorted({c for r in ("system", "user", "assistant", "tool") for c in r}))
        m = self.config.model
        if m.tokenizer == "char":
            alphabet = getattr(probe, "alphabet", "") + text
            _warn_unknown_chars(probe, alphabet, self.config.task.env)
            return build_tokenizer("char", alphabet=alphabet, extra_special_tokens=extra)
        corpus = list(probe.tokenizer_corpus()) + ([text] if text else [])
        for i in range(256):  # the task's own text: opening messages and demonstrations
            msgs, _ = probe.reset(seed=CORPUS_SEED_OFFSET + i)
            corpus += [mm.content for mm in msgs]
            demo = probe.demonstration(msgs)
            if demo:
                corpus.append(demo)
        return build_tokenizer("bpe", corpus=[c for c in corpus if c], vocab_size=m.vocab_size or 1024,
                               extra_special_tokens=extra, added_tokens=getattr(probe, "protocol_tokens", ()))

    def _parser(self, probe):
        name = self.config.agent.parser
        if name == "none" or (name == "auto" and self.is_text_env):
            return None
        if name == "auto":
            name = getattr(probe, "tool_format", None) or "hermes"
        from lckernels_rl.agents.parsers import get_parser

        return get_parser(name)

    def _loop(self, engine, temperature: float = 1.0) -> AgentLoop:
        return AgentLoop(engine, self.renderer, self.parser, self.budget, temperature=temperature,
                         tools_in_prompt=self.config.agent.tools_in_prompt)

    def _async_driver(self):
        """The asynchronous :class:`~lckernels_rl.rollout.driver.RolloutDriver` over the task pool (its episodes run
        the agent loop on the shared engine, ``self.engine``, built at the RL phase)."""
        from lckernels_rl.rollout import Domain, DoraScheduler, RolloutDriver, make_executor

        cfg, r = self.config, self.config.rollout
        groups, size = cfg.rl.prompts_per_step, max(cfg.rl.rollouts_per_step // cfg.rl.prompts_per_step, 1)
        inflight = r.max_inflight or (r.max_staleness + 1) * groups
        kw = {"num_workers": r.num_workers} if r.executor == "ray" else {"max_workers": inflight * size}
        executor = make_executor(r.executor, env_timeout_s=r.env_timeout_s, **kw)
        specs = self._driver_domains()
        domains = [Domain(label, make, PromptPool(make, cfg.task.train_size) if len(specs) > 1 else self.pool,
                          weight=w, oversample=o) for label, make, w, o in specs]
        return RolloutDriver("async", domains=domains,
                             run_episode=lambda env, seed: self._loop(self.engine, cfg.rl.temperature).run(env, None,
                                                                                                           seed),
                             rng=self.rng, batch_groups=groups, group_size=size, max_staleness=r.max_staleness,
                             max_inflight=inflight, executor=executor, scheduler=DoraScheduler(r.max_copies))

    def _weight_sync(self, updated: bool = True):
        """async: pause admission and generation while the weights change, and count the update (``updated``) for
        the driver's staleness bound (a no-op context in sync mode)."""
        import contextlib

        return self.driver.weight_sync(updated) if self.driver is not None else contextlib.nullcontext()

    def _run_sampling(self, episodes) -> list:
        return self._loop(self.engine, self.config.rl.temperature).run_batch(episodes)

    @property
    def total_steps(self) -> int:
        return self.config.sft.steps + self.config.rl.steps

    def _phase_of(self, step: int) -> str:
        return "sft" if step <= self.config.sft.steps else "rl"

    def _make_optimizer(self, phase: str):
        c = self.config
        if phase == "sft":
            return _adamw(self.model.parameters(), lr=c.sft.lr, weight_decay=0.0)
        return _adamw(self.model.parameters(), lr=c.rl.lr, betas=tuple(c.rl.betas), weight_decay=c.rl.weight_decay)

    def _enter_phase(self, phase: str) -> None:
        if phase == self.phase:
            return
        self.phase = phase
        self.optimizer = self._make_optimizer(phase)
        if phase == "rl":
            self._make_teacher()
            if self.engine is None:
                backend = make_backend(self.config.rollout.backend, self.model, self.tokenizer,
                                       **self.config.rollout.args)
                self.engine = BackendEngine(backend, stop_token_ids=self.renderer.stop_token_ids)
                if self.driver is not None:  # episode threads share it: batched, with a weights lock
                    from lckernels_rl.rollout import BatchingEngine

                    self.engine = self.driver.engine = BatchingEngine(self.engine)
            self.engine.sync_weights(self.model)

    def _make_teacher(self) -> None:
        if self.teacher is not None or not self.requirements:
            return
        import copy

        self.teacher = copy.deepcopy(self.model).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def _context(self) -> ObjectiveContext:
        return ObjectiveContext(advantage_fn=self.advantage_fn, teacher=self.teacher, backend=self.config.rl.backend)

    def _save_artifacts(self) -> None:
        """The tokenizer, the model config and the resolved training config beside the run."""
        import yaml

        mdir = self.out / "model"
        self.tokenizer.save_pretrained(mdir)
        self.model.config.save_pretrained(mdir)
        with open(self.out / "config.yaml", "w") as f:
            yaml.safe_dump(_plain(self.config.to_dict()), f, sort_keys=False)

    # ------------------------------------------------------------------ supervised warm-up
    def demonstrations(self, seeds) -> list:
        """Trajectories of the environments' scripted demonstrations for ``seeds`` (through the agent loop)."""
        eps = [Episode(self.make_env(), None, int(s)) for s in seeds]
        engine = DemonstrationEngine([e.env for e in eps], self.renderer)
        return self._loop(engine).run_batch(eps)

    def _sft_step(self) -> dict[str, Any]:
        c = self.config.sft
        idx = self.rng.choice(self.pool.size, size=min(c.batch_size, self.pool.size), replace=False)
        trajs = self.demonstrations([self.pool.seed(i) for i in idx])
        # every branch of a forked demonstration (a context rewrite) is a sample of its own, not only the last one
        samples = [s for t in trajs for s in t.to_samples() if s.num_sampled]
        if not samples:  # e.g. every prompt already fills the context: nothing to imitate, said in the log
            return {"loss": 0.0, "tokens": 0, "skipped": "no demonstrated tokens (do the prompts fit the context?)"}
        batch = pack_samples(samples, self.pad_id)
        self.optimizer.zero_grad(set_to_none=True)
        hidden = batch.hidden(self.model)
        targets = batch.targets.masked_fill(~batch.mask, -100)
        lp = lckernels.fused_logprobs(hidden, self.model.lm_head.weight, targets, backend=self.config.rl.backend)
        loss = -(lp * batch.mask).sum() / batch.mask.sum().clamp_min(1)
        loss.backward()
        norms = self._grad_norms()
        self.optimizer.step()
        return {"loss": float(loss.detach()), "tokens": batch.num_tokens, **norms}

    # ------------------------------------------------------------------ RL
    def _grad_norms(self) -> dict[str, float]:
        head = self.model.lm_head.weight
        rest = [p for p in self.model.parameters() if p is not head]
        n = lckernels.grad_norms({"lm_head": [head], "rest": rest})
        return {"grad_norm_lm_head": float(n["lm_head"]), "grad_norm_rest": float(n["rest"])}

    def _wants_rollout_log_prob(self) -> bool:
        """Pass the engine's log-probs only to objectives that use them (their own, or a configured rollout
        correction); the others reject or ignore them."""
        if self.objective.uses_rollout_log_prob:
            return True
        policy_config = getattr(self.objective, "policy_config", None)
        return bool(policy_config is not None and policy_config().needs_rollout_logprobs)

    def _ref_log_prob(self, batch: RLBatch):
        if "reference" not in self.requirements or self.teacher is None:
            return None
        with torch.no_grad():
            th = batch.hidden(self.teacher)
            return lckernels.fused_logprobs(th, self.teacher.lm_head.weight, batch.targets,
                                            backend=self.config.rl.backend)

    def _loss(self, hidden, targets, adv, old, mask, rollout_lp, ref_lp, extra):
        """(loss, metrics, detached log-probs [B, R]) through the fused or the per-token path."""
        c = self.config.rl
        if c.loss == "fused":
            return self.objective.fused(hidden, self.model.lm_head.weight, targets, adv, old, mask, rollout_lp,
                                        ref_lp, backend=c.backend, return_logprobs=True, **extra)
        logits = hidden @ self.model.lm_head.weight.T  # the unfused baseline: [B, R, V] logits
        logp = torch.log_softmax(logits.float(), -1)
        lp = logp.gather(-1, targets[..., None]).squeeze(-1)
        kw = dict(extra)
        if "student_logits" in self.objective.extra_inputs:  # objectives that need the whole distribution
            kw["student_logits"] = logits.float()
        ent = -(logp.exp() * logp).sum(-1)
        if getattr(self.objective, "entropy_coef", 0.0):
            kw["entropy"] = ent
        loss, metrics = self.objective(lp, old, adv, mask, rollout_lp, ref_lp, **kw)
        m = mask.float()
        metrics.setdefault("entropy_mean", float((ent.detach() * m).sum() / m.sum().clamp_min(1)))
        return loss, metrics, lp.detach()

    def _rl_step(self) -> dict[str, Any]:
        rl_step = self.step - self.config.sft.steps  # 0-based RL step
        t0 = time.perf_counter()
        groups = self.source.next(rl_step)
        out = self._update(groups, t0, time.perf_counter() - t0)
        # a source's extra updates after the step's own (e.g. Self-Verify's verification update): each group set is
        # sampled when asked for -- after the previous update and weight sync -- and trained like the step's batch
        after = getattr(self.source, "after_update", None)
        extra = iter(after(rl_step)) if after is not None else iter(())
        n_extra = 0
        while True:
            t1 = time.perf_counter()
            more = next(extra, None)
            if more is None:
                break
            m = self._update(more, t1, time.perf_counter() - t1)
            n_extra += 1
            out.update({f"{more.name or 'extra'}_{k}": v for k, v in m.items()})  # the last one's, if several
        out["extra_updates"] = n_extra
        return out

    def _update(self, groups, t0: float, t_rollout: float) -> dict[str, Any]:
        """Train on one set of rollout groups (up to ``rl.reuse`` updates), sync the engine; the step's metrics."""
        c = self.config.rl
        if not groups.samples:  # every episode crashed (or sampled nothing): nothing to learn from this step
            with self._weight_sync():  # still a step: the version (and so the driver's bound) moves on
                self.engine.sync_weights(self.model)
            r = [t.reward for t in groups.trajectories]
            return {"updates": 0, "rollouts": 0, "response_tokens": 0, "time_rollout_s": t_rollout,
                    "reward_mean": float(np.mean(r)) if r else 0.0, "tokens_per_s": 0.0,
                    "skipped": "no trainable samples", **groups.metrics}
        batch = pack_samples(groups.samples, self.pad_id)
        targets, mask = batch.targets, batch.mask
        stale_frac = None
        if self.config.rollout.mask_stale_tokens:  # tokens sampled more than max_staleness versions ago: not trained
            mask = mask & (batch.token_versions >= self.engine.version - self.config.rollout.max_staleness)
            stale_frac = 1.0 - int(mask.sum()) / max(int(batch.mask.sum()), 1)
        extra = self.objective.batch_inputs(batch, self._context())
        if "advantages" in extra:  # the objective's own
            adv = extra.pop("advantages")
        elif c.advantage == "hian":
            adv = self._hian(batch, mask)
        else:
            adv = self.advantage_fn(batch.rewards, batch.group_index).float()
        rollout_lp = batch.rollout_logprobs if self._wants_rollout_log_prob() else None
        ref_lp = self._ref_log_prob(batch)

        state: dict[str, Any] = {"old": None, "first": None}  # first update: on-policy (ratio 1 with its gradient)
        g_trace: list[float] = []  # lm_head gradient norm of every update (a gated one included)
        kl_trace: list[float] = []  # k3 KL to the rollout policy seen by updates 2..K (after 1..K-1 applied)

        def step_fn(k: int):
            hidden = batch.hidden(self.model)
            loss, metrics, lp = self._loss(hidden, targets, adv, state["old"], mask, rollout_lp, ref_lp, extra)
            loss.backward()
            norms = self._grad_norms()
            state["norms"] = norms
            g_trace.append(norms["grad_norm_lm_head"])
            if k == 1:
                state["old"] = lp
                first = dict(metrics)
                first.update(norms)
                gap = (lp - batch.rollout_logprobs).abs()[mask]
                first["rollout_logprob_gap"] = float(gap.mean()) if gap.numel() else 0.0
                state["first"] = first
            else:  # how far the reused updates moved the policy from the one that sampled the batch
                kl_trace.append(_k3(state["old"], lp, mask))
            return loss, norms["grad_norm_lm_head"] ** 2, metrics

        def clip():
            # clip_grad_norm_'s rule from the norms step_fn measured on these very gradients (the gate either lets
            # them through untouched or clears them and skips this): one pass over the gradients fewer
            if c.grad_clip:
                n = state["norms"]
                total = math.sqrt(n["grad_norm_lm_head"] ** 2 + n["grad_norm_rest"] ** 2)
                coef = min(c.grad_clip / (total + 1e-6), 1.0) if math.isfinite(total) else float("nan")
                if coef != 1.0:
                    grads = [q.grad for q in self.model.parameters() if q.grad is not None]
                    torch._foreach_mul_(grads, coef)

        with self._weight_sync():
            report = reuse_rollout_batch(step_fn, self.gate, self.optimizer, max_reuse=c.reuse, params=self.model,
                                         pre_step=clip)
            self.engine.sync_weights(self.model)
        dt = time.perf_counter() - t0
        rewards = batch.rewards.double().numpy()
        n_tok = batch.num_tokens
        n = len(batch)
        # NaN stats mean "not computed" (e.g. kl_mean without a reference): left out of the log
        out = {k: v for k, v in state["first"].items() if isinstance(v, (int, float)) and math.isfinite(v)}
        out.update(reward_mean=float(rewards.mean()), reward_std=float(rewards.std()), rollouts=n,
                   response_tokens=n_tok, response_len_mean=n_tok / max(n, 1),
                   finished_frac=float(np.mean([s.stop_reason == "env_done" for s in batch.samples])),
                   updates=report.updates, dgg_fired=report.fired, time_rollout_s=t_rollout, tokens_per_s=n_tok / dt,
                   clip_frac=float(out.get("clip_frac_low", 0.0) + out.get("clip_frac_high", 0.0)),
                   counts_min=int(groups.counts.min()), counts_max=int(groups.counts.max()),
                   policy_version=int(self.engine.version))
        if stale_frac is not None:
            out["stale_masked_frac"] = stale_frac
        lag = (self.engine.version - 1 - batch.token_versions)[batch.mask].float()  # updates since the token's policy
        if lag.numel():
            out.update(token_lag_mean=float(lag.mean()), token_lag_max=int(lag.max()))
        out.update(groups.metrics)
        out.update(_span_stats(batch, adv, extra))
        if c.reuse > 1:
            out.update(kl_rollout_max=max([0.0, *kl_trace]), grad_norm_lm_head_max=max([0.0, *g_trace]),
                       kl_rollout_trace=kl_trace, grad_norm_lm_head_trace=g_trace)
        return out

    def _hian(self, batch: RLBatch, mask: torch.Tensor) -> torch.Tensor:
        """DuCA's HIAN per-token advantages [B, R]: the session reward (the verdict's ``session`` component where
        every sample has one, else the reward) and the per-turn step rewards, normalised apart, then fused."""
        from lckernels_rl.advantages import hian_advantages

        session = batch.components.get("session")
        if session is None or bool(torch.isnan(session).any()):
            session = batch.rewards
        return hian_advantages(session, batch.turn_rewards, batch.token_turn, batch.group_index,
                               turn_mask=batch.turn_mask, response_mask=mask, **self.config.rl.advantage_args)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, return_metrics: bool = False):
        """Greedy-decoding mean reward on the evaluation tasks (does not touch any RNG); with ``return_metrics``,
        ``(reward, episode metrics)``."""
        if self.eval_pool is None:
            return (math.nan, {}) if return_metrics else math.nan
        backend = HFGenerateBackend(self.model, eos_token_id=self.eos_id, pad_token_id=self.pad_id, greedy=True)
        engine = BackendEngine(backend, stop_token_ids=self.renderer.stop_token_ids)
        eps = [Episode(self.make_eval_env(), None, self.eval_pool.seed(i)) for i in range(self.eval_pool.size)]
        with self._weight_sync(updated=False):  # async: no background turn generates on the model meanwhile
            trajs = self._loop(engine).run_batch(eps)
        acc = float(np.mean([t.reward for t in trajs]))
        names = sorted({k for t in trajs for k in t.components})
        self.eval_components = {k: float(np.mean([t.components[k] for t in trajs if k in t.components]))
                                for k in names}
        return (acc, episode_metrics(trajs)) if return_metrics else acc

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_state(self) -> dict:
        return {
            "step": self.step, "phase": self.phase, "config": self.config.to_dict(),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "teacher": self.teacher.state_dict() if self.teacher is not None else None,
            "rng": {"torch": torch.get_rng_state(), "numpy": self.rng.bit_generator.state,
                    "python": random.getstate()},
            "source": self.source.state_dict(), "gate": self.gate,
            "engine_version": self.engine.version if self.engine is not None else None,
            "env_overrides": self.env_overrides, "callbacks": [cb.state_dict() for cb in self.callbacks],
        }

    def save_checkpoint(self) -> Path:
        path = self.out / CHECKPOINT
        tmp = path.with_suffix(".tmp")
        torch.save(self._checkpoint_state(), tmp)
        os.replace(tmp, path)
        return path

    def _load_checkpoint(self) -> None:
        path = self.out / CHECKPOINT
        if not path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {path} (train without --resume first, or check "
                                    "log.output_dir)")
        state = torch.load(path, weights_only=False)
        if _plain(state["config"]) != _plain(self.config.to_dict()):
            raise ValueError(f"--resume: the config differs from the one {path} was trained with; resume with the "
                             f"same config (see {self.out / 'config.yaml'})")
        self.model.load_state_dict(state["model"])
        self.step = int(state["step"])
        if state["phase"] is not None:
            self._enter_phase(state["phase"])
            self.optimizer.load_state_dict(state["optimizer"])
        if state["teacher"] is not None:
            self._make_teacher()
            self.teacher.load_state_dict(state["teacher"])
        torch.set_rng_state(state["rng"]["torch"])
        self.rng.bit_generator.state = state["rng"]["numpy"]
        random.setstate(state["rng"]["python"])
        self.env_overrides = state.get("env_overrides", {"train": {}, "eval": {}})
        if self.driver is not None:
            self._sync_driver_envs()
        cbs = state.get("callbacks", [])
        if len(cbs) != len(self.callbacks):
            raise ValueError(f"--resume: {path} was saved with {len(cbs)} callback(s), this trainer has "
                             f"{len(self.callbacks)}; resume with the same callbacks")
        for cb, st in zip(self.callbacks, cbs):
            cb.load_state_dict(st)
        self.source.load_state_dict(state["source"])
        self.gate = state["gate"]
        if self.engine is not None:
            self.engine.sync_weights(self.model)
            self.engine.version = int(state["engine_version"])
        # keep the metrics written up to the checkpoint, drop what a crashed run wrote after it
        lines = self.metrics_path.read_text().splitlines() if self.metrics_path.exists() else []
        kept = [ln for ln in lines if ln.strip() and json.loads(ln)["step"] <= self.step]
        self.metrics_path.write_text("".join(ln + "\n" for ln in kept))

    # ------------------------------------------------------------------ the loop
    def fit(self, max_steps: int | None = None) -> list[dict]:
        """Run until ``total_steps`` (or ``max_steps`` more steps); returns the metrics written by this call."""
        cfg = self.config
        end = self.total_steps if max_steps is None else min(self.total_steps, self.step + max_steps)
        written: list[dict] = []
        bar = _progress(cfg.log.progress, self.total_steps, self.step)
        for cb in self.callbacks:
            cb.on_train_begin(self)
        if self.step == 0:
            acc = self.evaluate()
            written.append(self._log({"step": 0, "phase": "init", "eval_accuracy": acc,
                                      **{f"eval_{k}": v for k, v in self.eval_components.items()}}))
        try:
            while self.step < end:
                step = self.step + 1
                phase = self._phase_of(step)
                self._enter_phase(phase)
                t0 = time.perf_counter()
                m = self._sft_step() if phase == "sft" else self._rl_step()
                self.step = step
                m = {"step": step, "phase": phase, **m, "time_s": time.perf_counter() - t0}
                last_of_phase = step == cfg.sft.steps or step == self.total_steps
                if cfg.log.eval_every and (step % cfg.log.eval_every == 0 or last_of_phase):
                    m["eval_accuracy"] = self.evaluate()
                    m.update({f"eval_{k}": v for k, v in self.eval_components.items()})
                for cb in self.callbacks:
                    cb.on_step_end(self, m)
                written.append(self._log(m))
                if bar is not None:
                    bar.update(1)
                    post = {"phase": phase, "loss": f"{m.get('loss', float('nan')):.3f}"}
                    if phase == "rl":
                        post.update(reward=f"{m['reward_mean']:.2f}", tok_s=f"{m['tokens_per_s']:.0f}")
                    if "eval_accuracy" in m:
                        post["eval"] = f"{m['eval_accuracy']:.2f}"
                    bar.set_postfix(post, refresh=False)
                if (cfg.log.checkpoint_every and step % cfg.log.checkpoint_every == 0) or step == self.total_steps:
                    self.save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
        if self.step == self.total_steps and cfg.log.plots:
            from .plots import plot_metrics

            plot_metrics(self.metrics_path, self.out / "plots")
        return written

    def _log(self, m: dict) -> dict:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(m) + "\n")
        return m

    def close(self) -> None:
        if self.driver is not None:
            self.driver.close()
        if self.engine is not None:
            self.engine.close()


def _warn_unknown_chars(probe, alphabet: str, name: str, seeds: int = 32) -> None:
    """A character tokenizer maps every character outside its alphabet to ``<unk>``: warn (naming them) when the
    task's opening messages or demonstrations of the first ``seeds`` tasks hold such characters, since the policy
    could then never read or write them."""
    known, missing = set(alphabet), set()
    for i in range(seeds):
        try:
            msgs, _ = probe.reset(seed=CORPUS_SEED_OFFSET + i)
            texts = [mm.content for mm in msgs] + [probe.demonstration(msgs) or ""]
        except Exception:  # a probe that cannot reset here says nothing about its alphabet
            return
        for t in texts:
            missing |= set(t or "") - known
    if missing:
        import warnings

        warnings.warn(f"model.tokenizer=char: task.env={name!r} texts hold characters outside the environment's "
                      f"alphabet {''.join(sorted(missing))!r}; they become <unk> (add them to the env's `alphabet`, "
                      f"or use model.tokenizer: bpe)", UserWarning, stacklevel=3)


def _hian_no_scalar(rewards, group_index):
    raise ConfigError("rl.advantage=hian gives per-token advantages from turn rewards; this objective computes its own "
                      "advantages from a scalar estimator (ObjectiveContext.advantage_fn): give it a scalar rl.advantage")


def _k3(old: torch.Tensor, new: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean k3 estimate of KL(pi_old || pi_new) over the sampled tokens: E[exp(d) - 1 - d], d = new - old."""
    d = (new - old)[mask].clamp(-20, 20)
    return float((d.exp() - 1 - d).mean()) if d.numel() else 0.0


def _progress(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)


def _span_stats(batch, adv: torch.Tensor, extra: dict) -> dict:
    """Per named span of the batch: the fraction of samples that have it and, over those samples, the variance of the
    advantage each applies on the span (its mean over the span's tokens) -- of the step's advantages and of every
    extra ``*_advantages`` input (e.g. Dual-track GRPO's schema track)."""
    from lckernels_rl.objectives.base import expand_advantages

    out: dict[str, float] = {}
    for name, span in batch.spans.items():
        span = span & batch.mask
        has = span.any(1)
        out[f"span_{name}_frac"] = float(has.float().mean())
        if int(has.sum()) < 2:
            continue
        n = span.sum(1)[has].float()
        for key, a in [("adv", adv)] + [(k, v) for k, v in extra.items() if k.endswith("_advantages")]:
            if not isinstance(a, torch.Tensor):  # e.g. AOPD: no advantages
                continue
            per = (expand_advantages(a, span.shape) * span).sum(1)[has] / n
            out[f"span_{name}_{key}_var"] = float(per.var(unbiased=False))
    return out


def _plain(x):
    """YAML/JSON-friendly copy (tuples -> lists)."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def train(config: TrainConfig, *, resume: bool = False) -> list[dict]:
    """Build a :class:`Trainer`, run it to the end, return all metrics lines of the run."""
    trainer = Trainer(config, resume=resume)
    try:
        trainer.fit()
    finally:
        trainer.close()
    return [json.loads(ln) for ln in trainer.metrics_path.read_text().splitlines() if ln.strip()]
