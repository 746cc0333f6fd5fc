"""`alignlab sample`: rows {"prompt", "responses", ...other columns}; bad input exits 2 naming the place; a run killed
between batches and rerun writes each prompt once, in order, and exactly what an uninterrupted run writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from transformers import AutoModelForCausalLM

from alignlab.commands.sample import rows_written
from alignlab.data.prompts import PromptItem
from alignlab.data.templates import Templater
from alignlab.generation.sampler import generate
from conftest import read_jsonl, write_jsonl

TOKENS = ["--max-new-tokens", "6"]


def prompt_rows(count: int) -> list[dict]:
    return [{"prompt": f"{i}+{i + 3}=?", "answer": str(2 * i + 3), "id": i} for i in range(count)]


def test_rows_carry_the_prompt_its_columns_and_n_responses(tmp_path, tiny_model_dir, cli):
    rows = prompt_rows(3) + [{"prompt": [{"role": "user", "content": "hi"}], "id": 3, "scores": [1, 2]}]
    source = write_jsonl(rows, tmp_path / "prompts.jsonl")
    out = tmp_path / "responses.jsonl"
    result = cli(["sample", tiny_model_dir, source, out, "--n", "4", "--batch-size", "3", *TOKENS])
    assert result.code == 0, result.err
    written = read_jsonl(out)
    assert [r["prompt"] for r in written] == [r["prompt"] for r in rows]
    for row, given in zip(written, rows):
        assert list(row)[:2] == ["prompt", "responses"]
        assert len(row["responses"]) == 4 and all(isinstance(t, str) for t in row["responses"])
        assert len(set(row["responses"])) > 1  # sampled at T=1, not one greedy answer repeated
        assert row["id"] == given["id"] and row.get("answer") == given.get("answer")
    assert "scores" not in written[3]  # scores of other responses are not carried over to new ones


def test_greedy_response_is_the_samplers_own_with_and_without_the_chat_template(tmp_path, tiny_model_dir,
                                                                              tiny_tokenizer, cli):
    source = write_jsonl(prompt_rows(2), tmp_path / "prompts.jsonl")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    for chat in (True, False):
        out = tmp_path / f"greedy_{chat}.jsonl"
        flag = "--chat-template" if chat else "--no-chat-template"
        assert cli(["sample", tiny_model_dir, source, out, "--n", "1", "--temperature", "0", flag, *TOKENS]).code == 0
        templater = Templater(tiny_tokenizer, use_chat_template=chat)
        ids = [templater.ids(templater.prompt_text(r["prompt"])) for r in prompt_rows(2)]
        expected = generate(model, tiny_tokenizer, ids, max_new_tokens=6, greedy=True).texts
        assert [r["responses"] for r in read_jsonl(out)] == [[t] for t in expected]


@pytest.mark.parametrize("row, where", [({"question_text": "x"}, "line 2"), ({"prompt": 5}, "line 2, field 'prompt'")])
def test_a_bad_row_is_named_by_file_line_and_field_and_exits_2(tmp_path, tiny_model_dir, cli, row, where):
    source = write_jsonl([{"prompt": "ok"}, row], tmp_path / "prompts.jsonl")
    result = cli(["sample", tiny_model_dir, source, tmp_path / "out.jsonl", "--n", "2", *TOKENS])
    assert result.code == 2
    assert f"{source}, {where}" in result.err and "Traceback" not in result.err


def test_bad_settings_exit_2(tmp_path, tiny_model_dir, cli):
    source = write_jsonl(prompt_rows(1), tmp_path / "prompts.jsonl")
    result = cli(["sample", tiny_model_dir, source, tmp_path / "out.jsonl", "--n", "4", "--temperature", "0"])
    assert result.code == 2 and "--temperature 0 is greedy" in result.err


# The child sleeps after each appended batch, so that a kill lands while it is working, between two batches.
SLOW_CHILD = """
import sys, time
import alignlab.commands.sample as sample
append = sample.append_rows
sample.append_rows = lambda *args: (append(*args), time.sleep(0.4))
from alignlab.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_killed_run_continues_where_it_stopped(tmp_path, tiny_model_dir, cli):
    source = write_jsonl(prompt_rows(10), tmp_path / "prompts.jsonl")
    args = [str(source), "--n", "3", "--batch-size", "2", *TOKENS]
    killed, straight = tmp_path / "killed.jsonl", tmp_path / "straight.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CHILD, "sample", str(tiny_model_dir), *args[:1], str(killed),
                             *args[1:]], cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    lines = lambda: len(read_jsonl(killed)) if killed.exists() else 0  # noqa: E731
    while proc.poll() is None and time.monotonic() < deadline and lines() < 4:
        time.sleep(0.01)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # still sampling: killed half-way
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    before = read_jsonl(killed)
    assert 4 <= len(before) < 10

    result = cli(["sample", tiny_model_dir, *args[:1], killed, *args[1:]])
    assert result.code == 0, result.err
    assert f"has {len(before)} of 10 prompts" in result.out
    assert cli(["sample", tiny_model_dir, *args[:1], straight, *args[1:]]).code == 0
    resumed = read_jsonl(killed)
    assert [r["id"] for r in resumed] == list(range(10))  # each prompt once, in order
    assert resumed[: len(before)] == before  # nothing already written was sampled again
    assert resumed == read_jsonl(straight)  # batch seeds: the same responses as without the kill


def test_a_torn_last_line_is_cut_and_other_output_is_refused(tmp_path):
    items = [PromptItem(r["prompt"], {}, f"p.jsonl, line {i + 1}") for i, r in enumerate(prompt_rows(3))]
    out = tmp_path / "out.jsonl"
    good = json.dumps({"prompt": items[0].prompt, "responses": ["a", "b"]}) + "\n"
    out.write_text(good + '{"prompt": "1+4=?", "respon')  # killed in the middle of a write
    assert rows_written(out, items, 2) == 1
    assert out.read_text() == good

    from alignlab.errors import DataError

    with pytest.raises(DataError, match="responses.*--n 3"):
        rows_written(out, items, 3)
    out.write_text(json.dumps({"prompt": "another", "responses": ["a", "b"]}) + "\n")
    with pytest.raises(DataError, match=r"line 1: its prompt is not the one at p.jsonl, line 1"):
        rows_written(out, items, 2)
