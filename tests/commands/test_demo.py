"""The offline demo end to end: --fast for structure and per-stage progress, the default run for the promised gains."""

import json

import pytest

from alignlab.cli import main

STAGE_KEYS = {"greedy_accuracy", "sampled_accuracy", "format_rate", "preference_accuracy", "mean_length", "steps", "seconds"}


def _run(tmp_path, *flags):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *flags]) == 0
    return json.loads((out / "summary.json").read_text()), out


def test_fast_demo_structure_and_each_stage_improves_its_objective(tmp_path):
    summary, out = _run(tmp_path, "--fast", "--seed", "1")
    assert summary["task"] == "addition" and summary["seed"] == 1
    log = (out / "demo.log").read_text()  # every stage's log and the stage lines, in order
    assert log.index("[ sft]") < log.index(f"saved {out / 'dpo'}") < log.index("[ dpo]") < log.index("[grpo]")
    assert "[ sft]" not in (out / "sft" / "train.log").read_text()
    assert summary["test_prompts"] == 100 and summary["seconds"] > 0
    assert set(summary["stages"]) == {"sft", "dpo", "grpo"}
    for name, stage in summary["stages"].items():
        assert STAGE_KEYS <= set(stage), name
        for key in ("greedy_accuracy", "sampled_accuracy", "format_rate", "preference_accuracy"):
            assert 0.0 <= stage[key] <= 1.0
        assert (out / name / "final" / "config.json").is_file()
        assert (out / name / "metrics.jsonl").is_file()
    sft, dpo, grpo = (summary["stages"][n]["objective"] for n in ("sft", "dpo", "grpo"))
    assert sft["name"] == "loss" and sft["last"] < sft["first"] * 0.5
    assert dpo["name"] == "loss" and dpo["last"] < dpo["first"]
    assert grpo["name"] == "sampled reward on held-out prompts" and grpo["last"] > grpo["first"]


@pytest.mark.slow
def test_default_demo_gains_15_points(tmp_path):
    summary, _ = _run(tmp_path, "--seed", "0")
    stages = summary["stages"]
    assert stages["grpo"]["greedy_accuracy"] - stages["sft"]["greedy_accuracy"] >= 0.15
    assert stages["dpo"]["preference_accuracy"] - stages["sft"]["preference_accuracy"] >= 0.15
