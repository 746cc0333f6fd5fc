"""Public datasets as published (rows written by hand in each set's column layout): detection, reading, drops,
data.format, the no-format error, and one DPO run on SHP rows and one GRPO run on MATH rows through the CLI."""
from __future__ import annotations

import logging
import math

import pytest

from alignlab.config import DATA_FORMATS, load_config
from alignlab.data.io import Row
from alignlab.data.preference import PreferenceExample, load_preference_source
from alignlab.data.prompts import PromptItem, load_prompt_items, prompt_item
from alignlab.data.public_formats import FORMAT_NAMES, FORMATS, detect
from alignlab.data.ranked_pairs import build_pairs
from alignlab.data.templates import EncodeStats
from alignlab.errors import ConfigError, DataError
from conftest import base_args, read_jsonl, run_cli, train_records, write_jsonl

# -- rows in the published layouts -------------------------------------------------------------------------


def shp(history="What should I bring to a PhD interview?", a="A notebook and questions.", b="Nothing.",
        labels=1, score_ratio=2.6):
    """stanfordnlp/SHP: every published column."""
    return {"post_id": "himc90", "domain": "askacademia_train", "upvote_ratio": 0.99, "history": history,
            "c_root_id_A": "fu0t7w9", "c_root_id_B": "fu0pxh6", "created_at_utc_A": 1593286245,
            "created_at_utc_B": 1593284440, "score_A": 52, "score_B": 20, "human_ref_A": a, "human_ref_B": b,
            "labels": labels, "seconds_difference": 1805.0, "score_ratio": score_ratio}


def webgpt(question="Why is the sky blue?", answer_0="Rayleigh scattering [1].", answer_1="Because of the sea.",
           score_0=1.0, score_1=-1.0):
    """openai/webgpt_comparisons: every published column (the question is a dict with full_text)."""
    quotes = {"title": ["Rayleigh scattering - Wikipedia"], "extract": ["Shorter wavelengths scatter more."]}
    tokens = {"tokens": ["Ray", "leigh"], "token_ids": [1, 2]}
    return {"question": {"dataset": "eli5", "id": "3tdxu2", "full_text": question},
            "quotes_0": quotes, "answer_0": answer_0, "tokens_0": tokens, "score_0": score_0,
            "quotes_1": quotes, "answer_1": answer_1, "tokens_1": tokens, "score_1": score_1}


def completion(response, overall=None, fine=None, ratings=("4", "5", "3", "N/A"), model="alpaca-7b"):
    """One entry of openbmb/UltraFeedback's completions."""
    aspects = ("helpfulness", "honesty", "instruction_following", "truthfulness")
    value = {"annotations": {a: {"Rating": r, "Rationale": "..."} for a, r in zip(aspects, ratings)},
             "critique": "Mostly right.", "custom_system_prompt": "Be helpful.", "model": model,
             "principle": "helpfulness", "response": response}
    if overall is not None:
        value["overall_score"] = overall
    if fine is not None:
        value["fine-grained_score"] = fine
    return value


def ultrafeedback(completions, instruction="Name a prime number between 10 and 20."):
    return {"source": "evol_instruct", "instruction": instruction, "models": ["alpaca-7b", "pythia-12b"],
            "completions": completions, "correct_answers": ["None"], "incorrect_answers": ["None"]}


MATH_ROW = {"problem": r"What is $\frac{1}{2} + \frac{1}{4}$?", "level": "Level 1", "type": "Prealgebra",
            "solution": r"We have $\frac{1}{2} = \frac{2}{4}$, so the sum is $\boxed{\frac{3}{4}}$."}


def rows(values_list, source="data.jsonl"):
    return [Row(values, source, number) for number, values in enumerate(values_list, start=1)]


def load(values_list, **options):
    return load_preference_source(rows(values_list), skip_bad_rows=options.pop("skip_bad_rows", False), **options)


