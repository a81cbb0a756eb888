"""The end-to-end trainer: a tiny HF policy, a generated verifiable task, a supervised warm-up, then RL.

One global step counter runs through both phases (``1..sft.steps`` supervised, then ``rl.steps`` RL steps), so a
checkpoint taken anywhere resumes exactly: the model, the optimizer, every RNG (torch, numpy, Python), the prompt
pool's statistics, the gradient gate and the metrics file are all restored.

An RL step:

1. draw ``prompts_per_step`` prompts from the training pool (seeded numpy generator);
2. split the ``rollouts_per_step`` budget over them with the configured allocator (its inputs -- success rates,
   last groups, predicted values -- come from the pool's running statistics);
3. sample with the rollout backend (HF ``generate`` or vLLM), keeping the engine's log-probs;
4. score with the environment (exact match), compute group advantages;
5. up to ``reuse`` updates on the batch: policy forward to the final hidden states, the objective's fused loss
   (``lckernels.fused_policy_loss`` on hidden states and the lm_head weight, the N x V logits never built),
   backward, lm_head / rest gradient norms, the optional Dynamic Gradient Gate, gradient clipping, AdamW;
6. sync the rollout engine's weights, log one JSONL line.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import lckernels
from lckernels_rl.advantages import get_estimator
from lckernels_rl.envs import make_env
from lckernels_rl.models import build_char_tokenizer, build_policy
from lckernels_rl.objectives import get_objective
from lckernels_rl.rollout import Rollouts, make_backend
from lckernels_rl.rollout.base import left_pad

from .allocation import PromptPool, allocate_rollouts
from .config import TrainConfig

__all__ = ["Trainer", "train"]

EVAL_SEED_OFFSET = 10**6
CHECKPOINT = "checkpoint.pt"


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


class Trainer:
    """Build everything a :class:`TrainConfig` describes; :meth:`fit` runs (or resumes) the training.

    Args:
        config: the configuration.
        resume: continue from ``<output_dir>/checkpoint.pt`` (``FileNotFoundError`` if there is none).
    """

    def __init__(self, config: TrainConfig, *, resume: bool = False):
        self.config = cfg = config
        self.out = Path(cfg.log.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)

        self.env = make_env(cfg.task.env, **cfg.task.env_args)
        self.objective = get_objective(cfg.rl.objective, **cfg.rl.objective_args)
        alphabet = self.env.alphabet + self._objective_alphabet()
        self.tokenizer = build_char_tokenizer(alphabet)
        tok = self.tokenizer
        self.eos_id, self.pad_id = tok.eos_token_id, tok.pad_token_id
        self.model = build_policy(cfg.model.arch, vocab_size=_round_up(len(tok), 8), pad_token_id=tok.pad_token_id,
                                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                  experts_implementation=cfg.model.experts_implementation, seed=cfg.seed,
                                  **cfg.model.overrides)
        self.pool = PromptPool(self.env, self.tokenizer, cfg.task.train_size, seed_offset=0)
        self.eval_pool = PromptPool(self.env, self.tokenizer, cfg.task.eval_size, seed_offset=EVAL_SEED_OFFSET) \
            if cfg.task.eval_size else None
        self.advantage_fn = get_estimator(cfg.rl.advantage)
        self.gate = None
        if cfg.rl.dgg is not None:
            from lckernels_rl.gating import DynamicGradientGate

            self.gate = DynamicGradientGate(**cfg.rl.dgg)
        self.teacher = None  # frozen post-warm-up policy: AOPD's teacher / the KL reference
        self._last_groups = None  # self_verify: (questions, responses, correct) of the last generation step
        self.step = 0
        self.optimizer = None
        self.phase = None
        self.rollout = None
        self.metrics_path = self.out / "metrics.jsonl"
        if resume:
            self._load_checkpoint()
        else:
            self.metrics_path.write_text("")
            self._save_artifacts()

    # ------------------------------------------------------------------ set-up helpers
    def _objective_alphabet(self) -> str:
        if self.config.rl.objective == "self_verify":  # verification prompts and verdicts are text
            return self.objective.template.replace("{question}", "").replace("{response}", "") + "YesNo"
        return ""

    @property
    def total_steps(self) -> int:
        return self.config.sft.steps + self.config.rl.steps

    def _phase_of(self, step: int) -> str:
        return "sft" if step <= self.config.sft.steps else "rl"

    def _make_optimizer(self, phase: str):
        c = self.config
        if phase == "sft":
            return torch.optim.AdamW(self.model.parameters(), lr=c.sft.lr, weight_decay=0.0)
        return torch.optim.AdamW(self.model.parameters(), lr=c.rl.lr, betas=tuple(c.rl.betas),
                                 weight_decay=c.rl.weight_decay)

    def _enter_phase(self, phase: str) -> None:
        if phase == self.phase:
            return
        self.phase = phase
        self.optimizer = self._make_optimizer(phase)
        if phase == "rl":
            self._make_teacher()
            if self.rollout is None:
                self.rollout = make_backend(self.config.rollout.backend, self.model, self.tokenizer,
                                            **self.config.rollout.args)
            self.rollout.sync_weights(self.model)

    def _needs_teacher(self) -> bool:
        kl_beta = getattr(self.objective, "kl_beta", 0.0)
        return self.config.rl.objective == "aopd" or bool(kl_beta)

    def _make_teacher(self) -> None:
        if self.teacher is not None or not self._needs_teacher():
            return
        import copy

        self.teacher = copy.deepcopy(self.model).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def _save_artifacts(self) -> None:
        """The tokenizer, the model config and the resolved training config beside the run."""
        import yaml

        mdir = self.out / "model"
        self.tokenizer.save_pretrained(mdir)
        self.model.config.save_pretrained(mdir)
        with open(self.out / "config.yaml", "w") as f:
            yaml.safe_dump(_plain(self.config.to_dict()), f, sort_keys=False)

    # ------------------------------------------------------------------ batches
    def _pack(self, prompts: list[list[int]], responses: list[list[int]]):
        """Left-padded prompts followed by right-padded responses.

        Returns input_ids [B, L], attention_mask [B, L], position_ids [B, L], the response slice start ``p0`` (every
        prompt ends at column p0 - 1) and the response targets [B, R] / mask [B, R].
        """
        b = len(prompts)
        p0 = max(len(p) for p in prompts)
        r = max(max((len(x) for x in responses), default=0), 1)
        ids = torch.full((b, p0 + r), self.pad_id, dtype=torch.long)
        attn = torch.zeros((b, p0 + r), dtype=torch.long)
        for i, (p, y) in enumerate(zip(prompts, responses)):
            ids[i, p0 - len(p):p0] = torch.tensor(p)
            attn[i, p0 - len(p):p0] = 1
            if y:
                ids[i, p0:p0 + len(y)] = torch.tensor(y)
                attn[i, p0:p0 + len(y)] = 1
        pos = (attn.cumsum(1) - 1).clamp_min(0)
        targets = ids[:, p0:].clone()
        mask = attn[:, p0:].bool()
        return ids, attn, pos, p0, targets, mask

    def _hidden(self, model, ids, attn, pos, p0: int, r: int) -> torch.Tensor:
        """Final hidden states [B, R, D] at the positions that predict the response tokens."""
        out = model.model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False)
        return out.last_hidden_state[:, p0 - 1:p0 - 1 + r]

    # ------------------------------------------------------------------ supervised warm-up
    def _sft_step(self) -> dict[str, Any]:
        c = self.config.sft
        idx = self.rng.choice(self.pool.size, size=min(c.batch_size, self.pool.size), replace=False)
        prompts = [self.pool.prompt_ids[i] for i in idx]
        answers = [self.pool.answer_ids[i] + [self.eos_id] for i in idx]
        ids, attn, pos, p0, targets, mask = self._pack(prompts, answers)
        self.optimizer.zero_grad(set_to_none=True)
        hidden = self._hidden(self.model, ids, attn, pos, p0, targets.shape[1])
        targets = targets.masked_fill(~mask, -100)
        lp = lckernels.fused_logprobs(hidden, self.model.lm_head.weight, targets, backend=self.config.rl.backend)
        loss = -(lp * mask).sum() / mask.sum()
        loss.backward()
        norms = self._grad_norms()
        self.optimizer.step()
        return {"loss": float(loss.detach()), "tokens": int(mask.sum()), **norms}

    # ------------------------------------------------------------------ RL
    def _grad_norms(self) -> dict[str, float]:
        head = self.model.lm_head.weight
        rest = [p for p in self.model.parameters() if p is not head]
        n = lckernels.grad_norms({"lm_head": [head], "rest": rest})
        return {"grad_norm_lm_head": float(n["lm_head"]), "grad_norm_rest": float(n["rest"])}

    def _score(self, rollouts: Rollouts, prompt_idx: np.ndarray) -> np.ndarray:
        rewards = np.zeros(len(rollouts), dtype=np.float64)
        for k, (pi, resp) in enumerate(zip(rollouts.prompt_index, rollouts.response_ids)):
            text = self.tokenizer.decode(resp, skip_special_tokens=True)
            rewards[k] = self.pool.reward(int(prompt_idx[pi]), text)
        return rewards

    def _objective_extras(self, rollouts, rewards, index, ids, attn, pos, p0, targets, mask) -> dict:
        """Inputs beyond the per-token tensors that some objectives need (see the README's trainer section)."""
        name = self.config.rl.objective
        extra: dict[str, torch.Tensor] = {}
        if name == "dual_track_grpo":
            # Arithmetic mapping (ours): the "schema" phase is the first answer token (the leading digit); its
            # track is rewarded when that digit is right and the whole answer is correct.
            first_ok = np.array([1.0 if (y and self._first_token_ok(pi, y[0])) else 0.0
                                 for pi, y in zip(rollouts.prompt_index, rollouts.response_ids)])
            r_schema = torch.tensor(first_ok * (rewards > 0), dtype=torch.float32)
            extra["schema_advantages"] = self.advantage_fn(r_schema, index)
            sm = torch.zeros_like(mask)
            sm[:, 0] = mask[:, 0]
            extra["schema_mask"] = sm
        if name == "aopd":
            with torch.no_grad():
                th = self._hidden(self.teacher, ids, attn, pos, p0, targets.shape[1])
                extra["teacher_logits"] = (th @ self.teacher.lm_head.weight.T).float()
        return extra

    def _first_token_ok(self, prompt_pos: int, token: int) -> bool:
        return bool(self._step_answers[prompt_pos][:1] == [token])

    def _wants_rollout_log_prob(self) -> bool:
        """Pass the engine's log-probs only to objectives that use them (their own, or a configured rollout
        correction); the others reject or ignore them."""
        if self.objective.uses_rollout_log_prob:
            return True
        policy_config = getattr(self.objective, "policy_config", None)
        return bool(policy_config is not None and policy_config().needs_rollout_logprobs)

    def _ref_log_prob(self, ids, attn, pos, p0, targets, mask):
        if self.teacher is None or not getattr(self.objective, "kl_beta", 0.0):
            return None
        with torch.no_grad():
            th = self._hidden(self.teacher, ids, attn, pos, p0, targets.shape[1])
            return lckernels.fused_logprobs(th, self.teacher.lm_head.weight, targets.masked_fill(~mask, 0),
                                            backend=self.config.rl.backend)

    def _loss(self, hidden, targets, adv, old, mask, rollout_lp, ref_lp, extra):
        """(loss, metrics, detached log-probs [B, R]) through the fused or the per-token path."""
        c = self.config.rl
        if self.config.rl.objective == "aopd":
            adv = None  # AOPD's advantage is the teacher/student log-ratio (it needs teacher_log_prob then)
            extra = dict(extra)
            tl = extra["teacher_logits"]
            extra["teacher_log_prob"] = torch.log_softmax(tl, -1).gather(-1, targets[..., None]).squeeze(-1)
        if c.loss == "fused":
            return self.objective.fused(hidden, self.model.lm_head.weight, targets, adv, old, mask, rollout_lp,
                                        ref_lp, backend=c.backend, return_logprobs=True, **extra)
        logits = hidden @ self.model.lm_head.weight.T  # the unfused baseline: [B, R, V] logits
        logp = torch.log_softmax(logits.float(), -1)
        lp = logp.gather(-1, targets[..., None]).squeeze(-1)
        kw = dict(extra)
        if self.config.rl.objective == "aopd":
            kw["student_logits"] = logits.float()
        ent = -(logp.exp() * logp).sum(-1)
        if getattr(self.objective, "entropy_coef", 0.0):
            kw["entropy"] = ent
        loss, metrics = self.objective(lp, old, adv, mask, rollout_lp, ref_lp, **kw)
        m = mask.float()
        metrics.setdefault("entropy_mean", float((ent.detach() * m).sum() / m.sum().clamp_min(1)))
        return loss, metrics, lp.detach()

    def _generation_batch(self):
        """The task's rollouts: pool prompts, the allocator's counts, the environment's rewards."""
        prompt_idx = self.pool.sample(self.rng, self.config.rl.prompts_per_step)
        self._step_answers = [self.pool.answer_ids[i] for i in prompt_idx]
        rollouts, rewards, counts = allocate_rollouts(self, prompt_idx)
        self.pool.update(prompt_idx, rollouts.prompt_index, rewards)
        if self.config.rl.objective == "self_verify":  # the next verification step's material
            groups: dict[int, list[int]] = {}
            for k, pi in enumerate(rollouts.prompt_index):
                groups.setdefault(pi, []).append(k)
            dec = [self.tokenizer.decode(r, skip_special_tokens=True) for r in rollouts.response_ids]
            self._last_groups = ([self.pool.prompts[prompt_idx[pi]] for pi in groups],
                                 [[dec[k] for k in ks] for ks in groups.values()],
                                 [[bool(rewards[k] > 0) for k in ks] for ks in groups.values()])
        return rollouts, rewards, counts

    def _verification_batch(self):
        """Self-verify's verification step: the policy judges its own previous rollouts ("Yes"/"No"), rewarded
        when the verdict matches the exact-match label; ``None`` when the last groups give no balanced example."""
        c = self.config.rl
        questions, responses, correct = self._last_groups
        examples = self.objective.build_examples(questions, responses, correct, seed=int(self.rng.integers(2**31)))
        if not examples:
            return None
        from lckernels_rl.budget import uniform_allocate
        from lckernels_rl.objectives.self_verify import verification_reward

        prompts = [self.tokenizer(e.prompt, add_special_tokens=False)["input_ids"] for e in examples]
        counts = uniform_allocate(c.rollouts_per_step, len(prompts), n_min=1, seed=int(self.rng.integers(2**31)))
        rollouts = self.rollout.generate(prompts, counts.tolist(), max_new_tokens=c.max_new_tokens,
                                         temperature=c.temperature)
        rewards = np.array([verification_reward(self.tokenizer.decode(r, skip_special_tokens=True),
                                                examples[pi].label)
                            for pi, r in zip(rollouts.prompt_index, rollouts.response_ids)], dtype=np.float64)
        return rollouts, rewards, counts

    def _is_verification_step(self) -> bool:
        if self.config.rl.objective != "self_verify" or self._last_groups is None:
            return False
        return self.objective.schedule().is_verification_step(self.step - self.config.sft.steps)  # 0-based RL step

    def _rl_step(self) -> dict[str, Any]:
        c = self.config.rl
        t0 = time.perf_counter()
        batch = self._verification_batch() if self._is_verification_step() else None
        kind = "generation" if batch is None else "verification"
        rollouts, rewards, counts = batch if batch is not None else self._generation_batch()
        t_rollout = time.perf_counter() - t0

        index = torch.tensor(rollouts.prompt_index)
        r_t = torch.tensor(rewards, dtype=torch.float32)
        adv = self.advantage_fn(r_t, index).float()
        ids, attn, pos, p0, targets, mask = self._pack(rollouts.prompt_ids, rollouts.response_ids)
        targets = targets.masked_fill(~mask, 0)
        rollout_lp = torch.zeros(targets.shape, dtype=torch.float32)
        for i, lps in enumerate(rollouts.logprobs):
            rollout_lp[i, :len(lps)] = torch.tensor(lps, dtype=torch.float32)
        rollout_lp_arg = rollout_lp
        if not self._wants_rollout_log_prob():
            rollout_lp_arg = None
        extra = self._objective_extras(rollouts, rewards, index, ids, attn, pos, p0, targets, mask)
        ref_lp = self._ref_log_prob(ids, attn, pos, p0, targets, mask)

        old = None  # first update: on-policy (ratio 1 with its gradient)
        updates, fired, m_first = 0, False, None
        g_trace: list[float] = []  # lm_head gradient norm of every update (a gated one included)
        kl_trace: list[float] = []  # k3 KL to the rollout policy seen by updates 2..K (after 1..K-1 applied)
        for k in range(1, c.reuse + 1):
            self.optimizer.zero_grad(set_to_none=False)
            hidden = self._hidden(self.model, ids, attn, pos, p0, targets.shape[1])
            loss, metrics, lp = self._loss(hidden, targets, adv, old, mask, rollout_lp_arg, ref_lp, extra)
            loss.backward()
            norms = self._grad_norms()
            g_trace.append(norms["grad_norm_lm_head"])
            if k == 1:
                old = lp
                m_first = dict(metrics)
                m_first.update(norms)
                gap = (lp - rollout_lp).abs()[mask]
                m_first["rollout_logprob_gap"] = float(gap.mean()) if gap.numel() else 0.0
            else:  # how far the reused updates moved the policy from the one that sampled the batch
                kl_trace.append(_k3(old, lp, mask))
            if self.gate is not None:
                decision = self.gate.observe(norms["grad_norm_lm_head"] ** 2, k)
                if decision.fire:
                    self.gate.apply(self.model.parameters(), decision)
                    fired = True
                    break
            if c.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
            self.optimizer.step()
            updates += 1
        self.rollout.sync_weights(self.model)
        dt = time.perf_counter() - t0
        n_tok = rollouts.num_response_tokens()
        # NaN stats mean "not computed" (e.g. kl_mean without a reference): left out of the log
        out = {k: v for k, v in m_first.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        out.update(reward_mean=float(rewards.mean()), reward_std=float(rewards.std()), rollouts=len(rollouts),
                   response_tokens=n_tok, response_len_mean=n_tok / max(len(rollouts), 1),
                   finished_frac=float(np.mean(rollouts.finished)), updates=updates, dgg_fired=fired,
                   time_rollout_s=t_rollout, tokens_per_s=n_tok / dt,
                   clip_frac=float(m_first.get("clip_frac_low", 0.0) + m_first.get("clip_frac_high", 0.0)),
                   counts_min=int(counts.min()), counts_max=int(counts.max()))
        if c.objective == "self_verify":
            out["step_kind"] = kind
        if c.reuse > 1:
            out.update(kl_rollout_max=max([0.0, *kl_trace]), grad_norm_lm_head_max=max([0.0, *g_trace]),
                       kl_rollout_trace=kl_trace, grad_norm_lm_head_trace=g_trace)
        return out

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> float:
        """Greedy-decoding exact-match accuracy on the evaluation set (does not touch any RNG)."""
        if self.eval_pool is None:
            return math.nan
        was = self.model.training
        self.model.eval()
        try:
            ids, attn = left_pad(self.eval_pool.prompt_ids, self.pad_id)
            width = ids.shape[1]
            gen = self.model.generate(input_ids=ids, attention_mask=attn, do_sample=False,
                                      max_new_tokens=self.config.rl.max_new_tokens, eos_token_id=self.eos_id,
                                      pad_token_id=self.pad_id)
            texts = self.tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True)
        finally:
            self.model.train(was)
        return float(np.mean([self.eval_pool.reward(i, t) for i, t in enumerate(texts)]))

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_state(self) -> dict:
        return {
            "step": self.step, "phase": self.phase, "config": self.config.to_dict(),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "teacher": self.teacher.state_dict() if self.teacher is not None else None,
            "rng": {"torch": torch.get_rng_state(), "numpy": self.rng.bit_generator.state,
                    "python": random.getstate()},
            "pool": self.pool.state_dict(), "gate": self.gate, "last_groups": self._last_groups,
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
        self.pool.load_state_dict(state["pool"])
        self.gate = state["gate"]
        self._last_groups = state["last_groups"]
        if self.rollout is not None:
            self.rollout.sync_weights(self.model)
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
        if self.step == 0:
            acc = self.evaluate()
            written.append(self._log({"step": 0, "phase": "init", "eval_accuracy": acc}))
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
        if self.rollout is not None:
            self.rollout.close()


def _k3(old: torch.Tensor, new: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean k3 estimate of KL(pi_old || pi_new) over the sampled tokens: E[exp(d) - 1 - d], d = new - old."""
    d = (new - old)[mask].clamp(-20, 20)
    return float((d.exp() - 1 - d).mean()) if d.numel() else 0.0


def _progress(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)


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
