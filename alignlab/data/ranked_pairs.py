"""Ranked or scored responses -> DPO pairs (`alignlab pairs IN OUT`), also used by `alignlab iterate`.

Input rows: a `prompt` (string or messages) and several `responses` (strings), with either
`scores` (higher is better) or `ranks` (1 is best; a larger rank is worse), one per response:

    {"prompt": "2+2=?", "responses": ["4", "5", "22"], "scores": [1.0, 0.0, 0.2]}
    {"prompt": "2+2=?", "responses": ["4", "5", "22"], "ranks": [1, 3, 2]}

With `--judge judge.base_url=URL judge.model=NAME ...`, rows need only a prompt and responses: an LLM judge
scores them first (`alignlab.scoring.judge_reward.judged_rows`; given scores or ranks are replaced, and a
response the judge's reply does not score is left out as a null score is).

Raw UltraFeedback rows (`openbmb/UltraFeedback`) are read as they are published: the `instruction` is the
prompt and each of the `completions` gives a `response` and its rating (see `ultrafeedback_responses`).

Strategies (which pairs a prompt gives):
- best-vs-worst (default; also named quality): one pair, a best response against a worst one;
- best-vs-rest: a best response against every response scored strictly below it;
- all-pairs: every two responses with different scores, the higher one chosen;
- diverse: one pair, a high-scoring response far from the others in embedding space against a low-scoring
  one close to the mode (seed 002's selection; defined in `alignlab.data.diverse_pairs`).

Ties: two responses with equal scores (or ranks) are never paired, in any strategy; when several
responses share the best (or worst) score, the first of them in the row is used. A pair whose
score difference is below `min_margin` is dropped, and so is a pair whose two texts are identical
(no preference signal). A response whose score is null is left out. Every dropped pair or prompt
is counted under its reason, and the report says how many pairs each prompt gave.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from alignlab.data.diverse_pairs import SCORE_WINDOW, diverse_pair, embeddings_for_rows
from alignlab.data.io import Row, read_rows
from alignlab.errors import DataError

STRATEGIES = ("best-vs-worst", "quality", "best-vs-rest", "all-pairs", "diverse")

# Reasons, as counted and reported.
ONE_RESPONSE = "prompt with fewer than 2 scored responses"
ALL_TIED = "prompt whose responses all have equal scores"
TIE = "pair of responses with equal scores (not paired)"
BELOW_MARGIN = "pair with a score difference below --min-margin"
IDENTICAL = "pair with identical chosen and rejected text"
UNSCORED = "response with a null score, or an empty UltraFeedback response (left out)"
# UltraFeedback ratings, in the order tried: the first that a row's completions carry is used for all of them.
ULTRAFEEDBACK_SCORES = ("overall_score", "fine-grained_score")


@dataclass
class PairStats:
    prompts: int = 0
    pairs: int = 0
    pairs_per_prompt: Counter = field(default_factory=Counter)  # pairs a prompt gave -> how many prompts
    dropped: Counter = field(default_factory=Counter)  # reason -> count

    def add(self, other: "PairStats") -> None:
        self.prompts += other.prompts
        self.pairs += other.pairs
        self.pairs_per_prompt.update(other.pairs_per_prompt)
        self.dropped.update(other.dropped)

    def report(self) -> str:
        lines = [f"{self.pairs} pairs from {self.prompts} prompts"]
        spread = ", ".join(f"{n} pair{'s' if n != 1 else ''}: {c} prompt{'s' if c != 1 else ''}"
                           for n, c in sorted(self.pairs_per_prompt.items()))
        lines.append(f"pairs per prompt: {spread or 'none'}")
        if self.dropped:
            lines.append("dropped:")
            lines += [f"  {count:>6}  {reason}" for reason, count in self.dropped.most_common()]
        else:
            lines.append("dropped: nothing")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"prompts": self.prompts, "pairs": self.pairs,
                "pairs_per_prompt": {str(k): v for k, v in sorted(self.pairs_per_prompt.items())},
                "dropped": dict(self.dropped)}


def rank_pairs(responses: Sequence[str], scores: Sequence[Optional[float]], *, strategy: str = "best-vs-worst",
               min_margin: float = 0.0, embeddings=None,
               score_window: float = SCORE_WINDOW) -> tuple[list[tuple[int, int]], PairStats]:
    """(chosen index, rejected index) pairs for one prompt, and what was dropped. Higher score = better.
    `embeddings` [m, D] and `score_window`: the diverse strategy's (`alignlab.data.diverse_pairs`).

    >>> rank_pairs(["a", "b", "c", "d"], [4, 2, 1, 3])[0]
    [(0, 2)]
    >>> rank_pairs(["a", "b", "c"], [1, 1, 0], strategy="all-pairs")[0]
    [(0, 2), (1, 2)]
    >>> rank_pairs(["a", "b", "c"], [2, 1, 1], strategy="best-vs-rest")[0]
    [(0, 1), (0, 2)]
    """
    if strategy not in STRATEGIES:
        raise DataError(f"unknown pair strategy '{strategy}'; choose one of {', '.join(STRATEGIES)}")
    stats = PairStats(prompts=1)
    scored = [i for i, s in enumerate(scores) if s is not None]
    stats.dropped[UNSCORED] += len(scores) - len(scored)
    if not stats.dropped[UNSCORED]:
        del stats.dropped[UNSCORED]
    pairs: list[tuple[int, int]] = []
    if len(scored) < 2:
        stats.dropped[ONE_RESPONSE] += 1
    elif len({scores[i] for i in scored}) == 1:
        stats.dropped[ALL_TIED] += 1
    else:
        best = max(scored, key=lambda i: (scores[i], -i))  # the first of the best
        if strategy == "diverse":
            if embeddings is None:
                raise DataError("the diverse pair strategy needs the responses' embeddings")
            candidates = [diverse_pair(scores, embeddings, score_window=score_window)]
        elif strategy in ("best-vs-worst", "quality"):
            candidates = [(best, min(scored, key=lambda i: (scores[i], i)))]  # the first of the worst
        elif strategy == "best-vs-rest":
            candidates = [(best, j) for j in scored if j != best]
        else:
            candidates = [(i, j) if scores[i] > scores[j] else (j, i) for a, i in enumerate(scored) for j in scored[a + 1:]]
        for chosen, rejected in candidates:
            margin = scores[chosen] - scores[rejected]
            if margin == 0:
                stats.dropped[TIE] += 1
            elif margin < min_margin:
                stats.dropped[BELOW_MARGIN] += 1
            elif responses[chosen] == responses[rejected]:
                stats.dropped[IDENTICAL] += 1
            else:
                pairs.append((chosen, rejected))
    stats.pairs = len(pairs)
    stats.pairs_per_prompt[len(pairs)] += 1
    return pairs, stats


def _number(row: Row, field: str, value: Any) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{row.where(field)}: expected a finite number (or null), got {value!r}")
    return float(value)


def row_responses(row: Row) -> tuple[Any, list[str]]:
    """(prompt, responses) of one input row; DataError naming file, row, field."""
    values = row.values
    if "prompt" not in values:
        raise DataError(f"{row.where('prompt')}: missing; columns found: {', '.join(sorted(values))}")
    responses = values.get("responses")
    if not isinstance(responses, list):
        raise DataError(f"{row.where('responses')}: expected a list of response strings, got "
                        f"{type(responses).__name__ if responses is not None else 'nothing'}")
    for i, text in enumerate(responses):
        if not isinstance(text, str):
            raise DataError(f"{row.where(f'responses[{i}]')}: expected a string, got {type(text).__name__}")
    return values["prompt"], responses


def row_scores(row: Row) -> tuple[list[str], list[Optional[float]]]:
    """(responses, scores with higher = better) of one input row; DataError naming file, row, field."""
    values = row.values
    _, responses = row_responses(row)
    has_scores, has_ranks = "scores" in values, "ranks" in values
    if has_scores == has_ranks:
        raise DataError(f"{row.where()}: give exactly one of 'scores' (higher is better) or 'ranks' (1 is best)"
                        + (", not both" if has_scores else ""))
    name = "scores" if has_scores else "ranks"
    given = values[name]
    if not isinstance(given, list) or len(given) != len(responses):
        got = f"{len(given)} values" if isinstance(given, list) else type(given).__name__
        raise DataError(f"{row.where(name)}: expected a list of {len(responses)} numbers, one per response; got {got}")
    numbers = [_number(row, f"{name}[{i}]", v) for i, v in enumerate(given)]
    if has_ranks:
        numbers = [None if n is None else -n for n in numbers]  # rank 1 is best: a smaller rank scores higher
    return responses, numbers


def is_ultrafeedback(values: dict) -> bool:
    """A raw UltraFeedback row: an `instruction` and a list of rated `completions` (no `responses`)."""
    return "instruction" in values and "completions" in values and "responses" not in values


def _annotation_mean(row: Row, index: int, completion: dict) -> Optional[float]:
    """Mean of the numeric 'Rating's in a completion's annotations ("N/A" ratings left out); None if none."""
    annotations = completion.get("annotations")
    if not isinstance(annotations, dict):
        raise DataError(f"{row.where(f'completions[{index}]')}: no rating: give 'overall_score', "
                        "'fine-grained_score' or 'annotations' (aspect -> {'Rating': ...})")
    ratings = []
    for aspect in annotations.values():
        rating = aspect.get("Rating") if isinstance(aspect, dict) else None
        try:
            value = float(rating)
        except (TypeError, ValueError):  # "N/A" and missing ratings say nothing
            continue
        if math.isfinite(value):
            ratings.append(value)
    return sum(ratings) / len(ratings) if ratings else None


