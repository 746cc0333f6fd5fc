"""Inter-annotator agreement on rankings: Kendall's tau-b and Krippendorff's alpha, as pure functions.

`alignlab label --stats ranked.jsonl` reports both over the prompts that two or more people ranked:

- **Kendall's tau-b** (Kendall 1945), per prompt, for each two annotators, over the responses both ranked:
  tau_b = (concordant - discordant) / sqrt((n0 - ties_a) * (n0 - ties_b)), n0 = n(n-1)/2 response pairs.
  The b variant because people mark ties. A prompt that one of the two ranked all-tied has no tau (0/0)
  and is counted apart. Reported: the mean over shared prompts, per annotator pair and over all pairs.
- **Krippendorff's alpha** (Krippendorff 2011, "Computing Krippendorff's Alpha-Reliability"): a unit is
  one response of one prompt, a value is the rank an annotator gave it. alpha = 1 - D_o / D_e, observed
  over expected disagreement, computed from the coincidence matrix. The headline is the **ordinal**
  metric, because a rank says "better than", not "how much better": the distance between two ranks is
  how many ranks lie between them (ranks given often weigh more), not their difference. The interval
  metric (difference squared) is reported beside it for comparison with tools that use it.
  Any number of annotators, missing labels allowed; units with fewer than two ranks are not pairable
  and are left out. 1 = perfect agreement, 0 = chance, below 0 = systematic disagreement.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Callable, Hashable, Optional, Sequence

Distance = Callable[[float, float, Counter], float]  # (value c, value k, value counts n_g) -> delta^2


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def kendall_tau_b(a: Sequence[float], b: Sequence[float]) -> Optional[float]:
    """Kendall's tau-b of two rankings of the same items (ties allowed); None when either is all tied.

    >>> kendall_tau_b([1, 2, 3], [1, 3, 2])
    0.3333333333333333
    >>> kendall_tau_b([1, 1, 1], [1, 2, 3]) is None
    True
    """
    if len(a) != len(b):
        raise ValueError(f"two rankings of different lengths ({len(a)} and {len(b)})")
    score = untied_a = untied_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da, db = a[i] - a[j], b[i] - b[j]
            untied_a += da != 0
            untied_b += db != 0
            score += _sign(da) * _sign(db)  # +1 concordant, -1 discordant, 0 tied in either
    if not untied_a or not untied_b:
        return None
    return score / math.sqrt(untied_a * untied_b)


def nominal_distance(c: float, k: float, counts: Counter) -> float:
    return float(c != k)


def interval_distance(c: float, k: float, counts: Counter) -> float:
    return (c - k) ** 2


def ordinal_distance(c: float, k: float, counts: Counter) -> float:
    """(sum of n_g for the values g from c to k, minus half of n_c and of n_k)^2: Krippendorff's ordinal metric."""
    low, high = min(c, k), max(c, k)
    between = sum(n for g, n in counts.items() if low <= g <= high)
    return (between - (counts[c] + counts[k]) / 2) ** 2


DISTANCES: dict[str, Distance] = {"nominal": nominal_distance, "ordinal": ordinal_distance,
                                  "interval": interval_distance}


def krippendorff_alpha(units: Sequence[Sequence[Optional[float]]], metric: str = "ordinal") -> Optional[float]:
    """Krippendorff's alpha of `units`, each the values its annotators gave (None = not labelled).

    None when there is no expected disagreement (fewer than two pairable values, or all equal).

    >>> round(krippendorff_alpha([[1, 1], [2, 2], [3, 3]]), 6)
    1.0
    >>> round(krippendorff_alpha([[1, 2], [2, 1]], metric="interval"), 6)
    -0.5
    """
    distance = DISTANCES[metric]
    coincidences: Counter = Counter()  # (c, k) -> o_ck, ordered pairs of values within a unit, weighted 1/(m_u - 1)
    for unit in units:
        values = [v for v in unit if v is not None]
        if len(values) < 2:
            continue  # not pairable
        weight = 1.0 / (len(values) - 1)
        for i, c in enumerate(values):
            for j, k in enumerate(values):
                if i != j:
                    coincidences[c, k] += weight
    counts: Counter = Counter()  # n_c: how often value c is pairable
    for (c, _), o in coincidences.items():
        counts[c] += o
    n = sum(counts.values())
    if n < 2:
        return None
    observed = sum(o * distance(c, k, counts) for (c, k), o in coincidences.items())
    expected = sum(counts[c] * counts[k] * distance(c, k, counts) for c in counts for k in counts)
    if expected == 0:
        return None
    return 1.0 - (n - 1) * observed / expected


