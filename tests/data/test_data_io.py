"""alignlab.data.io: malformed JSONL lines under data.skip_bad_rows, and Parquet files with another name."""
from __future__ import annotations

import json
import logging

import pandas as pd
import pytest

from alignlab.data.io import read_rows
from alignlab.data.preference import load_preference_rows
from alignlab.data.prompts import load_prompt_items
from alignlab.errors import DataError

PAIR = {"prompt": "1+2=?", "chosen": "<answer>3</answer>", "rejected": "<answer>4</answer>"}
BROKEN = '{"prompt": "1+2=?", "chosen": '


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_malformed_line_fails_with_file_line_and_json_error(tmp_path):
    path = write_lines(tmp_path / "pairs.jsonl", [json.dumps(PAIR), BROKEN, json.dumps(PAIR)])
    with pytest.raises(DataError) as info:
        read_rows(str(path))
    message = str(info.value)
    assert f"{path}, line 2: malformed JSON" in message
    assert f"at column {len(BROKEN) + 1}" in message  # the JSON error itself, on that line


def test_skip_bad_rows_skips_and_counts_malformed_lines(tmp_path, caplog):
    path = write_lines(tmp_path / "pairs.jsonl", [json.dumps(PAIR), BROKEN, "", "[1, 2]", json.dumps(PAIR)])
    with caplog.at_level(logging.WARNING, logger="alignlab"):
        rows = read_rows(str(path), skip_bad_rows=True)
        examples, skipped = load_preference_rows(rows, skip_bad_rows=True)
    assert [e.source for e in examples] == [f"{path}, line 1", f"{path}, line 5"]
    assert skipped == 2  # counted with the other bad rows: the broken line and the JSON list
    warning = caplog.text
    assert str(path) in warning and "line 2 (malformed JSON" in warning and "line 4 (expected a JSON object" in warning


def test_skip_bad_rows_skips_malformed_prompt_lines(tmp_path):
    path = write_lines(tmp_path / "prompts.jsonl", ['{"prompt": "1+2=?"}', "{not json", '{"prompt": "2+2=?"}'])
    items, skipped = load_prompt_items(str(path), skip_bad_rows=True)
    assert ([i.prompt for i in items], skipped) == (["1+2=?", "2+2=?"], 1)
    with pytest.raises(DataError, match="line 2: malformed JSON"):
        load_prompt_items(str(path))


@pytest.mark.parametrize("name", ["pairs.jsonl", "pairs.json", "pairs.csv", "pairs"])
def test_parquet_with_another_name_is_read_as_parquet(tmp_path, caplog, name):
    path = tmp_path / name
    pd.DataFrame([PAIR, {**PAIR, "chosen": ""}]).to_parquet(path)
    with caplog.at_level(logging.WARNING, logger="alignlab"):
        rows = read_rows(str(path))
    assert [r.values for r in rows] == [PAIR, {**PAIR, "chosen": ""}]
    assert "Parquet" in caplog.text and str(path) in caplog.text
    # Later errors call them Parquet rows, not JSONL lines.
    with pytest.raises(DataError) as info:
        load_preference_rows(rows, skip_bad_rows=False)
    assert f"{path} (parquet), row 2, field 'chosen'" in str(info.value)
