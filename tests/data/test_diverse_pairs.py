"""`alignlab pairs --strategy diverse` (alignlab/data/diverse_pairs.py) on hand-made embeddings and scores, against
the rule written out in float64, and through the CLI with a model's embeddings."""

from __future__ import annotations

import doctest
import math
import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from alignlab.data import diverse_pairs
from alignlab.data.diverse_pairs import diverse_pair
from alignlab.data.io import Row
from alignlab.data.ranked_pairs import build_pairs, rank_pairs
from alignlab.errors import DataError
from alignlab.scoring.embeddings import hidden_state_embeddings
from conftest import read_jsonl, write_jsonl


def reference(scores, vectors, window):
    """The README's definition, written out with loops in float64."""
    scored = [i for i, s in enumerate(scores) if s is not None]

    def distance(i, j):
        u, v = vectors[i], vectors[j]
        return 1 - sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))

    d = {i: sum(distance(i, j) for j in scored if j != i) / (len(scored) - 1) for i in scored}
    low, high = min(scores[i] for i in scored), max(scores[i] for i in scored)
    level = {i: (scores[i] - low) / (high - low) for i in scored}
    top = sorted((i for i in scored if level[i] >= 1 - window), key=lambda i: (-d[i], -scores[i], i))
    chosen = top[0]
    bottom = sorted((j for j in scored if level[j] <= window and scores[j] < scores[chosen]),
                    key=lambda j: (d[j], scores[j], j))
    return chosen, bottom[0]


def test_doctests_pass():
    result = doctest.testmod(diverse_pairs, verbose=False)
    assert result.attempted >= 2 and result.failed == 0


def test_by_hand():
    # 0, 1, 3, 4 say much the same (vectors near [1, 0]); 2 points elsewhere; 5 too, but it is bad.
    vectors = [[1, 0], [1, 0.1], [0, 1], [1, -0.1], [0.9, 0.1], [-1, 0.2]]
    scores = [10, 9, 9.5, 0, 1, 0.5]
    chosen, rejected = diverse_pair(scores, vectors)
    assert chosen == 2  # good (level 0.95 >= 0.75) and far from the rest; 5 is farther but scores low
    assert rejected == 4  # bad (level 0.1 <= 0.25) and the most typical of the bad ones; 5 is bad but atypical
    assert diverse_pair(scores, vectors, score_window=0) == (0, 3)  # quality: best vs worst
    # A null score leaves the response out, wherever its vector points.
    assert diverse_pair(scores[:5] + [None], vectors) == diverse_pair(scores[:5], vectors[:5])
    assert diverse_pair([1, 1, None], vectors[:3]) is None and diverse_pair([1, None], vectors[:2]) is None


def test_equal_best_scores_are_told_apart_by_distance():
    vectors = [[1, 0], [0, 1], [1, 0.05], [1, -0.05]]
    assert diverse_pair([3, 3, 0, 0], vectors, score_window=0) == (1, 2)  # the far best, the typical worst
    assert rank_pairs(["a", "b", "c", "d"], [3, 3, 0, 0])[0] == [(0, 2)]  # quality: the first of each


def test_a_wide_window_still_rejects_only_a_lower_score():
    vectors = [[1, 0], [0, 1], [1, 0.1]]
    chosen, rejected = diverse_pair([2, 1, 0], vectors, score_window=0.9)  # every response in both pools
    assert chosen == 1 and rejected == 2  # the farthest; then the most typical of those scored below it


@pytest.mark.parametrize("seed", range(6))
def test_random_groups_follow_the_definition_and_window_0_is_quality(seed):
    rng = random.Random(seed)
    for _ in range(40):
        m = rng.randint(2, 9)
        scores = [rng.choice([None, rng.randint(0, 4), rng.random() * 10]) for _ in range(m)]
        vectors = [[rng.gauss(0, 1) for _ in range(3)] for _ in range(m)]
        scored = [s for s in scores if s is not None]
        if len(scored) < 2 or len(set(scored)) < 2:
            assert diverse_pair(scores, vectors) is None
            continue
        for window in (0.0, 0.25, 0.5, 0.8):
            assert diverse_pair(scores, vectors, score_window=window) == reference(scores, vectors, window)
        chosen, rejected = diverse_pair(scores, vectors, score_window=0)
        assert scores[chosen] == max(scored) and scores[rejected] == min(scored)


