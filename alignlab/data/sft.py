"""SFT data: rows of `prompt`/`completion` strings or `messages` lists -> token ids and loss masks.

A `messages` row becomes examples as `data.multi_turn` says (alignlab.data.templates.encode_conversation):
`all_turns` one sequence with every assistant turn trained; `per_turn` one example per assistant turn, its
history as context, rendered as the template renders it when that turn is the last; `last_turn` only the
last one. `auto` (default) is per_turn for templates that rewrite history (Qwen3, R1-Distill: earlier turns
lose their reasoning, so one sequence cannot show each turn as the model generated it) and all_turns for the
others. With per_turn each example is a sequence like any other: `train.batch_size` counts them, a data
mixture's weights draw them, and the eval set is encoded the same way, so eval loss is the mean NLL over the
same trained tokens as the training loss. Every assistant token is trained once in either mode, after the same
context where the template keeps history, and both losses are means over trained tokens: there per_turn's eval
loss equals all_turns' (steps see different mixes of turns), at the cost of computing the history once per turn.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from alignlab.data.io import Row, check_readable, read_rows, rename_columns, split_eval
from alignlab.data.mixture import is_mixture, load_mixture
from alignlab.data.templates import Templater, encode_conversation, fit_length, resolve_multi_turn
from alignlab.errors import DataError

log = logging.getLogger("alignlab")

ROLES = {"system", "user", "assistant", "tool"}


@dataclass
class SFTExample:
    input_ids: list[int]
    loss_mask: list[int]  # 1 where the token is trained (completion / assistant turns)
    group: str = ""  # the data mixture source it came from (alignlab.data.mixture)


def check_text(row: Row, name: str) -> str:
    value = row.values.get(name)
    if not isinstance(value, str):
        raise DataError(f"{row.where(name)}: expected a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{row.where(name)}: is empty")
    return value


def check_messages(row: Row, name: str, *, need_assistant: bool = True) -> list[dict]:
    value = row.values.get(name)
    if not isinstance(value, list) or not value:
        raise DataError(f"{row.where(name)}: expected a non-empty list of messages, got {type(value).__name__}")
    for turn, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise DataError(f"{row.where(name)}: message {turn} needs a string 'content'")
        if not isinstance(message.get("role"), str) or message["role"] not in ROLES:  # a list role is unhashable
            raise DataError(f"{row.where(name)}: message {turn} has role {message.get('role')!r}; use one of {sorted(ROLES)}")
    if need_assistant and not any(m["role"] == "assistant" and m["content"].strip() for m in value):
        raise DataError(f"{row.where(name)}: no non-empty assistant message to train on")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def check_tools(row: Row) -> list[dict] | None:
    """A row's `tools`: JSON schemas (transformers' get_json_schema format) the chat template lists."""
    value = row.values.get("tools")
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(t, dict) and ("function" in t or "name" in t) for t in value):
        raise DataError(f"{row.where('tools')}: expected a list of tool JSON schemas "
                        '({"type": "function", "function": {"name": ..., "parameters": ...}})')
    return value


def encode_sft_row(row: Row, templater: Templater) -> tuple[list[int], list[int]]:
    """One row as one sequence (ids, mask): a prompt/completion, or a conversation with all assistant turns."""
    return encode_sft_examples(row, templater, "all_turns")[0]


def encode_sft_examples(row: Row, templater: Templater, multi_turn: str) -> list[tuple[list[int], list[int]]]:
    """A row's examples [(ids, mask)]; `multi_turn`: data.multi_turn, resolved (not auto)."""
    try:
        return _encode_sft_row(row, templater, multi_turn)
    except DataError as exc:
        message = str(exc)
        raise (exc if message.startswith(row.source) else DataError(f"{row.where()}: {message}")) from None


def _encode_sft_row(row: Row, templater: Templater, multi_turn: str) -> list[tuple[list[int], list[int]]]:
    check_readable(row)
    if "messages" in row.values:
        return encode_conversation(templater, check_messages(row, "messages"), check_tools(row), mode=multi_turn)
    if "prompt" not in row.values or "completion" not in row.values:
        found = ", ".join(sorted(row.values))
        raise DataError(
            f"{row.where()}: SFT rows need 'prompt' and 'completion', or 'messages'; columns found: {found}. "
            "Map yours with data.columns.prompt=<column> data.columns.completion=<column>."
        )
    raw_prompt = row.values["prompt"]
    prompt = check_messages(row, "prompt", need_assistant=False) if isinstance(raw_prompt, list) else check_text(row, "prompt")
    completion = check_text(row, "completion")
    prompt_ids, response_ids = templater.encode(prompt, completion)
    return [(prompt_ids + response_ids, [0] * len(prompt_ids) + [1] * len(response_ids))]


