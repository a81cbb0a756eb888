"""Providers for ``rollout_driver``: episodes/s and tokens/s of the asynchronous rollout driver (staleness 1 and 2)
against the synchronous step barrier, on a multi-turn environment with a heavy-tailed tool latency.

The environment (:class:`HeavyTailToolEnv`): each episode needs ``1 + s % 3`` tool calls (seed ``s``); every call
takes a Pareto-distributed latency (shape ``alpha``, scale ``tool_ms``; alpha 1.5 gives a long tail: a few calls are
10x the median) -- a stand-in for real tools and databases.  The engine is a scripted policy whose batched call
costs ``gen_ms`` (one engine call per round, whatever the batch: a GPU engine's shape) and the trainer's update is a
``train_ms`` pause with the driver's weight sync around it.  So the benchmark times the scheduling -- what the issue
asks to compare -- with the same "model", the same budget (``steps`` batches of ``groups x group_size`` episodes)
and the same latencies for every provider; the model's own speed is not measured here (``--op rl_step`` does that).

``engine: hf`` replaces the scripted policy by a real one: a tiny LongCat-Flash-style MoE policy (the trainer's
``longcat_flash`` preset shrunk to hidden 64, 4 experts) sampling each turn with ``generate`` (up to
``max_new_tokens``, :class:`~lckernels_rl.rollout.HFGenerateBackend` behind the driver's
:class:`~lckernels_rl.rollout.BatchingEngine`), so generation costs real CPU time that competes with the environment
threads and with the ``train_ms`` update; the tool latencies stay simulated.

Providers (one mode, ``budget``: the whole budget per call):

* ``sync``           -- anchor: today's path -- each step runs its episodes in lock-step rounds
  (``AgentLoop.run_batch``), then trains; the step waits for its slowest episode.
* ``async-s1-local`` / ``async-s2-local`` -- :class:`~lckernels_rl.rollout.RolloutDriver` in async mode, staleness
  1 / 2, :class:`~lckernels_rl.rollout.LocalExecutor` threads.
* ``async-s1-ray`` / ``async-s2-ray`` -- the same on :class:`~lckernels_rl.rollout.RayExecutor` with
  ``ray_workers`` environment actors (so at most that many episodes at once; left out when ``import ray`` fails; one
  Ray session for the run).

Sweep: ``steps`` (batches per call).  Metrics: ``time`` (ms per budget) and, from the same calls,
``episodes_per_s`` and ``tokens_per_s`` (sampled tokens).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import check_choice

OP = "rollout_driver"
X_NAME = "steps"
DEFAULTS = {"steps": [6], "groups": 4, "group_size": 4, "tool_ms": 20.0, "alpha": 1.5, "gen_ms": 5.0,
            "train_ms": 100.0, "workers": 16, "ray_workers": 8, "engine": "scripted", "max_new_tokens": 4}
MODES = ("budget",)
ANCHOR = "sync"
LIMIT = None
WARMUP_OVERRIDES = {"steps": 1}
PROVIDERS_ORDER = ("sync", "async-s1-local", "async-s2-local", "async-s1-ray", "async-s2-ray")


class HeavyTailToolEnv:
    """Seed ``s``: ``1 + s % 3`` tool calls with Pareto(``alpha``) x ``tool_ms`` latencies (drawn from the seed), then
    the answer; reward 1.0.  Built lazily on the ToolEnv base so the module imports without the library loaded."""

    def __new__(cls, tool_ms: float = 20.0, alpha: float = 1.5):
        from lckernels_rl.agents.types import Message
        from lckernels_rl.envs.tool_env import StepResult, ToolEnv, Verdict

        class _Env(ToolEnv):
            name = "heavy_tail_tool"
            blocking = True

            def __init__(self):
                self.n = self.k = 0
                self.lat: list[float] = []

            def reset(self, seed=None, task=None):
                s = int(seed or 0)
                self.n, self.k = 1 + s % 3, 0
                rng = np.random.default_rng(s)
                self.lat = list((rng.pareto(alpha, self.n) + 1.0) * tool_ms / 1e3)
                return [Message("user", "go")], {}

            def step(self, turn):
                if self.k < self.n:
                    time.sleep(self.lat[self.k])
                    self.k += 1
                    return StepResult(messages=[Message("user", "go")])
                return StepResult(terminated=True)

            def verify(self, trajectory):
                return Verdict(reward=1.0)

        return _Env()


class _EnvFactory:
    def __init__(self, tool_ms, alpha):
        self.tool_ms, self.alpha = tool_ms, alpha

    def __call__(self):
        return HeavyTailToolEnv(self.tool_ms, self.alpha)


@dataclass
class Inputs:
    steps: int
    params: dict


class _SlowEngine:
    """A scripted turn ("xx</s>") per request; each batched call costs ``gen_ms``."""

    def __init__(self, ids, eos, gen_ms):
        from lckernels_rl.rollout.engine import ScriptedEngine

        self.inner = ScriptedEngine(lambda r: ids + [eos], stop_token_ids=[eos])
        self.gen_s = gen_ms / 1e3

    @property
    def version(self):
        return self.inner.version

    @version.setter
    def version(self, v):
        self.inner.version = v

    def generate(self, reqs):
        time.sleep(self.gen_s)
        return self.inner.generate(reqs)

    def sync_weights(self, model):
        self.inner.sync_weights(model)

    def close(self):
        pass


_TOK = None
_RAY = None
_POLICY = None


def _hf_engine(max_new_tokens: int):
    """A real tiny policy behind a BackendEngine (built once per process; the same weights for every provider)."""
    global _POLICY
    from lckernels_rl.models import build_policy
    from lckernels_rl.rollout import HFGenerateBackend
    from lckernels_rl.rollout.engine import BackendEngine

    tok = _tok()
    if _POLICY is None:
        _POLICY = build_policy("longcat_flash", vocab_size=len(tok) + (-len(tok)) % 8, pad_token_id=tok.pad_token_id,
                               bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, seed=0,
                               hidden_size=64, ffn_hidden_size=128, q_lora_rank=32, kv_lora_rank=32,
                               qk_nope_head_dim=16, qk_rope_head_dim=16, head_dim=16, v_head_dim=16,
                               num_attention_heads=2, num_key_value_heads=2, n_routed_experts=4,
                               expert_ffn_hidden_size=64)
    backend = HFGenerateBackend(_POLICY, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                vocab_limit=len(tok))
    return BackendEngine(backend, stop_token_ids=[tok.eos_token_id]), int(max_new_tokens)


def _tok():
    global _TOK
    if _TOK is None:
        from lckernels_rl.agents.renderer import PLAIN_CHAT_TOKENS
        from lckernels_rl.models import build_char_tokenizer

        _TOK = build_char_tokenizer("abcdefghijklmnopqrstuvwxyz \n", extra_special_tokens=PLAIN_CHAT_TOKENS)
    return _TOK


def _ray_executor(workers: int):
    global _RAY
    if _RAY is None:
        from lckernels_rl.rollout import RayExecutor

        _RAY = RayExecutor(num_workers=workers, env_timeout_s=30.0, init_kwargs={"num_cpus": 2}, start_timeout_s=600)
    return _RAY


class Budget:
    """One call = ``steps`` batches (rollout + a ``train_ms`` update each); ``history`` keeps each call's counts."""

    def __init__(self, provider: str, inputs: Inputs):
        self.provider, self.inp = provider, inputs
        self.history: list[dict] = []

    def __call__(self) -> dict:
        from lckernels_rl.agents.loop import AgentLoop, Budget as EpBudget, Episode
        from lckernels_rl.agents.renderer import PlainChatRenderer
        from lckernels_rl.rollout import BatchingEngine, Domain, LocalExecutor, RolloutDriver

        p, steps = self.inp.params, self.inp.steps
        tok = _tok()
        x = tok.convert_tokens_to_ids("x")
        if p["engine"] not in ("scripted", "hf"):
            raise ValueError(f"{OP}: engine must be 'scripted' or 'hf'; got {p['engine']!r}")
        if p["engine"] == "hf":
            inner, new = _hf_engine(int(p["max_new_tokens"]))
        else:
            inner, new = _SlowEngine([x, x], 2, float(p["gen_ms"])), 4
        eng = BatchingEngine(inner, window_s=0.001)
        policy = _POLICY if p["engine"] == "hf" else None  # the "update" reloads the same weights
        loop = AgentLoop(eng, PlainChatRenderer(tok), parser=None, budget=EpBudget(max_turns=8, max_new_tokens=new),
                         tools_in_prompt=False, max_env_workers=64)
        make_env = _EnvFactory(float(p["tool_ms"]), float(p["alpha"]))
        B, G, train_s = int(p["groups"]), int(p["group_size"]), float(p["train_ms"]) / 1e3
        rng = np.random.default_rng(0)
        episodes = tokens = 0
        t0 = time.perf_counter()
        if self.provider == "sync":
            for _ in range(steps):
                seeds = [int(s) for s in rng.integers(0, 10**6, B) for _ in range(G)]
                trajs = loop.run_batch([Episode(make_env(), None, s) for s in seeds])
                episodes += len(trajs)
                tokens += sum(t.to_sample().num_sampled for t in trajs)
                time.sleep(train_s)
                eng.sync_weights(policy)
        else:
            s = int(self.provider.split("-")[1][1:])
            ex = _ray_executor(int(p["ray_workers"])) if self.provider.endswith("ray") else \
                LocalExecutor(max(int(p["workers"]), (s + 1) * B * G))

            class _Seeds:
                size = 10**6
                successes, attempts = np.zeros(1), np.zeros(1)

                def seed(self, i):
                    return int(i)

                def update(self, *a):
                    pass

            class _Sched:
                def draw(self, domains, rng_):
                    return 0, int(rng.integers(0, 10**6)), 1

            drv = RolloutDriver("async", domains=[Domain("tail", make_env, _Seeds())],
                                run_episode=lambda env, seed: loop.run(env, None, seed), rng=rng, batch_groups=B,
                                group_size=G, max_staleness=s, executor=ex, engine=eng, scheduler=_Sched())
            for step in range(steps):
                res = drv.next(step)
                episodes += len(res.trajectories)
                tokens += sum(sm.num_sampled for sm in res.samples)
                with drv.weight_sync():
                    time.sleep(train_s)
                    eng.sync_weights(policy)
            with drv._cv:
                drv._paused = True
            if self.provider.endswith("local"):
                ex.close()
        dt = time.perf_counter() - t0
        out = {"episodes": episodes, "tokens": tokens, "time_s": dt}
        self.history.append(out)
        return out


