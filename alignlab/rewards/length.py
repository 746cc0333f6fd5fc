"""The soft over-length penalty reward (DAPO), registered with the built-ins of `alignlab.rewards.builtin`."""

from __future__ import annotations

import math
from typing import Any

from alignlab.rewards.builtin import _aligned, _builtin, _text


@_builtin("length_penalty", -1.0, 0.0)
def length_penalty(
    completions: list,
    max_length: Any = None,
    cache_length: Any = None,
    completion_lengths: list | None = None,
    max_completion_length: Any = None,
    **_: Any,
) -> list[float | None]:
    """Soft over-length penalty (DAPO, Yu et al. 2025). Range: [-1, 0].

    With ``L`` the completion length: 0 while ``L <= max_length - cache_length``,
    falling linearly to -1 at ``L == max_length``, and -1 beyond. Length is counted
    in characters unless a ``completion_lengths`` column (e.g. token counts) is
    given; a ``None`` entry in it falls back to characters. ``max_length`` and
    ``cache_length`` may be numbers or per-row columns. Defaults: ``max_length`` is the
    ``max_completion_length`` column when given (GRPO passes grpo.max_completion_length
    with token counts in ``completion_lengths``), else 512; ``cache_length`` is a quarter
    of ``max_length``. Raises ``ValueError`` if ``max_length <= 0`` or ``cache_length``
    is outside ``[0, max_length]``.

    >>> length_penalty(["a" * 10, "a" * 14, "a" * 16, "a" * 30, ""], max_length=16, cache_length=4)
    [0.0, -0.5, -1.0, -1.0, 0.0]
    >>> length_penalty(["short", "short"], max_length=100, cache_length=50, completion_lengths=[75, None])
    [-0.5, 0.0]
    >>> length_penalty(["a" * 17], max_length=16, cache_length=0)
    [-1.0]
    >>> length_penalty(["x", "y"], completion_lengths=[6, 8], max_completion_length=[8, 8])  # GRPO's columns
    [0.0, -1.0]
    """
    n = len(completions)
    if max_length is None:
        max_length = max_completion_length if max_completion_length is not None else 512
    maxes = _aligned("max_length", max_length, n)
    if cache_length is None:  # a quarter of each max_length (bad ones are reported by the check below)
        caches = [m / 4 if isinstance(m, (int, float)) and not isinstance(m, bool) else 0 for m in maxes]
    else:
        caches = _aligned("cache_length", cache_length, n)
    lengths = _aligned("completion_lengths", completion_lengths, n)
    scores: list[float | None] = []
    for completion, max_len, cache, length in zip(completions, maxes, caches, lengths, strict=True):
        _check_length_params(max_len, cache)
        if length is None:
            length = len(_text(completion))
        elif isinstance(length, bool) or not isinstance(length, (int, float)) or length != length:
            raise ValueError(f"completion_lengths entries must be numbers, got {length!r}")
        soft_limit = max_len - cache
        if length <= soft_limit:
            scores.append(0.0)
        elif length >= max_len:
            scores.append(-1.0)
        else:
            scores.append(max(-1.0, min(0.0, float(soft_limit - length) / float(cache))))
    return scores


def _check_length_params(max_len: Any, cache: Any) -> None:
    for label, value in (("max_length", max_len), ("cache_length", cache)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{label} must be a finite number, got {value!r}")
    if max_len <= 0:
        raise ValueError(f"max_length must be positive, got {max_len!r}")
    if not 0 <= cache <= max_len:
        raise ValueError(f"cache_length must be between 0 and max_length ({max_len!r}), got {cache!r}")
