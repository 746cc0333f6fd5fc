"""`alignlab eval`: the numbers it prints and writes equal a direct computation on the same prompts and pairs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignlab.data.io import read_rows, split_eval
from alignlab.data.preference import load_preference_rows
from alignlab.data.preference_encode import encode_pairs
from alignlab.data.prompts import load_prompt_items
from alignlab.data.templates import Templater
from alignlab.generation.prompt_eval import evaluate_prompts, preference_accuracy
from alignlab.model.pair_logps import compute_all
from alignlab.rewards import get_reward
from conftest import base_args, eval_records, read_jsonl, run_cli, write_jsonl

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
    from alignlab.model.tiny import write_tiny_model

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


# -- a trained DPO run: eval measures its pairs against its base model with its beta, as training did

HELD_OUT, BETA, SEED = 0.25, 0.3, 0  # 8 of the 32 pairs held out; train.seed=0 is the default


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory, tiny_model_dir, prefs):
    """A 3-step DPO run on the 32 addition pairs that held out a quarter of them (data.eval_fraction, no data.eval)."""
    out = tmp_path_factory.mktemp("dpo_eval") / "run"
    result = run_cli(base_args("dpo", tiny_model_dir, prefs, out, f"data.eval_fraction={HELD_OUT}", f"dpo.beta={BETA}",
                               "train.max_steps=3", "train.batch_size=4", "train.lr=1e-3", "dpo.num_samples_logged=0"))
    assert result.code == 0, result.err
    return out


def final_eval(run) -> dict:
    """The run's own eval metrics on its held-out pairs, logged after its last step."""
    return eval_records(run)[-1]


def assert_matches_training_eval(preference: dict, run) -> None:
    trained = final_eval(run)
    assert preference["pairs"] == round(32 * HELD_OUT)
    assert preference["preference_accuracy"] == pytest.approx(trained["eval/rewards/accuracies"], abs=1e-9)
    assert preference["margin"] == pytest.approx(trained["eval/rewards/margins"], rel=1e-4, abs=1e-5)
    assert preference["rewards/chosen"] == pytest.approx(trained["eval/rewards/chosen"], rel=1e-4, abs=1e-5)


def test_eval_of_a_run_with_eval_fraction_scores_the_pairs_it_held_out(dpo_run, tiny_model_dir, tmp_path, cli):
    out = tmp_path / "eval.json"
    result = cli(["eval", dpo_run, f"eval.output={out}"])
    assert result.code == 0, result.err
    preference = json.loads(out.read_text())["preference"]
    assert (preference["reference"], preference["beta"]) == (str(tiny_model_dir), BETA)
    assert_matches_training_eval(preference, dpo_run)
    assert "held out" in result.out


def test_eval_with_data_pairs_uses_the_runs_base_model_and_beta(dpo_run, tiny_model_dir, prefs, tmp_path, cli):
    _, held = split_eval(read_jsonl(prefs), HELD_OUT, SEED)  # the rows the trainer held out, as a file
    pairs = write_jsonl(held, tmp_path / "held_out.jsonl")
    out = tmp_path / "eval.json"
    result = cli(["eval", dpo_run, f"data.pairs={pairs}", f"eval.output={out}"])
    assert result.code == 0, result.err
    preference = json.loads(out.read_text())["preference"]
    assert (preference["reference"], preference["beta"]) == (str(tiny_model_dir), BETA)
    assert_matches_training_eval(preference, dpo_run)
    assert f"{100 * preference['preference_accuracy']:.1f}%" in result.out and "reference-free" not in result.out


def test_explicit_eval_reference_wins_over_the_runs_base(dpo_run, reference_dir, prefs, tmp_path, cli):
    out = tmp_path / "eval.json"
    result = cli(["eval", dpo_run, f"data.pairs={prefs}", "data.max_rows=4", f"eval.reference={reference_dir}",
                  f"eval.output={out}"])
    assert result.code == 0, result.err
    preference = json.loads(out.read_text())["preference"]
    assert (preference["reference"], preference["beta"]) == (str(reference_dir), BETA)


def test_without_a_reference_the_metrics_say_reference_free(tiny_model_dir, prefs, tmp_path, cli):
    out = tmp_path / "eval.json"
    result = cli(["eval", tiny_model_dir, f"data.pairs={prefs}", "data.max_rows=4", f"eval.output={out}"])
    assert result.code == 0, result.err
    preference = json.loads(out.read_text())["preference"]
    assert preference["reference"] is None and preference["pairs"] == 4
    assert "preference_accuracy" not in preference and "margin" not in preference
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    examples, _ = load_preference_rows(read_rows(str(prefs), max_rows=4), skip_bad_rows=False)
    direct = preference_accuracy(model, tokenizer, encode_pairs(examples, Templater(tokenizer), max_length=1024,
                                                                 on_long="truncate"))
    assert preference["reference_free/accuracy"] == pytest.approx(direct["preference_accuracy"])
    assert preference["reference_free/margin"] == pytest.approx(direct["margin"], rel=1e-5)
    assert "reference-free pref. accuracy" in result.out and "no reference model" in result.out


def test_eval_of_a_mixture_run_with_eval_fraction_scores_each_sources_held_out_pairs(tmp_path, tiny_model_dir, prefs,
                                                                                       cli):
    rows = read_jsonl(prefs)
    first = write_jsonl(rows[:16], tmp_path / "first.jsonl")
    second = write_jsonl([{"question": r["prompt"], **{k: r[k] for k in ("chosen", "rejected")}} for r in rows[16:]],
                         tmp_path / "second.jsonl")
    train = f"[{{path: {first}, weight: 3}}, {{path: {second}, columns: {{prompt: question}}}}]"
    run = tmp_path / "run"
    result = cli(base_args("dpo", tiny_model_dir, "x", run, f"data.train={train}", f"data.eval_fraction={HELD_OUT}",
                           f"dpo.beta={BETA}", "train.max_steps=2", "train.batch_size=4", "train.lr=1e-3",
                           "dpo.num_samples_logged=0"))
    assert result.code == 0, result.err
    result = cli(["eval", run])
    assert result.code == 0, result.err
    assert_matches_training_eval(json.loads((run / "eval.json").read_text())["preference"], run)