def agreement(labels: Sequence[dict]) -> dict:
    """Agreement over ranked.jsonl rows {source_row, annotator, ranks, skipped}: skipped rows and null ranks
    are left out; the last label of an annotator for a prompt counts.

    Returns {"annotators": {name: prompts ranked}, "shared_prompts", "tau": {"a vs b": (mean, prompts,
    undefined)}, "tau_mean", "alpha_ordinal", "alpha_interval", "units"}."""
    ranks: dict[Hashable, dict[str, list]] = defaultdict(dict)  # prompt -> annotator -> ranks
    for row in labels:
        if not row.get("skipped"):
            ranks[row["source_row"]][row["annotator"]] = row["ranks"]
    per_annotator = Counter(name for by in ranks.values() for name in by)
    shared = {prompt: by for prompt, by in ranks.items() if len(by) >= 2}
    taus: dict[tuple[str, str], list] = defaultdict(list)
    units = []
    for by in shared.values():
        names = sorted(by)
        for x, first in enumerate(names):
            for second in names[x + 1:]:
                both = [(p, q) for p, q in zip(by[first], by[second]) if p is not None and q is not None]
                taus[first, second].append(kendall_tau_b([p for p, _ in both], [q for _, q in both]))
        units += [[by[name][i] for name in names] for i in range(len(by[names[0]]))]
    tau = {}
    for (first, second), values in sorted(taus.items()):
        defined = [t for t in values if t is not None]
        tau[f"{first} vs {second}"] = (sum(defined) / len(defined) if defined else None, len(defined),
                                       len(values) - len(defined))
    all_defined = [t for values in taus.values() for t in values if t is not None]
    return {"annotators": dict(sorted(per_annotator.items())), "shared_prompts": len(shared), "tau": tau,
            "tau_mean": sum(all_defined) / len(all_defined) if all_defined else None,
            "alpha_ordinal": krippendorff_alpha(units, "ordinal"),
            "alpha_interval": krippendorff_alpha(units, "interval"),
            "units": sum(1 for unit in units if sum(v is not None for v in unit) >= 2)}


def _number(value: Optional[float]) -> str:
    return "undefined" if value is None else f"{value:.3f}"


def agreement_report(stats: dict, *, skipped: int = 0) -> str:
    """The text `alignlab label --stats` prints."""
    names = ", ".join(f"{name} {count}" for name, count in stats["annotators"].items()) or "none"
    lines = [f"prompts ranked per annotator: {names}" + (f" ({skipped} skips not counted)" if skipped else ""),
             f"prompts ranked by two or more annotators: {stats['shared_prompts']}"]
    if not stats["shared_prompts"]:
        lines.append("agreement needs prompts that at least two annotators ranked: none yet")
        return "\n".join(lines)
    lines.append("Kendall's tau-b, mean over the prompts both ranked:")
    for pair, (mean, count, undefined) in stats["tau"].items():
        extra = f", {undefined} with an all-tied ranking left out" if undefined else ""
        lines.append(f"  {pair}: {_number(mean)} ({count} prompts{extra})")
    if len(stats["tau"]) > 1:
        lines.append(f"  all pairs: {_number(stats['tau_mean'])}")
    lines.append(f"Krippendorff's alpha over {stats['units']} responses (unit = a response, value = its rank):")
    lines.append(f"  ordinal:  {_number(stats['alpha_ordinal'])}")
    lines.append(f"  interval: {_number(stats['alpha_interval'])}")
    return "\n".join(lines)
