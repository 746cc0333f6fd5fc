"""The offline demo end to end: the default run for the promised gains. `demo --fast` (structure, per-stage
progress) runs once in the suite, from an installed wheel: tests/commands/test_wheel_install.py."""

import json

import pytest

from alignlab.cli import main


def _run(tmp_path, *flags):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *flags]) == 0
    return json.loads((out / "summary.json").read_text()), out


def test_verdicts_say_when_a_stage_did_not_beat_sft():
    from alignlab.commands.demo.summary import verdicts

    def stage(greedy, preference):
        return {"greedy_accuracy": greedy, "preference_accuracy": preference}

    notes = verdicts({"sft": stage(0.05, 0.60), "dpo": stage(0.05, 0.80), "grpo": stage(0.03, 0.60)}, fast=True)
    assert notes[0] == "GRPO did NOT improve greedy accuracy (-2.0 points vs the SFT model)."
    assert notes[1] == "DPO held-out preference accuracy: +20.0 points vs the SFT model."
    assert notes[2].startswith("DPO did NOT improve greedy accuracy (+0.0 points vs the SFT model): it learned to rank")
    assert notes[3].startswith("--fast trains each stage")
    notes = verdicts({"sft": stage(0.2, 0.6), "dpo": stage(0.3, 0.5), "grpo": stage(0.5, 0.6)})
    assert notes[:3] == ["GRPO greedy accuracy: +30.0 points vs the SFT model.",
                         "DPO did NOT improve held-out preference accuracy (-10.0 points vs the SFT model).",
                         "DPO greedy accuracy: +10.0 points vs the SFT model."]
    assert not any(n.startswith("--fast") for n in notes)


@pytest.mark.slow
def test_default_demo_gains_15_points(tmp_path):
    summary, _ = _run(tmp_path, "--seed", "0")
    stages = summary["stages"]
    assert stages["grpo"]["greedy_accuracy"] - stages["sft"]["greedy_accuracy"] >= 0.15
    assert stages["dpo"]["preference_accuracy"] - stages["sft"]["preference_accuracy"] >= 0.15


def test_tool_demo_fast_runs_sft_then_grpo_with_the_tool(tmp_path, cli):
    """`alignlab demo --task tools --fast`: both stages through the shipped tool configs, measured with
    the tool (greedy and sampled), a summary that says the fast run is too short, and a report."""
    import json

    out = tmp_path / "tools"
    assert cli(["demo", "--task", "tools", "--fast", "--out", out]).code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "tools" and set(summary["stages"]) == {"sft", "grpo"}
    assert summary["stages"]["sft"]["steps"] == 20 and summary["stages"]["grpo"]["steps"] == 2
    for stage in summary["stages"].values():
        assert {"accuracy", "sampled/accuracy", "tools/call_frequency", "sampled/tools/call_frequency"} <= set(stage)
    assert "too short" in summary["notes"][0]
    grpo_config = (out / "grpo" / "config.yaml").read_text()
    assert "multiply" in grpo_config and (out / "report.html").is_file()
    assert all("Tools: multiply(a, b)" in s["prompt"] for s in summary["samples"]["grpo"])