# -- detection ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values, kind, name", [
    (shp(), "preference", "shp"),
    (webgpt(), "preference", "webgpt"),
    (ultrafeedback([completion("11", 8.0)]), "preference", "ultrafeedback"),
    ({"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"}, "preference", "preference"),
    ({"chosen": "\n\nHuman: Hi\n\nAssistant: Hello", "rejected": "\n\nHuman: Hi\n\nAssistant: No"}, "preference",
     "preference"),  # HH-RLHF
    ({"prompt": "p", "prompt_id": "x", "chosen": [], "rejected": [], "messages": [], "score_chosen": 8.0,
      "score_rejected": 4.0}, "preference", "preference"),  # UltraFeedback-binarized: explicit chosen/rejected win
    (MATH_ROW, "prompt", "math"),
    ({"problem": "1+1?", "answer": "2", "solution": r"\boxed{2}"}, "prompt", "math-answer"),  # DeepScaleR
    ({"problem": "1+1?", "solution": r"so \boxed{2}", "answer": "2", "subject": "Algebra", "level": 1,
      "unique_id": "test/algebra/1.json"}, "prompt", "math-answer"),  # MATH-500: the given answer is used
    ({"source": "olympiads", "problem": "1+1?", "solution": r"\boxed{2}",
      "messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": r"\boxed{2}"}]},
     "prompt", "math"),  # NuminaMath-CoT has problem and solution too
    ({"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": r"\boxed{2}"}]},
     "prompt", "math-messages"),
    ({"question": "1+1?", "answer": "1+1=2\n#### 2"}, "prompt", "gsm8k"),
    ({"prompt": "1+1?", "answer": "2"}, "prompt", "prompt"),
])
def test_detection_from_published_columns(values, kind, name):
    assert detect(values, kind) is FORMATS[name]


def test_config_lists_every_format():
    assert DATA_FORMATS == FORMAT_NAMES
    assert load_config("dpo", None, ["data.format=shp", "data.min_score_ratio=2"]).data.format == "shp"
    with pytest.raises(ConfigError, match="data.format must be one of auto, preference, shp"):
        load_config("dpo", None, ["data.format=stanford"])
    with pytest.raises(ConfigError, match="data.min_score_ratio must be positive"):
        load_config("dpo", None, ["data.min_score_ratio=0"])


def test_detected_format_is_logged_once_per_source(caplog):
    with caplog.at_level(logging.INFO, logger="alignlab"):
        load([shp(), shp(labels=0)], label="data.train (shp.jsonl)")
    lines = [r.getMessage() for r in caplog.records if "detected" in r.getMessage()]
    assert lines == ["data.train (shp.jsonl): detected Stanford SHP format (history, human_ref_A/B, labels): "
                     "2 examples from 2 rows"]


# -- Stanford SHP -------------------------------------------------------------------------------------------


def test_shp_labels_pick_the_chosen_comment():
    examples, report = load([shp(a="Questions.", b="Nothing.", labels=1), shp(a="Nothing.", b="Questions.", labels=0)])
    assert examples == [
        PreferenceExample("What should I bring to a PhD interview?", "Questions.", "Nothing.", "data.jsonl, line 1"),
        PreferenceExample("What should I bring to a PhD interview?", "Questions.", "Nothing.", "data.jsonl, line 2"),
    ]
    assert report.format.name == "shp" and not report.dropped


def test_shp_min_score_ratio_keeps_strong_preferences_and_counts_the_rest():
    examples, report = load([shp(score_ratio=2.6), shp(score_ratio=1.2), shp(score_ratio=2.0)], min_score_ratio=2.0)
    assert [e.source for e in examples] == ["data.jsonl, line 1", "data.jsonl, line 3"]
    assert report.dropped == {"pairs with score_ratio below data.min_score_ratio=2": 1}
    no_ratio = shp()
    del no_ratio["score_ratio"]
    with pytest.raises(DataError, match="line 1, field 'score_ratio': missing"):
        load([no_ratio], min_score_ratio=2.0)
    with pytest.raises(DataError, match="data.min_score_ratio=2 applies to Stanford SHP rows.*WebGPT"):
        load([webgpt()], min_score_ratio=2.0)