def _ray_ok() -> bool:
    try:
        import ray  # noqa: F401
    except Exception:
        return False
    return True


def available_providers(device: str = "cpu") -> list[str]:
    return [p for p in PROVIDERS_ORDER if not p.endswith("ray") or _ray_ok()]


PROVIDERS = {p: p for p in PROVIDERS_ORDER}


def make_inputs(x, params: dict, device: str = "cpu") -> Inputs:
    return Inputs(int(x), dict(params))


def make_fn(provider: str, mode: str, inputs: Inputs) -> Callable[[], object]:
    check_choice(OP, provider, mode, PROVIDERS, MODES)
    return Budget(provider, inputs)


def _timing(values):
    from types import SimpleNamespace

    v = np.asarray(values, dtype=np.float64)
    return SimpleNamespace(median=float(np.median(v)), p20=float(np.percentile(v, 20)),
                           p80=float(np.percentile(v, 80)))


def extra_metrics(fn: Budget, timing) -> list[dict]:
    calls = fn.history[-len(timing.samples):]
    rows = []
    for metric, key, unit in (("episodes_per_s", "episodes", "ep/s"), ("tokens_per_s", "tokens", "tok/s")):
        t = _timing([c[key] / c["time_s"] for c in calls])
        rows.append({"metric": metric, "unit": unit, "median": t.median, "p20": t.p20, "p80": t.p80})
    return rows


