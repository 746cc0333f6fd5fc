"""Prompt datasets for GRPO and evaluation: a `prompt` (string or messages) plus any other columns.

Other columns travel with the prompt and reach reward functions by name (e.g. `answer`).
Public layouts are recognised from their columns (`alignlab.data.public_formats`, or named with
`data.format`): GSM8K rows (`question` / `answer` with the gold number after `#### `) become
`prompt` / `answer` (commas stripped: `#### 1,234` -> "1234"), the full solution kept as `solution`;
MATH-style rows (`problem` + `solution`, `problem` + `answer`, NuminaMath `messages`) become
`prompt` = the problem and `answer` = the content of the solution's last `\\boxed{...}`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

from alignlab.data.io import Row, check_readable, read_rows, rename_columns, split_eval
from alignlab.data.mixture import is_mixture, load_mixture
from alignlab.data.public_formats import (FORMATS, GSM8K_INSTRUCTION, Format, LoadReport, choose_format, detect,
                                          no_format_error, source_label)
from alignlab.data.sft import check_messages, check_text
from alignlab.errors import DataError

__all__ = ["GSM8K_INSTRUCTION", "PromptItem", "is_gsm8k", "load_prompt_data", "load_prompt_items", "prompt_item"]


@dataclass
class PromptItem:
    prompt: Union[str, list[dict]]
    columns: dict[str, Any] = field(default_factory=dict)  # everything else in the row, for rewards
    where: str = ""
    group: str = ""  # the data mixture source it came from (alignlab.data.mixture)
    completion: Any = None  # an SFT-style row's `completion`: never shown to rewards; distillation's off-policy batches


def is_gsm8k(row: Row) -> bool:
    return detect(row.values, "prompt") is FORMATS["gsm8k"]


def prompt_item(row: Row, *, fmt: Optional[Format] = None) -> PromptItem:
    """One row -> PromptItem, in `fmt` (a prompt format of `alignlab.data.public_formats`), or in the format
    its columns show."""
    check_readable(row)
    fmt = fmt or detect(row.values, "prompt") or FORMATS["prompt"]
    if fmt.read is not None:
        prompt, columns = fmt.read(row)
        return PromptItem(prompt, columns, row.where())
    values = dict(row.values)
    if "prompt" not in values:
        raise no_format_error(row, "prompt", "prompt")
    raw = values.pop("prompt")
    prompt = check_messages(row, "prompt", need_assistant=False) if isinstance(raw, list) else check_text(row, "prompt")
    completion = values.pop("completion", None)  # an SFT-style file works as a prompt set; the completion is not shown
    return PromptItem(prompt, values, row.where(), completion=completion)


def load_prompt_items(source: str, *, split: str = "train", columns=None, max_rows=None, skip_bad_rows=False,
                      format: str = "auto", label: str = ""):
    """(items, bad rows skipped) of one source; its format detected once (or `format`) and logged."""
    rows = rename_columns(read_rows(source, split=split, max_rows=max_rows, skip_bad_rows=skip_bad_rows), columns or {})
    fmt, forced = choose_format(rows, "prompt", format, skip_bad_rows=skip_bad_rows, missing=lambda values: "prompt")
    report = LoadReport(fmt or FORMATS["prompt"], label or source, rows=len(rows), forced=forced)
    items = []
    for row in rows:
        try:
            items.append(prompt_item(row, fmt=report.format))
        except DataError:
            if not skip_bad_rows:
                raise
            report.skipped += 1
    report.examples = len(items)
    report.log()
    if not items:
        raise DataError(f"{source}: no usable prompts ({report.skipped} bad rows skipped)")
    return items, report.skipped


def load_prompt_data(config) -> tuple[list[PromptItem], list[PromptItem]]:
    data = config.data
    if not data.train:
        raise DataError("no training prompts: set data.train to a prompt file (.jsonl/.json/.parquet/.csv) or dataset id")
    if is_mixture(data.train):  # a weighted list of prompt sources (alignlab.data.mixture)
        def read(source, split, columns):
            return load_prompt_items(source, split=split, columns=columns, max_rows=data.max_rows,
                                     skip_bad_rows=data.skip_bad_rows, format=data.format,
                                     label=source_label(data, source))[0]

        return load_mixture(config, read, lambda items: items)
    options = dict(columns=data.columns, skip_bad_rows=data.skip_bad_rows, format=data.format)
    train, _ = load_prompt_items(data.train, split=data.split, max_rows=data.max_rows,
                                 label=source_label(data, data.train), **options)
    if data.eval:
        evaluation, _ = load_prompt_items(data.eval, split=data.eval_split or "test",
                                          label=source_label(data, data.eval), **options)
    else:
        train, evaluation = split_eval(train, data.eval_fraction, config.train.seed)
    return train, evaluation


def reward_columns(items: list[PromptItem], repeat: int) -> dict[str, list]:
    """What reward functions get beside the completions, one value per completion (each item `repeat` times):
    every column of the items by name, and `prompts` (TRL's name; reward models score prompt + completion)."""
    names = sorted({k for item in items for k in item.columns})
    columns = {n: [item.columns.get(n) for item in items for _ in range(repeat)] for n in names}
    columns["prompts"] = [item.prompt for item in items for _ in range(repeat)]
    return columns
