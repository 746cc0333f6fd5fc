"""Preference pairs -> token ids, with the documented truncation policy.

Truncation (`train.max_length` bounds prompt + the longer response):
1. cut the prompt from the left, keeping at least 8 tokens of it (the most recent turns matter most)
   and a leading BOS;
2. then cut both responses from the right to the room left.
`data.on_long=drop` (default) drops such pairs instead, `error` fails naming the row. Counts are reported.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Optional

from alignlab.data.templates import Templater, fit_length
from alignlab.errors import DataError

log = logging.getLogger("alignlab")


@dataclass
class EncodedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    source: str = ""
    group: str = ""  # the data mixture source it came from (alignlab.data.mixture), for per-source metrics
    margin: Optional[float] = None  # the row's margin column (reward models, alignlab.losses.rm)


def encode_pairs(examples, templater: Templater, *, max_length: int, on_long: str) -> list[EncodedPair]:
    stats = templater.stats
    dropped_before = stats.dropped_long  # the stats also count other sets (train, then eval)
    encoded = []
    for number, example in enumerate(examples, start=1):
        try:
            prompt_ids, chosen_ids = templater.encode(example.prompt, example.chosen)
            prompt_again, rejected_ids = templater.encode(example.prompt, example.rejected)
        except DataError as exc:  # the chat template rejected the messages: name the row
            raise DataError(f"{example.source or f'pair {number}'}: {exc}") from None
        assert prompt_again == prompt_ids  # the prompt renders the same for both responses
        longest = len(prompt_ids) + max(len(chosen_ids), len(rejected_ids))
        if longest > max_length:
            if on_long == "error":
                raise DataError(
                    f"{example.source or f'pair {number}'}: {longest} tokens, longer than train.max_length={max_length} "
                    "(set data.on_long=truncate or drop)"
                )
            if on_long == "drop":
                stats.dropped_long += 1
                continue
            response_len = max(len(chosen_ids), len(rejected_ids))
            kept_prompt, _, _ = fit_length(prompt_ids, [0] * response_len, max_length,
                                           bos_id=templater.tokenizer.bos_token_id)
            room = max_length - len(kept_prompt)
            prompt_ids, chosen_ids, rejected_ids = kept_prompt, chosen_ids[:room], rejected_ids[:room]
            stats.truncated += 1
        if chosen_ids == rejected_ids:
            stats.skipped_bad += 1  # identical after truncation: no preference signal left
            continue
        encoded.append(EncodedPair(prompt_ids, chosen_ids, rejected_ids, getattr(example, "source", ""),
                                   margin=getattr(example, "margin", None)))
    stats.examples = len(encoded)
    if stats.dropped_long > dropped_before:
        log.warning("dropped %d pairs longer than train.max_length=%d (data.on_long=truncate keeps them)",
                    stats.dropped_long - dropped_before, max_length)
    if not encoded:
        raise DataError(f"no usable preference pairs ({stats.summary()})")
    return encoded


def pairs_fingerprint(pairs: list[EncodedPair]) -> str:
    """Hash of the exact token ids: the tokenisation part of the reference-log-prob cache key."""
    digest = hashlib.sha256()
    for pair in pairs:
        for ids in (pair.prompt_ids, pair.chosen_ids, pair.rejected_ids):
            digest.update(len(ids).to_bytes(4, "little"))
            digest.update(b"".join(i.to_bytes(4, "little") for i in ids))
    return digest.hexdigest()
