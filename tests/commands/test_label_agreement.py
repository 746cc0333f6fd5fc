"""Agreement statistics of `alignlab label --stats`: hand-computed values, Krippendorff's published example,
and parity with the definitions computed another way, in float64."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter

import pytest

from alignlab.commands.label.agreement import DISTANCES, agreement, agreement_report, kendall_tau_b, krippendorff_alpha

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 coders x 12 units, None = missing.
KRIPPENDORFF_2011 = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]


def test_kendall_tau_b_by_hand():
    assert kendall_tau_b([1, 2, 3], [1, 2, 3]) == 1.0
    assert kendall_tau_b([1, 2, 3], [3, 2, 1]) == -1.0
    assert kendall_tau_b([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)  # 2 concordant, 1 discordant of 3
    # a tie in the first: pair (0, 1) counts in neither sum; 2 of 2 untied concordant, 3 untied pairs in the second
    assert kendall_tau_b([1, 1, 3], [1, 2, 3]) == pytest.approx(2 / math.sqrt(2 * 3))
    assert kendall_tau_b([2, 2, 2], [1, 2, 3]) is None


def _tau_b_from_counts(a, b) -> float:
    """tau-b from its textbook form: (n_c - n_d) / sqrt((n0 - n1)(n0 - n2)), ties counted per value."""
    pairs = list(itertools.combinations(range(len(a)), 2))
    concordant = sum((a[i] - a[j]) * (b[i] - b[j]) > 0 for i, j in pairs)
    discordant = sum((a[i] - a[j]) * (b[i] - b[j]) < 0 for i, j in pairs)
    n0 = len(pairs)
    n1 = sum(t * (t - 1) / 2 for t in Counter(a).values())
    n2 = sum(t * (t - 1) / 2 for t in Counter(b).values())
    return (concordant - discordant) / math.sqrt((n0 - n1) * (n0 - n2))


def test_kendall_tau_b_matches_the_textbook_formula_and_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(2, 8)
        a = [rng.randint(1, 4) for _ in range(n)]
        b = [rng.randint(1, 4) for _ in range(n)]
        mine = kendall_tau_b(a, b)
        if len(set(a)) == 1 or len(set(b)) == 1:
            assert mine is None
            continue
        assert mine == pytest.approx(_tau_b_from_counts(a, b), abs=1e-12)
        assert mine == pytest.approx(scipy_stats.kendalltau(a, b).statistic, abs=1e-12)


def test_alpha_on_krippendorffs_published_example():
    units = [list(unit) for unit in zip(*KRIPPENDORFF_2011)]
    assert krippendorff_alpha(units, "nominal") == pytest.approx(0.743, abs=5e-4)
    assert krippendorff_alpha(units, "ordinal") == pytest.approx(0.815, abs=5e-4)
    assert krippendorff_alpha(units, "interval") == pytest.approx(0.849, abs=5e-4)


def test_alpha_by_hand():
    # interval: values 1,2 | 2,1 -> o12 = o21 = 2, n1 = n2 = 2, n = 4; alpha = 1 - 3 * 4 / (2 * 2*2*1) = -0.5
    assert krippendorff_alpha([[1, 2], [2, 1]], "interval") == pytest.approx(-0.5)
    # ordinal: units (1,1) (2,3) (3,3): n1 = 2, n2 = 1, n3 = 3, n = 6; d(2,3) = (4 - 2)^2 = 4,
    # d(1,2) = (3 - 1.5)^2 = 2.25, d(1,3) = (6 - 2.5)^2 = 12.25; observed = 2 * 4 = 8,
    # expected = 2 * (2*1*2.25 + 2*3*12.25 + 1*3*4) = 180; alpha = 1 - 5 * 8 / 180 = 7/9
    assert krippendorff_alpha([[1, 1], [2, 3], [3, 3]], "ordinal") == pytest.approx(7 / 9)
    assert krippendorff_alpha([[1, 1], [2, 2, None], [3, 3, 3]], "ordinal") == pytest.approx(1.0)
    assert krippendorff_alpha([[1, None], [2]], "ordinal") is None  # nothing pairable
    assert krippendorff_alpha([[2, 2], [2, 2]], "interval") is None  # no expected disagreement


def _alpha_from_definition(units, metric: str) -> float:
    """alpha = 1 - D_o / D_e with both disagreements averaged over explicit value pairs, no coincidence matrix."""
    pairable = [[v for v in unit if v is not None] for unit in units]
    pairable = [unit for unit in pairable if len(unit) >= 2]
    pooled = [v for unit in pairable for v in unit]
    counts, n = Counter(pooled), len(pooled)
    delta = DISTANCES[metric]
    observed = sum(sum(delta(unit[i], unit[j], counts) for i in range(len(unit)) for j in range(len(unit)) if i != j)
                   / (len(unit) - 1) for unit in pairable) / n
    expected = sum(delta(pooled[i], pooled[j], counts) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    return 1 - observed / expected


@pytest.mark.parametrize("metric", ["nominal", "ordinal", "interval"])
def test_alpha_matches_its_definition(metric):
    rng = random.Random(1)
    for _ in range(100):
        units = [[rng.choice([None, 1, 2, 3, 4]) for _ in range(rng.randint(1, 4))] for _ in range(rng.randint(2, 8))]
        try:
            reference = _alpha_from_definition(units, metric)
        except ZeroDivisionError:
            assert krippendorff_alpha(units, metric) is None
            continue
        assert krippendorff_alpha(units, metric) == pytest.approx(reference, abs=1e-12)


def test_agreement_of_label_rows():
    def row(who, source_row, ranks, skipped=False):
        return {"annotator": who, "source_row": source_row, "ranks": ranks, "skipped": skipped}

    labels = [row("alice", 1, [1, 2, 3]), row("bob", 1, [1, 3, 2]), row("carol", 1, [1, 2, 3]),
              row("alice", 2, [1, 1, 2]), row("bob", 2, [2, 2, 1]),
              row("alice", 3, [1, 2]), row("bob", 3, [None, None], skipped=True),
              row("alice", 4, [1, 1, 1]), row("bob", 4, [1, 2, 3])]  # alice all tied: tau undefined
    stats = agreement(labels)
    assert stats["annotators"] == {"alice": 4, "bob": 3, "carol": 1}
    assert stats["shared_prompts"] == 3  # prompts 1, 2, 4 (bob skipped 3)
    assert stats["tau"]["alice vs bob"] == (pytest.approx((1 / 3 + -1) / 2), 2, 1)
    assert stats["tau"]["alice vs carol"] == (1.0, 1, 0)
    assert stats["tau"]["bob vs carol"] == (pytest.approx(1 / 3), 1, 0)
    assert stats["tau_mean"] == pytest.approx((1 / 3 - 1 + 1 + 1 / 3) / 4)
    units = [[1, 1, 1], [2, 3, 2], [3, 2, 3], [1, 2], [1, 2], [2, 1], [1, 1], [1, 2], [1, 3]]
    assert stats["units"] == 9
    assert stats["alpha_ordinal"] == pytest.approx(_alpha_from_definition(units, "ordinal"))
    assert stats["alpha_interval"] == pytest.approx(_alpha_from_definition(units, "interval"))
    text = agreement_report(stats, skipped=1)
    assert "alice vs bob: -0.333 (2 prompts, 1 with an all-tied ranking left out)" in text
    assert "(1 skips not counted)" in text and "ordinal:" in text


def test_agreement_with_one_annotator_says_so():
    stats = agreement([{"annotator": "alice", "source_row": 1, "ranks": [1, 2], "skipped": False}])
    assert stats["shared_prompts"] == 0 and stats["alpha_ordinal"] is None
    assert "at least two annotators ranked: none yet" in agreement_report(stats)