@pytest.mark.parametrize("change, field, needle", [
    ({"labels": 2}, "labels", "expected 1 (human_ref_A preferred) or 0"),
    ({"human_ref_B": "  "}, "human_ref_B", "empty"),
    ({"history": None}, "history", "expected a string"),
    ({"human_ref_B": "A notebook and questions. "}, "human_ref_B", "identical to human_ref_A"),
])
def test_shp_bad_rows_name_row_and_field(change, field, needle):
    with pytest.raises(DataError) as info:
        load([shp(), {**shp(), **change}])
    assert f"data.jsonl, line 2, field '{field}'" in str(info.value) and needle in str(info.value)


def test_a_row_that_does_not_fit_the_detected_format_names_it():
    broken = shp()
    del broken["labels"]
    with pytest.raises(DataError) as info:
        load([shp(), broken])
    message = str(info.value)
    assert "line 2, field 'labels': missing; Stanford SHP rows have history, human_ref_A/B, labels" in message
    examples, report = load([shp(), broken, shp()], skip_bad_rows=True)
    assert len(examples) == 2 and report.skipped == 1


# -- WebGPT comparisons -------------------------------------------------------------------------------------


def test_webgpt_higher_score_is_chosen_and_ties_are_dropped_and_counted():
    examples, report = load([
        webgpt(score_0=1.0, score_1=-1.0),
        webgpt(score_0=-0.5, score_1=0.5),
        webgpt(score_0=0.0, score_1=0.0),  # a tie: no preference
        webgpt(score_0=0.0, score_1=0.0, answer_0="", answer_1=""),  # a tie is dropped before its texts are read
    ])
    assert [(e.prompt, e.chosen, e.rejected) for e in examples] == [
        ("Why is the sky blue?", "Rayleigh scattering [1].", "Because of the sea."),
        ("Why is the sky blue?", "Because of the sea.", "Rayleigh scattering [1]."),
    ]
    assert report.dropped == {"ties": 2} and report.rows == 4 and report.examples == 2
    stats = EncodeStats(examples=2)
    stats.dropped.update(report.dropped)
    assert stats.summary() == "2 examples, dropped 2 ties"  # the trainer's load report


@pytest.mark.parametrize("change, field, needle", [
    ({"question": "Why is the sky blue?"}, "question.full_text", "mapping with a non-empty 'full_text'"),
    ({"score_1": "high"}, "score_1", "expected a finite number"),
    ({"score_0": math.nan}, "score_0", "expected a finite number"),
    ({"answer_1": ""}, "answer_1", "empty"),
])
def test_webgpt_bad_rows_name_row_and_field(change, field, needle):
    with pytest.raises(DataError) as info:
        load([{**webgpt(), **change}])
    assert f"line 1, field '{field}'" in str(info.value) and needle in str(info.value)


# -- raw UltraFeedback --------------------------------------------------------------------------------------


def test_ultrafeedback_best_vs_worst_by_overall_score():
    row = ultrafeedback([completion("13", 8.5), completion("12", 2.0), completion("17", 7.0), completion("15", 2.0)])
    (example,), report = load([row])
    assert (example.prompt, example.chosen, example.rejected) == ("Name a prime number between 10 and 20.", "13", "12")
    assert not report.dropped


def test_ultrafeedback_ties_are_never_paired_and_missing_ratings_are_left_out():
    tied = ultrafeedback([completion("13", 6.0), completion("11", 6.0)])
    partial = ultrafeedback([completion("13", 7.0), completion("12", math.nan), completion("11", None),
                             completion("", 9.0), completion("14", 3.0)])
    examples, report = load([tied, partial])
    assert [(e.chosen, e.rejected) for e in examples] == [("13", "14")]
    assert report.dropped == {"ties (rows whose completions all have the same rating)": 1,
                              "completions without a rating or a response (left out)": 3}


