"""Built-in reward functions for GRPO-style training.

Every reward has the signature ``fn(completions, **columns) -> list[float | None]``:
``completions`` is a list of generated texts and each column (``answer=...``) is a
list aligned with it. Unknown columns are accepted and ignored. ``None`` in the
result means "not applicable to this row" (for example a row without a gold answer).

Each built-in returns a float inside ``fn.reward_range`` for *any* string
completion: malformed text earns the low end of the range, it never raises. The one
exception to "a float": ``answer_correct`` and ``boxed_correct`` give ``None`` for a
row whose math check timed out or failed inside the verifier (see
:mod:`alignlab.rewards.math_answers`). Only the standard library is imported here
(math-verify is imported lazily by that helper); nothing in a completion is ever executed.

A completion may also be a chat-style list of messages
(``[{"role": "assistant", "content": "..."}]``); the content of the last message
is scored.
"""
from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from typing import Any, Callable

from alignlab.rewards.math_answers import last_boxed, looks_like_math, math_equal

__all__ = [
    "BUILTINS",
    "boxed_format",
    "answer_correct",
    "answer_format",
    "boxed_correct",
    "extract_boxed_answer",
    "extract_gsm8k_answer",
    "parse_number",
    "think_format",
]

#: name -> reward function, filled by the ``_builtin`` decorator below.
BUILTINS: dict[str, Callable[..., list[float | None]]] = {}


def _builtin(name: str, low: float, high: float):
    """Record a built-in reward under ``name`` and attach its output range."""

    def decorate(fn):
        fn.reward_name = name
        fn.reward_range = (float(low), float(high))
        BUILTINS[name] = fn
        return fn

    return decorate


# --------------------------------------------------------------------------- helpers

# After commas/spaces/sign/$ are removed, what is left must be plain ASCII digits
# with at most one decimal point ("12", "12.5", "12.", ".5"). No exponents.
_UNSIGNED_DECIMAL = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_SEPARATORS = re.compile(r"[,\s]+")


def parse_number(text: Any) -> Decimal | None:
    """Parse a human-written number into an exact ``Decimal``; ``None`` if it is not one.

    Commas and whitespace anywhere are dropped, and a leading ``+``/``-`` and ``$``
    (in either order) are accepted. Exponents, ``nan``, ``inf``, several decimal
    points and non-ASCII digits are rejected. ``int``, finite ``float`` and finite
    ``Decimal`` values are converted too (``bool`` is not a number here).

    >>> parse_number("1,234.5")
    Decimal('1234.5')
    >>> parse_number(" -7 "), parse_number(".5"), parse_number("+$3"), parse_number("-$1,000")
    (Decimal('-7'), Decimal('0.5'), Decimal('3'), Decimal('-1000'))
    >>> parse_number("42.0") == parse_number("42")
    True
    >>> [parse_number(s) for s in ["1.2.3", "", "nan", "inf", "1e5", "--5", "12a", "$"]]
    [None, None, None, None, None, None, None, None]
    >>> parse_number(0.1), parse_number(7), parse_number(True)
    (Decimal('0.1'), Decimal('7'), None)
    """
    if isinstance(text, bool):
        return None
    if isinstance(text, int):
        return Decimal(text)
    if isinstance(text, float):
        # repr gives the shortest string that round-trips, so 0.1 -> Decimal('0.1').
        return Decimal(repr(text)) if math.isfinite(text) else None
    if isinstance(text, Decimal):
        return text if text.is_finite() else None
    if not isinstance(text, str):
        return None
    s = _SEPARATORS.sub("", text)
    negative = False
    if s.startswith("$"):
        s = s[1:]
    if s[:1] in ("+", "-"):
        negative = s[0] == "-"
        s = s[1:]
    if s.startswith("$"):
        s = s[1:]
    if not _UNSIGNED_DECIMAL.fullmatch(s):
        return None
    try:
        value = Decimal(s)
    except InvalidOperation:  # pragma: no cover - the regex already guarantees a valid literal
        return None
    return -value if negative else value


