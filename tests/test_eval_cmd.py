"""`alignlab eval`: the numbers it prints and writes equal a direct computation on the same prompts and pairs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignlab.data.io import read_rows
from alignlab.data.preference import load_preference_rows
from alignlab.data.preference_encode import encode_pairs
from alignlab.data.prompts import load_prompt_items
from alignlab.data.templates import Templater
from alignlab.evaluate import evaluate_prompts, preference_accuracy
from alignlab.pair_logps import compute_all
from alignlab.rewards import get_reward

# Rewards that split the tiny model's (random) completions, so accuracy, pass@k and format rate are
# not all zero and a wrong count or a wrong mean would show.
REWARDS = """
import zlib

def crc_correct(completions, **_):
    return [float(zlib.crc32(c.encode()) % 2) for c in completions]

def crc_format(completions, **_):
    return [float(zlib.crc32(c.encode()) % 3 == 0) for c in completions]
"""
ROWS, K, NEW_TOKENS = 6, 3, 6


@pytest.fixture(scope="module")
def reward_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval_rewards") / "crc.py"
    path.write_text(REWARDS)
    return path


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory):
    from alignlab.demo.tiny import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("ref") / "model", layers=2, hidden=64, seed=1)


def test_eval_equals_direct_computation(tmp_path, tiny_model_dir, reference_dir, prompts, prefs, reward_file, cli):
    out = tmp_path / "result.json"
    rewards = f"[{reward_file}:crc_format,{reward_file}:crc_correct]"
    result = cli(["eval", tiny_model_dir, f"data.prompts={prompts}", f"data.pairs={prefs}", f"data.max_rows={ROWS}",
                  f"eval.rewards={rewards}", f"eval.num_samples={K}", f"eval.max_new_tokens={NEW_TOKENS}",
                  f"eval.reference={reference_dir}", "eval.beta=0.2", f"eval.output={out}"])
    assert result.code == 0, result.err
    written = json.loads(out.read_text())

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    templater = Templater(tokenizer)
    items, _ = load_prompt_items(str(prompts), max_rows=ROWS)
    fns = [(name, get_reward(f"{reward_file}:{name}")) for name in ("crc_format", "crc_correct")]
    greedy = evaluate_prompts(model, tokenizer, templater, items, fns, None, max_new_tokens=NEW_TOKENS)
    torch.manual_seed(0)
    sampled = evaluate_prompts(model, tokenizer, templater, items, fns, None, max_new_tokens=NEW_TOKENS,
                               greedy=False, num_samples=K, temperature=1.0)
    task = written["task"]
    for key, value in greedy.metrics.items():
        assert task[key] == pytest.approx(value, abs=1e-12), key
    assert task[f"pass@{K}"] == pytest.approx(sampled.metrics[f"pass@{K}"])
    assert task["sampled/accuracy"] == pytest.approx(sampled.metrics["accuracy"])
    assert task["sampled/format_rate"] == pytest.approx(sampled.metrics["format_rate"])
    assert 0 < task["sampled/accuracy"] < 1  # the rewards really split the completions
    assert [s["completion"] for s in written["samples"]] == [s["completion"] for s in greedy.samples]

    examples, _ = load_preference_rows(read_rows(str(prefs), max_rows=ROWS), skip_bad_rows=False)
    pairs = encode_pairs(examples, templater, max_length=1024, on_long="truncate")
    reference = AutoModelForCausalLM.from_pretrained(reference_dir).eval()
    ref_logps = compute_all(reference, pairs, tokenizer.pad_token_id, "cpu", batch_size=64, chunk_size=1024)
    direct = preference_accuracy(model, tokenizer, pairs, ref_logps=ref_logps, beta=0.2)
    preference = written["preference"]
    for key, value in direct.items():
        assert preference[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert preference["rewards/chosen"] - preference["rewards/rejected"] == pytest.approx(preference["margin"], rel=1e-4)
    assert preference["pairs"] == ROWS

    # The printed table shows the same numbers.
    assert f"{100 * task['accuracy']:.1f}%" in result.out
    assert f"{100 * preference['preference_accuracy']:.1f}%" in result.out
    assert f"pass@{K}" in result.out and str(out) in result.out


def test_run_dir_uses_its_final_model_eval_pairs_and_reference(tmp_path, tiny_model_dir, reference_dir, prefs, cli):
    """A DPO run directory needs no data arguments: its eval pairs, base model (as reference) and beta."""
    run = tmp_path / "dpo_run"
    shutil.copytree(tiny_model_dir, run / "final")
    (run / "checkpoints.jsonl").write_text("")
    config = {"model": {"name_or_path": str(reference_dir)}, "data": {"train": str(prefs), "eval": str(prefs)},
              "dpo": {"beta": 0.3, "reference": "auto"}}
    (run / "config.yaml").write_text("# alignlab dpo\n" + yaml.safe_dump(config))
    result = cli(["eval", run, "data.max_rows=4"])
    assert result.code == 0, result.err
    written = json.loads((run / "eval.json").read_text())
    assert written["data"]["pairs"] == str(prefs) and "task" not in written
    assert written["preference"]["reference"] == str(reference_dir)
    assert written["preference"]["beta"] == 0.3
    assert "rewards/chosen" in written["preference"]
    assert "the run's eval set" in result.out


def test_eval_user_errors_exit_2(tiny_model_dir, prompts, cli):
    result = cli(["eval", tiny_model_dir])
    assert result.code == 2 and "data.prompts=FILE" in result.err
    result = cli(["eval", tiny_model_dir, f"data.prompts={prompts}", "eval.num_sample=3"])
    assert result.code == 2 and "eval.num_samples" in result.err
