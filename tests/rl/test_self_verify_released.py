"""Self-Verify's released behaviour (issue 16), read from chenyuxin1999/Learning-to-Self-Verify at commit 1c6f762:
recipe/dapo/dapo_self_verification_answeronly_ray_trainer.py (_add_verification_buffer, _fill_samples_from_pool,
fit), verl/utils/reward_score/__init__.py ("verification") and math_dapo.py (strict boxed match),
Learning_to_self_verify_w_generation.sh (interval 5, looplen 1, clip 0.2 / 0.28, token-mean).  The expected values
are worked out by hand from hand-made groups."""

from __future__ import annotations

import numpy as np
import pytest

import lckernels_rl.objectives as O
from lckernels_rl.agents.trajectory import TrainSample
from lckernels_rl.agents.types import Message
from lckernels_rl.objectives import get_objective
from lckernels_rl.train.config import RLConfig
from lckernels_rl.train.sources import RolloutGroups, SelfVerificationSource, SourceContext


def labels_by_group(ex):
    return sorted((e.label, e.group) for e in ex)


# ------------------------------------------------------------------------------------------------ balancing
def test_fill_up_to_half_the_groups_from_the_reserve_pools():
    """6 groups -> target 3 per label.  Step examples: mixed g0 and g3 give Yes + No each.  Reserve pools: g0 has a
    correct and a wrong rollout left -> one Yes and one No; all-correct g1, g4 -> one Yes each; all-wrong g2, g5
    skipped.  No: 2 + 1 from its pool (g0) = 3; Yes: 2 + 1 of the Yes pool {g0, g1, g4} = 3."""
    q = [f"q{g}" for g in range(6)]
    r = [["a", "b", "c", "d"], ["e", "f"], ["g", "h"], ["i", "j"], ["k", "l", "m"], ["n", "o", "p"]]
    c = [[True, False, True, False], [True, True], [False, False], [True, False], [True, True, True],
         [False, False, False]]
    for seed in range(10):
        ex = O.build_verification_examples(q, r, c, seed=seed)
        no = sorted(e.group for e in ex if e.label == "No")
        yes = sorted(e.group for e in ex if e.label == "Yes")
        assert no == [0, 0, 3] and len(yes) == 3
        assert {0, 3} <= set(yes) and set(yes) <= {0, 1, 3, 4}
        for e in ex:  # each example judges a rollout of its group with the right label
            assert c[e.group][r[e.group].index(e.response)] == (e.label == "Yes")
            assert e.pass_rate == [0.5, 1.0, 0.0, 0.5, 1.0, 0.0][e.group]
    # before issue 16 (downsample): Yes from g0, g1, g3, g4 (4), No from g0, g3 (2) -> 2 + 2
    old = O.build_verification_examples(q, r, c, seed=0, balance="downsample")
    assert [e.label for e in old].count("Yes") == [e.label for e in old].count("No") == 2


def test_fill_with_replacement_when_the_pool_is_small():
    """6 groups -> target 3.  g0 = [T, F, F]: step Yes + No, its other wrong rollout to the No pool (1 example);
    g1..g5 all-correct: 5 in the Yes pool.  No: 1 + 1 (without replacement) + 1 (with replacement: that same
    example again) = 3, and the two wrong rollouts "b" and "c" both appear; Yes: 1 + 2 distinct of the pool."""
    q = [f"q{g}" for g in range(6)]
    r = [["a", "b", "c"]] + [[f"y{g}", f"z{g}"] for g in range(1, 6)]
    c = [[True, False, False]] + [[True, True]] * 5
    for seed in range(10):
        ex = O.build_verification_examples(q, r, c, seed=seed)
        no = [e for e in ex if e.label == "No"]
        yes = [e for e in ex if e.label == "Yes"]
        assert len(no) == 3 and {e.group for e in no} == {0} and {e.response for e in no} == {"b", "c"}
        assert len(yes) == 3 and len({e.group for e in yes}) == 3 and 0 in {e.group for e in yes}
        assert all(abs(e.pass_rate - 1 / 3) < 1e-12 for e in no)
    # before: Yes 6 (g0..g5), No 1 (g0) -> downsampled to 1 + 1
    assert len(O.build_verification_examples(q, r, c, seed=0, balance="downsample")) == 2