def extract_gsm8k_answer(answer_text: str) -> str:
    """Return the gold number of a GSM8K solution: the text after ``####``, commas removed.

    >>> extract_gsm8k_answer("She has 3 + 4 = <<3+4=7>>7 apples.\\n#### 1,234")
    '1234'
    >>> extract_gsm8k_answer("#### -5  ")
    '-5'
    >>> extract_gsm8k_answer("no marker here")
    Traceback (most recent call last):
    ...
    ValueError: no '####' marker in GSM8K answer: 'no marker here'
    """
    if not isinstance(answer_text, str):
        raise ValueError(f"GSM8K answer must be a string, got {type(answer_text).__name__}")
    head, marker, tail = answer_text.rpartition("####")
    if not marker:
        raise ValueError(f"no '####' marker in GSM8K answer: {_preview(answer_text)}")
    lines = tail.strip().splitlines()
    value = lines[0].replace(",", "").strip() if lines else ""
    if not value:
        raise ValueError(f"nothing after '####' in GSM8K answer: {_preview(answer_text)}")
    return value


def _preview(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _text(completion: Any) -> str:
    """The text to score: a string as is, or the content of the last chat message."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        content = completion.get("content")
        return content if isinstance(content, str) else ""
    if isinstance(completion, (list, tuple)):
        if not completion:
            return ""
        return _text(completion[-1])
    raise TypeError(
        f"completion must be a string or a list of chat messages, got {type(completion).__name__}"
    )


def extract_boxed_answer(solution: str) -> str:
    r"""Return the gold answer of a MATH-style solution: the content of its last ``\boxed{...}``.

    >>> extract_boxed_answer(r"Half of it: $\boxed{\frac{1}{2}}$. Check: \boxed{\dfrac{1}{2}}")
    '\\dfrac{1}{2}'
    >>> extract_boxed_answer(r"The roots are $\boxed{x \in \{1, 2\}}$.")
    'x \\in \\{1, 2\\}'
    >>> extract_boxed_answer("So the answer is 4.")
    Traceback (most recent call last):
    ...
    ValueError: no \boxed{...} in the solution: 'So the answer is 4.'
    """
    if not isinstance(solution, str):
        raise ValueError(f"the solution must be a string, got {type(solution).__name__}")
    content = last_boxed(solution)
    if content is None:
        unclosed = "\\boxed{" in solution or "\\fbox{" in solution
        what = "its last \\boxed{ is never closed" if unclosed else "no \\boxed{...} in the solution"
        raise ValueError(f"{what}: {_preview(solution)}")
    if not content.strip():
        raise ValueError(f"the last \\boxed{{}} of the solution is empty: {_preview(solution)}")
    return content.strip()


def _gold(gold: Any) -> tuple[Decimal | None, str]:
    """Normalise a gold answer to (number or None, stripped string form).

    A string containing ``####`` is treated as a full GSM8K solution, one containing
    ``\\boxed{...}`` as a full MATH solution (its last box is the answer).
    """
    if isinstance(gold, str) and "####" in gold:
        try:
            gold = extract_gsm8k_answer(gold)
        except ValueError:
            pass
    elif isinstance(gold, str) and last_boxed(gold) is not None:
        gold = last_boxed(gold)
    return parse_number(gold), str(gold).strip()


def _matches(predicted: str, gold: Any) -> bool | None:
    """Whether a predicted answer is the gold one; None when the math verifier gave no verdict.

    A plain-number gold (GSM8K) against a plain-number prediction: exact ``Decimal`` equality, the
    fast path. Anything else (``\\frac{1}{2}``, ``x=3``, ``10\\%``, intervals, a prediction that is
    not a plain number) goes to :func:`math_equal`; a prediction with neither digits nor LaTeX
    against a number is wrong without asking it.
    """
    gold_number, gold_text = _gold(gold)
    if gold_number is not None:
        predicted_number = parse_number(predicted)
        if predicted_number is not None:
            return predicted_number == gold_number
        if not looks_like_math(predicted):
            return False
    return math_equal(predicted, gold_text)


def _score(verdict: bool | None, high: float) -> float | None:
    return None if verdict is None else (high if verdict else 0.0)


def _last_tag_content(text: str, open_tag: str, close_tag: str) -> str | None:
    """Content of the last complete ``open_tag ... close_tag`` pair, or None."""
    end = text.rfind(close_tag)
    if end < 0:
        return None
    start = text.rfind(open_tag, 0, end)
    if start < 0:
        return None
    return text[start + len(open_tag):end]


def _aligned(name: str, values: Any, n: int) -> list:
    """A column as a list of length ``n``; a scalar is broadcast to every row."""
    if isinstance(values, (list, tuple)):
        if len(values) != n:
            raise ValueError(f"column {name!r} has {len(values)} values but there are {n} completions")
        return list(values)
    return [values] * n


# --------------------------------------------------------------------------- rewards

_ANSWER_LINE = re.compile(r"<answer>-?[0-9]+(?:\.[0-9]+)?</answer>")


@_builtin("answer_format", 0.0, 1.0)
def answer_format(completions: list, **_: Any) -> list[float | None]:
    """1.0 if the last non-empty line is exactly ``<answer>NUMBER</answer>``, else 0.0.

    NUMBER is an integer or a decimal with an optional minus sign (``-3``, ``4.50``);
    no spaces inside the tags, no ``+``, no commas, no leading ``.``.
    Whitespace around the line and trailing blank lines are ignored. Range: [0, 1].

    >>> answer_format([
    ...     "Reasoning...\\n<answer>-3</answer>\\n\\n  ",  # trailing blank lines are fine
    ...     "<answer>4.50</answer>",
    ...     "<answer> 42 </answer>",                       # spaces inside the tags
    ...     "<answer>1,000</answer>",                      # comma
    ...     "<answer>42</answer> done",                    # text after the tag
    ...     "<answer>42</answer>\\nmore text",              # not the last line
    ...     "<answer>.5</answer>",
    ...     "",
    ... ])
    [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    """
    scores: list[float | None] = []
    for completion in completions:
        lines = [line.strip() for line in _text(completion).splitlines() if line.strip()]
        ok = bool(lines) and _ANSWER_LINE.fullmatch(lines[-1]) is not None
        scores.append(1.0 if ok else 0.0)
    return scores


@_builtin("answer_correct", 0.0, 2.0)
def answer_correct(completions: list, answer: list, **_: Any) -> list[float | None]:
    """2.0 if the last ``<answer>...</answer>`` equals the gold ``answer``, else 0.0.

    Plain numbers are compared exactly with ``Decimal`` (``42.0`` == ``42``, ``1,000`` ==
    ``1000``, spaces inside the tags are ignored): the fast path for GSM8K. Any other
    answer (a LaTeX fraction, ``x=3``, a percentage, an interval, or a prediction that is
    not a plain number) is checked for mathematical equivalence by math-verify
    (:func:`alignlab.rewards.math_answers.math_equal`); a gold answer of words is compared
    as a stripped string. A gold string containing ``####`` is read as a full GSM8K
    solution, one containing a ``\\boxed{}`` as a full MATH solution (its last box). A ``None`` gold gives ``None`` (row not applicable), and so does a check
    the verifier could not finish in time. Range: [0, 2].

    >>> answer_correct(
    ...     ["<answer>7</answer> wait, no: <answer> 42.0 </answer>",  # last tag wins
    ...      "<answer>1,000</answer>",
    ...      "<answer>-5</answer>",
    ...      "<answer>42</answer> ... <answer>7",                     # unclosed last tag ignored
    ...      "42",                                                    # no tags
    ...      "<answer>Paris </answer>",
    ...      "<answer>3</answer>"],
    ...     answer=["42", 1000, "-5", "42", "42", "Paris", None])
    [2.0, 2.0, 2.0, 2.0, 0.0, 2.0, None]
    >>> answer_correct(["<answer>0.1</answer>", "<answer>1.2.3</answer>"], answer=[0.1, "1.2.3"])
    [2.0, 2.0]
    >>> answer_correct(["<answer>1/2</answer>", "<answer>x = 3</answer>", "<answer>12 apples</answer>",  # units dropped
    ...                 "<answer>13 apples</answer>", "<answer>Sirap</answer>"], answer=["0.5", "3", "12", "12", "Paris"])
    [2.0, 2.0, 2.0, 0.0, 0.0]
    """
    scores: list[float | None] = []
    for completion, gold in zip(completions, _aligned("answer", answer, len(completions)), strict=True):
        if gold is None:
            scores.append(None)
            continue
        content = _last_tag_content(_text(completion), "<answer>", "</answer>")
        scores.append(0.0 if content is None else _score(_matches(content, gold), 2.0))
    return scores


@_builtin("boxed_correct", 0.0, 1.0)
def boxed_correct(completions: list, answer: list, **_: Any) -> list[float | None]:
    r"""1.0 if the content of the last ``\boxed{...}`` matches the gold ``answer``, else 0.0.

    Nested braces are handled (``\boxed{\frac{1}{2}}`` has content ``\frac{1}{2}``).
    Plain numbers compare exactly (``\boxed{1,000}`` matches ``1000``); anything else is
    checked for mathematical equivalence by math-verify, as in ``answer_correct``
    (``\dfrac{1}{2}`` = ``0.5``, ``x=3`` = ``3``, ``10\%`` = ``10``, ``(0, 1]`` = ``(0,1]``),
    a gold of words as a stripped string. If the last ``\boxed{`` is never closed the
    score is 0.0. A ``None`` gold gives ``None``, and so does a check the verifier could
    not finish in time. Range: [0, 1].

    >>> boxed_correct(
    ...     [r"so \boxed{\frac{1}{2}}",
    ...      r"\boxed{3} or rather \boxed{ 4.0 }",  # last box wins
    ...      r"\boxed{1,000}",
    ...      r"\boxed{5} then \boxed{6",           # last box unclosed
    ...      "the answer is 4",
    ...      r"\boxed{x}"],
    ...     answer=[r"\frac{1}{2}", "4", 1000, "5", "4", None])
    [1.0, 1.0, 1.0, 0.0, 0.0, None]
    >>> boxed_correct(
    ...     [r"\boxed{\dfrac{1}{2}}", r"\boxed{0.5}", r"\boxed{x=3}", r"\boxed{10\%}", r"\boxed{(0, 1]}",
    ...      r"\boxed{[0,1]}", r"\boxed{\frac{1}{3}}", r"\boxed{2\sqrt{2}}", r"\boxed{\text{(B)}}"],
    ...     answer=["0.5", r"\frac{1}{2}", "3", "10", "(0,1]", "(0,1]", "0.5", r"\sqrt{8}", "B"])
    [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]
    """
    scores: list[float | None] = []
    for completion, gold in zip(completions, _aligned("answer", answer, len(completions)), strict=True):
        if gold is None:
            scores.append(None)
            continue
        content = last_boxed(_text(completion))
        scores.append(0.0 if content is None else _score(_matches(content, gold), 1.0))
    return scores


_BOXED_LINE = re.compile(r"\\boxed\{-?[0-9]+(?:\.[0-9]+)?\}")


@_builtin("boxed_format", 0.0, 1.0)
def boxed_format(completions: list, **_: Any) -> list[float | None]:
    r"""1.0 if the last non-empty line is exactly ``\boxed{NUMBER}``, else 0.0 (seed 000's format).

    NUMBER as in ``answer_format``. Range: [0, 1].

    >>> boxed_format([r"\boxed{4}", "count: 3\n" + r"\boxed{-2.5}", r"\boxed{4} letters", r"\boxed{four}", ""])
    [1.0, 1.0, 0.0, 0.0, 0.0]
    """
    scores: list[float | None] = []
    for completion in completions:
        lines = [line.strip() for line in _text(completion).splitlines() if line.strip()]
        scores.append(1.0 if lines and _BOXED_LINE.fullmatch(lines[-1]) else 0.0)
    return scores


@_builtin("think_format", 0.0, 1.0)
def think_format(completions: list, **_: Any) -> list[float | None]:
    """1.0 for ``<think>...</think>`` followed by a non-empty answer, else 0.0.

    Surrounding whitespace is ignored; the completion must start with the single
    ``<think>`` block (the thinking itself may be empty) and contain no other
    ``<think>``/``</think>`` tag. Range: [0, 1].

    >>> think_format([
    ...     "  <think>add them</think>\\n\\nThe answer is 5.\\n",
    ...     "<think></think>5",                       # empty thinking is allowed
    ...     "<think>hmm</think>   \\n ",               # answer part is empty
    ...     "Sure! <think>hmm</think> 5",             # text before the block
    ...     "<think>a</think><think>b</think> 5",     # two blocks
    ...     "<think>unclosed 5",
    ...     "",
    ... ])
    [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    """
    scores: list[float | None] = []
    for completion in completions:
        text = _text(completion).strip()
        ok = False
        if text.startswith("<think>") and text.count("<think>") == 1 and text.count("</think>") == 1:
            end = text.find("</think>")
            ok = bool(text[end + len("</think>"):].strip())
        scores.append(1.0 if ok else 0.0)
    return scores
