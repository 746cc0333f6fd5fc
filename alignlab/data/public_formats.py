r"""Public datasets in their published column layouts, recognised from their columns.

Preference sets (DPO, `alignlab eval data.pairs`), tried in this order, each line led by its `data.format` value:
- preference: chosen, rejected (prompt optional), as given (`alignlab.data.preference`);
- shp (Stanford SHP): history, human_ref_A/B, labels; labels = 1: A chosen, 0: B chosen;
- webgpt (WebGPT comparisons): question.full_text, answer_0/1, score_0/1; the higher score chosen, a tie dropped;
- ultrafeedback (raw UltraFeedback): instruction, completions[] with a response and ratings; best vs worst
  rating (`alignlab pairs`' best-vs-worst, ties never paired).

Prompt sets (GRPO, `alignlab eval data.prompts`, iterate), tried in this order:
- prompt: a prompt and any columns, as given (`alignlab.data.prompts`);
- gsm8k: question, answer ending `#### N`; gold N;
- math-answer (DeepScaleR, MATH-500): problem, answer; gold = the answer (a `\boxed{}` in it unwrapped);
- math (MATH, NuminaMath-CoT): problem, solution; gold = the last `\boxed{...}` of the solution;
- math-messages (NuminaMath chats): messages, user problem then assistant solution; gold as for math.

A source's format is detected once, from its first row that matches one (`data.format` names it
instead), and every row is then read as that format: a row that does not fit fails naming the file,
the row and the field. A row that matches no format fails listing the formats and the columns found.
Rows that carry no preference are dropped and counted by reason (`LoadReport.dropped`): WebGPT ties,
SHP pairs under `data.min_score_ratio`, UltraFeedback rows whose completions all tie.

Readers are pure: a row -> (pairs or a prompt, what was dropped). Nothing here tokenises.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

from alignlab.data.io import Row
from alignlab.data.ranked_pairs import (ALL_TIED, IDENTICAL, ONE_RESPONSE, TIE, UNSCORED, rank_pairs,
                                        ultrafeedback_responses)
from alignlab.data.sft import check_messages, check_text
from alignlab.errors import DataError
from alignlab.rewards.builtin import extract_boxed_answer, extract_gsm8k_answer

log = logging.getLogger("alignlab")

GSM8K_INSTRUCTION = "Solve the problem step by step, then give the final number on the last line as <answer>NUMBER</answer>."

Pair = tuple[Any, str, str]  # (prompt: str or messages, chosen text, rejected text)

TIES = "ties"
# What an UltraFeedback row that gives no pair is counted as (`alignlab pairs`' reasons, as load-report phrases).
_ULTRAFEEDBACK_DROPS = {ALL_TIED: "ties (rows whose completions all have the same rating)", TIE: TIES,
                        ONE_RESPONSE: "rows with fewer than 2 rated completions",
                        IDENTICAL: "pairs with identical chosen and rejected text",
                        UNSCORED: "completions without a rating or a response (left out)"}


@dataclass(frozen=True)
class Format:
    name: str  # the data.format value
    title: str  # as logged: "Stanford SHP"
    kind: str  # "preference" or "prompt"
    columns: tuple[str, ...]  # a row with all of them is in this format (first match in table order)
    layout: str  # the columns, as logged and listed in errors
    derived: str  # how chosen/rejected or the gold answer come about
    read: Optional[Callable] = None  # None: the loader's own format (prompt/chosen/rejected rows, prompt rows)
    matches: Optional[Callable[[dict], bool]] = None  # a check on values beyond the columns (GSM8K's ####)


@dataclass
class LoadReport:
    """What loading one source found: its format, bad rows skipped, rows dropped by reason."""

    format: Format
    label: str = ""
    rows: int = 0
    examples: int = 0
    skipped: int = 0
    dropped: Counter = field(default_factory=Counter)
    forced: bool = False

    def log(self) -> None:
        how = f"{self.format.title} format (data.format={self.format.name})" if self.forced else \
            f"detected {self.format.title} format ({self.format.layout})"
        counts = [f"{self.examples} examples from {self.rows} rows"]
        counts += [f"{self.skipped} bad rows skipped"] if self.skipped else []
        counts += [f"dropped {count} {reason}" for reason, count in self.dropped.items()]
        log.info("%s: %s: %s", self.label, how, ", ".join(counts))


# -- shared checks --------------------------------------------------------------------------------------------


def _need(row: Row, fmt: Format, name: str) -> Any:
    if name not in row.values:
        found = ", ".join(sorted(row.values)) or "(none)"
        raise DataError(f"{row.where(name)}: missing; {fmt.title} rows have {fmt.layout} (this source's format; "
                        f"set data.format to read it as another); columns found: {found}")
    return row.values[name]


def _columns(row: Row, name: str) -> Format:
    """The format `name`, after checking that the row has its columns."""
    fmt = FORMATS[name]
    for column in fmt.columns:
        _need(row, fmt, column)
    return fmt


def _number(row: Row, name: str) -> float:
    value = row.values.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{row.where(name)}: expected a finite number, got {value!r}")
    return float(value)


def _differ(row: Row, chosen: str, rejected: str, names: tuple[str, str]) -> None:
    if chosen.strip() == rejected.strip():
        raise DataError(f"{row.where(names[1])}: identical to {names[0]}; a preference pair needs two different responses")


# -- preference formats ---------------------------------------------------------------------------------------


def read_shp(row: Row, *, min_score_ratio: Optional[float] = None) -> tuple[list[Pair], Counter]:
    """Stanford SHP: the post `history`, two comments; `labels` = 1 when A (`human_ref_A`) is preferred."""
    fmt = _columns(row, "shp")
    label = row.values["labels"]
    if isinstance(label, bool) or label not in (0, 1):
        raise DataError(f"{row.where('labels')}: expected 1 (human_ref_A preferred) or 0 (human_ref_B), got {label!r}")
    if min_score_ratio is not None:
        _need(row, fmt, "score_ratio")
        if _number(row, "score_ratio") < min_score_ratio:
            return [], Counter({f"pairs with score_ratio below data.min_score_ratio={min_score_ratio:g}": 1})
    prompt = check_text(row, "history")
    names = ("human_ref_A", "human_ref_B") if label == 1 else ("human_ref_B", "human_ref_A")
    chosen, rejected = check_text(row, names[0]), check_text(row, names[1])
    _differ(row, chosen, rejected, names)
    return [(prompt, chosen, rejected)], Counter()


def read_webgpt(row: Row, **_) -> tuple[list[Pair], Counter]:
    """WebGPT comparisons: `question.full_text`, `answer_0`/`answer_1`; the higher of `score_0`/`score_1` is chosen."""
    _columns(row, "webgpt")
    question = row.values["question"]
    text = question.get("full_text") if isinstance(question, dict) else None
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{row.where('question.full_text')}: expected the question as a mapping with a non-empty "
                        f"'full_text' string, got {question!r:.60}")
    first, second = _number(row, "score_0"), _number(row, "score_1")
    if first == second:
        return [], Counter({TIES: 1})  # equal scores: the raters preferred neither answer
    names = ("answer_0", "answer_1") if first > second else ("answer_1", "answer_0")
    chosen, rejected = check_text(row, names[0]), check_text(row, names[1])
    _differ(row, chosen, rejected, names)
    return [(text, chosen, rejected)], Counter()


def read_ultrafeedback(row: Row, **_) -> tuple[list[Pair], Counter]:
    """Raw UltraFeedback: the best-rated completion against the worst (`alignlab pairs`' best-vs-worst rule:
    ties never paired)."""
    _columns(row, "ultrafeedback")
    prompt, responses, scores, _ = ultrafeedback_responses(row)
    pairs, stats = rank_pairs(responses, scores, strategy="best-vs-worst")
    dropped = Counter({_ULTRAFEEDBACK_DROPS.get(reason, reason): count for reason, count in stats.dropped.items()})
    return [(prompt, responses[chosen], responses[rejected]) for chosen, rejected in pairs], dropped


# -- prompt formats -------------------------------------------------------------------------------------------


def _gold(row: Row, name: str, extract: Callable[[str], str], text: str) -> str:
    try:
        return extract(text)
    except ValueError as exc:
        raise DataError(f"{row.where(name)}: {exc}") from None


def read_gsm8k(row: Row) -> tuple[Any, dict]:
    """GSM8K: `question`; the gold number follows `#### ` in `answer` (the solution is kept as `solution`)."""
    _columns(row, "gsm8k")
    values = dict(row.values)
    gold = _gold(row, "answer", extract_gsm8k_answer, values.pop("answer"))
    prompt = f"{check_text(row, 'question').strip()}\n{GSM8K_INSTRUCTION}"
    values.pop("question")
    return prompt, {**values, "solution": row.values["answer"], "answer": gold}


def read_math(row: Row) -> tuple[Any, dict]:
    r"""MATH: `problem`; the gold answer is the last `\boxed{...}` of `solution` (kept as `solution`)."""
    _columns(row, "math")
    values = dict(row.values)
    prompt = check_text(row, "problem")
    solution = check_text(row, "solution")
    values.pop("problem")
    return prompt, {**values, "answer": _gold(row, "solution", extract_boxed_answer, solution)}


def read_math_answer(row: Row) -> tuple[Any, dict]:
    r"""`problem` + `answer` (DeepScaleR, MATH-500): the answer as given, unwrapped from a `\boxed{}` if it has one."""
    _columns(row, "math-answer")
    values = dict(row.values)
    prompt = check_text(row, "problem")
    answer = values["answer"]
    if isinstance(answer, str):
        boxed = "\\boxed{" in answer
        answer = _gold(row, "answer", extract_boxed_answer, answer) if boxed else check_text(row, "answer").strip()
    elif isinstance(answer, bool) or not isinstance(answer, (int, float)):
        raise DataError(f"{row.where('answer')}: expected the gold answer as a string or a number, "
                        f"got {type(answer).__name__}")
    values.pop("problem")
    return prompt, {**values, "answer": answer}


def read_math_messages(row: Row) -> tuple[Any, dict]:
    r"""NuminaMath `messages`: the prompt is every turn before the final assistant solution; the gold answer
    is that solution's last `\boxed{...}` (the solution is kept as `solution`)."""
    _columns(row, "math-messages")
    messages = check_messages(row, "messages")
    *prompt, final = messages
    if final["role"] != "assistant":
        raise DataError(f"{row.where('messages')}: the last message must be the assistant's solution (with a "
                        f"\\boxed{{}} answer), but it has role {final['role']!r}")
    if not prompt or prompt[-1]["role"] != "user" or not prompt[-1]["content"].strip():
        raise DataError(f"{row.where('messages')}: the solution must answer a non-empty user message")
    values = {k: v for k, v in row.values.items() if k != "messages"}
    gold = _gold(row, "messages", extract_boxed_answer, final["content"])
    return prompt, {**values, "solution": final["content"], "answer": gold}