def test_short_pools_and_truncation():
    # one mixed [T, F] group + 3 all-wrong: target 2 but nothing to fill from -> 1 + 1
    ex = O.build_verification_examples(["a", "b", "c", "d"], [["x", "y"], ["u", "v"], ["s", "t"], ["p", "q"]],
                                       [[True, False], [False, False], [False, False], [False, False]], seed=0)
    assert labels_by_group(ex) == [("No", 0), ("Yes", 0)]
    # 4 mixed [T, F] groups + 2 all-wrong: target 3 < 4 step examples -> each label cut to its first 3 groups
    q = [f"q{g}" for g in range(6)]
    r = [["x", "y"]] * 6
    c = [[True, False]] * 4 + [[False, False]] * 2
    ex = O.build_verification_examples(q, r, c, seed=0)
    assert labels_by_group(ex) == [("No", 0), ("No", 1), ("No", 2), ("Yes", 0), ("Yes", 1), ("Yes", 2)]
    # a single group: target 0
    assert O.build_verification_examples(["x"], [["a", "b"]], [[True, False]], seed=0) == []
    with pytest.raises(ValueError, match="balance must be one of replacement, downsample, none"):
        O.build_verification_examples(["x"], [["a"]], [[True]], seed=0, balance="up")


# ------------------------------------------------------------------------------------------------ reward
@pytest.mark.parametrize("text, label, pass_rate, expected", [
    ("so it is right. Answer: \\boxed{Yes}", "Yes", 0.25, 0.25),      # match x pass rate
    ("Answer: \\boxed{Yes}", "Yes", 1.0, 0.5),                        # x min(pass rate, 0.5)
    ("Answer: \\boxed{No}", "No", 0.5, 0.5),
    ("Answer: \\boxed{No}", "Yes", 1.0, 0.0),
    ("Answer: \\boxed{yes}", "Yes", 1.0, 0.0),                        # strict: case matters
    ("Answer: \\boxed{ Yes }", "Yes", 1.0, 0.5),                      # spaces are normalized away
    ("\\boxed{\\text{No}}", "No", 0.4, 0.4),                          # \text{} unwrapped
    ("\\boxed{No} hmm, no: \\boxed{Yes}", "Yes", 1.0, 0.5),           # the last box counts
    ("Yes", "Yes", 1.0, 0.0),                                         # no box, no reward
    ("\\boxed{Yes", "Yes", 1.0, 0.0),                                 # unclosed
    ("\\boxed{Yes}" + "." * 189, "Yes", 1.0, 0.5),                    # within the last 200 characters
    ("\\boxed{Yes}" + "." * 190, "Yes", 1.0, 0.0),                    # starts 201 characters from the end
])
def test_strict_boxed_reward_times_capped_pass_rate(text, label, pass_rate, expected):
    assert O.verification_reward(text, label, pass_rate) == pytest.approx(expected)
    assert get_objective("self_verify").reward(text, label, pass_rate) == pytest.approx(expected)


def test_old_reward_is_an_option():
    obj = get_objective("self_verify", strict_boxed=False, pass_rate_cap=None)
    assert obj.reward("yes", "Yes", 0.1) == 1.0 and obj.reward("\\boxed{no}", "No", 0.1) == 1.0
    with pytest.raises(ValueError, match="pass_rate_cap"):
        get_objective("self_verify", pass_rate_cap=0.0)


# ------------------------------------------------------------------------------------------------ schedule, loss
def test_released_schedule_and_loss_defaults():
    sched = get_objective("self_verify").schedule()
    assert [s for s in range(15) if sched.is_verification_step(s)] == [4, 9, 14]  # 1-based steps 5, 10, 15
    assert sched.kind(4) == "generation+verification" and sched.kind(5) == "generation"
    loss = get_objective("self_verify").loss_objective()
    assert (loss.eps_low, loss.eps_high, loss.loss_agg) == (0.2, 0.28, "token-mean")
    old = get_objective("self_verify", base="grpo").loss_objective()
    assert (old.eps_low, old.eps_high, old.loss_agg) == (0.2, 0.2, "seq-mean-token-mean")
    with pytest.raises(ValueError, match="mode must be one of extra, replace"):
        O.SelfVerifySchedule(mode="after")
    with pytest.raises(ValueError, match="loops"):
        get_objective("self_verify", loops=0)