def test_ultrafeedback_rating_falls_back_to_fine_grained_then_annotations():
    fine = ultrafeedback([completion("13", fine=4.75), completion("12", fine=1.5)])
    annotated = ultrafeedback([completion("13", ratings=("5", "5", "4", "N/A")),
                               completion("12", ratings=("1", "2", "1", "1"))])
    examples, _ = load([fine, annotated])
    assert [(e.chosen, e.rejected) for e in examples] == [("13", "12"), ("13", "12")]


def test_ultrafeedback_bad_rows_name_the_field():
    with pytest.raises(DataError, match=r"line 1, field 'completions\[1\].overall_score': expected a finite number"):
        load([ultrafeedback([completion("13", 8.0), completion("12", "high")])])
    with pytest.raises(DataError, match="line 1, field 'completions': expected a list of completions"):
        load([ultrafeedback("13")])


def test_pairs_command_accepts_raw_ultrafeedback(tmp_path, cli):
    source = write_jsonl([
        ultrafeedback([completion("13", 8.5), completion("12", 2.0), completion("17", 7.0)]),
        ultrafeedback([completion("13", 5.0), completion("11", 5.0)]),
    ], tmp_path / "ultrafeedback.jsonl")
    result = cli(["pairs", source, tmp_path / "pairs.jsonl", "--strategy", "best-vs-rest"])
    assert result.code == 0, result.err
    assert read_jsonl(tmp_path / "pairs.jsonl") == [
        {"prompt": "Name a prime number between 10 and 20.", "chosen": "13", "rejected": "12",
         "score_chosen": 8.5, "score_rejected": 2.0},
        {"prompt": "Name a prime number between 10 and 20.", "chosen": "13", "rejected": "17",
         "score_chosen": 8.5, "score_rejected": 7.0},
    ]
    assert "2 pairs from 2 prompts" in result.out and "all have equal scores" in result.out
    out, stats = build_pairs(rows([ultrafeedback([completion("a", 1.0), completion("b", 2.0)])]), strategy="all-pairs")
    assert [(p["chosen"], p["rejected"]) for p in out] == [("b", "a")]


# -- no format, data.format ---------------------------------------------------------------------------------


def test_a_row_in_no_format_lists_the_formats_and_the_columns():
    with pytest.raises(DataError) as info:
        load([{"question": "Hi", "good": "Hello", "bad": "Go away"}])
    message = str(info.value)
    assert "data.jsonl, line 1, field 'chosen': missing; columns found: bad, good, question" in message
    for title in ("prompt/chosen/rejected", "Stanford SHP", "WebGPT comparisons", "UltraFeedback ratings"):
        assert title in message
    assert "data.columns.chosen=<your column>" in message and "data.format=<name>" in message
    ranked = {"prompt": "2+2?", "responses": ["4", "5"], "scores": [1, 0]}
    with pytest.raises(DataError, match="alignlab pairs IN OUT"):
        load([ranked])


def test_data_format_forces_a_format():
    # A file with both layouts: detection takes the explicit chosen/rejected columns; data.format=shp the labels.
    both = {**shp(a="Questions.", b="Nothing.", labels=0), "prompt": "Q", "chosen": "x", "rejected": "y"}
    assert load([both])[0][0].chosen == "x"
    examples, report = load([both], format="shp")
    assert examples[0].chosen == "Nothing." and report.forced
    with pytest.raises(DataError, match="data.format=math is not a preference format; for this data use auto or "
                                        "one of preference, shp, webgpt, ultrafeedback"):
        load([shp()], format="math")
    with pytest.raises(DataError, match="line 1, field 'question': missing; WebGPT comparisons rows have"):
        load([shp()], format="webgpt")


