"""Bad input through the CLI: exit code 2 and one message that says what and where, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import base_args, train_records, write_jsonl

GOOD = {"prompt": "1+2=?", "completion": "<answer>3</answer>"}
PAIR = {"prompt": "1+2=?", "chosen": "<answer>3</answer>", "rejected": "<answer>4</answer>"}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def fails(result, *fragments):
    """Exit 2, every fragment in stderr, and no traceback."""
    assert result.code == 2, result.err
    assert "Traceback" not in result.err and "Traceback" not in result.out
    message = result.err
    assert message.count("error:") == 1, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


@pytest.fixture
def train_cmd(tiny_model_dir, tmp_path):
    """A one-step training command; the first call's run goes to tmp_path/out, later ones to out2, out3..."""
    calls = []

    def build(command, data, *extra):
        calls.append(command)
        out = tmp_path / ("out" if len(calls) == 1 else f"out{len(calls)}")
        return base_args(command, tiny_model_dir, data, out, "train.max_steps=1", *extra)

    return build


def test_missing_data_file(cli, train_cmd, tmp_path):
    missing = tmp_path / "nope.jsonl"
    fails(cli(train_cmd("sft", missing)), "data file not found", str(missing))


@pytest.mark.parametrize("command", ["dpo", "grpo"])
def test_missing_data_file_for_dpo_and_grpo(cli, train_cmd, tmp_path, command):
    missing = tmp_path / "nope.jsonl"
    fails(cli(train_cmd(command, missing)), "data file not found", str(missing))


def test_malformed_json_line_names_file_line_and_column(cli, train_cmd, tmp_path):
    bad_line = '{"prompt": "1+2=?", "completion": '
    path = write_lines(tmp_path / "bad.jsonl", [json.dumps(GOOD), json.dumps(GOOD), bad_line, json.dumps(GOOD)])
    message = fails(cli(train_cmd("sft", path)), str(path), "line 3", "malformed JSON")
    # The column points into that line (where the value is missing), not at a following line.
    assert f"column {len(bad_line) + 1}" in message


def test_blank_lines_do_not_shift_line_numbers(cli, train_cmd, tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [json.dumps(GOOD), "", "   ", "[1, 2]"])
    fails(cli(train_cmd("sft", path)), str(path), "line 4", "expected a JSON object")


def test_missing_column_names_it_and_lists_found(cli, train_cmd, tmp_path):
    path = write_jsonl([{"question": "1+2=?", "completion": "<answer>3</answer>"}] * 3, tmp_path / "q.jsonl")
    message = fails(cli(train_cmd("sft", path)), "'prompt'", "columns found: completion, question")
    assert "data.columns.prompt" in message  # says how to map it


def test_column_mapping_fixes_missing_column(cli, train_cmd, tmp_path):
    path = write_jsonl([{"question": "1+2=?", "completion": "<answer>3</answer>"}] * 3, tmp_path / "q.jsonl")
    result = cli(train_cmd("sft", path, "data.columns.prompt=question"))
    assert result.code == 0, result.err


def test_missing_column_dpo_and_grpo(cli, train_cmd, tmp_path):
    pairs = write_jsonl([{"prompt": "1+2=?", "chosen": "a", "reject": "b"}], tmp_path / "p.jsonl")
    fails(cli(train_cmd("dpo", pairs)), "'rejected'", "columns found: chosen, prompt, reject", "line 1")
    prompts = write_jsonl([{"question": "1+2=?", "answer": "3"}], tmp_path / "g.jsonl")
    fails(cli(train_cmd("grpo", prompts)), "'prompt'", "columns found: answer, question")


@pytest.mark.parametrize("completion", ["", "   \n"])
def test_empty_completion_names_row_and_field(cli, train_cmd, tmp_path, completion):
    path = write_jsonl([GOOD, GOOD, {"prompt": "1+2=?", "completion": completion}], tmp_path / "e.jsonl")
    fails(cli(train_cmd("sft", path)), f"{path}, line 3, field 'completion'", "empty")


def test_non_string_completion(cli, train_cmd, tmp_path):
    path = write_jsonl([GOOD, {"prompt": "1+2=?", "completion": 3}], tmp_path / "n.jsonl")
    fails(cli(train_cmd("sft", path)), "line 2, field 'completion'", "expected a string, got int")


def test_skip_bad_rows_counts_and_continues(cli, train_cmd, tmp_path):
    path = write_jsonl([GOOD, {"prompt": "1+2=?", "completion": ""}, GOOD], tmp_path / "e.jsonl")
    result = cli(train_cmd("sft", path, "data.skip_bad_rows=true"))
    assert result.code == 0, result.err
    assert "2 examples, 1 bad rows skipped" in result.err


