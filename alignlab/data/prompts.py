"""Prompt datasets for GRPO and evaluation: a `prompt` (string or messages) plus any other columns.

Other columns travel with the prompt and reach reward functions by name (e.g. `answer`).
GSM8K rows (`question` / `answer` with the gold number after `#### `) are recognised and mapped to
`prompt` / `answer` (commas stripped: `#### 1,234` -> "1234"); the full solution stays as `solution`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

from alignlab.data.io import Row, check_readable, read_rows, rename_columns, split_eval
from alignlab.data.mixture import is_mixture, load_mixture
from alignlab.data.sft import check_messages, check_text
from alignlab.errors import DataError
from alignlab.rewards.builtin import extract_gsm8k_answer

GSM8K_INSTRUCTION = "Solve the problem step by step, then give the final number on the last line as <answer>NUMBER</answer>."


@dataclass
class PromptItem:
    prompt: Union[str, list[dict]]
    columns: dict[str, Any] = field(default_factory=dict)  # everything else in the row, for rewards
    where: str = ""
    group: str = ""  # the data mixture source it came from (alignlab.data.mixture)


def is_gsm8k(row: Row) -> bool:
    answer = row.values.get("answer")
    return "prompt" not in row.values and "question" in row.values and isinstance(answer, str) and "####" in answer


def prompt_item(row: Row, *, gsm8k_instruction: str = GSM8K_INSTRUCTION) -> PromptItem:
    check_readable(row)
    values = dict(row.values)
    if is_gsm8k(row):
        try:
            gold = extract_gsm8k_answer(values["answer"])
        except ValueError as exc:
            raise DataError(f"{row.where('answer')}: {exc}") from None
        prompt = f"{check_text(row, 'question').strip()}\n{gsm8k_instruction}"
        values.pop("question")
        values["solution"] = values.pop("answer")
        return PromptItem(prompt, {**values, "answer": gold}, row.where())
    if "prompt" not in values:
        raise DataError(
            f"{row.where()}: missing column 'prompt'; columns found: {', '.join(sorted(values))}. "
            "Map yours with data.columns.prompt=<your column>."
        )
    raw = values.pop("prompt")
    prompt = check_messages(row, "prompt", need_assistant=False) if isinstance(raw, list) else check_text(row, "prompt")
    values.pop("completion", None)  # an SFT-style file works as a prompt set; the completion is not shown
    return PromptItem(prompt, values, row.where())


def load_prompt_items(source: str, *, split: str = "train", columns=None, max_rows=None, skip_bad_rows=False):
    rows = rename_columns(read_rows(source, split=split, max_rows=max_rows, skip_bad_rows=skip_bad_rows), columns or {})
    items, skipped = [], 0
    for row in rows:
        try:
            items.append(prompt_item(row))
        except DataError:
            if not skip_bad_rows:
                raise
            skipped += 1
    if not items:
        raise DataError(f"{source}: no usable prompts ({skipped} bad rows skipped)")
    return items, skipped


def load_prompt_data(config) -> tuple[list[PromptItem], list[PromptItem]]:
    data = config.data
    if not data.train:
        raise DataError("no training prompts: set data.train to a prompt file (.jsonl/.json/.parquet/.csv) or dataset id")
    if is_mixture(data.train):  # a weighted list of prompt sources (alignlab.data.mixture)
        def read(source, split, columns):
            return load_prompt_items(source, split=split, columns=columns, max_rows=data.max_rows,
                                     skip_bad_rows=data.skip_bad_rows)[0]

        return load_mixture(config, read, lambda items: items)
    options = dict(columns=data.columns, skip_bad_rows=data.skip_bad_rows)
    train, _ = load_prompt_items(data.train, split=data.split, max_rows=data.max_rows, **options)
    if data.eval:
        evaluation, _ = load_prompt_items(data.eval, split=data.eval_split or "test", **options)
    else:
        train, evaluation = split_eval(train, data.eval_fraction, config.train.seed)
    return train, evaluation
