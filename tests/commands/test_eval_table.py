"""`alignlab eval`'s printed table: counts read as counts."""

from __future__ import annotations

from alignlab.commands.evaluate import format_table


def test_counts_print_as_integers():
    result = {"model": "m", "data": {"prompts": "p.jsonl", "pairs": "q.jsonl"},
              "task": {"accuracy": 0.5, "mean_length": 7.0, "prompts": 32.0, "skipped_rows": 2},
              "preference": {"preference_accuracy": 0.75, "margin": 1.0, "pairs": 40.0, "beta": 0.1, "reference": None}}
    rows = [line for line in format_table(result).splitlines() if line.startswith("    ")]  # "    label   value"
    lines = {row[4:38].strip(): row[38:].strip() for row in rows}
    assert lines["prompts"] == "32" and lines["pairs"] == "40" and lines["skipped_rows"] == "2"
    # Measurements keep their decimals, even when they happen to be whole.
    assert lines["mean length (tokens)"] == "7.0000" and lines["mean margin"] == "1.0000"
    assert lines["greedy accuracy"] == "50.0%" and lines["beta"] == "0.1000"
