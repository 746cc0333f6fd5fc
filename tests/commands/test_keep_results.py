"""`alignlab eval` and `alignlab report` never replace an earlier result: the fixed name (eval.json,
report.html) holds the latest, the earlier file stays beside it renamed with the time it was written,
and both names are printed."""

from __future__ import annotations

import json
import os
import re
import time

from conftest import write_jsonl

from alignlab.commands.outputs import keep_earlier


def kept_files(directory, stem: str, suffix: str) -> list:
    return sorted(p for p in directory.iterdir() if re.fullmatch(rf"{stem}\.\d{{8}}-\d{{6}}(-\d+)?{suffix}", p.name))


def test_keep_earlier_names_the_file_by_when_it_was_written_and_never_collides(tmp_path):
    assert keep_earlier(tmp_path / "eval.json") is None  # nothing there yet
    written = time.mktime((2026, 12, 7, 10, 48, 0, 0, 0, -1))
    for text in ("first", "second"):
        (tmp_path / "eval.json").write_text(text)
        os.utime(tmp_path / "eval.json", (written, written))  # both written in the same second
        keep_earlier(tmp_path / "eval.json")
    assert not (tmp_path / "eval.json").exists()
    assert (tmp_path / "eval.20261207-104800.json").read_text() == "first"
    assert (tmp_path / "eval.20261207-104800-2.json").read_text() == "second"


def test_eval_twice_keeps_the_first_result(cli, tmp_path, tiny_model_dir, prefs):
    out = tmp_path / "eval.json"
    args = ["eval", tiny_model_dir, f"data.pairs={prefs}", f"eval.output={out}"]
    first = cli(args + ["data.max_rows=4"])
    assert first.code == 0 and f"wrote {out}" in first.out and "kept" not in first.out
    first_text = out.read_text()
    second = cli(args + ["data.max_rows=6"])
    assert second.code == 0
    (kept,) = kept_files(tmp_path, "eval", ".json")
    assert kept.read_text() == first_text  # the earlier result, byte for byte
    assert json.loads(out.read_text())["preference"]["pairs"] == 6 != json.loads(first_text)["preference"]["pairs"]
    assert f"kept the earlier eval.json as {kept}" in second.out and f"wrote {out}" in second.out


def test_report_twice_keeps_the_first_report(cli, tmp_path):
    run = tmp_path / "runs" / "sft_a"
    write_jsonl([{"step": s, "loss": 1.0 / s} for s in (1, 2)], run / "metrics.jsonl")
    (run / "config.yaml").write_text("# alignlab sft\ntrain:\n  lr: 0.001\n")
    first = cli(["report", run])
    report = run / "report.html"
    assert first.code == 0 and f"wrote {report}" in first.out
    first_html = report.read_text()
    write_jsonl([{"step": s, "loss": 1.0 / s, "grad_norm": 0.5} for s in (1, 2, 3)], run / "metrics.jsonl")
    second = cli(["report", run])
    assert second.code == 0
    (kept,) = kept_files(run, "report", ".html")
    assert kept.read_text() == first_html and "grad_norm" in report.read_text() and "grad_norm" not in first_html
    assert f"kept the earlier report.html as {kept}" in second.out and f"wrote {report}" in second.out