def test_bad_window_and_missing_or_bad_embeddings_are_named():
    with pytest.raises(DataError, match="score-window"):
        diverse_pair([1, 0], [[1, 0], [0, 1]], score_window=1)
    rows = [Row({"prompt": "p", "responses": ["a", "b"], "scores": [1, 0]}, "in.jsonl", 3)]
    with pytest.raises(DataError, match="in.jsonl, line 3: --strategy diverse needs"):
        build_pairs(rows, strategy="diverse")
    rows[0].values["embeddings"] = [[1.0, 0.0], [1.0]]
    with pytest.raises(DataError, match=r"line 3, field 'embeddings\[1\]'"):
        build_pairs(rows, strategy="diverse")


def test_embeddings_column_or_one_call_of_the_embedder():
    vectors = [[1, 0], [0, 1], [1, -0.3], [1, 0.02]]  # b points elsewhere; d is next to a, c a little apart
    given = Row({"prompt": "p", "responses": ["a", "b", "c", "d"], "ranks": [2, 1, 4, 3], "embeddings": vectors},
                "in.jsonl", 1)
    embedded = Row({"prompt": "q", "responses": ["w", "x", "y", "z"], "scores": [0, 5, 1, 4]}, "in.jsonl", 2)
    calls = []
    embed = lambda texts: calls.append(texts) or torch.tensor(vectors, dtype=torch.float32)  # noqa: E731
    pairs, stats = build_pairs([given, embedded], strategy="diverse", embed=embed)
    assert calls == [["w", "x", "y", "z"]]  # a row with its own embeddings is not embedded again
    assert stats.pairs == 2
    # ranks 2, 1, 4, 3 -> levels 2/3, 1, 0, 1/3: only b is high enough (>= 0.75) and only c low enough (<= 0.25)
    assert pairs[0] == {"prompt": "p", "chosen": "b", "rejected": "c", "rank_chosen": 1, "rank_rejected": 4}
    assert build_pairs([given], strategy="diverse", score_window=0.4)[0][0]["rejected"] == "d"  # d: more typical
    assert (pairs[1]["chosen"], pairs[1]["rejected"]) == ("x", "w")  # levels 0, 1, 0.2, 0.8: w is more typical than y


def test_cli_diverse_with_a_models_embeddings_and_quality(tmp_path, tiny_model_dir, tiny_tokenizer, cli):
    rows = [{"prompt": f"q{k}", "responses": [f"answer {k} {w}" for w in ("one", "two!", "3 3 3", "four four", "v")],
             "scores": [4, 3.5, 3.8, 0.5, 0]} for k in range(3)]
    source = write_jsonl(rows, tmp_path / "scored.jsonl")
    out = tmp_path / "pairs.jsonl"
    result = cli(["pairs", source, out, "--strategy", "diverse", "--embedding-model", tiny_model_dir,
                  "--score-window", "0.3"])
    assert result.code == 0, result.err
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    expected = []
    for row in rows:
        chosen, rejected = diverse_pair(row["scores"], hidden_state_embeddings(model, tiny_tokenizer, row["responses"]),
                                        score_window=0.3)
        expected.append((row["responses"][chosen], row["responses"][rejected]))
    assert [(p["chosen"], p["rejected"]) for p in read_jsonl(out)] == expected
    assert cli(["pairs", source, out, "--strategy", "quality"]).code == 0
    assert [(p["chosen"], p["rejected"]) for p in read_jsonl(out)] == [(r["responses"][0], r["responses"][4])
                                                                         for r in rows]
    missing = cli(["pairs", source, out, "--strategy", "diverse"])
    assert missing.code == 2 and "--embedding-model" in missing.err
