"""The Ray executor: environments in actors, a timeout on every remote call, a hung or crashed worker replaced and
its episode ended with ``error``, the others unaffected.  One local Ray session for the whole file (skipped only
where ``import ray`` fails)."""

from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("tokenizers")
pytest.importorskip("transformers")

from lckernels_rl.agents.loop import AgentLoop, Budget  # noqa: E402
from lckernels_rl.agents.renderer import PLAIN_CHAT_TOKENS, PlainChatRenderer  # noqa: E402
from lckernels_rl.agents.types import Message  # noqa: E402
from lckernels_rl.envs.tool_env import StepResult, ToolEnv, Verdict  # noqa: E402
from lckernels_rl.models import build_char_tokenizer  # noqa: E402
from lckernels_rl.rollout import BatchingEngine, Domain, RayExecutor, RolloutDriver  # noqa: E402
from lckernels_rl.rollout.engine import ScriptedEngine  # noqa: E402

EOS = 2


class PidEnv(ToolEnv):
    """Two turns; reports the process it runs in.  Seed ``hang`` never returns from its step, seed ``crash`` kills
    its process, seed ``slow`` sleeps ``slow_s`` in its step."""

    name = "pid"
    blocking = True

    def __init__(self, hang=-1, crash=-1, slow=-1, slow_s=0.0):
        self.hang, self.crash, self.slow, self.slow_s = hang, crash, slow, slow_s
        self.seed_, self.turns = 0, 0

    def reset(self, seed=None, task=None):
        self.seed_, self.turns = int(seed or 0), 0
        return [Message("user", "go")], {"pid": os.getpid()}

    def step(self, turn):
        if self.seed_ == self.hang:
            threading.Event().wait()
        if self.seed_ == self.crash:
            os._exit(1)
        if self.seed_ == self.slow:
            time.sleep(self.slow_s)
        self.turns += 1
        return StepResult(messages=[Message("user", "go")], terminated=self.turns >= 2)

    def verify(self, trajectory):
        return Verdict(reward=1.0)


class _Pool:
    def __init__(self, size):
        self.size = size
        self.successes, self.attempts = np.zeros(size), np.zeros(size, dtype=np.int64)

    def seed(self, i):
        return int(i)

    def update(self, *a):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, s):
        pass


@pytest.fixture(scope="module")
def executor():
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the test envs travel by value
    started = not ray.is_initialized()
    ex = RayExecutor(num_workers=2, env_timeout_s=3.0, init_kwargs={"num_cpus": 2})
    yield ex
    ex.close()
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer("abcdefghijklmnopqrstuvwxyz \n", extra_special_tokens=PLAIN_CHAT_TOKENS)


def run(executor, tok, env_kwargs, *, tasks, B, G=1):
    x = tok.convert_tokens_to_ids("x")
    engine = BatchingEngine(ScriptedEngine(lambda r: [x, EOS], stop_token_ids=[EOS]), window_s=0.0)
    loop = AgentLoop(engine, PlainChatRenderer(tok), parser=None, budget=Budget(max_turns=4, max_new_tokens=4),
                     tools_in_prompt=False, max_env_workers=1)
    make_env = _FACTORIES.setdefault(repr(sorted(env_kwargs.items())), _Factory(env_kwargs))
    drv = RolloutDriver("async", domains=[Domain("pid", make_env, _Pool(tasks))],
                        run_episode=lambda env, seed: loop.run(env, None, seed), rng=np.random.default_rng(1),
                        batch_groups=B, group_size=G, max_staleness=0, executor=executor, engine=engine)
    with drv._cv:  # the pool hands out tasks 0..tasks-1 in order: every task once
        drv._queue = [(k, 0, k % tasks, 0) for k in range(B)]
        drv.next_seq = B
        drv._fill()
        drv._paused = True  # exactly these B groups: nothing left running on the shared executor afterwards
    return drv.next(0)


_FACTORIES: dict = {}


class _Factory:
    def __init__(self, kw):
        self.kw = kw

    def __call__(self):
        return PidEnv(**self.kw)


def test_envs_run_in_worker_processes(executor, tok):
    res = run(executor, tok, {}, tasks=4, B=4)
    pids = {t.metrics["reset_info"]["pid"] for t in res.trajectories}
    assert os.getpid() not in pids and len(res.trajectories) == 4
    assert all(t.stop_reason == "env_done" and t.reward == 1.0 for t in res.trajectories)


def test_a_hung_worker_times_out_and_is_replaced(executor, tok):
    before = executor.restarts
    res = run(executor, tok, {"hang": 0}, tasks=3, B=3)
    reasons = {t.seed: t.stop_reason for t in res.trajectories}
    assert reasons == {0: "error", 1: "env_done", 2: "env_done"}
    bad = next(t for t in res.trajectories if t.seed == 0)
    assert "EnvTimeout" in bad.error
    assert executor.restarts == before + 1
    again = run(executor, tok, {}, tasks=2, B=2)  # the replacement works
    assert [t.stop_reason for t in again.trajectories] == ["env_done", "env_done"]


def test_a_worker_killed_mid_episode_is_replaced(executor, tok):
    before = executor.restarts
    res = run(executor, tok, {"crash": 1}, tasks=3, B=3)
    reasons = {t.seed: t.stop_reason for t in res.trajectories}
    assert reasons == {0: "env_done", 1: "error", 2: "env_done"}
    assert "EnvWorkerError" in next(t for t in res.trajectories if t.seed == 1).error
    assert executor.restarts == before + 1
    # killed from outside while its step runs
    box = {}
    th = threading.Thread(target=lambda: box.setdefault("res", run(executor, tok, {"slow": 0, "slow_s": 2.0},
                                                                    tasks=1, B=1)))
    th.start()
    time.sleep(1.0)
    (slot,) = executor._held.values()  # the worker running the episode
    ray.kill(executor.actors[slot], no_restart=True)
    th.join(20)
    t = box["res"].trajectories[0]
    assert t.stop_reason == "error" and "EnvWorkerError" in t.error
    assert executor.restarts >= before + 2
    again = run(executor, tok, {}, tasks=2, B=2)
    assert [t.stop_reason for t in again.trajectories] == ["env_done", "env_done"]
