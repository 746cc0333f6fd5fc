"""Tests for alignlab.rewards: built-in rewards, plugin loading and score combination."""
from __future__ import annotations

import doctest
import math
import textwrap
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alignlab.errors import AlignlabError
from alignlab.rewards import (
    REWARDS,
    RewardError,
    RewardScores,
    get_reward,
    register_reward,
    score_completions,
)
from alignlab.rewards import builtin, length
from alignlab.rewards.length import length_penalty
from alignlab.rewards.builtin import (
    answer_correct,
    answer_format,
    boxed_correct,
    extract_gsm8k_answer,
    parse_number,
    think_format,
)

BUILTIN_NAMES = ["answer_format", "answer_correct", "boxed_correct", "think_format", "length_penalty"]


def test_doctests_pass():
    result = doctest.testmod(builtin, verbose=False)
    assert doctest.testmod(length, verbose=False).failed == 0
    assert result.attempted > 10
    assert result.failed == 0


def test_registry_has_builtins_with_ranges():
    for name in BUILTIN_NAMES:
        assert REWARDS[name] is getattr(length if name == "length_penalty" else builtin, name)
        low, high = REWARDS[name].reward_range
        assert low < high


# --------------------------------------------------------------------------- parse_number / gsm8k


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1,234.5", "1234.5"),
        ("-7", "-7"),
        (".5", "0.5"),
        ("+3", "3"),
        ("$12", "12"),
        ("-$12", "-12"),
        ("$-12", "-12"),
        (" 1 000 ", "1000"),
        ("42.", "42"),
        ("007", "7"),
        (5, "5"),
        (2.5, "2.5"),
        (Decimal("3.10"), "3.1"),
    ],
)
def test_parse_number_accepts(text, expected):
    assert parse_number(text) == Decimal(expected)


@pytest.mark.parametrize(
    "text",
    ["1.2.3", "", "   ", "nan", "NaN", "inf", "-inf", "Infinity", "1e5", "--5", "+-5", "-", ".", "$",
     "12a", "x", "١٢", "½", "5%", None, True, float("nan"), float("inf"), Decimal("NaN"), [1]],
)
def test_parse_number_rejects(text):
    assert parse_number(text) is None


def test_extract_gsm8k_answer():
    assert extract_gsm8k_answer("Step one.\nStep two.\n#### 1,234") == "1234"
    assert extract_gsm8k_answer("#### 72\n") == "72"
    assert extract_gsm8k_answer("x #### -3.5") == "-3.5"
    with pytest.raises(ValueError):
        extract_gsm8k_answer("The answer is 5")
    with pytest.raises(ValueError):
        extract_gsm8k_answer("#### ")


# --------------------------------------------------------------------------- answer_format


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<answer>42</answer>", 1.0),
        ("think...\n<answer>-3</answer>", 1.0),
        ("<answer>4.50</answer>\n\n \t\n", 1.0),
        ("   <answer>7</answer>   ", 1.0),
        ("<answer>1</answer>\n<answer>2</answer>", 1.0),
        ("<answer> 42 </answer>", 0.0),
        ("<answer>1,000</answer>", 0.0),
        ("<answer>+3</answer>", 0.0),
        ("<answer>4.</answer>", 0.0),
        ("<answer>abc</answer>", 0.0),
        ("<answer></answer>", 0.0),
        ("<answer>42</answer>\nfinal words", 0.0),
        ("The answer is <answer>42</answer>", 0.0),
        ("<answer>42", 0.0),
        ("42", 0.0),
        ("", 0.0),
        ("\n\n", 0.0),
        ("<answer>٤٢</answer>", 0.0),  # non-ASCII digits
        ("🙂\n<answer>5</answer>", 1.0),
    ],
)
def test_answer_format(completion, expected):
    assert answer_format([completion]) == [expected]


def test_answer_format_ignores_unknown_columns():
    assert answer_format(["<answer>1</answer>"], answer=["1"], prompt=["p"]) == [1.0]


# --------------------------------------------------------------------------- answer_correct