def _has_gsm8k_marker(values: dict) -> bool:
    return isinstance(values.get("answer"), str) and "####" in values["answer"]


_TABLE = (
    Format("preference", "prompt/chosen/rejected", "preference", ("chosen", "rejected"), "chosen, rejected, optional prompt",
           "as given: strings, message lists, whole conversations or HH-RLHF transcripts"),
    Format("shp", "Stanford SHP", "preference", ("history", "human_ref_A", "human_ref_B", "labels"),
           "history, human_ref_A/B, labels", "labels = 1: human_ref_A chosen; 0: human_ref_B chosen "
           "(data.min_score_ratio keeps pairs whose score_ratio is at least that)", read_shp),
    Format("webgpt", "WebGPT comparisons", "preference", ("question", "answer_0", "answer_1", "score_0", "score_1"),
           "question.full_text, answer_0/1, score_0/1", "the answer with the higher score chosen; a tie is dropped",
           read_webgpt),
    Format("ultrafeedback", "UltraFeedback ratings", "preference", ("instruction", "completions"),
           "instruction, completions[].response + overall_score", "best-rated completion vs worst-rated (ties never "
           "paired); the rating is overall_score, else fine-grained_score, else the mean annotation rating",
           read_ultrafeedback),
    Format("prompt", "prompt", "prompt", ("prompt",), "prompt, any other columns",
           "as given; the other columns reach the reward functions"),
    Format("gsm8k", "GSM8K", "prompt", ("question", "answer"), "question, answer with '#### N'",
           "prompt = question + an <answer> instruction; answer = N (the solution kept as solution)", read_gsm8k,
           _has_gsm8k_marker),
    Format("math-answer", "problem/answer (DeepScaleR, MATH-500)", "prompt", ("problem", "answer"), "problem, answer",
           "prompt = problem; answer as given (a \\boxed{} in it unwrapped)", read_math_answer),
    Format("math", "MATH", "prompt", ("problem", "solution"), "problem, solution",
           "prompt = problem; answer = the last \\boxed{...} of solution", read_math),
    Format("math-messages", "NuminaMath messages", "prompt", ("messages",), "messages: user problem, assistant solution",
           "prompt = the turns before the solution; answer = its last \\boxed{...}", read_math_messages),
)
FORMATS = {f.name: f for f in _TABLE}
FORMAT_NAMES = ("auto",) + tuple(FORMATS)  # data.format's values (config.py keeps the same list)


