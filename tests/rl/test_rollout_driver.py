"""The rollout driver: AReaL's admission rule at its boundaries (hand-computed), per-token policy versions across a
weight sync, no group lost or duplicated across weight syncs and resumes, a hung environment ending only its own
episode, DORA's duplication / mixture, sync mode = the EpisodeSource path, and the trainer in async mode."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("transformers")

from lckernels_rl.agents.loop import AgentLoop, Budget  # noqa: E402
from lckernels_rl.agents.renderer import PLAIN_CHAT_TOKENS, PlainChatRenderer  # noqa: E402
from lckernels_rl.agents.types import Message  # noqa: E402
from lckernels_rl.envs.tool_env import StepResult, ToolEnv, Verdict  # noqa: E402
from lckernels_rl.models import build_char_tokenizer  # noqa: E402
from lckernels_rl.rollout import (BatchingEngine, Domain, DoraScheduler, EngineStopped, LocalExecutor, RolloutDriver,  # noqa: E402
                                  capacity_allows)
from lckernels_rl.rollout.engine import ScriptedEngine  # noqa: E402
from lckernels_rl.train.allocation import PromptPool  # noqa: E402

EOS = 2


class TurnsEnv(ToolEnv):
    """Episode of seed s: ``1 + s % 3`` assistant turns, reward 1.0 when s is even.  ``gate`` (an Event) holds every
    step until set; seeds in ``hang`` never return from their first step."""

    name = "turns"
    blocking = True

    def __init__(self, gate=None, hang=(), delay=0.0):
        self.gate, self.hang, self.delay = gate, set(hang), delay
        self.seed_ = 0
        self.turns = 0

    def reset(self, seed=None, task=None):
        self.seed_, self.turns = int(seed or 0), 0
        return [Message("user", "go")], {}

    def step(self, turn):
        if self.seed_ in self.hang:
            threading.Event().wait()  # hangs for good
        if self.gate is not None:
            self.gate.wait()
        if self.delay:
            time.sleep(self.delay)
        self.turns += 1
        done = self.turns >= 1 + self.seed_ % 3
        return StepResult(messages=[] if done else [Message("user", "go")], terminated=done)

    def verify(self, trajectory):
        return Verdict(reward=1.0 if self.seed_ % 2 == 0 else 0.0)


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer("abcdefghijklmnopqrstuvwxyz \n", extra_special_tokens=PLAIN_CHAT_TOKENS)


def make_driver(tok, *, env_kwargs=None, B=2, G=2, s=1, inflight=None, timeout=None, size=12, domains=None,
                scheduler=None):
    x = tok.convert_tokens_to_ids("x")
    engine = BatchingEngine(ScriptedEngine(lambda r: [x, x, EOS], stop_token_ids=[EOS]), window_s=0.0)
    make_env = lambda: TurnsEnv(**(env_kwargs or {}))  # noqa: E731
    loop = AgentLoop(engine, PlainChatRenderer(tok), parser=None, budget=Budget(max_turns=4, max_new_tokens=4),
                     tools_in_prompt=False, max_env_workers=1)
    doms = domains or [Domain("turns", make_env, PromptPool(make_env, size))]
    drv = RolloutDriver("async", domains=doms, run_episode=lambda env, seed: loop.run(env, None, seed),
                        rng=np.random.default_rng(0), batch_groups=B, group_size=G, max_staleness=s,
                        max_inflight=inflight, executor=LocalExecutor(32, env_timeout_s=timeout), engine=engine,
                        scheduler=scheduler)
    return drv, engine


# ------------------------------------------------------------------ the admission rule, hand-computed
def test_capacity_rule_boundaries():
    kw = dict(max_staleness=1, batch_groups=4, max_inflight=100)
    # (1 + 0 + 1) * 4 = 8 groups may exist at version 0: the 8th is admitted, the 9th is not
    assert capacity_allows(7, 0, 0, **kw) and capacity_allows(3, 4, 0, **kw)
    assert not capacity_allows(8, 0, 0, **kw) and not capacity_allows(4, 4, 0, **kw)
    # version 1: (1 + 1 + 1) * 4 = 12
    assert capacity_allows(9, 2, 1, **kw) and not capacity_allows(10, 2, 1, **kw)
    # staleness 0, 2 groups per batch: 2 groups at version 0
    assert capacity_allows(0, 1, 0, max_staleness=0, batch_groups=2, max_inflight=9)
    assert not capacity_allows(0, 2, 0, max_staleness=0, batch_groups=2, max_inflight=9)
    # the concurrency cap: running may reach max_inflight, never pass it
    assert capacity_allows(0, 2, 5, max_staleness=1, batch_groups=4, max_inflight=3)
    assert not capacity_allows(0, 3, 5, max_staleness=1, batch_groups=4, max_inflight=3)


def test_admission_stops_at_the_bound_and_resumes_after_a_batch(tok):
    gate = threading.Event()
    drv, _ = make_driver(tok, env_kwargs={"gate": gate}, B=2, s=1)
    try:
        with drv._cv:
            drv._fill()
        assert drv.running == 4  # (1 + 0 + 1) * 2, everything held at its first step
        gate.set()
        res = drv.next(0)
        assert res.metrics["driver_version"] == 0
        time.sleep(0.2)
        # handing the batch out is not an update: 2 consumed + 2 finished = (1 + 0 + 1) * 2, nothing new admitted
        assert len(drv.admitted_log) == 4 and drv.version == 0
        with drv.weight_sync():  # the update of batch 0: version 1, (1 + 1 + 1) * 2 = 6
            pass
        deadline = time.time() + 10
        while len(drv.admitted_log) < 6 and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        assert len(drv.admitted_log) == 6 and drv.version == 1
        for accepted, running, version in drv.admission_trace:
            assert accepted + running <= (1 + version + 1) * 2 and running <= 4
        with drv.weight_sync(updated=False):  # a pause (evaluation): no update counted
            pass
        assert drv.version == 1
    finally:
        drv.close()


@pytest.mark.parametrize("s", [0, 1, 2])
def test_groups_land_within_the_staleness_bound(tok, s):
    """Every batch handed out at version v (v updates done) holds only groups admitted at version >= v - s, and
    at s = 0 nothing is admitted between a hand-out and its update (the rollouts wait for the trainer)."""
    drv, engine = make_driver(tok, env_kwargs={"delay": 0.002}, B=2, G=2, s=s)
    try:
        for step in range(5):
            res = drv.next(step)
            v = res.metrics["driver_version"]
            assert v == step
            admits = [t.metrics["admit_version"] for t in res.trajectories]
            assert min(admits) >= v - s and res.metrics["group_staleness_max"] <= s
            if s == 0:
                n = len(drv.admitted_log)
                time.sleep(0.05)
                assert len(drv.admitted_log) == n == 2 * (step + 1)
            time.sleep(0.03)  # the trainer preparing the batch: groups admitted now sample on the current weights
            with drv.weight_sync():
                engine.sync_weights(None)
            for t in res.trajectories:  # every sampled token: at most s updates older than the training policy
                vers = [seg.version for seg in t.segments if seg.trainable]
                assert engine.version - 1 - min(vers) <= s
    finally:
        drv.close()


def test_next_without_weight_sync_raises_instead_of_hanging(tok):
    drv, _ = make_driver(tok, B=2, G=1, s=0)
    try:
        drv.next(0)
        with pytest.raises(RuntimeError, match="weight_sync"):
            drv.next(1)
    finally:
        drv.close()


def test_max_inflight_caps_running_groups(tok):
    gate = threading.Event()
    drv, _ = make_driver(tok, env_kwargs={"gate": gate}, B=4, s=2, inflight=3)
    try:
        with drv._cv:
            drv._fill()
        assert drv.running == 3  # the staleness rule would allow 12
    finally:
        gate.set()
        drv.close()


def test_close_ends_in_flight_episodes_so_nothing_samples_after_it(tok):
    """After close() no episode of the run calls the engine again (a later run in the process would otherwise see
    its random stream drawn from, depending on timing) and every episode thread has finished."""
    drv, engine = make_driver(tok, env_kwargs={"delay": 0.2}, B=2, G=2, s=1)
    with drv._cv:
        drv._started = True
        drv._fill()
    time.sleep(0.1)  # episodes are mid-way (each turn's step sleeps 200 ms)
    futures = set(drv._futures)
    assert futures and not all(f.done() for f in futures)
    drv.close(timeout_s=5)
    assert all(f.done() for f in futures)
    calls = engine.engine.calls
    time.sleep(0.2)
    assert engine.engine.calls == calls and engine.stopped
    assert not drv._futures  # each finished episode removed itself (done-callbacks run just after wait returns)
    with pytest.raises(EngineStopped):
        engine.generate([])


# ------------------------------------------------------------------ versions per token
def test_tokens_carry_the_version_that_sampled_them(tok):
    gate = threading.Event()
    drv, engine = make_driver(tok, env_kwargs={"gate": gate}, B=1, G=1, s=0, size=1)  # seed 0: 1 turn
    drv.domains[0].pool.seed = lambda i: 1  # seed 1: two turns
    try:
        with drv._cv:
            drv._fill()
        deadline = time.time() + 10
        while not engine.engine.calls and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
        with drv.weight_sync():  # the first turn is sampled, its step waits on the gate
            engine.sync_weights(None)
        gate.set()
        res = drv.next(0)
        s = res.samples[0]
        sampled = [v for v, m in zip(s.token_versions, s.loss_mask) if m]
        assert sampled == [0, 0, 0, 1, 1, 1]  # "xx</s>" at version 0, then at version 1
        t = res.trajectories[0]
        assert (t.metrics["min_token_version"], t.metrics["max_token_version"], t.metrics["admit_version"]) == (0, 1, 0)
    finally:
        drv.close()


# ------------------------------------------------------------------ no group lost or duplicated
def test_no_group_lost_or_duplicated_across_syncs_and_resume(tok):
    drv, engine = make_driver(tok, env_kwargs={"delay": 0.002}, B=2, G=2, s=1)
    consumed = []
    try:
        for step in range(2):
            res = drv.next(step)
            with drv.weight_sync():
                engine.sync_weights(None)
            consumed += sorted({g[1] for g in res.group_ids})
            assert len(res.trajectories) == 4 and all(t.stop_reason == "env_done" for t in res.trajectories)
        state = drv.state_dict()
    finally:
        drv.close()
    pending = [p[0] for p in state["pending"]]
    assert sorted(consumed + pending) == list(range(state["next_seq"]))  # every admitted group: consumed or pending
    drv2, engine2 = make_driver(tok, env_kwargs={"delay": 0.002}, B=2, G=2, s=1)
    try:
        drv2.load_state_dict(state)
        again = []
        for step in range(2, 5):
            res = drv2.next(step)
            with drv2.weight_sync():
                engine2.sync_weights(None)
            again += [g[1] for g in dict.fromkeys(res.group_ids)]
    finally:
        drv2.close()
    assert len(again) == len(set(again)) == 6
    assert not set(again) & set(consumed)  # none twice
    assert set(pending) <= set(again)  # the in-flight ones re-ran
    assert drv2.version == 5


# ------------------------------------------------------------------ a hung environment
def test_a_hung_env_ends_its_episode_only(tok):
    drv, _ = make_driver(tok, env_kwargs={"hang": {0}}, B=2, G=2, s=0, timeout=0.5, size=2)
    try:
        t0 = time.time()
        res = drv.next(0)
        assert time.time() - t0 < 5
    finally:
        drv.close()
    by_group = {}
    for t, g in zip(res.trajectories, res.group_ids):
        by_group.setdefault(g, []).append(t.stop_reason)
    for (task, _), reasons in by_group.items():  # task i runs seed i
        assert reasons == (["error", "error"] if task == 0 else ["env_done", "env_done"])
    hung = sum(1 for g in by_group if g[0] == 0)
    assert res.metrics["excluded_error_episodes"] == 2 * hung
    assert sum("EnvTimeout" in (t.error or "") for t in res.trajectories) == 2 * hung


def test_a_hung_env_is_reported_with_its_reason(tok):
    drv, _ = make_driver(tok, env_kwargs={"hang": {0}}, B=1, G=1, s=0, timeout=0.3, size=1)
    try:
        res = drv.next(0)
    finally:
        drv.close()
    t = res.trajectories[0]
    assert t.stop_reason == "error" and t.metrics["error_where"] == "step" and "EnvTimeout" in t.error
    assert res.samples == [] and res.metrics["stop_error"] == 1


# ------------------------------------------------------------------ DORA's scheduling
class _Stats:
    def __init__(self, successes, attempts):
        self.successes, self.attempts, self.size = np.asarray(successes, float), np.asarray(attempts), len(attempts)


def test_dora_duplication_by_pass_rate_hand_computed():
    sch = DoraScheduler(max_copies=3, duplicate_below=0.5)
    pool = _Stats([0, 1, 2, 4, 0], [4, 4, 4, 4, 0])
    # p = 0 -> 3 copies; p = 0.25 -> 1 + round(2 * 0.5) = 2; p = 0.5 -> 1; p = 1 -> 1; unseen -> 1
    assert [sch.copies(pool, i) for i in range(5)] == [3, 2, 1, 1, 1]
    assert DoraScheduler().copies(pool, 0) == 1


def test_dora_mixture_weights_and_oversampling():
    a, b = _Stats([0] * 4, [0] * 4), _Stats([0] * 4, [0] * 4)
    doms = [Domain("a", None, a, weight=1.0, oversample=3.0), Domain("b", None, b, weight=1.0)]
    rng = np.random.default_rng(0)
    draws = [DoraScheduler().draw(doms, rng)[0] for _ in range(4000)]
    assert abs(draws.count(0) / 4000 - 0.75) < 0.03  # weight * oversample: 3 : 1


def test_duplicated_groups_are_separate_groups(tok):
    drv, _ = make_driver(tok, B=3, G=2, s=0, size=1, scheduler=DoraScheduler(max_copies=3))
    drv.domains[0].pool.attempts[0], drv.domains[0].pool.successes[0] = 4, 0.0  # pass rate 0 -> 3 copies
    try:
        res = drv.next(0)
    finally:
        drv.close()
    assert len(set(res.group_ids)) == 3 and res.metrics["duplicated_groups"] == 2
    assert len(res.samples) == 6


# ------------------------------------------------------------------ sync mode = the EpisodeSource path
def test_sync_mode_equals_episode_source(tok):
    from lckernels_rl.agents.loop import Episode  # noqa: F401
    from lckernels_rl.train.config import RLConfig
    from lckernels_rl.train.sources import EpisodeSource, SourceContext

    x, y = tok.convert_tokens_to_ids("x"), tok.convert_tokens_to_ids("y")

    def source():
        rng = np.random.default_rng(3)
        eng = ScriptedEngine(lambda r: [x if rng.random() < 0.5 else y, EOS], stop_token_ids=[EOS])
        loop = AgentLoop(eng, PlainChatRenderer(tok), parser=None, budget=Budget(max_turns=4, max_new_tokens=4),
                         tools_in_prompt=False, max_env_workers=1)
        rl = RLConfig(prompts_per_step=2, rollouts_per_step=6)
        return EpisodeSource(TurnsEnv, PromptPool(TurnsEnv, 8), SourceContext(rl, rng, loop.run_batch))

    a, b = RolloutDriver("sync", sync_source=source()), source()
    for step in range(3):
        ra, rb = a.next(step), b.next(step)
        assert [s.input_ids for s in ra.samples] == [s.input_ids for s in rb.samples]
        assert ra.group_ids == rb.group_ids and list(ra.rewards) == list(rb.rewards)
    assert repr(a.state_dict()) == repr(b.state_dict())


# ------------------------------------------------------------------ the trainer on the driver
def test_trainer_async_mode_and_resume(tmp_path):
    from lckernels_rl.train import Trainer

    from .tiny import fit_rl_rows, tiny_config

    cfg = tiny_config(tmp_path, rl={"steps": 3, "prompts_per_step": 2, "rollouts_per_step": 4, "max_new_tokens": 3},
                      rollout={"mode": "async", "max_staleness": 1, "mask_stale_tokens": True},
                      log={"checkpoint_every": 1, "eval_every": 0})
    tr = Trainer(cfg)
    try:
        rows = [r for r in tr.fit(max_steps=cfg.sft.steps + 2) if r["phase"] == "rl"]
    finally:
        tr.close()
    assert [r["driver_version"] for r in rows] == [0, 1]
    assert all(r["rollouts"] > 0 and r["group_staleness_max"] <= 1 for r in rows)
    state = __import__("torch").load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["source"]
    assert state["version"] == 2
    tr2 = Trainer(cfg, resume=True)
    try:
        more = [r for r in tr2.fit() if r["phase"] == "rl"]
    finally:
        tr2.close()
    assert [r["driver_version"] for r in more] == [2]
    assert fit_rl_rows  # the shared helper stays importable


def test_trainer_async_mixture_builds_one_domain_per_environment(tmp_path):
    """task.env: mixture in async mode: one DORA domain per environment with weight > 0 (weight and oversample from
    the spec), each its own task pool; the groups of a step come from the domains."""
    from lckernels_rl.train import Trainer

    from .tiny import tiny_config

    envs = [{"env": "arithmetic", "args": {"max_value": 9}, "weight": 1.0, "oversample": 3.0},
            {"env": "kv_lookup", "weight": 1.0}, {"env": "kv_lookup", "name": "kv_off", "weight": 0.0}]
    cfg = tiny_config(tmp_path, task={"env": "mixture", "env_args": {"envs": envs}, "train_size": 16, "eval_size": 0},
                      agent={"tools_in_prompt": False, "max_turns": 2},
                      rl={"steps": 1, "prompts_per_step": 2, "rollouts_per_step": 4, "max_new_tokens": 3},
                      rollout={"mode": "async", "max_staleness": 0}, log={"eval_every": 0})
    tr = Trainer(cfg)
    try:
        doms = tr.driver.domains
        assert [(d.name, d.weight, d.oversample) for d in doms] == [("arithmetic", 1.0, 3.0), ("kv_lookup", 1.0, 1.0)]
        assert doms[0].pool is not doms[1].pool and doms[0].pool.size == 16
        envs_built = [d.make_env() for d in doms]
        assert [e.labels[e.only] for e in envs_built] == ["arithmetic", "kv_lookup"]
        assert {e.reset(seed=s)[1]["domain"] for e in envs_built[1:] for s in range(8)} == {"kv_lookup"}
        rows = [r for r in tr.fit() if r["phase"] == "rl"]
    finally:
        tr.close()
    assert len(rows) == 1 and rows[0]["rollouts"] > 0
