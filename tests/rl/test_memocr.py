"""MemOCR text-only (issue 14 §1): the renderer on hand-made memories, the reward combination by hand, hand-made
episodes, the cloze rule, determinism, bad input, a trainer smoke run."""

from __future__ import annotations

import random

import pytest

from lckernels_rl.agents.types import Message
from lckernels_rl.envs import make_tool_env
from lckernels_rl.envs.memory.memocr import (MemOCREnv, make_cloze, memocr_reward, memory_words, read_answer,
                                             render_memory, rendered_text)

TASK = {"facts": [["kobo", "city", "zari"], ["lina", "pet", "mumu"], ["dera", "food", "pazo"]], "ask": 2}


def _episode(memory, **kw):
    env = MemOCREnv(n_facts=3, **kw)
    env.reset(seed=0, task=TASK)
    env.step(Message("assistant", memory))
    return env.verify()


def test_registered():
    assert isinstance(make_tool_env("memocr"), MemOCREnv)


def test_renderer_keeps_emphasis_and_truncates_the_rest():
    mem = "# facts\nkobo city zari\n**dera food pazo**\nlina pet mumu"
    assert [w for w, e in memory_words(mem) if e] == ["facts", "dera", "food", "pazo"]
    # budget 24: emphasised words first: facts(6) dera(5) food(5) pazo(5) = 21; 3 left: "kobo" (5) does not fit
    assert rendered_text(mem, 24) == "facts dera food pazo"
    # budget 31: 21 + kobo(5) + city(5) = 31; then zari does not fit and plain filling stops
    assert rendered_text(mem, 31) == "facts kobo city dera food pazo"
    assert rendered_text(mem, 1000) == "facts kobo city zari dera food pazo lina pet mumu"
    assert render_memory(mem, 0) == [False] * 10


def test_reader():
    assert read_answer("kobo city zari dera food pazo", "dera", "food") == "pazo"
    assert read_answer("kobo city zari dera food", "dera", "food") is None


def test_reward_combination_by_hand():
    assert memocr_reward(1, 1, 1) == pytest.approx(1.0)
    assert memocr_reward(1, 0, 1) == pytest.approx(1.3 / 2)   # (1 + 0 + 0.3) / 2
    assert memocr_reward(1, 1, 0) == pytest.approx(1.7 / 2)   # (1 + 0.7 + 0) / 2
    assert memocr_reward(0, 1, 0) == pytest.approx(0.35)      # 0.7 / 2
    assert memocr_reward(1, 0, 0, w_low=0.0, w_cloze=0.0) == 1.0


def test_plain_memory_loses_the_fact_at_low_budget():
    # full budget 96 keeps all 45 characters; low budget 24: kobo city zari lina pet (24); the asked dera fact is lost
    v = _episode("kobo city zari\nlina pet mumu\ndera food pazo")
    assert (v.components["r_full"], v.components["r_low"], v.components["r_cloze"]) == (1.0, 0.0, 1.0)
    assert v.reward == pytest.approx(1.3 / 2) and v.info["reason"] == "lost_at_low_budget"


def test_bold_key_fact_survives():
    v = _episode("kobo city zari\nlina pet mumu\n**dera food pazo**")
    assert v.info["low"] == "kobo dera food pazo"
    assert v.reward == pytest.approx(1.0) and v.components["emphasised_key"] == 1.0


def test_malformed_emphasis_is_plain_text():
    # an unclosed ** emphasises nothing: the markers are dropped, the fact is plain and lost at the low budget
    v = _episode("kobo city zari\nlina pet mumu\n**dera food pazo")
    assert v.components["emphasised_key"] == 0.0 and v.components["r_low"] == 0.0
    assert v.reward == pytest.approx(1.3 / 2) and v.info["reason"] == "lost_at_low_budget"


def test_missing_fact_and_empty_memory():
    v = _episode("kobo city zari")
    assert v.components["r_full"] == 0.0 and v.components["r_low"] == 0.0 and v.reward == pytest.approx(0.15)
    v = _episode("   \n ** **")
    assert v.reward == 0.0 and v.info["reason"] == "empty_memory"


def test_long_memory_loses_cloze_words():
    # asked: kobo city zari; full budget 10 keeps "kobo city" only; the cloze blanks all 3 candidates (kobo, city,
    # zari) and zari is not rendered -> R_cloze 0; the answer word is cut too -> R_full 0; R_low (budget 2) 0
    env = MemOCREnv(n_facts=3, full_budget=10)
    env.reset(seed=0, task={**TASK, "ask": 0})
    env.step(Message("assistant", "kobo city zari"))
    v = env.verify()
    assert v.info["full"] == "kobo city" and v.info["blanks"] == ["kobo", "city", "zari"]
    assert (v.components["r_full"], v.components["r_low"], v.components["r_cloze"]) == (0.0, 0.0, 0.0)
    assert v.reward == 0.0


def test_cloze_rule():
    mem = "an ab kobo city zari"
    # candidates: alphanumeric words longer than 2 characters -> kobo, city, zari (indices 2, 3, 4); all 3 blanked
    assert make_cloze(mem, random.Random(0)) == [2, 3, 4]
    assert make_cloze("ab cd", random.Random(0)) == []
    assert len(make_cloze(" ".join(["word"] * 200), random.Random(1), window_size=50)) == 3


def test_demonstration_and_determinism():
    a, b = MemOCREnv(), MemOCREnv()
    bold = 0
    for s in range(20):
        ma, _ = a.reset(seed=s)
        mb, _ = b.reset(seed=s)
        assert ma[0].content == mb[0].content
        demo = a.demonstration(ma)
        assert demo == b.demonstration(mb)
        a.step(Message("assistant", demo))
        v = a.verify()
        assert v.components["r_full"] == 1.0 and v.components["r_cloze"] == 1.0
        bold += v.components["emphasised_key"]
        if v.components["emphasised_key"]:
            assert v.reward == 1.0
    assert 0 < bold < 20


def test_bad_arguments():
    with pytest.raises(ValueError, match="full_budget"):
        MemOCREnv(full_budget=0)
    with pytest.raises(ValueError, match="low_ratio"):
        MemOCREnv(low_ratio=2.0)
    with pytest.raises(TypeError, match="task"):
        MemOCREnv().reset(task=[1])
    with pytest.raises(TypeError, match="memory"):
        memory_words(None)


def test_config_smoke(tmp_path):
    pytest.importorskip("transformers")
    from .tiny import TINY_LONGCAT, bundled_smoke_config, fit_rl_rows

    TINY = {**TINY_LONGCAT, "max_position_embeddings": 512}

    cfg = bundled_smoke_config("memocr", tmp_path, "rl.max_new_tokens=8", model=TINY)
    rows = fit_rl_rows(cfg)
    assert [r["step"] for r in rows] == [2, 3]
    assert "eval_r_low" in rows[-1] and "eval_r_full" in rows[-1]
