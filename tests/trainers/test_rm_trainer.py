"""`alignlab rm` end to end on the tiny model: it learns the pairs, final/ is a plain transformers sequence
classifier that scores as RewardModel does, LoRA trains the head whole, resume == uninterrupted, margins, bad rows."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from alignlab.scoring.reward_model import RewardModel
from conftest import base_args, eval_records, read_jsonl, run_cli, train_records, write_jsonl

COMMON = ["train.batch_size=8", "train.lr=2e-3", "train.max_length=64"]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_model_dir, prefs):
    out = tmp_path_factory.mktemp("rm") / "full"
    result = run_cli(base_args("rm", tiny_model_dir, prefs, out, f"data.eval={prefs}", "train.max_steps=16",
                               "train.eval_every=8", *COMMON))
    assert result.code == 0
    return out


def test_learns_the_pairs_with_the_fields_metric_names(full_run):
    records = train_records(full_run)
    assert {"loss", "accuracy", "margin", "rewards/chosen", "rewards/rejected"} <= set(records[0])
    first, last = records[0], records[-1]
    assert first["loss"] == pytest.approx(0.693, abs=0.05)  # a new head scores both alike: log 2
    evals = eval_records(full_run)
    assert [r["step"] for r in evals] == [8, 16]
    assert evals[-1]["eval/loss"] < 0.6 and evals[-1]["eval/accuracy"] >= 0.75
    assert last["margin"] == pytest.approx(last["rewards/chosen"] - last["rewards/rejected"], abs=1e-4)


def test_final_is_a_plain_sequence_classifier_that_scores_as_reward_model(full_run, prefs):
    plain = AutoModelForSequenceClassification.from_pretrained(full_run / "final").eval()
    assert plain.config.num_labels == 1
    rm = RewardModel.load(full_run)
    rows = read_jsonl(prefs)[:6]
    prompts = [r["prompt"] for r in rows] * 2
    completions = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    scores = rm.score(prompts, completions)
    with torch.no_grad():
        expected = [float(plain(torch.tensor([rm.encode(p, c)])).logits[0, 0]) for p, c in zip(prompts, completions)]
    assert scores == pytest.approx(expected, abs=1e-5)
    assert sum(c > r for c, r in zip(scores[:6], scores[6:])) >= 4  # it prefers the gold answers it was trained on


def test_lora_trains_the_score_head_whole_and_merges(tmp_path, tiny_model_dir, prefs):
    out = tmp_path / "lora"
    assert run_cli(base_args("rm", tiny_model_dir, prefs, out, "lora.enabled=true", "lora.r=8", "train.max_steps=6",
                             "train.save_every=3", *COMMON)).code == 0
    adapter = load_file(out / "checkpoint-000003" / "model" / "adapter_model.safetensors")
    assert any("score" in key for key in adapter) and any("lora_A" in key for key in adapter)
    plain = AutoModelForSequenceClassification.from_pretrained(out / "final")
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    merged_q = plain.model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(merged_q, base.model.layers[0].self_attn.q_proj.weight)  # the adapter is merged in
    assert torch.equal(plain.model.embed_tokens.weight, base.model.embed_tokens.weight)  # not adapted: unchanged
    losses = [r["loss"] for r in train_records(out)]
    assert losses[-1] < losses[0]


def test_resume_equals_uninterrupted(tmp_path, tiny_model_dir, prefs):
    whole, split = tmp_path / "whole", tmp_path / "split"
    args = lambda out: base_args("rm", tiny_model_dir, prefs, out, "train.resume=auto", *COMMON)  # noqa: E731
    assert run_cli(args(whole) + ["train.max_steps=6"]).code == 0
    assert run_cli(args(split) + ["train.max_steps=3"]).code == 0
    assert run_cli(args(split) + ["train.max_steps=6"]).code == 0
    assert "resumed from" in (split / "train.log").read_text()
    assert [r["loss"] for r in train_records(split)] == [r["loss"] for r in train_records(whole)]
    a, b = (load_file(out / "final" / "model.safetensors") for out in (whole, split))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_margin_column_is_subtracted(tmp_path, tiny_model_dir, prefs):
    rows = [{**r, "margin": 5.0} for r in read_jsonl(prefs)]
    data = write_jsonl(rows, tmp_path / "margins.jsonl")
    losses = {}
    for use in ("true", "false"):
        out = tmp_path / f"margin_{use}"
        assert run_cli(base_args("rm", tiny_model_dir, data, out, "train.max_steps=1", f"rm.use_margin={use}",
                                 *COMMON)).code == 0
        losses[use] = train_records(out)[0]["loss"]
    # At the start r_c ~ r_r: -log sigmoid(0 - 5) ~ 5.007 with the margin, log 2 without.
    assert losses["true"] == pytest.approx(5.007, abs=0.05) and losses["false"] == pytest.approx(0.693, abs=0.05)


def test_a_bad_margin_names_the_row_and_field(tmp_path, tiny_model_dir, prefs, cli):
    rows = read_jsonl(prefs)
    rows[2]["margin"] = "big"
    data = write_jsonl(rows, tmp_path / "bad.jsonl")
    result = cli(base_args("rm", tiny_model_dir, data, tmp_path / "out", "train.max_steps=1"))
    assert result.code == 2 and "bad.jsonl, line 3, field 'margin'" in result.err and "Traceback" not in result.err
    assert not (tmp_path / "out").exists()


def test_python_api_trains_and_scores(tmp_path, tiny_model_dir, prefs):
    import alignlab

    rows = read_jsonl(prefs)
    run = alignlab.rm(model=str(tiny_model_dir), data=rows, max_steps=2, batch_size=8, progress=False,
                      output_dir=str(tmp_path / "api"), center_coefficient=0.01)
    assert run.command == "rm" and run.config["rm"]["center_coefficient"] == 0.01
    scores = alignlab.RewardModel.load(run.run_dir).score([rows[0]["prompt"]], [rows[0]["chosen"]])
    assert len(scores) == 1 and isinstance(scores[0], float)