# -- MATH-style prompt rows -----------------------------------------------------------------------------------


def test_math_gold_is_the_last_boxed_with_nested_braces():
    item = prompt_item(Row({**MATH_ROW, "solution": MATH_ROW["solution"] + r" Check: $\boxed{\dfrac{3}{4}}$"}, "m", 1))
    assert item.prompt == MATH_ROW["problem"]
    assert item.columns["answer"] == r"\dfrac{3}{4}"
    assert item.columns["level"] == "Level 1" and item.columns["solution"].startswith("We have")
    assert "problem" not in item.columns


@pytest.mark.parametrize("values, answer", [
    ({"problem": "p", "answer": r"\frac{1}{2}"}, r"\frac{1}{2}"),
    ({"problem": "p", "answer": r"The answer is $\boxed{x \in [2, \infty)}$."}, r"x \in [2, \infty)"),
    ({"problem": "p", "answer": 42}, 42),
    ({"problem": "p", "answer": " 10\\% "}, "10\\%"),
])
def test_problem_answer_rows(values, answer):
    assert prompt_item(Row(values, "d", 1)).columns["answer"] == answer


def test_numinamath_messages():
    system = {"role": "system", "content": "Think step by step."}
    messages = [system, {"role": "user", "content": "What is 2+3?"},
                {"role": "assistant", "content": r"2+3 = 5, so $\boxed{5}$."}]
    item = prompt_item(Row({"messages": messages, "source": "synthetic_math"}, "n", 1))
    assert item.prompt == messages[:2]
    assert item.columns == {"source": "synthetic_math", "solution": r"2+3 = 5, so $\boxed{5}$.", "answer": "5"}


@pytest.mark.parametrize("values, field, needle", [
    ({"problem": "p", "solution": "So it is 4."}, "solution", "no \\boxed{...} in the solution"),
    ({"problem": "p", "solution": r"So \boxed{4"}, "solution", "never closed"),
    ({"problem": "", "solution": r"\boxed{4}"}, "problem", "empty"),
    ({"problem": "p", "answer": ["4"]}, "answer", "a string or a number"),
    ({"messages": [{"role": "user", "content": "p"}, {"role": "assistant", "content": "4"}]}, "messages", "no \\boxed"),
    ({"messages": [{"role": "assistant", "content": r"\boxed{4}"}]}, "messages", "non-empty user message"),
    ({"messages": [{"role": "user", "content": r"\boxed{4}"}]}, "messages", "no non-empty assistant message"),
])
def test_math_rows_without_a_gold_answer_name_the_field(values, field, needle):
    with pytest.raises(DataError) as info:
        prompt_item(Row(values, "math.jsonl", 4))
    assert f"math.jsonl, line 4, field '{field}'" in str(info.value) and needle in str(info.value)


def test_prompt_sources_detect_log_and_force(tmp_path, caplog):
    path = write_jsonl([MATH_ROW, {**MATH_ROW, "solution": "no box"}, MATH_ROW], tmp_path / "math.jsonl")
    with caplog.at_level(logging.INFO, logger="alignlab"):
        items, skipped = load_prompt_items(str(path), skip_bad_rows=True, label="data.train (math.jsonl)")
    assert [i.columns["answer"] for i in items] == [r"\frac{3}{4}"] * 2 and skipped == 1
    assert ("data.train (math.jsonl): detected MATH format (problem, solution): 2 examples from 3 rows, "
            "1 bad rows skipped") in caplog.text
    forced = write_jsonl([{"problem": "p", "solution": r"\boxed{1}", "answer": "one"}], tmp_path / "forced.jsonl")
    assert load_prompt_items(str(forced))[0][0].columns["answer"] == "one"
    assert load_prompt_items(str(forced), format="math")[0][0].columns["answer"] == "1"
    with pytest.raises(DataError, match="data.format=shp is not a prompt format"):
        load_prompt_items(str(forced), format="shp")


