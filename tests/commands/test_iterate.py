"""`alignlab iterate`: two short rounds of online DPO on the demo's addition task; the task reward rises."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import base_args, read_jsonl, run_cli, write_jsonl


@pytest.fixture(scope="module")
def iterate_setup(tmp_path_factory, tiny_model_dir, addition_splits):
    """A briefly SFT'd tiny model (answers in <answer> format about a third of the time) and prompt files."""
    root = tmp_path_factory.mktemp("iterate")
    train, dev = addition_splits["train"], addition_splits["dev"]
    write_jsonl(train[:64], root / "sft.jsonl")
    write_jsonl([{"prompt": r["prompt"], "answer": r["answer"]} for r in train[64:96]], root / "prompts.jsonl")
    write_jsonl([{"prompt": r["prompt"], "answer": r["answer"]} for r in dev[:16]], root / "eval.jsonl")
    assert run_cli(base_args("sft", tiny_model_dir, root / "sft.jsonl", root / "sft", "train.max_steps=25",
                             "train.batch_size=16", "train.lr=3e-3", "train.max_length=64")).code == 0
    return root


def iterate_args(root, out, rounds: int, *extra) -> list[str]:
    return ["iterate", "--rounds", str(rounds), f"model.name_or_path={root / 'sft' / 'final'}",
            f"iterate.prompts={root / 'prompts.jsonl'}", f"iterate.eval_prompts={root / 'eval.jsonl'}",
            "iterate.max_new_tokens=12", "iterate.samples_per_prompt=4", "iterate.strategy=best-vs-rest",
            f"train.output_dir={out}", "train.progress=false", "train.max_steps=8", "train.batch_size=8",
            "train.lr=1e-3", "train.max_length=64", "dpo.beta=0.1", "dpo.sft_weight=1.0", "train.save_every=4", *extra]


def test_two_rounds_raise_the_task_reward(iterate_setup, cli):
    root = iterate_setup
    out = root / "it"
    result = cli(iterate_args(root, out, 2))
    assert result.code == 0, result.err
    rounds = json.loads((out / "summary.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert all(r["status"] == "ok" and r["pairs"] > 0 for r in rounds[1:])
    # Each round is its own DPO run directory, trained from the previous round's model.
    for r in rounds[1:]:
        run_dir = out / f"round_{r['round']}"
        assert (run_dir / "final").is_dir() and len([x for x in read_jsonl(run_dir / "metrics.jsonl") if "loss" in x]) == 8
        pairs = read_jsonl(out / "data" / f"round_{r['round']}_pairs.jsonl")
        assert len(pairs) == r["pairs"] and all(p["score_chosen"] > p["score_rejected"] for p in pairs)
    assert "round_1" in (out / "round_2" / "config.yaml").read_text()  # round 2 starts from round 1's model
    # The task reward (answer_format + answer_correct, sampled on held-out prompts) rises over the rounds.
    reward = [r["eval/sampled_reward"] for r in rounds]
    assert reward[2] > reward[0] + 0.05 and reward[1] > reward[0], reward
    assert len(list(csv.DictReader((out / "summary.csv").open()))) == 3
    assert "round 2:" in result.out


def test_resume_adds_rounds_and_finishes_a_cut_off_round(iterate_setup, cli):
    """1 round, then train.resume=true with --rounds 2 == the uninterrupted 2-round run. Then round 2
    is cut off mid-DPO (its last checkpoint and final/ gone, its summary row unwritten): resuming
    reuses its pairs, continues its DPO run from step 4 and records the same row."""
    root = iterate_setup
    reference = json.loads((root / "it" / "summary.json").read_text())["rounds"]  # from the test above
    out = root / "it_resumed"
    assert cli(iterate_args(root, out, 1)).code == 0
    assert cli(iterate_args(root, out, 1)).code != 0  # an existing run is never overwritten without resume
    result = cli(iterate_args(root, out, 2, "train.resume=true"))
    assert result.code == 0, result.err
    rows = json.loads((out / "summary.json").read_text())["rounds"]
    keys = ("round", "pairs", "sampled_reward", "dpo/loss", "eval/reward", "eval/sampled_reward")

    def same(a, b):
        # Round 0 (the starting model) has no DPO loss: its None must match exactly, the numbers closely.
        got, want = ([r.get(k) for r in rows_ for k in keys] for rows_ in (a, b))
        assert [v is None for v in got] == [v is None for v in want]
        assert [v for v in got if v is not None] == pytest.approx([v for v in want if v is not None], rel=1e-4)

    same(rows, reference)
    assert read_jsonl(out / "data" / "round_2_pairs.jsonl") == read_jsonl(root / "it" / "data" / "round_2_pairs.jsonl")

    import shutil

    for name in ("checkpoint-000008", "final"):
        shutil.rmtree(out / "round_2" / name)
    (out / "summary.json").write_text(json.dumps({"rounds": rows[:2]}))
    result = cli(iterate_args(root, out, 2, "train.resume=true"))
    assert result.code == 0, result.err
    same(json.loads((out / "summary.json").read_text())["rounds"], reference)
    log = (out / "iterate.log").read_text()
    assert "round 2: reusing" in log
    assert "resumed from" in (out / "round_2" / "train.log").read_text()
    assert len([r for r in read_jsonl(out / "round_2" / "metrics.jsonl") if "loss" in r]) == 8


def test_no_pairs_stops_with_the_reason(tmp_path, tiny_model_dir, prompts, cli):
    # The random-init model never answers correctly: every response scores 0, so no pair can be built.
    out = tmp_path / "it"
    result = cli(["iterate", "--rounds", "3", f"model.name_or_path={tiny_model_dir}", f"iterate.prompts={prompts}",
                  "iterate.rewards=[answer_correct]", "iterate.max_new_tokens=4", "data.max_rows=4",
                  f"train.output_dir={out}", "train.progress=false"])
    assert result.code == 0, result.err
    rounds = json.loads((out / "summary.json").read_text())["rounds"]
    assert len(rounds) == 2 and rounds[1]["pairs"] == 0 and rounds[1]["status"].startswith("stopped: no pairs")
    assert "equal scores" in result.out


def test_iterate_config_errors(cli, tiny_model_dir):
    result = cli(["iterate", f"model.name_or_path={tiny_model_dir}", "iterate.samples_per_prompt=1"])
    assert result.code == 2 and "samples_per_prompt" in result.err
    result = cli(["iterate", f"model.name_or_path={tiny_model_dir}"])
    assert result.code == 2 and "iterate.prompts" in result.err
