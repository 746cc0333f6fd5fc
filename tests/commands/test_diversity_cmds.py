"""Diversity in `alignlab eval` (eval.num_samples > 1), `alignlab compare --samples N` and `alignlab report`."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from alignlab.commands.compare import compare_command
from alignlab.data.diversity import diversity_metrics
from alignlab.model.inference import load_for_inference
from alignlab.scoring.embeddings import language_model_embedder
from conftest import write_jsonl

PROMPTS = [{"prompt": "Write about the sea."}, {"prompt": "Write about a cat."}, {"prompt": "Write about rain."}]


@pytest.fixture(scope="module")
def peaked_model(tiny_model_dir, tmp_path_factory):
    """The tiny model with its final norm scaled up 8x: logits with a spread (std ~1.3 instead of ~0.17), so that
    T=1 samples vary while T=0.05 is practically greedy. The random-init model is near uniform at any T."""
    path = shutil.copytree(tiny_model_dir, tmp_path_factory.mktemp("peaked") / "model")
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        model.model.norm.weight.mul_(8.0)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    return write_jsonl(PROMPTS, tmp_path_factory.mktemp("creative") / "creative.jsonl")


def test_eval_reports_more_diversity_at_t1_than_near_greedy(peaked_model, prompt_file, tmp_path, cli):
    task = {}
    for temperature in (1.0, 0.05):
        out = tmp_path / f"t{temperature}.json"
        result = cli(["eval", peaked_model, f"data.prompts={prompt_file}", "eval.rewards=[]", "eval.num_samples=4",
                      f"eval.temperature={temperature}", "eval.max_new_tokens=12", "data.chat_template=false",
                      f"eval.output={out}"])
        assert result.code == 0, result.err
        task[temperature] = json.loads(out.read_text())["task"]
    hot, cold = task[1.0], task[0.05]
    assert "distinct-1 (samples)" in result.out
    assert hot["diversity/distinct_1"] > cold["diversity/distinct_1"]
    assert hot["diversity/self_bleu"] < cold["diversity/self_bleu"]
    assert hot["diversity/embedding"] > cold["diversity/embedding"] + 0.01
    assert hot["diversity/distinct_answers"] > cold["diversity/distinct_answers"]
    assert cold["diversity/distinct_answers"] == 1.0 and cold["diversity/self_bleu"] == pytest.approx(1.0)


def test_eval_without_samples_reports_no_diversity(tiny_model_dir, prompt_file, tmp_path, cli):
    out = tmp_path / "greedy.json"
    assert cli(["eval", tiny_model_dir, f"data.prompts={prompt_file}", "eval.rewards=[]", "eval.max_new_tokens=4",
                f"eval.output={out}"]).code == 0
    assert not any(k.startswith("diversity/") for k in json.loads(out.read_text())["task"])


def test_compare_samples_every_model_and_embeds_them_with_the_first(peaked_model, tiny_model_dir, prompt_file,
                                                                    capsys):
    result = compare_command([str(peaked_model), str(tiny_model_dir)], prompts=str(prompt_file), samples=3,
                             max_new_tokens=8, rewards=[])
    printed = capsys.readouterr().out
    assert "diversity of 3 samples per prompt" in printed and "self-BLEU" in printed
    embed = language_model_embedder(load_for_inference(str(peaked_model)))  # the first model: one embedding space
    for label in result["models"]:
        groups = result["samples"][label]
        assert len(groups) == len(PROMPTS) and all(len(g) == 3 for g in groups)
        expected = diversity_metrics(groups, embed)
        assert result["diversity"][label].keys() == expected.keys()
        for key, value in expected.items():
            assert result["diversity"][label][key] == pytest.approx(value, abs=1e-6)


def test_compare_refuses_one_sample(peaked_model, tiny_model_dir, cli):
    result = cli(["compare", peaked_model, tiny_model_dir, "--samples", "1"])
    assert result.code == 2 and "--samples" in result.err


def test_report_puts_the_runs_diversity_side_by_side(tmp_path):
    from alignlab.commands.report import write_report

    runs = []
    for name, value in (("base", 0.8), ("dpo", 0.5)):
        run = tmp_path / name
        write_jsonl([{"step": 1, "loss": 0.5}], run / "metrics.jsonl")
        (run / "config.yaml").write_text("# alignlab dpo\n")
        task = {"accuracy": 0.5, "diversity/distinct_1": value, "diversity/self_bleu": 1 - value}
        (run / "eval.json").write_text(json.dumps({"task": task}))
        runs.append(run)
    text = write_report(runs, tmp_path / "report.html").read_text()
    table = text[text.index("Diversity of sampled answers"):]
    table = table[: table.index("</table>")]
    assert "<th>base</th><th>dpo</th>" in table
    assert "<td class=\"value\">diversity/distinct_1</td><td class=\"value\">0.8</td><td class=\"value\">0.5</td>" \
        in table
