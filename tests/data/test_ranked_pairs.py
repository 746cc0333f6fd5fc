"""`alignlab pairs`: pair construction from hand-made rankings (ties, equal scores, one response)."""

from __future__ import annotations

import pytest
from conftest import read_jsonl, write_jsonl

from alignlab.data.io import Row
from alignlab.data.ranked_pairs import (ALL_TIED, BELOW_MARGIN, IDENTICAL, ONE_RESPONSE, TIE, UNSCORED, build_pairs,
                                        rank_pairs)
from alignlab.errors import DataError

R = ["a", "b", "c", "d"]


def test_best_vs_worst_picks_extremes():
    pairs, stats = rank_pairs(R, [4, 2, 1, 3])
    assert pairs == [(0, 2)]
    assert stats.pairs == 1 and not stats.dropped


def test_best_vs_rest_and_all_pairs():
    assert rank_pairs(R, [4, 2, 1, 3], strategy="best-vs-rest")[0] == [(0, 1), (0, 2), (0, 3)]
    pairs, _ = rank_pairs(R, [4, 2, 1, 3], strategy="all-pairs")
    assert sorted(pairs) == sorted([(0, 1), (0, 2), (0, 3), (1, 2), (3, 1), (3, 2)])


def test_ties_are_never_paired():
    # b and c tie: all-pairs gives 5 of the 6 pairs and counts the tie.
    pairs, stats = rank_pairs(R, [3, 2, 2, 1], strategy="all-pairs")
    assert len(pairs) == 5 and (1, 2) not in pairs and (2, 1) not in pairs
    assert stats.dropped == {TIE: 1}
    # Two share the best score: the first is the chosen one; the other best is tied, not rejected.
    pairs, stats = rank_pairs(R, [3, 3, 1, 2], strategy="best-vs-rest")
    assert pairs == [(0, 2), (0, 3)] and stats.dropped == {TIE: 1}
    assert rank_pairs(R, [3, 3, 1, 1])[0] == [(0, 2)]


def test_equal_scores_one_response_and_nulls():
    pairs, stats = rank_pairs(R, [2, 2, 2, 2], strategy="all-pairs")
    assert pairs == [] and stats.dropped == {ALL_TIED: 1} and stats.pairs_per_prompt == {0: 1}
    pairs, stats = rank_pairs(["only"], [5])
    assert pairs == [] and stats.dropped == {ONE_RESPONSE: 1}
    pairs, stats = rank_pairs(["x", "y", "z"], [1.0, None, 0.0])
    assert pairs == [(0, 2)] and stats.dropped == {UNSCORED: 1}


def test_margin_and_identical_text():
    pairs, stats = rank_pairs(R, [1.0, 0.9, 0.0, 0.5], strategy="best-vs-rest", min_margin=0.2)
    assert pairs == [(0, 2), (0, 3)] and stats.dropped == {BELOW_MARGIN: 1}
    pairs, stats = rank_pairs(["same", "same", "other"], [2, 1, 0], strategy="all-pairs")
    assert sorted(pairs) == [(0, 2), (1, 2)] and stats.dropped == {IDENTICAL: 1}


def test_ranks_one_is_best():
    rows = [Row({"prompt": "p", "responses": ["w", "x", "y"], "ranks": [3, 1, 2]}, "f.jsonl", 1)]
    out, _ = build_pairs(rows)
    assert out == [{"prompt": "p", "chosen": "x", "rejected": "w", "rank_chosen": 1, "rank_rejected": 3}]


def test_bad_rows_name_file_row_field():
    with pytest.raises(DataError, match=r"f.jsonl, line 2, field 'scores\[1\]'"):
        build_pairs([Row({"prompt": "p", "responses": ["a", "b"], "scores": [1, "x"]}, "f.jsonl", 2)])
    with pytest.raises(DataError, match="field 'scores'.*2 numbers"):
        build_pairs([Row({"prompt": "p", "responses": ["a", "b"], "scores": [1]}, "f.jsonl", 1)])
    with pytest.raises(DataError, match="exactly one of 'scores'"):
        build_pairs([Row({"prompt": "p", "responses": ["a", "b"]}, "f.jsonl", 1)])
    with pytest.raises(DataError, match="field 'responses'"):
        build_pairs([Row({"prompt": "p", "responses": "a", "scores": [1]}, "f.jsonl", 1)])


def test_cli_writes_a_dpo_file_that_dpo_reads(tmp_path, cli):
    src = write_jsonl([
        {"prompt": "1+1=?", "responses": ["2", "3", "11", "4"], "scores": [4, 2, 1, 3]},
        {"prompt": "2+2=?", "responses": ["4", "5"], "scores": [1, 1]},
        {"prompt": "3+3=?", "responses": ["6"], "scores": [1]},
    ], tmp_path / "ranked.jsonl")
    result = cli(["pairs", src, tmp_path / "pairs.jsonl", "--strategy", "all-pairs"])
    assert result.code == 0, result.err
    rows = read_jsonl(tmp_path / "pairs.jsonl")
    assert len(rows) == 6 and all(r["prompt"] == "1+1=?" for r in rows)
    assert "6 pairs from 3 prompts" in result.out and "0 pairs: 2 prompts" in result.out
    assert ALL_TIED in result.out and ONE_RESPONSE in result.out

    from alignlab.data.io import read_rows
    from alignlab.data.preference import load_preference_rows

    examples, skipped = load_preference_rows(read_rows(str(tmp_path / "pairs.jsonl")), skip_bad_rows=False)
    assert len(examples) == 6 and skipped == 0

    bad = write_jsonl([{"prompt": "p", "responses": ["a"], "scores": ["high"]}], tmp_path / "bad.jsonl")
    result = cli(["pairs", bad, tmp_path / "out.jsonl"])
    assert result.code == 2 and "bad.jsonl, line 1, field 'scores[0]'" in result.err
