"""Diversity metrics (alignlab/data/diversity.py) against hand-computed values and float64 reference formulas."""

from __future__ import annotations

import doctest
import itertools
import math

import pytest
import torch

from alignlab.data import diversity
from alignlab.data.diversity import (distinct_answers, distinct_n, diversity_metrics, final_answer,
                                     mean_distance_to_others, mean_pairwise_distance, self_bleu)


def test_doctests_pass():
    result = doctest.testmod(diversity, verbose=False)
    assert result.attempted >= 6 and result.failed == 0


def test_distinct_n_by_hand():
    texts = ["the cat sat .", "the cat ran", "a dog"]
    # unigrams: the cat sat . the cat ran a dog -> 9, distinct {the cat sat . ran a dog} = 7
    assert distinct_n(texts, 1) == pytest.approx(7 / 9)
    # bigrams (never across texts): the-cat cat-sat sat-. | the-cat cat-ran | a-dog -> 6, distinct 5
    assert distinct_n(texts, 2) == pytest.approx(5 / 6)
    assert distinct_n(["end.", "end."], 1) == pytest.approx(2 / 4)  # 13a splits the full stop off
    assert distinct_n(["one", "two"], 2) is None  # no bigram at all: undefined, not 0


def _bleu(hyp: list[str], refs: list[list[str]]) -> float:
    """BLEU with sacrebleu's sentence defaults, written out: clipped n-gram precisions for the orders the
    hypothesis has (effective order), exp smoothing (the k-th zero precision is 1 / (2^k total)), brevity
    penalty against the closest reference length (the shorter on a tie); 0 when no n-gram matches at all."""
    log_sum, orders, zeros = 0.0, 0, 0
    for n in range(1, 5):
        grams = [tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1)]
        if not grams:
            break
        best: dict = {}
        for ref in refs:
            counts: dict = {}
            for i in range(len(ref) - n + 1):
                counts[tuple(ref[i:i + n])] = counts.get(tuple(ref[i:i + n]), 0) + 1
            for gram, count in counts.items():
                best[gram] = max(best.get(gram, 0), count)
        matched = sum(min(grams.count(g), best.get(g, 0)) for g in set(grams))
        if matched == 0:
            zeros += 1
            precision = 1 / (2 ** zeros * len(grams))
        else:
            precision = matched / len(grams)
        log_sum += math.log(precision)
        orders += 1
    if zeros == orders:
        return 0.0
    ref_len = min((abs(len(r) - len(hyp)), len(r)) for r in refs)[1]
    penalty = 1.0 if len(hyp) >= ref_len else math.exp(1 - ref_len / len(hyp))
    return penalty * math.exp(log_sum / orders)


def test_self_bleu_is_the_mean_bleu_against_the_others():
    texts = ["a b c d", "a b c e", "x y"]
    # by hand: "a b c d" vs the others: precisions 3/4, 2/3, 1/2 and 0/1 -> 1/2 (exp smoothing), BP 1
    assert _bleu(texts[0].split(), [texts[1].split(), texts[2].split()]) == pytest.approx((3 / 4 * 2 / 3 / 4) ** 0.25)
    assert _bleu(["x", "y"], [texts[0].split(), texts[1].split()]) == 0.0  # nothing in common
    expected = sum(_bleu(t.split(), [o.split() for o in texts if o != t]) for t in texts) / 3
    assert self_bleu(texts) == pytest.approx(expected, abs=1e-9)
    for group in (["a b c", "a b c d e"], ["a b x y", "a b c d", "c d a"]):  # brevity penalty; several zero orders
        expected = sum(_bleu(group[i].split(), [o.split() for j, o in enumerate(group) if j != i])
                       for i in range(len(group))) / len(group)
        assert self_bleu(group) == pytest.approx(expected, abs=1e-9)
    assert self_bleu(["same words here", "same words here"]) == pytest.approx(1.0)
    assert self_bleu(["", ""]) == 1.0 and self_bleu(["", "x"]) == 0.0  # two empty answers repeat each other
    assert self_bleu(["alone"]) is None


def test_embedding_distance_is_the_mean_cosine_distance_over_pairs():
    vectors = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    rows = vectors.double().tolist()

    def cos(u, v):
        return sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))

    pairs = list(itertools.combinations(range(5), 2))
    assert mean_pairwise_distance(vectors) == pytest.approx(sum(1 - cos(rows[i], rows[j]) for i, j in pairs) / 10,
                                                            abs=1e-12)
    to_others = [sum(1 - cos(rows[i], rows[j]) for j in range(5) if j != i) / 4 for i in range(5)]
    assert mean_distance_to_others(vectors).tolist() == pytest.approx(to_others, abs=1e-12)
    assert mean_pairwise_distance(vectors * 3.0) == pytest.approx(mean_pairwise_distance(vectors))  # scale-free
    assert mean_pairwise_distance(torch.ones(3, 4)) == pytest.approx(0.0, abs=1e-12)
    assert mean_pairwise_distance(vectors[:1]) is None


def test_final_answers():
    assert final_answer("think... <answer>7</answer> no wait <answer> 1,000 </answer>") == "1000"
    assert final_answer("so \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert final_answer("A poem\nabout   the sea\n\n") == "about the sea"
    assert final_answer("") == ""
    assert distinct_answers(["<answer>12</answer>", "<answer>12.0</answer>", "\\boxed{12}", "13"]) == 2


def test_metrics_are_averaged_over_prompts_and_undefined_ones_left_out():
    groups = [["the cat", "the dog"], ["one", "two"]]
    vectors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    seen = []
    metrics = diversity_metrics(groups, embed=lambda texts: seen.append(texts) or vectors)
    assert seen == [["the cat", "the dog", "one", "two"]]  # one call for every text
    assert metrics["diversity/distinct_1"] == pytest.approx((3 / 4 + 2 / 2) / 2)
    assert metrics["diversity/distinct_2"] == pytest.approx(1.0)  # the second prompt has no bigram: left out
    assert metrics["diversity/embedding"] == pytest.approx((1.0 + 0.0) / 2)
    assert metrics["diversity/distinct_answers"] == pytest.approx(2.0)
    assert metrics["diversity/self_bleu"] == pytest.approx((self_bleu(groups[0]) + self_bleu(groups[1])) / 2)
    assert "diversity/embedding" not in diversity_metrics(groups)