def long_rows_file(tmp_path, *, good=4, long=2) -> Path:
    long_row = {"prompt": "12345+67890=? " * 10, "completion": "<answer>80235</answer>"}
    return write_jsonl([GOOD] * good + [long_row] * long, tmp_path / "long.jsonl")


def test_long_rows_are_dropped_with_a_warning_and_counted(cli, train_cmd, tmp_path):
    path = long_rows_file(tmp_path, good=4, long=2)
    eval_path = write_jsonl([GOOD] * 2 + [json.loads(path.read_text().splitlines()[-1])] * 3, tmp_path / "ev.jsonl")
    result = cli(train_cmd("sft", path, "train.max_length=64", f"data.eval={eval_path}"))
    assert result.code == 0, result.err
    assert "dropped 2 rows longer than train.max_length=64" in result.err
    # The eval set's warning counts the eval set's rows only (3), not train's plus eval's.
    assert "dropped 3 rows longer than train.max_length=64" in result.err
    assert "4 examples, 2 dropped as longer than train.max_length" in result.err
    assert len(train_records(tmp_path / "out")) == 1  # and it trained on what was left


def test_long_rows_error_names_the_row(cli, train_cmd, tmp_path):
    path = long_rows_file(tmp_path, good=4, long=2)
    fails(cli(train_cmd("sft", path, "train.max_length=64", "data.on_long=error")), f"{path}, line 5", "train.max_length=64")


def test_long_pairs_error_names_the_row(cli, train_cmd, tmp_path):
    long_pair = {**PAIR, "prompt": "9+9=? " * 20}
    path = write_jsonl([PAIR, PAIR, long_pair], tmp_path / "p.jsonl")
    fails(cli(train_cmd("dpo", path, "train.max_length=40", "data.on_long=error")), f"{path}, line 3", "train.max_length=40")


def test_all_rows_too_long_is_an_error(cli, train_cmd, tmp_path):
    path = long_rows_file(tmp_path, good=0, long=2)
    fails(cli(train_cmd("sft", path, "train.max_length=64")), "no usable SFT examples", "2 dropped")


def test_unknown_config_key(cli, train_cmd, sft_train, tmp_path):
    fails(cli(train_cmd("sft", sft_train, "train.lrr=1e-4")), "'train.lrr'", "'train.lr'")
    assert not (tmp_path / "out").exists()  # fails before any work


def test_bad_config_value(cli, train_cmd, sft_train):
    fails(cli(train_cmd("sft", sft_train, "train.batch_size=two")), "'train.batch_size'", "integer")


def test_missing_config_file(cli, tmp_path):
    fails(cli(["sft", "-c", str(tmp_path / "none.yaml")]), "config file not found")


def test_dpo_identical_chosen_and_rejected(cli, train_cmd, tmp_path):
    same = {**PAIR, "rejected": PAIR["chosen"]}
    path = write_jsonl([PAIR, PAIR, same], tmp_path / "pairs.jsonl")
    fails(cli(train_cmd("dpo", path)), f"{path}, line 3, field 'rejected'", "identical to chosen")


def test_grpo_unknown_reward_name(cli, train_cmd, prompts):
    message = fails(cli(train_cmd("grpo", prompts, "grpo.rewards=[answer_corect]")), "unknown reward 'answer_corect'")
    assert "answer_correct" in message  # the closest registered name is suggested


def test_grpo_missing_reward_plugin_file(cli, train_cmd, prompts, tmp_path):
    fails(cli(train_cmd("grpo", prompts, f"grpo.rewards=[{tmp_path / 'nope.py'}:fn]")), "nope.py", "does not exist")


def test_skip_bad_rows_skips_malformed_json_lines(cli, train_cmd, tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [json.dumps(GOOD), '{"prompt": "1+2=?", "completion": ', json.dumps(GOOD)])
    result = cli(train_cmd("sft", path, "data.skip_bad_rows=true"))
    assert result.code == 0, result.err
    assert f"{path}: skipping 1 unreadable lines" in result.err and "line 2 (malformed JSON" in result.err
    assert "2 examples, 1 bad rows skipped" in result.err


def test_parquet_named_jsonl_trains(cli, train_cmd, tmp_path):
    import pandas as pd

    path = tmp_path / "pairs.jsonl"
    pd.DataFrame([PAIR] * 4).to_parquet(path)
    result = cli(train_cmd("dpo", path))
    assert result.code == 0, result.err
    assert "not UTF-8" not in result.err and "Parquet file" in result.err