def test_a_prompt_row_in_no_format_lists_the_formats():
    with pytest.raises(DataError) as info:
        prompt_item(Row({"question": "1+1?", "answer": "2"}, "q.jsonl", 1))
    message = str(info.value)
    assert "q.jsonl, line 1, field 'prompt': missing; columns found: answer, question" in message
    for title in ("GSM8K", "MATH", "NuminaMath messages", "problem/answer"):
        assert title in message


def test_gsm8k_still_loads():
    item = prompt_item(Row({"question": "Natalia has 3+4 clips?", "answer": "3+4=7\n#### 7"}, "g", 1))
    assert isinstance(item, PromptItem) and item.prompt.startswith("Natalia has 3+4 clips?\nSolve the problem")
    assert item.columns == {"solution": "3+4=7\n#### 7", "answer": "7"}


# -- end to end: the CLI trains on them ---------------------------------------------------------------------

GOLD_IS_THE_BOX = """
def gold_is_the_box(completions, answer, solution, **_):
    return [float(a != s and ("\\\\boxed{" + a + "}") in s) for a, s in zip(answer, solution)]
"""


@pytest.mark.slow
def test_dpo_trains_on_shp_rows(tmp_path, tiny_model_dir):
    rows_ = [shp(history=f"What is {i}+{i}?", a=f"<answer>{2 * i}</answer>", b=f"<answer>{2 * i + 7}</answer>",
                 labels=1, score_ratio=3.0) for i in range(8)]
    rows_ += [shp(history=f"What is {i}+1?", a=f"<answer>{i + 8}</answer>", b=f"<answer>{i + 1}</answer>",
                  labels=0, score_ratio=1.5 if i == 0 else 4.0) for i in range(8)]
    path = write_jsonl(rows_, tmp_path / "shp.jsonl")
    out = tmp_path / "dpo"
    result = run_cli(base_args("dpo", tiny_model_dir, path, out, "train.max_steps=6", "train.batch_size=8",
                               "train.lr=1e-3", "data.min_score_ratio=2"))
    assert result.code == 0
    log = (out / "train.log").read_text()
    assert f"data.train ({path}): detected Stanford SHP format (history, human_ref_A/B, labels)" in log
    assert "DPO train data: 15 examples, dropped 1 pairs with score_ratio below data.min_score_ratio=2" in log
    records = train_records(out)
    assert len(records) == 6 and all(math.isfinite(r["loss"]) for r in records)
    assert records[-1]["loss"] < records[0]["loss"]
    assert records[-1]["rewards/margins"] > 0


@pytest.mark.slow
def test_grpo_trains_on_math_rows(tmp_path, tiny_model_dir):
    plugin = tmp_path / "gold.py"
    plugin.write_text(GOLD_IS_THE_BOX)
    problems = [{"problem": f"What is {i} divided by {2 * i}?", "type": "Prealgebra",
                 "solution": rf"Dividing, $\frac{{{i}}}{{{2 * i}}} = \boxed{{\frac{{1}}{{2}}}}$."} for i in range(1, 5)]
    path = write_jsonl(problems, tmp_path / "math.jsonl")
    out = tmp_path / "grpo"
    result = run_cli(base_args("grpo", tiny_model_dir, path, out, "train.max_steps=2", "train.batch_size=2",
                               "grpo.num_generations=2", "grpo.max_completion_length=4",
                               f"grpo.rewards=[boxed_correct,{plugin}:gold_is_the_box]"))
    assert result.code == 0
    assert f"data.train ({path}): detected MATH format (problem, solution): 4 examples from 4 rows" in \
        (out / "train.log").read_text()
    records = train_records(out)
    assert len(records) == 2 and all(math.isfinite(r["loss"]) for r in records)
    assert all(r["rewards/gold_is_the_box/mean"] == 1.0 for r in records)  # the gold is the boxed \frac{1}{2}
