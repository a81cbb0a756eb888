"""AutoRefine (issue 14 §2): the released reward rules on hand-made episodes (expected rewards written by hand), BM25
retrieval on a hand-made corpus, the turn limit, no-hit queries, malformed tags, determinism, a trainer smoke run."""

from __future__ import annotations

import pytest

from lckernels_rl.agents.types import Message
from lckernels_rl.envs import make_tool_env
from lckernels_rl.envs.search.autorefine import (INVALID_ACTION, AutoRefineEnv, autorefine_reward, f1_score,
                                                 normalize_answer, validate_format)
from lckernels_rl.envs.search.corpus import BM25Index, Document, Question

# a 2-hop task written by hand: pet of boss of kobo -> boss of kobo is zari, pet of zari is mumu
Q2 = Question(text="pet of boss of kobo?", answer="mumu", chain=("kobo", "zari", "mumu"), relations=("boss", "pet"))


def _run(env, turns):
    env.reset(task=Q2)
    results = [env.step(Message("assistant", t)) for t in turns]
    return results, env.verify()


@pytest.fixture
def env():
    return AutoRefineEnv(n_entities=6)


def test_registered_and_builds():
    assert isinstance(make_tool_env("autorefine"), AutoRefineEnv)


def test_exact_answer_is_one(env):
    _, v = _run(env, ["<think>t</think><search>kobo boss</search>", "<refine>kobo boss zari</refine><search>zari pet"
                      "</search>", "<refine>zari pet mumu</refine><answer>Mumu.</answer>"])
    assert v.reward == 1.0 and v.info["reason"] == "correct"
    assert v.components["format_valid"] == 1.0 and v.components["em_hop2"] == 1.0


def test_wrong_answer_with_refine_holding_gold_is_0_1(env):
    _, v = _run(env, ["<think>t</think><search>kobo boss</search>", "<refine>zari pet mumu</refine><answer>zari"
                      "</answer>"])
    assert v.reward == pytest.approx(0.1) and v.info["reason"] == "refine_hit"


def test_wrong_answer_refine_without_gold_is_zero(env):
    _, v = _run(env, ["<think>t</think><search>kobo boss</search>", "<refine>kobo boss zari</refine><answer>zari"
                      "</answer>"])
    assert v.reward == 0.0 and v.info["reason"] == "wrong_answer"


def test_invalid_format_released_vs_gated(env):
    # no <think>: the format check fails.  Released: the refine reward is not gated (0.1); gated reading: 0.
    turns = ["<search>kobo boss</search>", "<refine>mumu</refine><answer>zari</answer>"]
    _, v = _run(env, turns)
    assert v.components["format_valid"] == 0.0 and v.reward == pytest.approx(0.1)
    _, v = _run(AutoRefineEnv(n_entities=6, refine_requires_format=True), turns)
    assert v.reward == 0.0 and v.info["reason"] == "refine_hit_invalid_format"


def test_correct_answer_ignores_format(env):  # released: answer_score > 0 is returned before the format check
    _, v = _run(env, ["<answer>mumu</answer>"])
    assert v.reward == 1.0 and v.components["format_valid"] == 0.0


def test_partial_f1_and_em_metric():
    # "mumu zari" vs gold "mumu": precision 1/2, recall 1 -> F1 = 2/3; EM -> 0 (then refine 0.1 if it holds gold)
    r, d = autorefine_reward("<answer>mumu zari</answer>", ["mumu"])
    assert r == pytest.approx(2 / 3) and d["reason"] == "partial_f1"
    r, _ = autorefine_reward("<refine>mumu</refine><answer>mumu zari</answer>", ["mumu"], answer_metric="em")
    assert r == pytest.approx(0.1)
    assert autorefine_reward("<answer>the mumu</answer>", ["mumu"], answer_metric="em")[0] == 1.0


def test_exact_match_only_baseline_has_no_refine_reward():
    r, _ = autorefine_reward("<think>t</think><search>q</search><refine>mumu</refine><answer>x</answer>", ["mumu"],
                             refine_score=0.0)
    assert r == 0.0


