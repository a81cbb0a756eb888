"""The tiny trainer set-up the RL tests share: model overrides that build in milliseconds and a config builder."""

from __future__ import annotations

from lckernels_rl.train import TrainConfig, Trainer

TINY_LONGCAT = dict(hidden_size=32, ffn_hidden_size=64, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8,
                    qk_rope_head_dim=8, head_dim=8, v_head_dim=8, num_attention_heads=2, num_key_value_heads=2,
                    n_routed_experts=4, expert_ffn_hidden_size=32)
TINY = {"qwen3_moe": dict(hidden_size=32, head_dim=16, num_attention_heads=2, num_key_value_heads=1,
                          intermediate_size=64, moe_intermediate_size=32, num_experts=4),
        "qwen3": dict(hidden_size=32, head_dim=16, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64),
        "longcat_flash": TINY_LONGCAT}


def tiny_config(tmp_path, **sections) -> TrainConfig:
    """A 2-step arithmetic run of a tiny LongCat-Flash policy under ``tmp_path/run``; each keyword is a config
    section merged into the default one (a dict) or replacing it."""
    data = {
        "seed": 0,
        "model": {"arch": "longcat_flash", "overrides": TINY_LONGCAT},
        "task": {"env": "arithmetic", "env_args": {"max_value": 9}, "train_size": 64, "eval_size": 8},
        "sft": {"steps": 2, "batch_size": 8},
        "rl": {"steps": 2, "prompts_per_step": 4, "rollouts_per_step": 16, "max_new_tokens": 3},
        "log": {"output_dir": str(tmp_path / "run"), "checkpoint_every": 0, "eval_every": 2, "progress": False,
                "plots": False},
    }
    for name, fields in sections.items():
        if isinstance(fields, dict) and isinstance(data.get(name), dict):
            data[name] = {**data[name], **fields}
        else:
            data[name] = fields
    return TrainConfig.from_dict(data)


def fit_rl_rows(cfg: TrainConfig, **fit_kwargs) -> list[dict]:
    """Train ``cfg`` to the end (closing the trainer) and return the RL phase's metric rows."""
    tr = Trainer(cfg)
    try:
        return [r for r in tr.fit(**fit_kwargs) if r["phase"] == "rl"]
    finally:
        tr.close()


def bundled_smoke_config(name: str, tmp_path, *overrides: str, model: dict | None = None) -> TrainConfig:
    """The bundled config ``name`` shrunk for a smoke run: the tiny policy (``model`` overrides, default
    :data:`TINY_LONGCAT`), 8 training / 2 evaluation tasks, one warm-up step of 2, two RL steps of 2 prompts x 4
    rollouts, evaluation every 2 steps, quiet logging under ``tmp_path/run``; ``overrides`` (``key=value``, applied
    after these, so they win) adjust it."""
    from lckernels_rl.train import load_config

    base = [f"log.output_dir={tmp_path / 'run'}", "log.progress=false", "log.plots=false", "log.checkpoint_every=0",
            "log.eval_every=2", f"model.overrides={model or TINY_LONGCAT}", "model.vocab_size=null",
            "task.train_size=8", "task.eval_size=2", "sft.steps=1", "sft.batch_size=2", "rl.steps=2",
            "rl.prompts_per_step=2", "rl.rollouts_per_step=4"]
    return load_config(name, base + list(overrides))


def run_scripted(env, turns, task):
    """Reset ``env`` on ``task`` and step the hand-written assistant ``turns`` until it terminates; returns
    ``(verdict, step results)`` (the shared driver of the memory environments' hand-made episodes)."""
    from lckernels_rl.agents import Message

    env.reset(task=task)
    out = []
    for t in turns:
        out.append(env.step(Message("assistant", t)))
        if out[-1].terminated:
            break
    return env.verify(None), out
