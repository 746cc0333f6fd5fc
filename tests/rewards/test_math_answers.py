"""Math answers in the rewards: last \\boxed{} extraction, math-verify equivalence, its time limit and fallback."""
from __future__ import annotations

import doctest
import re
import sys
import threading
import time

import pytest

from alignlab.rewards import builtin, math_answers, score_completions
from alignlab.rewards.builtin import answer_correct, boxed_correct, extract_boxed_answer
from alignlab.rewards.math_answers import last_boxed, math_equal

# A string math-verify's parser cannot finish in a second (SymPy on 23 nested parentheses).
PATHOLOGICAL = "(" * 23 + "x" + ")" * 23


def test_doctests_pass():
    result = doctest.testmod(math_answers, verbose=False)
    assert result.attempted >= 5 and result.failed == 0


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"a \boxed{1} b \boxed{\left\{ x \mid x^{2} > 1 \right\}} c", r"\left\{ x \mid x^{2} > 1 \right\}"),
        (r"\boxed{1} then \fbox{2}", "2"),
        (r"\fbox{2} then \boxed{3}", "3"),
        (r"\boxed{1} \boxed{2", None),
        ("no box at all", None),
        (r"so the answer is $\boxed 5$.", "5"),  # LaTeX without braces (Hendrycks' MATH grader reads it too)
        (r"\boxed 12", "12"),
        (r"\[\boxed -3.5\] and that is it", "-3.5"),
        (r"the answer is \boxed 5.", "5"),
        (r"\boxed{x \in \left\{ 1, 2 \right.}", r"x \in \left\{ 1, 2 \right."),  # \{ is not a group brace
        (r"\boxed{f(x) = \left\{ \begin{array}{ll} 1 & x > 0 \\ 0 & x \le 0 \end{array} \right.} done",
         r"f(x) = \left\{ \begin{array}{ll} 1 & x > 0 \\ 0 & x \le 0 \end{array} \right."),
        (r"\boxedfoo{1}", None),  # another command
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


@pytest.mark.parametrize(
    "completion, gold, expected",
    [
        (r"\boxed{0.5}", r"\frac{1}{2}", 1.0),
        (r"\boxed{\dfrac{1}{2}}", r"\frac12", 1.0),
        (r"\boxed{\tfrac{3}{4}}", "0.75", 1.0),
        (r"\boxed{x=3}", "3", 1.0),
        (r"\boxed{3}", "x = 3", 1.0),
        (r"\boxed{10\%}", "10", 1.0),
        (r"\boxed{(0, 1]}", "(0,1]", 1.0),
        (r"\boxed{[0,1]}", "(0,1]", 0.0),  # open and closed ends differ
        (r"\boxed{[2, \infty)}", r"[2,\infty)", 1.0),
        (r"\boxed{\frac{\sqrt{3}}{2}}", r"\sqrt{3}/2", 1.0),
        (r"\boxed{\frac{10}{2}}", "5", 1.0),  # a plain-number gold, a prediction that is not a plain number
        (r"\boxed{(x+1)^2}", "x^2+2x+1", 1.0),
        (r"\boxed{\{1,2\}}", "1,2", 1.0),
        (r"\boxed{90^\circ}", "90", 1.0),
        (r"\boxed{\text{(B)}}", "B", 1.0),
        (r"\boxed{\text{(A)}}", "B", 0.0),
        (r"\boxed{\frac{1}{3}}", r"\frac{1}{2}", 0.0),
        (r"\boxed{33}", "3", 0.0),
        (r"\boxed{Sirap}", "Paris", 0.0),  # words are compared as strings (math-verify accepts anagrams)
        (r"\boxed{Paris}", "Paris", 1.0),
    ],
)
def test_boxed_correct_math_equivalence(completion, gold, expected):
    assert boxed_correct([completion], answer=[gold]) == [expected]
    tagged = completion.replace(r"\boxed{", "<answer>", 1)[:-1] + "</answer>"
    assert answer_correct([tagged], answer=[gold]) == [2 * expected]


def test_boxes_without_braces_and_with_escaped_braces_are_scored():
    assert boxed_correct([r"so $\boxed 5$.", r"so $\boxed 6$."], answer=["5", "5"]) == [1.0, 0.0]
    assert boxed_correct([r"$\boxed{\left\{1, 2\right\}}$"], answer=[r"\{1,2\}"]) == [1.0]


def test_a_whole_solution_as_gold_is_read_as_its_last_box():
    """A MATH row mapped by hand (data.columns.answer=solution) gives the whole solution as the gold."""
    solution = r"Half of 1 is $\frac{1}{2}$, so the answer is $\boxed{\frac{1}{2}}$."
    assert boxed_correct([r"\boxed{0.5}", r"\boxed{2}"], answer=[solution, solution]) == [1.0, 0.0]
    assert answer_correct(["<answer>1/2</answer>"], answer=[solution]) == [2.0]