@pytest.mark.parametrize(
    "completion, gold, expected",
    [
        ("<answer>42</answer>", "42", 2.0),
        ("<answer> 42 </answer>", "42", 2.0),
        ("<answer>\n42\n</answer>\n", "42", 2.0),
        ("<answer>42.0</answer>", "42", 2.0),
        ("<answer>42</answer>", "42.00", 2.0),
        ("<answer>1,000</answer>", "1000", 2.0),
        ("<answer>1000</answer>", "1,000", 2.0),
        ("<answer>1000</answer>", 1000, 2.0),
        ("<answer>0.5</answer>", 0.5, 2.0),
        ("<answer>0.1</answer>", 0.1, 2.0),
        ("<answer>-5</answer>", "-5", 2.0),
        ("<answer>5</answer>", "-5", 0.0),
        ("<answer>$18</answer>", "18", 2.0),
        ("<answer>42.01</answer>", "42", 0.0),
        ("<answer>41.999999999999999999</answer>", "42", 0.0),  # exact, not float, comparison
        ("<answer>7</answer> no wait <answer>42</answer>", "42", 2.0),
        ("<answer>42</answer> no wait <answer>7</answer>", "42", 0.0),
        ("<answer>42</answer> then <answer>7", "42", 2.0),  # unclosed last tag is not an answer
        ("<answer>12 apples</answer>", "12", 2.0),  # math-verify drops the unit, as MATH graders do
        ("<answer>13 apples</answer>", "12", 0.0),
        ("42", "42", 0.0),
        ("", "42", 0.0),
        ("<answer></answer>", "42", 0.0),
        ("</answer>42<answer>", "42", 0.0),
        ("<answer>Paris</answer>", "Paris", 2.0),
        ("<answer> Paris </answer>", " Paris\n", 2.0),
        ("<answer>paris</answer>", "Paris", 0.0),
        ("<answer>🙂</answer>", "🙂", 2.0),
        ("<answer>72</answer>", "Natalia sold 48/2 = 24 clips.\n#### 72", 2.0),  # full GSM8K solution
    ],
)
def test_answer_correct(completion, gold, expected):
    assert answer_correct([completion], answer=[gold]) == [expected]


def test_answer_correct_batch_and_none_gold():
    scores = answer_correct(
        ["<answer>85</answer>", "<answer>11</answer>", "<answer>3</answer>"],
        answer=["85", "12", None],
        prompt=["a", "b", "c"],
    )
    assert scores == [2.0, 0.0, None]


def test_answer_correct_misaligned_column_raises():
    with pytest.raises(ValueError):
        answer_correct(["<answer>1</answer>"], answer=["1", "2"])


# --------------------------------------------------------------------------- boxed_correct


@pytest.mark.parametrize(
    "completion, gold, expected",
    [
        (r"\boxed{42}", "42", 1.0),
        (r"The answer is $\boxed{42.0}$.", 42, 1.0),
        (r"\boxed{ 1,000 }", "1000", 1.0),
        (r"\boxed{-3}", "-3", 1.0),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}", 1.0),
        (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}", 1.0),
        (r"\boxed{\frac{1}{2}}", "0.5", 1.0),  # math equivalence, not string equality (math-verify)
        (r"\boxed{\frac{1}{3}}", "0.5", 0.0),
        (r"\boxed{1} hmm \boxed{2}", "2", 1.0),
        (r"\boxed{2} hmm \boxed{1}", "2", 0.0),
        (r"\boxed{2} hmm \boxed{1", "2", 0.0),  # last box is unclosed
        (r"\boxed{\frac{1}{2}", r"\frac{1}{2}", 0.0),  # unbalanced braces
        (r"\boxed{}", "", 1.0),
        (r"\boxed{}", "0", 0.0),
        ("boxed{42}", "42", 0.0),
        ("", "42", 0.0),
        (r"\boxed{x^{2}+1}", "x^{2}+1", 1.0),
        (r"\boxed{🙂}", "🙂", 1.0),
    ],
)
def test_boxed_correct(completion, gold, expected):
    assert boxed_correct([completion], answer=[gold]) == [expected]


def test_boxed_correct_none_gold():
    assert boxed_correct([r"\boxed{1}"], answer=[None], other=[1]) == [None]