def ultrafeedback_responses(row: Row) -> tuple[str, list[str], list[Optional[float]], str]:
    """(prompt, responses, scores with higher = better, name of the rating used) of a raw UltraFeedback row.

    The rating is the first of `overall_score` and `fine-grained_score` that any completion carries,
    else the mean of its `annotations` ratings. A null or NaN rating, or an empty response, leaves that
    completion out (as a null score does)."""
    prompt = row.values.get("instruction")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"{row.where('instruction')}: expected a non-empty string, got {prompt!r:.40}")
    completions = row.values.get("completions")
    if not isinstance(completions, list) or not all(isinstance(c, dict) for c in completions):
        raise DataError(f"{row.where('completions')}: expected a list of completions, each a mapping with a "
                        f"'response' and a rating such as 'overall_score'; got {type(completions).__name__}")
    key = next((k for k in ULTRAFEEDBACK_SCORES if any(k in c for c in completions)), "annotations")
    responses, scores = [], []
    for i, completion in enumerate(completions):
        text = completion.get("response")
        if text is not None and not isinstance(text, str):
            raise DataError(f"{row.where(f'completions[{i}].response')}: expected a string, got {type(text).__name__}")
        if key == "annotations":
            score = _annotation_mean(row, i, completion)
        else:
            value = completion.get(key)
            nan = isinstance(value, float) and math.isnan(value)  # a missing rating, as pandas writes it
            score = None if nan else _number(row, f"completions[{i}].{key}", value)
        responses.append(text or "")
        scores.append(score if (text or "").strip() else None)
    return prompt, responses, scores, key