def test_normalisation_and_format_rules():
    assert normalize_answer(" The  Mumu, ") == "mumu"
    assert f1_score("yes", ["no"]) == 0.0
    assert validate_format("<think>a</think><search>b</search><refine>c</refine><answer>d</answer>")
    assert not validate_format("<think>a</think><think><search>b</search><refine>c</refine><answer>d</answer>")
    assert not validate_format("")


def test_malformed_tags_zero_reward_with_reason(env):
    res, v = _run(env, ["<search>kobo boss", "<answer>mumu"])  # never closed: no action in either turn
    assert res[0].messages[0].is_error and res[0].messages[0].content == INVALID_ACTION
    assert v.reward == 0.0 and v.info["reason"] == "no_answer" and v.components["invalid_turns"] == 2.0


def test_text_after_first_action_is_ignored(env):  # released: the turn is cut after its first </search>
    _, v = _run(env, ["<think>t</think><search>kobo boss</search><answer>mumu</answer>",
                      "<refine>x</refine><answer>zari</answer>"])
    assert v.reward == 0.0 and v.info["answer"] == "zari"


def test_no_hit_query_is_an_observation(env):
    res, v = _run(env, ["<think>t</think><search>qqqq xxxx</search>", "<answer>zari</answer>"])
    assert "No documents match" in res[0].messages[0].content and not res[0].terminated
    assert v.components["no_hit_searches"] == 1.0 and v.reward == 0.0


def test_more_than_max_turns(env):
    # 5 searches are run; the 6th turn is the final one: its search is not run and the episode ends unanswered
    turns = ["<think>t</think><search>kobo boss</search>"] + ["<refine>mumu</refine><search>zari pet</search>"] * 5
    res, v = _run(env, turns)
    assert all(r.messages for r in res[:5]) and not res[5].messages and res[5].truncated
    assert v.reward == 0.0 and v.info["reason"] == "no_answer" and v.components["searches"] == 6.0


def test_bm25_returns_gold_document():
    docs = [Document("kobo", "kobo boss zari"), Document("zari", "zari pet mumu"), Document("lili", "lili boss kobo"),
            Document("mumu", "mumu home lili")]
    hits = BM25Index(docs).search("zari pet", k=3)
    assert hits[0][0] == docs[1]
    assert BM25Index(docs).search("nothing here", k=3) == []


def test_demonstration_scores_one_and_is_deterministic():
    a, b = AutoRefineEnv(), AutoRefineEnv()
    for s in range(6):
        ma, ia = a.reset(seed=s)
        mb, ib = b.reset(seed=s)
        assert ma[0].content == mb[0].content and ia == ib and a.corpus.documents == b.corpus.documents
        for t in a.demo_plan():
            a.step(Message("assistant", t))
        v = a.verify()
        assert v.reward == 1.0 and v.components["format_valid"] == 1.0 and v.components["refine_hit"] == 1.0
    assert AutoRefineEnv(corpus_seed=1).corpus.documents != a.corpus.documents


def test_bad_arguments():
    with pytest.raises(ValueError, match="hops"):
        AutoRefineEnv(hops=(4,))
    with pytest.raises(ValueError, match="answer_metric"):
        AutoRefineEnv(answer_metric="bleu")
    with pytest.raises(TypeError, match="task"):
        AutoRefineEnv().reset(task=3)


def test_config_smoke(tmp_path):
    pytest.importorskip("transformers")
    from .tiny import TINY_LONGCAT, bundled_smoke_config, fit_rl_rows

    TINY = {**TINY_LONGCAT, "max_position_embeddings": 512}

    cfg = bundled_smoke_config("autorefine", tmp_path, "rl.max_new_tokens=8", model=TINY)
    rows = fit_rl_rows(cfg)
    assert [r["step"] for r in rows] == [2, 3]
    assert "eval_refine_hit" in rows[-1] and "eval_answer_em" in rows[-1]