# --------------------------------------------------------------------------- think_format


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<think>reason</think>answer", 1.0),
        ("\n  <think>\nreason\n</think>\n\n<answer>5</answer>\n\n", 1.0),
        ("<think></think> 5", 1.0),
        ("<think>🤔</think>🙂", 1.0),
        ("<think>reason</think>", 0.0),
        ("<think>reason</think>  \n\t", 0.0),
        ("prefix <think>reason</think> answer", 0.0),
        ("<think>a</think> b <think>c</think> d", 0.0),
        ("<think>a<think>b</think> c", 0.0),
        ("<think>a</think></think> c", 0.0),
        ("<think>never closed answer", 0.0),
        ("</think><think>x", 0.0),
        ("answer only", 0.0),
        ("", 0.0),
    ],
)
def test_think_format(completion, expected):
    assert think_format([completion]) == [expected]


# --------------------------------------------------------------------------- length_penalty


def test_length_penalty_piecewise_linear():
    texts = ["x" * n for n in (0, 90, 100, 125, 150, 175, 200, 201, 10_000)]
    assert length_penalty(texts, max_length=200, cache_length=100) == [
        0.0, 0.0, 0.0, -0.25, -0.5, -0.75, -1.0, -1.0, -1.0,
    ]


def test_length_penalty_defaults_and_unicode():
    assert length_penalty(["", "🙂" * 384, "🙂" * 448, "🙂" * 512, "🙂" * 600]) == [0.0, 0.0, -0.5, -1.0, -1.0]


def test_length_penalty_token_counts_and_per_row_params():
    assert length_penalty(["a", "b", "c"], max_length=10, cache_length=4, completion_lengths=[6, 8, 50]) == [
        0.0, -0.5, -1.0,
    ]
    assert length_penalty(["aaaa", "aaaa"], max_length=[4, 100], cache_length=[2, 10]) == [-1.0, 0.0]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_length": 0},
        {"max_length": -5},
        {"max_length": 10, "cache_length": 11},
        {"max_length": 10, "cache_length": -1},
        {"max_length": "10"},
        {"max_length": float("nan")},
        {"completion_lengths": ["5"]},
    ],
)
def test_length_penalty_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        length_penalty(["abc"], **kwargs)


def test_chat_format_completions():
    chat = [{"role": "assistant", "content": "<think>t</think><answer>3</answer>"}]
    assert think_format([chat]) == [1.0]
    assert answer_correct([chat], answer=["3"]) == [2.0]
    assert answer_format([[]]) == [0.0]


# --------------------------------------------------------------------------- fuzz

TAGGED_TEXT = st.one_of(
    st.text(),
    st.builds(
        lambda a, b, c, d: a + b + c + d,
        st.text(max_size=20),
        st.sampled_from(["<answer>", "</answer>", "<think>", "</think>", "\\boxed{", "{", "}", "\n", "####"]),
        st.text(alphabet="0123456789-+.,$ {}<>/\\boxedthinkanswer\n", max_size=20),
        st.sampled_from(["</answer>", "<answer>", "</think>", "}", "}}", "", "\n\n"]),
    ),
)
GOLDS = st.one_of(
    st.text(),
    st.text(alphabet="0123456789-+.,$ e#", max_size=15),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=True, allow_infinity=True),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=TAGGED_TEXT, gold=GOLDS)
def test_fuzz_builtins_never_raise_and_stay_in_range(text, gold):
    for name in BUILTIN_NAMES:
        fn = REWARDS[name]
        low, high = fn.reward_range
        scores = fn([text, text], answer=[gold, gold], unrelated=[None, None])
        assert len(scores) == 2
        for score in scores:
            assert isinstance(score, float)
            assert math.isfinite(score) and low <= score <= high


@settings(max_examples=200, deadline=None)
@given(text=st.text())
def test_fuzz_parse_number_never_raises(text):
    value = parse_number(text)
    assert value is None or (isinstance(value, Decimal) and value.is_finite())