def test_plain_numbers_keep_the_exact_fast_path(monkeypatch):
    def no_verifier(*_):
        raise AssertionError("the verifier was called for plain numbers")

    monkeypatch.setattr(builtin, "math_equal", no_verifier)
    completions = ["<answer>1,234</answer>", "<answer>41.999999999999999999</answer>", "<answer>forty two</answer>"]
    assert answer_correct(completions, answer=["1234", "42", "42"]) == [2.0, 0.0, 0.0]
    assert boxed_correct([r"\boxed{72}"], answer=["Natalia sold 48/2 = 24 clips.\n#### 72"]) == [1.0]


def test_pathological_string_is_bounded_and_scored_none(monkeypatch):
    monkeypatch.setattr(math_answers, "VERIFY_TIMEOUT_S", 1)
    start = time.monotonic()
    scores = boxed_correct([rf"\boxed{{{PATHOLOGICAL}}}", r"\boxed{\frac{1}{2}}"], answer=["2", "0.5"])
    assert scores == [None, 1.0]
    assert time.monotonic() - start < 10
    start = time.monotonic()  # a check that timed out is not tried again: the same verdict, at once
    assert math_answers.math_equal(PATHOLOGICAL, "2") is None and time.monotonic() - start < 0.5
    # In a GRPO batch the row is unscorable (NaN total), not wrong, and the others keep their scores.
    batch = score_completions([("boxed_correct", boxed_correct)], None,
                              [rf"\boxed{{{PATHOLOGICAL}}}", r"\boxed{2}"], {"answer": ["2", "2"]})
    assert batch.per_function["boxed_correct"] == [None, 1.0]


def test_verifier_error_scores_none(monkeypatch):
    class Broken:
        @staticmethod
        def parse(*_, **__):
            raise RuntimeError("parser crashed")

    monkeypatch.setattr(math_answers, "_verifier", lambda: Broken)
    assert boxed_correct([r"\boxed{\frac{1}{2}}", r"\boxed{3}"], answer=["0.5", "3"]) == [None, 1.0]


def test_outside_the_main_thread(monkeypatch):
    """signal.alarm works only in the main thread: elsewhere the check runs in a worker that is waited on
    for a bounded time."""
    import math_verify

    class Slow:  # the real verifier, except that one answer hangs
        verify = staticmethod(math_verify.verify)

        @staticmethod
        def parse(text, **options):
            if "hang" in text:
                time.sleep(30)
            return math_verify.parse(text, **options)

    monkeypatch.setattr(math_answers, "VERIFY_TIMEOUT_S", 1)
    monkeypatch.setattr(math_answers, "_verifier", lambda: Slow)
    results = {}

    def work():
        results["scores"] = boxed_correct([r"\boxed{\dfrac{1}{2}}", r"\boxed{3}", r"\boxed{\hang{2}}"],
                                          answer=["0.5", "4", "2"])

    start = time.monotonic()
    thread = threading.Thread(target=work)
    thread.start()
    thread.join(30)
    assert results["scores"] == [1.0, 0.0, None]
    assert time.monotonic() - start < 10


def test_without_math_verify_answers_compare_as_strings(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "math_verify", None)  # import math_verify raises ImportError
    monkeypatch.setattr(math_answers, "_missing_warned", False)
    with caplog.at_level("WARNING", logger="alignlab"):
        assert boxed_correct([r"\boxed{\frac{1}{2}}", r"\boxed{ \frac{1}{2} }", r"\boxed{7}"],
                             answer=["0.5", r"\frac{1}{2}", "7"]) == [0.0, 1.0, 1.0]
        assert math_equal("0.5", r"\frac{1}{2}") is False
    warnings = [r for r in caplog.records if "math-verify is not installed" in r.getMessage()]
    assert len(warnings) == 1  # once, not per row


@pytest.mark.parametrize(
    "solution, expected",
    [
        (r"So $x = \boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
        (r"First \boxed{1}, corrected: $\boxed{\dfrac{\sqrt{2}}{2}}$", r"\dfrac{\sqrt{2}}{2}"),
        (r"The set is $\boxed{\{1, 2\}}$", r"\{1, 2\}"),
        (r"$\boxed{ 10\% }$", r"10\%"),
    ],
)
def test_extract_boxed_answer(solution, expected):
    assert extract_boxed_answer(solution) == expected


@pytest.mark.parametrize(
    "solution, message",
    [
        ("The answer is 4.", "no \\boxed{...}"),
        (r"The answer is \boxed{4", "never closed"),
        (r"\boxed{ }", "empty"),
        (None, "must be a string"),
    ],
)
def test_extract_boxed_answer_errors(solution, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        extract_boxed_answer(solution)