# ------------------------------------------------------------------------------------------------ the source
class FakeTraj:
    def __init__(self, reward, answer="x"):
        self.reward, self.stop_reason = float(reward), "env_done"
        self.messages = [Message("assistant", answer)]
        self.metrics = {}

    def to_samples(self, group_id=None):
        return [TrainSample([5, 6], [0, 1], [0.0, 0.0], [-1, 0], reward=self.reward, group_id=group_id)]


class FakeBase:
    """Generation step s: tasks 4s .. 4s+3 with rewards [1, 0], [1, 1], [0, 0], [0, 1] -> per step 2 Yes + 2 No
    (mixed groups 0 and 3; the all-correct Yes waits in the pool, unused: target 2 is already met)."""

    def __init__(self):
        self.ctx = SourceContext(RLConfig(prompts_per_step=4, rollouts_per_step=8), np.random.default_rng(0),
                                 self.run)
        self.pool = type("Pool", (), {"prompts": [f"task{t}" for t in range(64)]})()
        self.verify_calls: list[list] = []

    def next(self, step):
        rewards = [[1, 0], [1, 1], [0, 0], [0, 1]]
        trajs, gids = [], []
        for k, rs in enumerate(rewards):
            for j, r in enumerate(rs):
                trajs.append(FakeTraj(r, f"s{step}t{k}r{j}"))
                gids.append(4 * step + k)
        samples = [s for t, g in zip(trajs, gids) for s in t.to_samples(g)]
        return RolloutGroups(samples, trajs, np.asarray([2, 2, 2, 2]), {}, gids)

    def run(self, episodes):
        self.verify_calls.append([ep.task for ep in episodes])
        return [FakeTraj(1.0) for _ in episodes]

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def steps_of(examples) -> set:
    return {int(e.question[4:]) // 4 for e in examples}


def test_extra_update_from_the_buffer_of_the_steps_before():
    """every=2: verification after the generation updates of 0-based steps 1, 3, 5.  Step 1's buffer holds step 0's
    4 examples; step 3's holds steps 1 and 2 (8), of which one chunk of 2 * floor(4 / 2) = 4 is trained; step 5's
    holds steps 3 and 4.  Each example gets 8 // 4 = 2 rollouts."""
    base = FakeBase()
    src = SelfVerificationSource(base, get_objective("self_verify", every=2))
    extras = []
    for step in range(6):
        res = src.next(step)
        assert res.metrics["step_kind"] == "generation" and len(res.samples) == 8
        extras.append(list(src.after_update(step)))
    assert [len(e) for e in extras] == [0, 1, 0, 1, 0, 1]
    calls = base.verify_calls
    assert len(calls) == 3
    assert [steps_of(c) for c in calls] == [{0}, {1, 2}, {3, 4}]
    for call, extra in zip(calls, (extras[1][0], extras[3][0], extras[5][0])):
        assert len(call) == 8 and len(set(map(id, call))) == 4  # 4 examples x 2 rollouts
        assert extra.name == "verification" and len(extra.samples) == 8
        assert extra.metrics["examples"] == 4 and extra.metrics["loop"] == 0
        assert extra.metrics["label_yes"] + extra.metrics["label_no"] == 4
    assert (extras[1][0].metrics["label_yes"], extras[1][0].metrics["label_no"]) == (2, 2)  # step 0's 2 + 2
    assert [extras[k][0].metrics["buffer_size"] for k in (1, 3, 5)] == [4, 8, 8]
    assert len(src.buffer) == 4 and src.pending is None  # step 5's own examples wait for step 7


def test_loops_train_more_chunks_and_state_round_trips():
    base = FakeBase()
    src = SelfVerificationSource(base, get_objective("self_verify", every=3, loops=2))
    for step in range(3):
        src.next(step)
        got = list(src.after_update(step))
    assert len(got) == 2 and [g.metrics["loop"] for g in got] == [0, 1]  # 2 buffered steps x 4 = 2 chunks of 4
    assert len(base.verify_calls) == 2
    assert steps_of(base.verify_calls[0] + base.verify_calls[1]) == {0, 1}
    again = SelfVerificationSource(FakeBase(), get_objective("self_verify", every=3, loops=2))
    again.load_state_dict(src.state_dict())
    assert again.buffer == src.buffer and again.chunk == src.chunk == 4


# ------------------------------------------------------------------------------------------------ the trainer
def test_trainer_runs_the_extra_verification_update(tmp_path, monkeypatch):
    """every=1: after each generation update a verification update from the previous steps' examples (none at the
    first step).  The verification rollouts sample the policy after the generation update: its policy version is one
    more than the generation update's."""
    pytest.importorskip("transformers")
    from lckernels_rl.envs import ArithmeticEnv
    from lckernels_rl.rollout import HFGenerateBackend
    from lckernels_rl.train import Trainer

    from .tiny import tiny_config

    real = ArithmeticEnv.step

    def step(self, action):  # odd-length answers are "correct": mixed groups
        obs, _, term, trunc, info = real(self, action)
        return obs, float(len(action) % 2), term, trunc, info

    monkeypatch.setattr(ArithmeticEnv, "step", step)
    seen: list[list[str]] = []
    real_gen = HFGenerateBackend.generate

    def spy(self, prompt_ids, counts, **kw):
        seen.append([tr.tokenizer.decode(p) for p in prompt_ids])
        return real_gen(self, prompt_ids, counts, **kw)

    monkeypatch.setattr(HFGenerateBackend, "generate", spy)
    cfg = tiny_config(tmp_path, task={"train_size": 32, "eval_size": 0}, sft={"steps": 0}, log={"eval_every": 0},
                      rl={"rollouts_per_step": 8, "objective": "self_verify",
                          "objective_args": {"every": 1, "template": "{question}{response}?"}})
    tr = Trainer(cfg)  # the spy decodes with its tokenizer
    try:
        rows = [r for r in tr.fit() if r["phase"] == "rl"]
    finally:
        tr.close()
    assert [r["extra_updates"] for r in rows] == [0, 1]
    r = rows[1]
    assert r["step_kind"] == "generation" and r["verification_updates"] == 1
    assert r["verification_policy_version"] == r["policy_version"] + 1
    assert r["verification_examples"] == r["verification_label_yes"] + r["verification_label_no"] > 0
    assert r["verification_rollouts"] == 2 * r["verification_examples"]  # 8 // 4 rollouts per example
    gen0, gen1, ver1 = seen  # step 0: generation; step 1: generation, then verification of step 0's rollouts
    assert all(p.endswith("?") for p in ver1) and not any(p.endswith("?") for p in gen0 + gen1)
    for prompt in ver1:
        assert prompt[:prompt.index("=") + 1] in gen0


def test_resume_keeps_the_verification_buffer(tmp_path, monkeypatch):
    """every=3, checkpoints every 2 steps: a run resumed from step 2 (buffer: steps 1, 2) writes the same step-3
    verification update and the same later steps as the uninterrupted run."""
    pytest.importorskip("transformers")
    import json

    from lckernels_rl.envs import ArithmeticEnv
    from lckernels_rl.train import Trainer

    from .tiny import tiny_config

    real = ArithmeticEnv.step

    def step(self, action):
        obs, _, term, trunc, info = real(self, action)
        return obs, float(len(action) % 2), term, trunc, info

    monkeypatch.setattr(ArithmeticEnv, "step", step)
    def cfg(name):
        return tiny_config(tmp_path, task={"train_size": 32, "eval_size": 0}, sft={"steps": 0},
                           rl={"steps": 4, "rollouts_per_step": 8, "objective": "self_verify",
                               "objective_args": {"every": 3, "template": "{question}{response}?"}},
                           log={"output_dir": str(tmp_path / name), "checkpoint_every": 2, "eval_every": 0})

    def lines(name):
        rows = [json.loads(ln) for ln in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if "time" not in k and "tokens_per_s" not in k} for r in rows]

    tr = Trainer(cfg("full"))
    tr.fit()
    tr.close()
    tr = Trainer(cfg("crash"))
    tr.fit(max_steps=3)
    tr.close()
    tr = Trainer(cfg("crash"), resume=True)
    assert tr.step == 2 and len(tr.source.buffer) > 0
    tr.fit()
    tr.close()
    full, resumed = lines("full"), lines("crash")
    assert [r["extra_updates"] for r in full if r["phase"] == "rl"] == [0, 0, 1, 0]
    assert resumed == full