def formats_of(kind: str) -> list[Format]:
    return [f for f in _TABLE if f.kind == kind]


def detect(values: dict, kind: str) -> Optional[Format]:
    """The first format of `kind` whose columns the row has, or None."""
    for fmt in formats_of(kind):
        if all(name in values for name in fmt.columns) and (fmt.matches is None or fmt.matches(values)):
            return fmt
    return None


def no_format_error(row: Row, kind: str, missing: str) -> DataError:
    """A row in none of the formats: name the column most likely missing, list the formats and the columns found."""
    found = ", ".join(sorted(row.values)) or "(none)"
    listing = "; ".join(f"{f.title} [{f.name}]: {f.layout}" for f in formats_of(kind))
    ranked = " Rows of responses with scores or ranks become pairs with `alignlab pairs IN OUT`." \
        if kind == "preference" and "responses" in row.values else ""
    return DataError(
        f"{row.where(missing)}: missing; columns found: {found}. They match none of the recognised {kind} formats "
        f"({listing}). Map yours with data.columns.{missing}=<your column>, or name a format with data.format=<name>."
        + ranked
    )


def choose_format(rows: Iterable[Row], kind: str, name: str, *, skip_bad_rows: bool,
                  missing: Callable[[dict], str]) -> tuple[Optional[Format], bool]:
    """(format, forced) of a source: `name` unless "auto", else the format of its first row that has one.

    Without skip_bad_rows a first readable row in no format fails; with it, later rows are tried. None when
    no row is readable (each is then counted as bad by the loader)."""
    if name != "auto":
        fmt = FORMATS.get(name)
        if fmt is None or fmt.kind != kind:
            names = ", ".join(f.name for f in formats_of(kind))
            raise DataError(f"data.format={name} is not a {kind} format; for this data use auto or one of {names}")
        return fmt, True
    first = None
    for row in rows:
        if row.error:
            continue
        fmt = detect(row.values, kind)
        if fmt is not None:
            return fmt, False
        first = first or row
        if not skip_bad_rows:
            break
    if first is not None:
        raise no_format_error(first, kind, missing(first.values))
    return None, False


def source_label(data, source: str) -> str:
    """How the logs name a source: "data.train (shp.jsonl)", "data.eval (...)", "data.train source (...)"."""
    if isinstance(data.train, str) and source == data.train:
        return f"data.train ({source})"
    if getattr(data, "eval", None) and source == data.eval:
        return f"data.eval ({source})"
    return f"data.train source ({source})"


def check_score_ratio(fmt: Format, min_score_ratio: Optional[float], label: str) -> None:
    if min_score_ratio is not None and fmt.name != "shp":
        raise DataError(f"data.min_score_ratio={min_score_ratio:g} applies to Stanford SHP rows (their score_ratio), "
                        f"but {label} is in the {fmt.title} format; unset it (data.min_score_ratio=null)")