@settings(max_examples=200, deadline=None)
@given(
    number=st.one_of(st.integers(), st.decimals(allow_nan=False, allow_infinity=False, places=3)),
    noise=st.text(alphabet=" \n\t", max_size=3),
)
def test_fuzz_answer_correct_recognises_its_own_number(number, noise):
    text = f"work\n<answer>{noise}{number}{noise}</answer>{noise}"
    assert answer_correct([text], answer=[str(number)]) == [2.0]
    # formatting-only changes keep the answer correct
    assert answer_correct([text], answer=[f"{Decimal(number):.4f}"]) == [2.0]


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=0, max_value=2000), min_size=2, max_size=2),
    max_length=st.integers(min_value=1, max_value=1000),
    cache_fraction=st.floats(min_value=0.0, max_value=1.0),
)
def test_fuzz_length_penalty_range_and_monotone(lengths, max_length, cache_fraction):
    cache = int(max_length * cache_fraction)
    short, long_ = sorted(lengths)
    scores = length_penalty(["", ""], max_length=max_length, cache_length=cache, completion_lengths=[short, long_])
    assert all(-1.0 <= s <= 0.0 for s in scores)
    assert scores[0] >= scores[1]


# --------------------------------------------------------------------------- registry / plugins


def test_register_reward_and_conflicts():
    name = "test_rewards__constant"
    try:
        @register_reward(name)
        def constant(completions, **_):
            return [0.5] * len(completions)

        assert get_reward(name) is constant
        register_reward(name)(constant)  # same function again: fine

        def other(completions, **_):
            return [0.0] * len(completions)

        with pytest.raises(RewardError, match="already registered"):
            register_reward(name)(other)
        assert get_reward(name) is constant

        register_reward(name, overwrite=True)(other)
        assert get_reward(name) is other
    finally:
        REWARDS.pop(name, None)

    with pytest.raises(RewardError):
        register_reward("bad:name")
    with pytest.raises(RewardError):
        register_reward("")


def test_get_reward_builtin_and_callable():
    assert get_reward("answer_correct") is answer_correct
    assert get_reward(think_format) is think_format
    assert get_reward("alignlab.rewards.builtin:boxed_correct") is boxed_correct


def test_get_reward_unknown_name_suggests():
    with pytest.raises(RewardError, match="answer_correct") as info:
        get_reward("answer_corect")
    assert isinstance(info.value, AlignlabError)
    with pytest.raises(RewardError):
        get_reward("")
    with pytest.raises(RewardError):
        get_reward(42)


PLUGIN_SOURCE = textwrap.dedent(
    """
    HELPER_VALUE = 3.0

    def shout(completions, **_):
        return [1.0 if c.isupper() else 0.0 for c in completions]

    def needs_gold(completions, gold):
        return [float(c == g) for c, g in zip(completions, gold)]

    NOT_A_FUNCTION = 7
    """
)


def test_get_reward_from_file(tmp_path, monkeypatch):
    plugin = tmp_path / "sub dir" / "my_rewards.py"
    plugin.parent.mkdir()
    plugin.write_text(PLUGIN_SOURCE)

    fn = get_reward(f"{plugin}:shout")
    assert fn(["ABC", "abc"]) == [1.0, 0.0]

    monkeypatch.chdir(tmp_path)
    relative = get_reward("sub dir/my_rewards.py:needs_gold")
    assert relative(["a", "b"], gold=["a", "c"]) == [1.0, 0.0]

    with pytest.raises(RewardError, match="no attribute 'missing'") as info:
        get_reward(f"{plugin}:missing")
    assert "shout" in str(info.value)
    with pytest.raises(RewardError, match="not a function"):
        get_reward(f"{plugin}:NOT_A_FUNCTION")
    with pytest.raises(RewardError, match="does not exist"):
        get_reward(f"{tmp_path / 'nope.py'}:shout")


