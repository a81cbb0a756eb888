"""pc_state judges (issue 13 part 3, AJ-Bench): a transcript-only judge and an agent judge with read-only state
access, on hand-labelled scripted trajectories; precision / recall / F1 written by hand."""

from __future__ import annotations

import pytest

from lckernels_rl.agents import Message
from lckernels_rl.envs.pc_state import PCStateEnv, generate_task, make_tools, run_verifier
from lckernels_rl.envs.pc_state.judge import (AgentJudge, TranscriptJudge, evaluate_judges, judge_scores,
                                              run_script, scripted_trajectories)
from lckernels_rl.agents.tools import run_tool_calls
from lckernels_rl.agents.types import ToolCall

from .test_pc_state import mv_task

MV = ("mv", {"src": "ab.txt", "dst": "ef.txt"})
# (turns, answer, hand label, transcript judge's verdict, agent judge's verdict) -- all written by hand
CASES = [
    ([[MV]], "done", True, True, True),  # solved, claims it
    ([[MV]], "ok", True, False, True),  # solved, no claim word: the transcript judge misses it
    ([], "done", False, False, False),  # false claim, nothing done
    ([[("mv", {"src": "ab.txt", "dst": "zz.txt"})]], "done", False, True, False),  # false claim, wrong target
    ([[("write", {"path": "ef.txt", "text": "tea"}), ("rm", {"path": "ab.txt"})]], "done", False, True, True),
    ([[("rm", {"path": "zz.txt"})]], "done", False, False, False),  # the write failed (tool error)
    ([[("write", {"path": "ef.txt", "text": "milk"})]], "done", False, True, False),  # a copy, not a move
]


def _examples():
    env = PCStateEnv()
    out = []
    for turns, answer, label, tv, av in CASES:
        traj = run_script(env, mv_task(), turns, answer)
        out.append((traj, env.pc.copy(), label, tv, av))
    return out


def test_judges_on_hand_labelled_trajectories():
    tj, aj = TranscriptJudge(), AgentJudge()
    ex = _examples()
    for traj, state, label, tv, av in ex:
        assert run_verifier(mv_task().verifier, state, traj.messages[-1].content).passed == label
        assert tj.judge(traj.messages).success == tv
        assert aj.judge(traj.messages, state).success == av
    labels = [e[2] for e in ex]
    t = judge_scores([tj.judge(e[0].messages).success for e in ex], labels)
    a = judge_scores([aj.judge(e[0].messages, e[1]).success for e in ex], labels)
    # transcript: TP 1, FP 3, FN 1 -> P 1/4, R 1/2, F1 1/3;  agent: TP 2, FP 1, FN 0 -> P 2/3, R 1, F1 4/5
    assert (t["tp"], t["fp"], t["fn"], t["tn"]) == (1, 3, 1, 2)
    assert t["precision"] == pytest.approx(1 / 4) and t["recall"] == 0.5 and t["f1"] == pytest.approx(1 / 3)
    assert (a["tp"], a["fp"], a["fn"], a["tn"]) == (2, 1, 0, 4)
    assert a["precision"] == pytest.approx(2 / 3) and a["recall"] == 1.0 and a["f1"] == pytest.approx(0.8)


def test_agent_judge_reads_only_and_leaves_the_state_unchanged():
    traj, state, *_ = _examples()[0]
    d0 = state.digest()
    r = AgentJudge().judge(traj.messages, state)
    assert r.success and [q[0] for q in r.queries] == ["ls({})"] and r.queries[0][1] == "cd.txt ef.txt"
    assert state.digest() == d0
    ro = make_tools(lambda: state, read_only=True)
    out = run_tool_calls(ro, [ToolCall(id="j", name="rm", arguments={"path": "ef.txt"}, raw="@rm(path=ef.txt)")])
    assert out[0].is_error and out[0].content.startswith("error: unknown tool 'rm'") and state.digest() == d0
    bad = AgentJudge().judge([Message("user", "fly me to the moon"), Message("assistant", "done")], state)
    assert not bad.success and "cannot read the task" in bad.reason
    with pytest.raises(TypeError, match="state"):
        AgentJudge().judge(traj.messages, {"files": {}})


def test_generated_scripted_set_and_scores():
    tasks = [generate_task(h, 0, flaw_rate=0.0) for h in ("mv", "rm", "book", "cancel", "save")]
    ex = scripted_trajectories(tasks)
    assert len(ex) == 5 * 7 + 1  # seven kinds per task, fake_mv for the mv task
    for e in ex:  # the construction labels agree with the accepted verifiers
        assert run_verifier(e.task.verifier, e.final_state, e.trajectory.messages[-1].content).passed == e.label
    s = evaluate_judges(ex)
    # per task: transcript TP solved, FN quiet, FP wrong + undone (+ fake_mv); agent FP only on fake_mv
    assert (s["transcript"]["tp"], s["transcript"]["fp"], s["transcript"]["fn"]) == (5, 11, 5)
    assert s["transcript"]["f1"] == pytest.approx(10 / 26)
    assert (s["agent"]["tp"], s["agent"]["fp"], s["agent"]["fn"]) == (10, 1, 0)
    assert s["agent"]["f1"] == pytest.approx(20 / 21)
    with pytest.raises(ValueError, match="preds"):
        judge_scores([True], [True, False])