def encode_sft_rows(rows: list[Row], templater: Templater, *, max_length: int, on_long: str, skip_bad_rows: bool,
                    multi_turn: str = "all_turns"):
    stats = templater.stats
    dropped_before = stats.dropped_long  # the stats also count other sets (train, then eval)
    examples, used_rows = [], 0
    for row in rows:
        try:
            encoded = encode_sft_examples(row, templater, multi_turn)
        except DataError:
            if not skip_bad_rows:
                raise
            stats.skipped_bad += 1
            continue
        kept = 0
        for number, (ids, mask) in enumerate(encoded, start=1):
            where = row.where() + (f" (example {number} of {len(encoded)}, data.multi_turn={multi_turn})"
                                   if len(encoded) > 1 else "")
            example = _fit(where, ids, mask, stats, max_length, on_long, templater.tokenizer.bos_token_id)
            if example is not None:
                examples.append(example)
                kept += 1
        used_rows += kept > 0
    stats.examples, stats.rows = len(examples), used_rows
    if stats.dropped_long > dropped_before:
        unit = "rows" if multi_turn == "all_turns" else "examples"  # per_turn: one per assistant turn
        log.warning("dropped %d %s longer than train.max_length=%d", stats.dropped_long - dropped_before, unit,
                    max_length)
    if not examples:
        raise DataError(f"no usable SFT examples ({stats.summary()})")
    return examples


def _fit(where: str, ids: list[int], mask: list[int], stats, max_length: int, on_long: str, bos_id):
    """The example within train.max_length as data.on_long says, or None when it is dropped."""
    if len(ids) > max_length:
        if on_long == "error":
            raise DataError(f"{where}: {len(ids)} tokens, longer than train.max_length={max_length}")
        if on_long == "drop":
            stats.dropped_long += 1
            return None
        prompt_len = mask.index(1) if 1 in mask else len(mask)
        p, r, _ = fit_length(ids[:prompt_len], ids[prompt_len:], max_length, bos_id=bos_id)
        ids, mask = p + r, [0] * len(p) + mask[prompt_len:][: len(r)]
        stats.truncated += 1
    if sum(mask) == 0:
        stats.dropped_long += 1
        return None
    return SFTExample(ids, mask)


def load_sft_data(config, templater: Templater) -> tuple[list[SFTExample], list[SFTExample]]:
    data, train = config.data, config.train
    if not data.train:
        raise DataError("no training data: set data.train to a .jsonl/.json/.parquet/.csv file or a dataset id")
    multi_turn = resolve_multi_turn(templater, data.multi_turn)
    if data.multi_turn == "auto" and multi_turn == "per_turn":
        log.info("data.multi_turn=auto: per_turn (the chat template rewrites earlier turns, e.g. drops their "
                 "reasoning): a conversation gives one example per assistant turn")
    options = dict(max_length=train.max_length, on_long=data.on_long, skip_bad_rows=data.skip_bad_rows,
                   multi_turn=multi_turn)
    if is_mixture(data.train):  # a weighted list of sources (alignlab.data.mixture)
        read = lambda source, split, columns: rename_columns(  # noqa: E731
            read_rows(source, split=split, max_rows=data.max_rows, skip_bad_rows=data.skip_bad_rows), columns)
        train_examples, eval_examples = load_mixture(config, read, lambda rows: encode_sft_rows(rows, templater, **options))
        log.info("SFT data: %s", templater.stats.summary())
        return train_examples, eval_examples
    skip = data.skip_bad_rows
    rows = rename_columns(read_rows(data.train, split=data.split, max_rows=data.max_rows, skip_bad_rows=skip), data.columns)
    if data.eval:
        eval_rows = rename_columns(read_rows(data.eval, split=data.eval_split or data.split, skip_bad_rows=skip),
                                   data.columns)
    else:
        rows, eval_rows = split_eval(rows, data.eval_fraction, train.seed)
    train_examples = encode_sft_rows(rows, templater, **options)
    summary = templater.stats.summary()
    eval_examples = encode_sft_rows(eval_rows, templater, **options) if eval_rows else []
    log.info("SFT data: %s", summary)
    return train_examples, eval_examples