def describe(params: dict) -> str:
    return (f"heavy-tailed tool env (1-3 calls, Pareto alpha={params['alpha']} x {params['tool_ms']} ms), "
            f"{params['groups']} groups x {params['group_size']} episodes/step, "
            + (f"tiny MoE policy sampling <= {params['max_new_tokens']} tokens/turn" if params.get("engine") == "hf"
               else f"gen {params['gen_ms']} ms/call")
            + f", update {params['train_ms']} ms")


def format_rows(rows) -> str:
    by = {}
    for r in rows:
        by.setdefault((r["x_value"], r["provider"]), {})[r["metric"]] = r["median"]
    lines = [f"{'steps':>5} {'provider':16s} {'ms/budget':>10} {'ep/s':>8} {'tok/s':>9} {'vs sync':>8}"]
    for (x, prov), m in sorted(by.items(), key=lambda kv: (kv[0][0], PROVIDERS_ORDER.index(kv[0][1]))):
        base = by.get((x, "sync"), {}).get("episodes_per_s")
        sp = f"{m.get('episodes_per_s', 0) / base:.2f}x" if base else "-"
        lines.append(f"{x:>5} {prov:16s} {m.get('time', float('nan')):10.0f} {m.get('episodes_per_s', 0):8.1f} "
                     f"{m.get('tokens_per_s', 0):9.1f} {sp:>8}")
    return "\n".join(lines)
