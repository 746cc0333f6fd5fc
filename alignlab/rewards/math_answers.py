r"""Math answers: the last ``\boxed{...}`` of a text, and equivalence of two answers by math-verify.

String comparison marks ``\frac{1}{2}`` against ``0.5``, ``\dfrac{1}{2}``, ``x=3`` against ``3``
or ``(0, 1]`` against ``(0,1]`` wrong, and for a GRPO reward a right answer scored wrong is a wrong
learning signal. :func:`math_equal` asks Hugging Face's math-verify (the parser TRL's
``accuracy_reward`` uses; ``pip install 'math-verify>=0.9,<0.10'``), imported lazily so that the
rewards still import only the standard library; without it the answers are compared as stripped
strings, with one warning.

Bounded: math-verify can spend minutes in SymPy on a pathological string (a deeply nested
expression, ``999^{999^{999}}``). Every parse and comparison runs under a time limit of
``VERIFY_TIMEOUT_S`` seconds (math-verify's own ``signal.alarm`` timer in the main thread; outside
it, where signals cannot be used, the check runs in a daemon thread that is waited on for at most
``3 * VERIFY_TIMEOUT_S``). A check that times out or raises gives ``None``: the row is unscorable,
not wrong.

Words are not sent to the verifier: it reads ``Paris`` as the product P*a*r*i*s and would accept
any anagram, so an answer of letters and spaces only (and longer than one letter, which may be a
multiple-choice option or a variable) is compared as a string.
"""
from __future__ import annotations

import logging
import re
import threading
from typing import Any

__all__ = ["VERIFY_TIMEOUT_S", "last_boxed", "looks_like_math", "math_equal"]

#: Seconds for each math-verify parse or comparison (whole seconds: its timer is ``signal.alarm``).
VERIFY_TIMEOUT_S = 2

_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])\s*")  # the command, not \boxedfoo; spaces after it skipped
_UNBRACED_END = re.compile(r"\$|\\\]|\\\)|\n")  # where an unbraced box's content ends
_MATH_CHARS = re.compile(r"[0-9\\^_{}()\[\]=+\-*/<>%|.,:;!]")
_log = logging.getLogger("alignlab")
_missing_warned = False


def last_boxed(text: str) -> str | None:
    r"""Content of the last ``\boxed{...}`` (or ``\fbox{...}``), nested braces honoured; None if absent or unclosed.

    Escaped braces are not group delimiters: ``\left\{ ... \right.`` (cases, a set's left bracket) is
    content. ``\boxed 5`` (no braces, valid LaTeX) is read as Hendrycks' MATH grader and verl read it:
    up to the closing ``$`` (or ``\]``, ``\)``, the end of the line), without a final full stop.

    >>> last_boxed(r"so $\boxed{\frac{1}{2}}$, not \boxed{3") is None  # the last box is never closed
    True
    >>> last_boxed(r"first \boxed{1}, then \boxed{\frac{\sqrt{3}}{2}}.")
    '\\frac{\\sqrt{3}}{2}'
    >>> last_boxed(r"\fbox{7}"), last_boxed("no box"), last_boxed(r"\boxed{}")
    ('7', None, '')
    >>> last_boxed(r"so $\boxed 5$."), last_boxed(r"\boxed{\left\{ x \right.}"), last_boxed(r"\boxed")
    ('5', '\\left\\{ x \\right.', None)
    """
    boxes = list(_BOX.finditer(text))
    if not boxes:
        return None
    begin = boxes[-1].end()
    if not text.startswith("{", begin):
        end = _UNBRACED_END.search(text, begin)
        content = text[begin:end.start() if end else len(text)].strip()
        content = content[:-1].rstrip() if content.endswith(".") else content
        return content or None
    depth, index = 0, begin
    while index < len(text):
        char = text[index]
        if char == "\\":  # an escaped character (\{, \}, \\): never a group delimiter
            index += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[begin + 1:index]
        index += 1
    return None


