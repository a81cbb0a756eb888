"""The generalization harness (issue 13 part 5): the forgetting summary on a hand-written matrix, the CSV / PNG
outputs, stage validation, and a tiny 2-stage x 2-env run through the trainer (warm start by model.init_from)."""

from __future__ import annotations

import csv
import json
import math

import pytest

pytest.importorskip("transformers")

from lckernels_rl.train.generalization import (  # noqa: E402
    Stage, forgetting, load_generalization_config, mixture_stage, plot_transfer, read_matrix_csv, run_generalization,
    sequential_stages, write_matrix_csv)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_forgetting_on_a_hand_written_matrix():
    stages = ["init", "A", "B", "C"]
    envs = ["a", "b"]
    matrix = [[0.9, 0.0],   # init: high on purpose -- it is not an "earlier score" (nothing was learnt)
              [0.8, 0.1],
              [0.5, 0.6],
              [0.6, 0.7]]
    f = forgetting(matrix, stages, envs)
    # a: B drops 0.8 - 0.5 = 0.3; C: max(0.8, 0.5) - 0.6 = 0.2.  b: B: 0.1 - 0.6 = -0.5; C: max(0.1, 0.6) - 0.7 = -0.1
    assert f["drops"]["a"] == pytest.approx({"B": 0.3, "C": 0.2})
    assert f["drops"]["b"] == pytest.approx({"B": -0.5, "C": -0.1})
    assert f["per_env"]["a"] == pytest.approx({"final_drop": 0.2, "max_drop": 0.3, "best_earlier": 0.8})
    assert f["per_env"]["b"] == pytest.approx({"final_drop": -0.1, "max_drop": -0.1, "best_earlier": 0.6})
    assert f["mean_final_drop"] == pytest.approx(0.05)  # (0.2 - 0.1) / 2
    assert f["mean_forgetting"] == pytest.approx(0.1)  # (max(0.2, 0) + max(-0.1, 0)) / 2
    one = forgetting([[0.0, 0.0], [0.5, 0.2]], ["init", "mix"], envs)  # one trained stage: nothing to forget
    assert one["drops"] == {"a": {}, "b": {}} and math.isnan(one["per_env"]["a"]["final_drop"])
    with pytest.raises(ValueError, match="2 rows x 2 columns"):
        forgetting([[0.0, 0.0]], ["init", "A"], envs)


def test_matrix_csv_round_trip_and_heat_map(tmp_path):
    stages, envs, m = ["init", "A", "B"], ["x", "y", "z"], [[0, 0, 0], [0.5, 0.25, 0.0], [0.125, 1.0, float("nan")]]
    p = write_matrix_csv(tmp_path / "t.csv", stages, envs, m)
    assert p.read_text().splitlines() == ["stage,x,y,z", "init,0.0000,0.0000,0.0000", "A,0.5000,0.2500,0.0000",
                                          "B,0.1250,1.0000,nan"]
    s, e, back = read_matrix_csv(p)
    assert (s, e) == (stages, envs) and back[1] == [0.5, 0.25, 0.0] and math.isnan(back[2][2])
    png = plot_transfer(tmp_path / "t.png", stages, envs, m)
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_stage_validation_and_helpers():
    assert [s.weights for s in sequential_stages(["a", "b"], 3, 1)] == [{"a": 1.0}, {"b": 1.0}]
    assert mixture_stage(["a", "b"], 6, 2).weights == {"a": 1.0, "b": 1.0}
    with pytest.raises(ValueError, match="at least one weight must be > 0"):
        Stage("s", {"a": 0.0})
    with pytest.raises(ValueError, match=r"weights\.a must be a finite number >= 0"):
        Stage("s", {"a": -1})
    with pytest.raises(ValueError, match="`sft_steps` must be an int >= 0"):
        Stage("s", {"a": 1}, sft_steps=-1)
    with pytest.raises(ValueError, match=r"stages\[0\]: unknown field\(s\) \['steps'\]"):
        Stage.from_dict({"name": "s", "weights": {"a": 1}, "steps": 3}, "stages[0]")
    with pytest.raises(ValueError, match="other than 'init'"):
        Stage("init", {"a": 1})
    envs = [{"env": "arithmetic", "name": "a"}]
    with pytest.raises(ValueError, match=r"stages\[0\]\.weights: unknown env label\(s\) \['b'\]"):
        run_generalization(envs, [Stage("s", {"b": 1})], {}, "/nonexistent/never")
    with pytest.raises(ValueError, match="stage names must be unique"):
        run_generalization(envs, [Stage("s", {"a": 1}), Stage("s", {"a": 1})], {}, "/nonexistent/never")
    with pytest.raises(ValueError, match=r"envs\[0\]\.env: unknown environment 'chess'"):
        run_generalization([{"env": "chess"}], [Stage("s", {"chess": 1})], {}, "/nonexistent/never")


def test_bundled_config_loads_and_a_tiny_two_stage_run_writes_the_matrix(tmp_path):
    from .tiny import TINY_LONGCAT

    data = load_generalization_config("generalization", ["eval_size=2"])
    assert [s["name"] for s in data["stages"]] == ["arith", "kv_easy"] and data["eval_size"] == 2
    base = data["train"]
    base["model"]["overrides"] = dict(TINY_LONGCAT)
    base["task"] = {"train_size": 8}
    base["sft"] = {"batch_size": 2}
    base["rl"] = {"prompts_per_step": 2, "rollouts_per_step": 4, "max_new_tokens": 16}
    envs = data["envs"][:2]  # arith, kv_easy
    base["agent"]["max_turns"] = 2
    stages = [{**data["stages"][0], "sft_steps": 1, "rl_steps": 0}, {**data["stages"][1], "sft_steps": 1, "rl_steps": 1}]
    lines = []
    res = run_generalization(envs, stages, base, tmp_path / "gen", seeds=[0], eval_size=2, log=lines.append)
    assert res.stages == ["init", "arith", "kv_easy"] and res.envs == ["arith", "kv_easy"]
    with open(tmp_path / "gen" / "transfer.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["stage", "arith", "kv_easy"] and [r[0] for r in rows[1:]] == res.stages
    assert all(len(r) == 3 and all(0.0 <= float(v) <= 1.0 for v in r[1:]) for r in rows[1:])
    assert (tmp_path / "gen" / "transfer.png").read_bytes()[:8] == PNG_MAGIC
    summary = json.loads((tmp_path / "gen" / "summary.json").read_text())
    assert [s["warm_start"] for s in summary["runs"][0]["stages"]] == ["scratch", "init_from"]
    assert set(summary["forgetting"]["per_env"]) == {"arith", "kv_easy"}
    assert len((tmp_path / "gen" / "transfer_runs.csv").read_text().splitlines()) == 1 + 3 * 2
    assert len(lines) == 3 and json.loads(lines[0])["stage"] == "init"
    # each stage ran on the mixture of the same two specs with its own weights, evaluated one env at a time
    import yaml

    cfg = yaml.safe_load((tmp_path / "gen" / "seed0" / "01_kv_easy" / "config.yaml").read_text())
    assert cfg["task"]["env"] == "mixture" and cfg["task"]["env_args"]["weights"] == {"arith": 0.0, "kv_easy": 1.0}
    assert cfg["model"]["init_from"] == str(tmp_path / "gen" / "seed0" / "00_arith")
