"""`alignlab sweep`: a 2x2 grid of tiny DPO runs sharing one reference computation; failures don't stop a sweep."""

from __future__ import annotations

import csv
import json

from conftest import write_jsonl

from alignlab.commands.sweep import parse_grid, run_name, split_values


def test_grid_parsing():
    axes, fixed = parse_grid(["dpo.beta=0.05,0.1", "train.lr=1e-5", "grpo.rewards=[a,b],[c]"])
    assert axes == {"dpo.beta": ["0.05", "0.1"], "grpo.rewards": ["[a,b]", "[c]"]} and fixed == ["train.lr=1e-5"]
    assert split_values("[a,b]") == ["[a,b]"]
    assert run_name({"dpo.beta": "0.05", "train.lr": "1e-5"}) == "beta0.05_lr1e-5"
    assert run_name({"dpo.beta": "0.1", "grpo.beta": "0"}) == "dpo-beta0.1_grpo-beta0"


def _common(tiny_model_dir, prefs, eval_file):
    return [f"model.name_or_path={tiny_model_dir}", f"data.train={prefs}", f"data.eval={eval_file}",
            "train.progress=false", "train.max_steps=3", "train.batch_size=4", "train.max_length=64",
            "train.eval_every=2"]


def test_sweep_2x2_shares_reference_and_summarises(tmp_path, tiny_model_dir, prefs, cli):
    eval_file = write_jsonl([json.loads(line) for line in prefs.read_text().splitlines()[:6]], tmp_path / "eval.jsonl")
    out = tmp_path / "sweep"
    result = cli(["sweep", "--command", "dpo", "--out", out, *_common(tiny_model_dir, prefs, eval_file),
                  "dpo.beta=0.1,0.5", "train.lr=1e-4,1e-3"])
    assert result.code == 0, result.err
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["runs"]) == 4 and all(r["status"] == "ok" for r in summary["runs"])
    assert {r["name"] for r in summary["runs"]} == {"beta0.1_lr1e-4", "beta0.1_lr1e-3", "beta0.5_lr1e-4", "beta0.5_lr1e-3"}
    assert summary["sort_metric"] == "eval/loss"
    losses = [r["best"]["eval/loss"] for r in summary["runs"]]
    assert losses == sorted(losses)  # best first
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert len(rows) == 4 and "final eval/rewards/accuracies" in rows[0] and "best eval/loss" in rows[0]
    assert "beta0.1_lr1e-4" in result.out and "final eval/loss" in result.out

    # Reference log-probs were computed once for the train pairs (and once for the eval pairs), then reused.
    assert len(list((out / ".ref_cache").glob("*.pt"))) == 2
    logs = [(out / r["name"] / "train.log").read_text() for r in summary["runs"]]
    assert sum(log.count("train pairs computed and cached") for log in logs) == 1
    assert sum(log.count("train pairs reused from") for log in logs) == 3
    train_caches = {(out / r["name"] / "ref_cache_train.txt").read_text() for r in summary["runs"]}
    assert len(train_caches) == 1

    # The sweep's own report, and `alignlab report` on the sweep directory, overlay the four runs.
    assert (out / "report.html").is_file()
    result = cli(["report", out, "-o", tmp_path / "r.html"])
    assert result.code == 0, result.err
    html = (tmp_path / "r.html").read_text()
    assert all(name in html for name in ("beta0.1_lr1e-4", "beta0.5_lr1e-3"))


def test_failed_run_is_reported_and_others_continue(tmp_path, tiny_model_dir, prefs, cli):
    out = tmp_path / "sweep"
    result = cli(["sweep", "--command", "dpo", "--out", out, "--metric", "loss",
                  *_common(tiny_model_dir, prefs, prefs), "train.max_steps=1", "dpo.loss_type=nonsense,sigmoid"])
    runs = {r["name"]: r for r in json.loads((out / "summary.json").read_text())["runs"]}
    assert runs["loss_typenonsense"]["status"] == "failed" and "nonsense" in runs["loss_typenonsense"]["error"]
    assert runs["loss_typesigmoid"]["status"] == "ok" and "loss" in runs["loss_typesigmoid"]["final"]
    assert "1 of 2 runs failed" in result.out
    # A sweep with a failed run is not a success: exit 2, naming the run and why it failed.
    assert result.code == 2 and "Traceback" not in result.err
    assert "1 of 2 sweep runs failed: loss_typenonsense: dpo.loss_type 'nonsense'" in result.err
    assert not (out / "loss_typenonsense").exists()  # a failed start leaves no run directory


def test_sweep_reads_the_trainer_from_the_config_or_asks_for_it(tmp_path, cli):
    plain = tmp_path / "plain.yaml"
    plain.write_text("train:\n  max_steps: 1\n")
    for argv in (["sweep", "-c", plain], ["sweep"]):
        result = cli([*argv, "--out", tmp_path / "s", "train.lr=1e-4,1e-3"])
        assert result.code == 2 and "pass --command sft, --command dpo or --command grpo" in result.err
    assert not (tmp_path / "s").exists()  # nothing ran, in particular not SFT
    iterate = tmp_path / "it.yaml"
    iterate.write_text("iterate:\n  rounds: 1\n")
    result = cli(["sweep", "-c", iterate, "train.lr=1e-4,1e-3"])
    assert result.code == 2 and "a sweep runs sft, dpo or grpo" in result.err


def test_sweep_infers_dpo_from_a_dpo_section(tmp_path, cli, tiny_model_dir, prefs):
    config = tmp_path / "dpo.yaml"
    config.write_text("dpo:\n  loss_type: nonsense\n")  # fails at once inside the DPO trainer, which names it
    result = cli(["sweep", "-c", config, "--out", tmp_path / "s", *_common(tiny_model_dir, prefs, prefs),
                  "dpo.beta=0.1,0.2"])
    assert result.code == 2 and "2 of 2 sweep runs failed" in result.err and "dpo.loss_type 'nonsense'" in result.err
    assert json.loads((tmp_path / "s" / "sweep.json").read_text())["command"] == "dpo"
