"""Diversity of sampled responses: N responses to the same prompt -> how different they are from each other.

Every metric is computed over one prompt's N responses, then averaged over prompts (a prompt where a metric is
undefined, such as distinct-2 of one-word responses, is left out of that metric's average):

- `distinct_1`, `distinct_2` (Li et al. 2016, "A Diversity-Promoting Objective Function"): distinct n-grams / all
  n-grams, counted over the N responses together (n-grams never span two responses). Words are sacrebleu's 13a
  tokens (BLEU's own: punctuation split off), case kept. Higher = more diverse.
- `self_bleu` (Zhu et al. 2018, Texygen): each response's sentence BLEU against the other N - 1 as references,
  averaged over the N; sacrebleu's `sentence_bleu` with its defaults (13a, exp smoothing, effective order), on
  [0, 1] (sacrebleu's score / 100). Lower = more diverse.
- `embedding`: mean pairwise cosine distance, 1 - cos(e_i, e_j) averaged over the N(N-1)/2 pairs of the responses'
  embeddings (which model embeds them is the caller's choice: `alignlab.scoring.embeddings`). 0 = all alike.
- `distinct_answers`: how many different final answers the N responses give (`final_answer`); 1 = all agree.

Pure functions of texts and vectors: no model here. Keys as reported: `diversity/<name>`.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable, Optional, Sequence

import torch

METRICS = ("distinct_1", "distinct_2", "self_bleu", "embedding", "distinct_answers")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


@lru_cache(maxsize=1)
def _tokenizer():
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()


def words(text: str) -> list[str]:
    """BLEU's 13a tokens of a text.

    >>> words("Hello, world! It's 3.5 (ok).")
    ['Hello', ',', 'world', '!', "It's", '3.5', '(', 'ok', ')', '.']
    """
    return _tokenizer()(text.strip()).split()


def distinct_n(texts: Sequence[str], n: int) -> Optional[float]:
    """Distinct n-grams over all n-grams of the texts together; None when they have no n-gram.

    >>> distinct_n(["the cat sat", "the cat ran"], 1), distinct_n(["the cat sat", "the cat ran"], 2)
    (0.6666666666666666, 0.75)
    """
    grams = [tuple(tokens[i:i + n]) for tokens in map(words, texts) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def self_bleu(texts: Sequence[str]) -> Optional[float]:
    """Mean sentence BLEU (0-1) of each text against all the others; None for fewer than two texts. An empty
    text (no words) scores 1 when another is empty too, a repeat as BLEU scores any other (sacrebleu gives 0).

    >>> round(self_bleu(["a b c d", "a b c e"]), 4), self_bleu(["", "", "x"])
    (0.5946, 0.6666666666666666)
    """
    import sacrebleu

    if len(texts) < 2:
        return None
    empty = [not words(text) for text in texts]
    scores = [float(sum(empty) > 1) if empty[i] else
              sacrebleu.sentence_bleu(text, [other for j, other in enumerate(texts) if j != i]).score / 100
              for i, text in enumerate(texts)]
    return sum(scores) / len(scores)


def cosine_distances(vectors: torch.Tensor) -> torch.Tensor:
    """[N, N] float64 matrix of 1 - cos(v_i, v_j); a zero vector is at distance 1 from everything."""
    unit = torch.nn.functional.normalize(vectors.double(), dim=-1)  # [N, D]
    return 1.0 - unit @ unit.T  # [N, N]


def mean_pairwise_distance(vectors: torch.Tensor) -> Optional[float]:
    """Mean of 1 - cos over the N(N-1)/2 pairs of rows of vectors [N, D]; None for fewer than two rows.

    >>> round(mean_pairwise_distance(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])), 6)
    0.528595
    """
    count = vectors.shape[0]
    if count < 2:
        return None
    upper = torch.triu_indices(count, count, offset=1)  # [2, N(N-1)/2]
    return float(cosine_distances(vectors)[upper[0], upper[1]].mean())


def mean_distance_to_others(vectors: torch.Tensor) -> torch.Tensor:
    """[N] float64: each row's mean cosine distance to the other rows (0 for a single row).
    The smallest is the medoid: the most typical response of the group."""
    count = vectors.shape[0]
    if count < 2:
        return torch.zeros(count, dtype=torch.float64)
    return cosine_distances(vectors).sum(1) / (count - 1)  # the diagonal is 0


def final_answer(text: str) -> str:
    """The answer a response ends with: the last `<answer>...</answer>`, else the last `\\boxed{...}`, else its
    last non-empty line; whitespace collapsed and a plain number written canonically (`1,000.0` -> `1000`).

    >>> [final_answer(t) for t in ["so <answer> 42 </answer>", "x = \\\\boxed{1,000.0}.", "Hi.\\n\\nThe end  "]]
    ['42', '1000', 'The end']
    """
    from alignlab.rewards.builtin import parse_number
    from alignlab.rewards.math_answers import last_boxed

    tags = _ANSWER_TAG.findall(text)
    boxed = last_boxed(text) if not tags else None
    lines = [line for line in text.splitlines() if line.strip()]
    answer = tags[-1] if tags else boxed if boxed is not None else (lines[-1] if lines else "")
    answer = " ".join(answer.split())
    number = parse_number(answer)
    return answer if number is None else format(number.normalize(), "f")


def distinct_answers(texts: Sequence[str]) -> int:
    """How many different final answers the texts give.

    >>> distinct_answers(["<answer>4</answer>", "<answer>4.0</answer>", "<answer>5</answer>"])
    2
    """
    return len({final_answer(text) for text in texts})


def group_diversity(texts: Sequence[str], embeddings: Optional[torch.Tensor] = None) -> dict[str, Optional[float]]:
    """Every metric of one prompt's responses (embeddings [N, D], one row per text, or None)."""
    return {"distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2), "self_bleu": self_bleu(texts),
            "embedding": mean_pairwise_distance(embeddings) if embeddings is not None else None,
            "distinct_answers": float(distinct_answers(texts))}


def diversity_metrics(groups: Sequence[Sequence[str]],
                      embed: Optional[Callable[[list[str]], torch.Tensor]] = None) -> dict[str, float]:
    """`diversity/<metric>` averaged over the groups (one group = one prompt's responses); `embed(texts)` -> [N, D]
    embeds all texts at once (None: no `diversity/embedding`). A metric undefined for every group is left out."""
    flat = [text for group in groups for text in group]
    vectors = embed(flat) if embed is not None and flat else None  # [sum N, D]
    per_group, start = [], 0
    for group in groups:
        rows = vectors[start:start + len(group)] if vectors is not None else None
        per_group.append(group_diversity(group, rows))
        start += len(group)
    out = {}
    for name in METRICS:
        values = [g[name] for g in per_group if g[name] is not None]
        if values:
            out[f"diversity/{name}"] = sum(values) / len(values)
    return out