def test_get_reward_from_broken_file(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('plugin exploded')\n")
    with pytest.raises(RewardError, match="plugin exploded"):
        get_reward(f"{broken}:fn")
    syntax = tmp_path / "syntax.py"
    syntax.write_text("def f(:\n")
    with pytest.raises(RewardError, match="SyntaxError"):
        get_reward(f"{syntax}:f")


def test_get_reward_from_module(tmp_path, monkeypatch):
    package = tmp_path / "test_rewards_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "scoring.py").write_text(PLUGIN_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))

    fn = get_reward("test_rewards_pkg.scoring:shout")
    assert fn(["HI"]) == [1.0]
    with pytest.raises(RewardError, match="cannot import module"):
        get_reward("test_rewards_pkg.nope:shout")
    with pytest.raises(RewardError, match="no attribute"):
        get_reward("test_rewards_pkg.scoring:nope")


# --------------------------------------------------------------------------- score_completions


def _const(value):
    def fn(completions, **_):
        return [value] * len(completions)

    return fn


def test_weighted_combination_hand_computed():
    completions = ["<think>a</think><answer>85</answer>", "<answer>12</answer>", "no tags"]
    scores = score_completions(
        [("correct", answer_correct), ("format", answer_format), ("think", think_format)],
        [1.0, 0.5, -0.25],
        completions,
        {"answer": ["85", "13", "1"], "prompt": ["p1", "p2", "p3"]},
    )
    assert isinstance(scores, RewardScores)
    assert scores.per_function == {
        "correct": [2.0, 0.0, 0.0],
        "format": [0.0, 1.0, 0.0],  # row 0: the answer tag is not on its own line
        "think": [1.0, 0.0, 0.0],
    }
    # row 0: 1*2 + 0.5*0 - 0.25*1 ; row 1: 0.5*1 ; row 2: 0
    assert scores.total == pytest.approx([1.75, 0.5, 0.0])
    assert scores.errors == []


def test_none_contributes_nothing_and_all_none_is_unscorable():
    scores = score_completions(
        [("gold", answer_correct), ("half", _const(0.5))],
        [2.0, 3.0],
        ["<answer>1</answer>", "<answer>1</answer>"],
        {"answer": ["1", None]},
    )
    assert scores.per_function["gold"] == [2.0, None]
    assert scores.total == pytest.approx([5.5, 1.5])

    # Every function None: unscorable (NaN), never a 0 that would pass for a real score.
    scores = score_completions([("n", _const(None)), ("m", _const(None))], [1.0, 1.0], ["a", "b"], {})
    assert all(math.isnan(t) for t in scores.total)
    assert scores.error_rows == {"n": 0, "m": 0}  # None by choice is not an error


def test_only_declared_columns_are_passed():
    seen = {}

    def declared(completions, answer, extra=None):
        seen["declared"] = (answer, extra)
        return [0.0] * len(completions)

    def takes_all(completions, **kwargs):
        seen["all"] = sorted(kwargs)
        return [0.0] * len(completions)

    score_completions(
        [("declared", declared), ("all", takes_all)], [1.0, 1.0], ["x"], {"answer": ["1"], "prompt": ["p"]}
    )
    assert seen["declared"] == (["1"], None)
    assert seen["all"] == ["answer", "prompt"]


def test_missing_required_column():
    with pytest.raises(RewardError) as info:
        score_completions([("correct", answer_correct)], [1.0], ["<answer>1</answer>"], {"prompt": ["p"]})
    message = str(info.value)
    assert "'correct'" in message and "'answer'" in message and "prompt" in message


def test_raising_function_names_function_and_row():
    def picky(completions, **_):
        out = []
        for c in completions:
            if c == "bad":
                raise ZeroDivisionError("cannot score this")
            out.append(1.0)
        return out

    with pytest.raises(RewardError) as info:
        score_completions([("picky", picky)], [1.0], ["ok", "ok", "bad", "ok"], {})
    message = str(info.value)
    assert "'picky'" in message and "row 2" in message and "cannot score this" in message

    scores = score_completions([("picky", picky), ("one", _const(1.0))], [1.0, 2.0], ["ok", "bad"], {}, on_error="none")
    assert scores.per_function["picky"] == [1.0, None]
    assert scores.total == [3.0, 2.0]
    assert any("row 1" in e and "cannot score this" in e for e in scores.errors)


def test_wrong_length():
    def short(completions, **_):
        return [1.0]

    with pytest.raises(RewardError, match=r"'short' returned 1 values for 3 completions"):
        score_completions([("short", short)], [1.0], ["a", "b", "c"], {})
    with pytest.raises(RewardError, match="'scalar'"):
        score_completions([("scalar", lambda completions: 1.0)], [1.0], ["a"], {})

    scores = score_completions([("short", short)], [1.0], ["a", "b", "c"], {}, on_error="none")
    assert scores.per_function["short"] == [1.0, 1.0, 1.0]  # re-run row by row
    assert scores.errors


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "1.0", [1.0], object(), 1j])
def test_bad_values(bad):
    def fn(completions, **_):
        return [0.5, bad, 0.25]

    with pytest.raises(RewardError) as info:
        score_completions([("fn", fn)], [1.0], ["a", "b", "c"], {})
    assert "'fn'" in str(info.value) and "row 1" in str(info.value)

    scores = score_completions([("fn", fn)], [2.0], ["a", "b", "c"], {}, on_error="none")
    assert scores.per_function["fn"] == [0.5, None, 0.25]
    assert scores.total[0] == 1.0 and math.isnan(scores.total[1]) and scores.total[2] == 0.5
    assert scores.error_rows == {"fn": 1}


