"""TopoCurate's task scores (lckernels_rl/train/topocurate.py) on hand-made rollouts; every expected value is worked
out by hand from the graph drawn in the comment above it."""

from __future__ import annotations

import numpy as np
import pytest

from lckernels_rl.agents.types import Message, ToolCall
from lckernels_rl.train.topocurate import (TaskTopology, canonical_step, match_on_pass_rate, select_tasks,
                                           topology_scores, trajectory_steps)

# A: start -> {ax, dw}; ax -> {by, cz}; by -> success; cz, dw -> failure.  Branching: start (outcomes T, F: mixed),
#    ax (T, F: mixed) -> EBR 2/2 = 1.  Wins: two, one distinct path -> 1/2 x pass rate 2/4 = 0.25.  Score 1.25.
A = [(["ax", "by"], 1.0), (["ax", "cz"], 0.0), (["dw"], 0.0), (["ax", "by"], 1.0)]
# B: start -> {a, b}, both succeed: branching start has outcomes {T} only -> EBR 0; wins 2 distinct / 2 x 1 = 1.
B = [(["a"], 1.0), (["b"], 1.0)]
# C: start -> {a (success), b (failure)}: EBR 1/1; wins 1 distinct / 1 x 1/2 = 0.5.  Score 1.5.
C = [(["a"], 1.0), (["b"], 0.0)]
# D: start -> a -> failure twice: nothing branches -> EBR 0; no win -> 0.
D = [(["a"], 0.0), (["a"], 0.0)]


def test_scores_of_hand_drawn_graphs():
    s = topology_scores({"A": A, "B": B, "C": C, "D": D})
    expect = {"A": (1.0, 0.25, 1.25, 0.5), "B": (0.0, 1.0, 1.0, 1.0), "C": (1.0, 0.5, 1.5, 0.5),
              "D": (0.0, 0.0, 0.0, 0.0)}
    for task, (ebr, het, score, pr) in expect.items():
        got = s[task]
        assert (got["error_branch_ratio"], got["heterogeneity"], got["score"], got["pass_rate"]) == \
            pytest.approx((ebr, het, score, pr)), task
    assert topology_scores({"A": A}, variety_weight=0.0)["A"]["score"] == pytest.approx(1.0)


def test_success_threshold_decides_the_outcome():
    # rewards 0.6 / 0.2 at threshold 0.5: one win, one loss from a shared start -> EBR 1; at threshold 1: no win
    rolls = {"t": [(["a"], 0.6), (["b"], 0.2)]}
    assert topology_scores(rolls, success_threshold=0.5)["t"]["error_branch_ratio"] == 1.0
    assert topology_scores(rolls)["t"]["error_branch_ratio"] == 0.0


def test_equivalent_steps_merge_and_errors_stay_distinct():
    c1 = ToolCall("call_0_0", "lookup", {"key": "ab", "n": 1}, "@lookup(key=ab, n=1)")
    c2 = ToolCall("call_0_0", "lookup", {"n": 1, "key": "ab"}, "@lookup(n=1,key=ab)")
    a1, a2 = Message("assistant", "@lookup(key=ab, n=1)", [c1]), Message("assistant", "@lookup(n=1,key=ab)", [c2])
    assert canonical_step(a1, [Message("tool", " 5 ")]) == canonical_step(a2, [Message("tool", "5")]) == \
        'lookup({"key": "ab", "n": 1}) => 5'
    bad = ToolCall("call_0_0", None, None, "@lookup(key=", error="unclosed")
    assert canonical_step(Message("assistant", "@lookup(key=", [bad]), [Message("tool", "x", is_error=True)]) == \
        "!@lookup(key= => !x"
    msgs = [Message("user", "key ab"), a1, Message("tool", "5"), Message("assistant", "5")]
    assert trajectory_steps(msgs) == ['lookup({"key": "ab", "n": 1}) => 5', "5 => "]


def test_trajectories_with_messages_are_scored_like_their_steps():
    class T:
        def __init__(self, text, reward):
            self.messages = [Message("user", "q"), Message("assistant", text)]
            self.reward = reward

    s = topology_scores({"C": [T("a", 1.0), T("b", 0.0)]})
    assert s["C"]["score"] == pytest.approx(1.5)


def test_selection_and_pass_rate_matching():
    s = topology_scores({"A": A, "B": B, "C": C, "D": D})
    assert select_tasks(s, 2) == ["C", "A"]
    assert select_tasks(s, 0) == []
    assert match_on_pass_rate(s, ["C"], np.random.default_rng(0)) == ["A"]  # the only other pass rate 0.5
    with pytest.raises(ValueError, match="`k` must be an int in \\[0, 4\\]"):
        select_tasks(s, 5)
    with pytest.raises(ValueError, match="not enough other tasks"):
        match_on_pass_rate(s, ["A", "B", "C"], np.random.default_rng(0))


def test_bad_inputs_name_the_problem():
    with pytest.raises(TypeError, match="`rollouts` must map task"):
        topology_scores([A])
    with pytest.raises(ValueError, match="task 'x' has no rollouts"):
        topology_scores({"x": []})
    with pytest.raises(TypeError, match="expected trajectories or \\(steps, reward\\) pairs"):
        topology_scores({"x": [3]})
    with pytest.raises(TypeError, match="`steps` must be a list"):
        TaskTopology().add("ab", 1.0)
    with pytest.raises(TypeError, match="`action` must be a str or a Message"):
        canonical_step(3)