def _parse(row: Row) -> tuple[Any, list[str], list[Optional[float]], str, list]:
    """(prompt, responses, scores with higher = better, "score" or "rank", the values given) of one row."""
    if is_ultrafeedback(row.values):
        prompt, responses, scores, _ = ultrafeedback_responses(row)
        return prompt, responses, scores, "score", scores
    responses, scores = row_scores(row)
    name = "score" if "scores" in row.values else "rank"
    return row.values["prompt"], responses, scores, name, row.values[f"{name}s"]


def build_pairs(rows: list[Row], *, strategy: str = "best-vs-worst", min_margin: float = 0.0,
                embed: Optional[Callable] = None, score_window: float = SCORE_WINDOW) -> tuple[list[dict], PairStats]:
    """DPO rows {prompt, chosen, rejected, score_/rank_chosen, score_/rank_rejected} and the stats of every row.
    The diverse strategy embeds responses with `embed(texts) -> [N, D]` unless a row has an `embeddings` column."""
    if min_margin < 0:
        raise DataError(f"--min-margin must be at least 0, got {min_margin}")
    if not 0 <= score_window < 1:
        raise DataError(f"--score-window must be in [0, 1), got {score_window}")
    parsed = [_parse(row) for row in rows]
    vectors = (embeddings_for_rows(rows, [p[1] for p in parsed], embed) if strategy == "diverse"
               else [None] * len(rows))
    out, total = [], PairStats()
    for (prompt, responses, scores, name, given), embeddings in zip(parsed, vectors):
        pairs, stats = rank_pairs(responses, scores, strategy=strategy, min_margin=min_margin, embeddings=embeddings,
                                  score_window=score_window)
        total.add(stats)
        for chosen, rejected in pairs:
            out.append({"prompt": prompt, "chosen": responses[chosen], "rejected": responses[rejected],
                        f"{name}_chosen": given[chosen], f"{name}_rejected": given[rejected]})
    return out, total


def pairs_command(source: str, out: str, *, strategy: str = "best-vs-worst", min_margin: float = 0.0,
                  rescore: Optional[Callable[[list[Row]], list[Row]]] = None, embed: Optional[Callable] = None,
                  score_window: float = SCORE_WINDOW) -> PairStats:
    """`alignlab pairs IN OUT`: read ranked rows, write a JSONL DPO dataset, print the report. `rescore`
    gives the rows new `scores` first (`--judge`: an LLM judge's, `alignlab.scoring.judge_reward.judged_rows`);
    `embed` and `score_window`: the diverse strategy's (`--embedding-model`, `--score-window`)."""
    rows = read_rows(source)
    if rescore is not None:
        rows = rescore(rows)
    pairs, stats = build_pairs(rows, strategy=strategy, min_margin=min_margin, embed=embed, score_window=score_window)
    if not pairs:
        raise DataError(f"{source}: no pairs could be built ({stats.report()})")
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
    print(stats.report())
    print(f"wrote {len(pairs)} pairs ({strategy}) to {path}")
    return stats