def test_numeric_like_values_are_accepted():
    scores = score_completions([("d", lambda c: (Decimal("0.5"), 1, True))], [1.0], ["a", "b", "c"], {})
    assert scores.per_function["d"] == [0.5, 1.0, 1.0]
    assert all(isinstance(v, float) for v in scores.per_function["d"])


def test_invalid_arguments():
    with pytest.raises(RewardError, match="weights"):
        score_completions([("a", _const(1.0))], [1.0, 2.0], ["x"], {})
    with pytest.raises(RewardError, match="weight 0"):
        score_completions([("a", _const(1.0))], [float("nan")], ["x"], {})
    with pytest.raises(RewardError, match="on_error"):
        score_completions([("a", _const(1.0))], [1.0], ["x"], {}, on_error="ignore")
    with pytest.raises(RewardError, match="'answer' has 2 values"):
        score_completions([("a", _const(1.0))], [1.0], ["x"], {"answer": ["1", "2"]})
    with pytest.raises(RewardError, match="twice"):
        score_completions([("a", _const(1.0)), ("a", _const(2.0))], [1.0, 1.0], ["x"], {})
    with pytest.raises(RewardError, match="not callable"):
        score_completions([("a", 3)], [1.0], ["x"], {})


def test_empty_batch():
    scores = score_completions([("correct", answer_correct)], [1.0], [], {"answer": []})
    assert scores.total == [] and scores.per_function == {"correct": []}


def test_builtins_through_score_completions_with_odd_strings():
    completions = ["", "\n\n", "🙂" * 600, "<answer> 1,000 </answer>\n", "<think>x</think>\\boxed{\\frac{1}{2}}"]
    fns = [(name, REWARDS[name]) for name in BUILTIN_NAMES]
    scores = score_completions(fns, [1.0] * len(fns), completions, {"answer": ["1000", "1", "x", "1000", r"\frac{1}{2}"]})
    assert scores.per_function["answer_correct"] == [0.0, 0.0, 0.0, 2.0, 0.0]
    assert scores.per_function["boxed_correct"] == [0.0, 0.0, 0.0, 0.0, 1.0]
    assert scores.per_function["think_format"] == [0.0, 0.0, 0.0, 0.0, 1.0]
    assert scores.per_function["length_penalty"] == [0.0, 0.0, -1.0, 0.0, 0.0]
    assert all(math.isfinite(t) for t in scores.total)


def test_batch_only_failure_and_columns_to_length_penalty():
    def batch_hater(completions, **_):
        if len(completions) > 1:
            raise RuntimeError("only one at a time")
        return [1.0]

    with pytest.raises(RewardError, match="on the batch"):
        score_completions([("b", batch_hater)], [1.0], ["a", "b"], {})
    scores = score_completions([("b", batch_hater)], [1.0], ["a", "b"], {}, on_error="none")
    assert scores.per_function["b"] == [1.0, 1.0]

    scores = score_completions(
        [("len", length_penalty)], [0.5], ["a", "b"], {"completion_lengths": [600, 10], "completions": ["z", "z"]}
    )
    assert scores.per_function["len"] == [-1.0, 0.0]
    assert scores.total == [-0.5, 0.0]