def looks_like_math(text: str) -> bool:
    """Whether an answer is worth the verifier: a digit, a LaTeX command or an operator, or one letter.

    >>> [looks_like_math(s) for s in ["3", r"\\frac{1}{2}", "x=3", "B", "Paris", "New York", ""]]
    [True, True, True, True, False, False, False]
    """
    text = text.strip()
    return bool(_MATH_CHARS.search(text)) or len(text) == 1


def _verifier():
    """The math_verify module, or None (warned about once) when it is not installed."""
    global _missing_warned
    try:
        import math_verify
    except ImportError:
        if not _missing_warned:
            _missing_warned = True
            _log.warning("math-verify is not installed (pip install 'math-verify>=0.9,<0.10'): math answers are "
                         "compared as strings, so equivalent forms such as \\frac{1}{2} and 0.5 score as wrong")
        return None
    global _warmed
    if not _warmed:  # the first parse builds the LaTeX grammar (seconds on a loaded CPU): not the time limit's business
        _warmed = True
        try:
            math_verify.verify(math_verify.parse("\\boxed{\\frac{1}{2}}"), math_verify.parse("\\boxed{x^2+1}"))
        except Exception:  # the timed checks will report what is wrong
            pass
    return math_verify


_warmed = False


def _verify(verifier, predicted: str, gold: str, seconds: int | None) -> bool:
    """math-verify on the two answers, each read as the content of a box; raises on error or timeout."""
    options = dict(raise_on_error=True)
    gold_parsed = verifier.parse(f"\\boxed{{{gold}}}", parsing_timeout=seconds, **options)
    predicted_parsed = verifier.parse(f"\\boxed{{{predicted}}}", parsing_timeout=seconds, **options)
    if not gold_parsed or not predicted_parsed:
        return False
    return bool(verifier.verify(gold_parsed, predicted_parsed, timeout_seconds=seconds, **options))


def _in_worker(verifier, predicted: str, gold: str) -> bool | None:
    """Outside the main thread signals cannot interrupt: run the check in a daemon thread, wait a bounded time."""
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["value"] = _verify(verifier, predicted, gold, None)
        except Exception:  # reported as "no verdict", like a timeout
            outcome["value"] = None

    worker = threading.Thread(target=work, name="alignlab-math-verify", daemon=True)
    worker.start()
    worker.join(3 * VERIFY_TIMEOUT_S)
    return outcome.get("value")  # None when it is still running: left behind, the row unscored


def math_equal(predicted: str, gold: str) -> bool | None:
    r"""Whether ``predicted`` is the same math answer as ``gold``; None when the verifier timed out or raised.

    Equal stripped strings are equal without the verifier; a gold answer of words is only compared as a string.

    >>> [math_equal(p, g) for p, g in [("0.5", r"\frac{1}{2}"), (r"\dfrac{1}{2}", r"\frac12"), ("x=3", "3"),
    ...                                 ("10", r"10\%"), ("(0, 1]", "(0,1]"), ("[0,1]", "(0,1]"), ("Sirap", "Paris")]]
    [True, True, True, True, True, False, False]
    """
    predicted, gold = predicted.strip(), gold.strip()
    if predicted == gold:
        return True
    if not looks_like_math(gold):
        return False
    verifier = _verifier()
    if verifier is None:
        return False
    if threading.current_thread() is not threading.main_thread():
        return _in_worker(verifier, predicted, gold)
    from math_verify.errors import TimeoutException  # a BaseException: not caught by `except Exception`

    if (predicted, gold) in _TIMED_OUT:
        return None
    try:
        return _verify(verifier, predicted, gold, VERIFY_TIMEOUT_S)
    except TimeoutException:  # a pathological string: no verdict rather than a wrong one
        # Remembered: a retry (a duplicate completion, the same row scored again) would pay the time limit again,
        # and the parser's caches, warmed by the first try, could then let it end with another verdict.
        if len(_TIMED_OUT) < 10_000:
            _TIMED_OUT.add((predicted, gold))
        return None
    except Exception:
        return None


_TIMED_OUT: set = set()  # (predicted, gold) pairs whose check ran past the time limit
