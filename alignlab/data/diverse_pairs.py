"""`alignlab pairs --strategy diverse`: seed 002's embedding-diversity pair selection, defined here.

The idea: among a prompt's responses, choose a high-scoring response that says something the others do not
(far from them in embedding space), and reject a low-scoring response that says what most of them say (close
to the mode). DPO then pushes towards good answers that are unusual and away from bad answers that are
typical, rather than only towards the best answer, which tends to narrow what a model writes.

Precisely, for one prompt with responses 1..m, scores s_i (higher is better: scores, negated ranks, a judge's
or a reward model's; a null score leaves the response out) and embeddings e_i:

1. distance d_i = mean over the other scored responses j of 1 - cos(e_i, e_j). The response with the smallest
   d is the group's medoid, its most typical answer: "close to the mode" means a small d.
2. score level l_i = (s_i - min s) / (max s - min s), in [0, 1] (responses all tied give no pair, as in
   every strategy).
3. chosen = the response with the largest d among those with l_i >= 1 - w ("high-scoring");
   rejected = the response with the smallest d among those with l_j <= w and s_j < s_chosen ("low-scoring").
   Ties in d go to the higher-scored chosen and the lower-scored rejected, then to the first in the row.

The knob is w, the score window (`--score-window`, default 0.25): how far below the best score a response may
be and still be chosen (and above the worst and still be rejected), as a share of the prompt's score range.
w = 0 is best-vs-worst (quality), with ties among equal best or worst scores broken by distance; a larger w
trades score for diversity. Pairs may then be dropped like any other pair (--min-margin, identical texts).
Embeddings come from an `embeddings` column (one vector per response) or from `--embedding-model`
(`alignlab.scoring.embeddings`: a sentence-transformers model, or a language model's hidden states).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional, Sequence

from alignlab.data.io import Row
from alignlab.errors import DataError

if TYPE_CHECKING:  # torch is imported when a diverse pair is made: `alignlab pairs` stays light otherwise
    import torch

SCORE_WINDOW = 0.25


def diverse_pair(scores: Sequence[Optional[float]], embeddings, *,
                 score_window: float = SCORE_WINDOW) -> Optional[tuple[int, int]]:
    """(chosen index, rejected index) by the rule in the module docstring; None when fewer than two scored
    responses or all scores are equal. `embeddings`: [m, D], one row per response (rows of unscored ones unused).

    >>> vectors = [[1, 0], [1, 0.1], [0, 1], [1, -0.1], [0.9, 0.1]]  # response 2 points elsewhere
    >>> diverse_pair([5, 4.5, 4.6, 1, 1.2], vectors)  # 2 is the far good one; 4 (0.2 above the worst) the typical bad
    (2, 4)
    >>> diverse_pair([5, 4.5, 4.6, 1, 1.2], vectors, score_window=0)  # best vs worst
    (0, 3)
    """
    import torch

    from alignlab.data.diversity import mean_distance_to_others

    if not 0 <= score_window < 1:
        raise DataError(f"--score-window must be in [0, 1), got {score_window}")
    scored = [i for i, s in enumerate(scores) if s is not None]
    if len(scored) < 2 or len({scores[i] for i in scored}) < 2:
        return None
    vectors = torch.as_tensor(embeddings, dtype=torch.float64)[scored]  # [n, D]
    distance = dict(zip(scored, mean_distance_to_others(vectors).tolist()))
    low, high = min(scores[i] for i in scored), max(scores[i] for i in scored)
    level = {i: (scores[i] - low) / (high - low) for i in scored}
    chosen = max((i for i in scored if level[i] >= 1 - score_window), key=lambda i: (distance[i], scores[i], -i))
    # Not empty: the worst response has level 0 <= w and scores below every response of level >= 1 - w > 0.
    rejected = min((j for j in scored if level[j] <= score_window and scores[j] < scores[chosen]),
                   key=lambda j: (distance[j], scores[j], j))
    return chosen, rejected


def row_embeddings(row: Row, count: int) -> Optional[torch.Tensor]:
    """A row's `embeddings` column as [count, D] (one finite vector per response, all of one length); None if absent."""
    import torch

    given = row.values.get("embeddings")
    if given is None:
        return None
    if not isinstance(given, list) or len(given) != count:
        got = f"{len(given)} vectors" if isinstance(given, list) else type(given).__name__
        raise DataError(f"{row.where('embeddings')}: expected one vector per response ({count}), got {got}")
    width = None
    for i, vector in enumerate(given):
        ok = isinstance(vector, list) and vector and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in vector)
        if not ok or (width is not None and len(vector) != width):
            raise DataError(f"{row.where(f'embeddings[{i}]')}: expected a list of numbers"
                            + (f" of length {width} like the first" if width is not None else ""))
        width = len(vector)
    tensor = torch.tensor(given, dtype=torch.float64)  # [count, D]
    if not torch.isfinite(tensor).all():
        raise DataError(f"{row.where('embeddings')}: not every number is finite")
    return tensor


def embeddings_for_rows(rows: list[Row], responses: list[list[str]],
                        embed: Optional[Callable[[list[str]], torch.Tensor]]) -> list[torch.Tensor]:
    """Each row's response embeddings: its `embeddings` column, else `embed` (called once, on every text still
    needed); a DataError naming the first row that has neither."""
    given = [row_embeddings(row, len(texts)) for row, texts in zip(rows, responses)]
    missing = [k for k, vectors in enumerate(given) if vectors is None]
    if missing and embed is None:
        raise DataError(f"{rows[missing[0]].where()}: --strategy diverse needs the responses' embeddings: pass "
                        "--embedding-model MODEL (a sentence-transformers model, or a language model's hidden states) "
                        "or give an 'embeddings' column")
    if missing:
        flat = embed([text for k in missing for text in responses[k]])  # [sum m, D]
        start = 0
        for k in missing:
            given[k] = flat[start:start + len(responses[k])]
            start += len(responses[k])
    return given
