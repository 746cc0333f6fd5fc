"""Tests for alignlab.data.preference: every accepted pair format, validation messages, loading."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from alignlab.data.io import Row, read_rows, rename_columns
from alignlab.data.preference import (
    PreferenceExample,
    hh_to_messages,
    load_preference_rows,
    normalize_preference_row,
)
from alignlab.errors import DataError


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def system(text):
    return {"role": "system", "content": text}


def row(values, source="pairs.jsonl", index=3):
    return Row(values, source, index)


def error_for(values, source="pairs.jsonl", index=3) -> str:
    with pytest.raises(DataError) as info:
        normalize_preference_row(row(values, source, index))
    return str(info.value)


def assert_names(message: str, field: str, source="pairs.jsonl", place="line 3"):
    assert source in message
    assert place in message
    assert f"field '{field}'" in message


# -- format 1: explicit strings


def test_explicit_strings():
    example = normalize_preference_row(row({"prompt": "2+2?", "chosen": "4", "rejected": "5", "id": 7}))
    assert example == PreferenceExample("2+2?", "4", "5", "pairs.jsonl, line 3")


# -- format 2: conversational


def test_conversational_message_lists():
    values = {
        "prompt": [user("Hi")],
        "chosen": [assistant("Hello!")],
        "rejected": [{"role": "assistant", "content": "Go away.", "extra": 1}],
    }
    example = normalize_preference_row(row(values))
    assert example.prompt == [user("Hi")]
    assert (example.chosen, example.rejected) == ("Hello!", "Go away.")


def test_conversational_french_system_prompt_is_kept():
    french = "Tu es un assistant utile. Réponds en français."
    values = {
        "prompt": [system(french), user("Quelle est la capitale de la France ?")],
        "chosen": [assistant("La capitale de la France est Paris.")],
        "rejected": [assistant("The capital is Paris.")],
    }
    example = normalize_preference_row(row(values))
    assert example.prompt == [system(french), user("Quelle est la capitale de la France ?")]
    assert example.chosen == "La capitale de la France est Paris."


def test_conversational_multi_turn_prompt_with_string_replies():
    prompt = [user("Name a colour."), assistant("Blue."), user("Another one?")]
    example = normalize_preference_row(row({"prompt": prompt, "chosen": "Red.", "rejected": "Blue."}))
    assert example.prompt == prompt
    assert (example.chosen, example.rejected) == ("Red.", "Blue.")


def test_conversational_reply_with_several_messages_is_rejected():
    values = {"prompt": [user("Hi")], "chosen": [assistant("Hello"), assistant("again")], "rejected": [assistant("No")]}
    message = error_for(values)
    assert_names(message, "chosen")
    assert "single assistant message" in message


def test_conversational_reply_with_wrong_role():
    message = error_for({"prompt": [user("Hi")], "chosen": [user("Hello")], "rejected": [assistant("No")]})
    assert_names(message, "chosen")
    assert "'assistant'" in message


def test_prompt_must_end_with_user_turn():
    values = {"prompt": [user("Hi"), assistant("Hello")], "chosen": "a", "rejected": "b"}
    message = error_for(values)
    assert_names(message, "prompt")
    assert "must end with a user message" in message


# -- format 2b: a prompt column beside whole conversations (UltraFeedback-binarized)


def ultrafeedback(prompt, question="What is 2+2?"):
    return {"prompt": prompt, "chosen": [user(question), assistant("4")], "rejected": [user(question), assistant("5")],
            "score_chosen": 9.0, "score_rejected": 2.0}


def test_ultrafeedback_string_prompt_with_whole_conversations():
    example = normalize_preference_row(row(ultrafeedback("What is 2+2?")))
    assert example == PreferenceExample([user("What is 2+2?")], "4", "5", "pairs.jsonl, line 3")


def test_ultrafeedback_message_list_prompt_with_whole_conversations():
    example = normalize_preference_row(row(ultrafeedback([user("What is 2+2?")])))
    assert (example.prompt, example.chosen, example.rejected) == ([user("What is 2+2?")], "4", "5")


def test_prompt_column_with_multi_turn_conversations_keeps_the_shared_turns():
    shared = [system("Be brief."), user("Hi"), assistant("Hello."), user("Tell me a joke.")]
    values = {"chosen": shared + [assistant("Knock knock.")], "rejected": shared + [assistant("No.")]}
    for prompt in ("  Tell me a joke. ", shared):  # the turn they answer, or all the shared turns
        example = normalize_preference_row(row({"prompt": prompt, **values}))
        assert (example.prompt, example.chosen, example.rejected) == (shared, "Knock knock.", "No.")


@pytest.mark.parametrize(
    "prompt, fragment",
    [
        ("What is 3+3?", "the prompt is 'What is 3+3?' but the user turn they answer (message 0) is 'What is 2+2?'"),
        ([user("What is 3+3?")], "at message 0: the prompt has user 'What is 3+3?', they have user 'What is 2+2?'"),
        ([system("Hi"), user("What is 2+2?")], "at message 0: the prompt has system 'Hi'"),
    ],
)
def test_prompt_column_that_disagrees_with_the_conversations(prompt, fragment):
    message = error_for(ultrafeedback(prompt))
    assert_names(message, "prompt")
    assert fragment in message


def test_prompt_messages_must_be_all_the_shared_turns():
    shared = [user("Hi"), assistant("Hello."), user("Joke?")]
    values = {"prompt": shared[:1], "chosen": shared + [assistant("Knock knock.")], "rejected": shared + [assistant("No.")]}
    message = error_for(values)
    assert_names(message, "prompt")
    assert "has 1 messages but chosen and rejected share 3" in message


def test_prompt_column_with_conversations_that_share_no_prefix():
    values = {"prompt": "What is 2+2?", "chosen": [user("What is 2+2?"), assistant("4")],
              "rejected": [user("What is 3+3?"), assistant("6")]}
    message = error_for(values)
    assert_names(message, "rejected")
    assert "diverge at message 0" in message


def test_prompt_column_with_one_conversation_and_one_reply():
    values = {"prompt": "What is 2+2?", "chosen": [user("What is 2+2?"), assistant("4")], "rejected": [assistant("5")]}
    message = error_for(values)
    assert_names(message, "rejected")
    assert "chosen is a whole conversation" in message


# -- format 3: implicit prompt, message lists


def test_implicit_message_lists_single_turn():
    values = {
        "chosen": [user("What is 2+2?"), assistant("4")],
        "rejected": [user("What is 2+2?"), assistant("22")],
    }
    example = normalize_preference_row(row(values))
    assert example.prompt == [user("What is 2+2?")]
    assert (example.chosen, example.rejected) == ("4", "22")


def test_implicit_message_lists_multi_turn():
    shared = [system("Be brief."), user("Hi"), assistant("Hello."), user("Tell me a joke.")]
    values = {
        "chosen": shared + [assistant("Why did the chicken cross the road?")],
        "rejected": shared + [assistant("No.")],
    }
    example = normalize_preference_row(row(values))
    assert example.prompt == shared
    assert example.chosen == "Why did the chicken cross the road?"
    assert example.rejected == "No."


def test_implicit_message_lists_that_diverge_early():
    values = {
        "chosen": [user("Hi"), assistant("Hello."), user("Joke?"), assistant("Knock knock.")],
        "rejected": [user("Hi"), assistant("Hey."), user("Joke?"), assistant("No.")],
    }
    message = error_for(values)
    assert_names(message, "rejected")
    assert "diverge at message 1" in message


def test_implicit_message_lists_of_different_length():
    values = {
        "chosen": [user("Hi"), assistant("Hello."), user("Joke?"), assistant("Knock knock.")],
        "rejected": [user("Hi"), assistant("No.")],
    }
    message = error_for(values)
    assert_names(message, "rejected")
    assert "diverge at message 1" in message


def test_implicit_message_list_not_ending_with_assistant():
    values = {"chosen": [user("Hi"), assistant("Hello."), user("Bye")], "rejected": [user("Hi"), assistant("No.")]}
    message = error_for(values)
    assert_names(message, "chosen")
    assert "must end with an assistant reply" in message


def test_implicit_message_list_without_user_turn():
    message = error_for({"chosen": [assistant("Hello.")], "rejected": [assistant("No.")]})
    assert_names(message, "chosen")
    assert "no user message" in message


def test_implicit_mixed_types():
    message = error_for({"chosen": [user("Hi"), assistant("Hello.")], "rejected": "\n\nHuman: Hi\n\nAssistant: No."})
    assert_names(message, "rejected")
    assert "both" in message


# -- format 4: implicit prompt, HH-RLHF transcripts


def test_hh_to_messages():
    text = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: How are you?\n\nAssistant: Fine."
    assert hh_to_messages(text) == [user("Hi"), assistant("Hello!"), user("How are you?"), assistant("Fine.")]
    # no leading blank line, and blank lines inside a turn are kept
    assert hh_to_messages("Human: a\n\nb\n\nAssistant: c") == [user("a\n\nb"), assistant("c")]


def test_hh_to_messages_without_markers():
    with pytest.raises(DataError, match="no 'Human:'/'Assistant:' turn markers"):
        hh_to_messages("just some text")
    with pytest.raises(DataError, match="before the first"):
        hh_to_messages("preamble\n\nHuman: Hi\n\nAssistant: Yo")


def test_hh_single_turn():
    values = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."}
    example = normalize_preference_row(row(values))
    assert example.prompt == [user("Hi")]
    assert (example.chosen, example.rejected) == ("Hello!", "Go away.")


def test_hh_multi_turn():
    shared = (
        "\n\nHuman: What should I cook tonight?"
        "\n\nAssistant: How about pasta?"
        "\n\nHuman: I had pasta yesterday. Something else?"
    )
    values = {
        "chosen": shared + "\n\nAssistant: Try a vegetable stir-fry.",
        "rejected": shared + "\n\nAssistant: Pasta again.",
    }
    example = normalize_preference_row(row(values))
    assert example.prompt == [
        user("What should I cook tonight?"),
        assistant("How about pasta?"),
        user("I had pasta yesterday. Something else?"),
    ]
    assert example.chosen == "Try a vegetable stir-fry."
    assert example.rejected == "Pasta again."


def test_hh_split_is_on_the_last_assistant_turn_not_the_character_prefix():
    # The longest common character prefix ends inside a word ("...Assistant: Sur" / "...Assistant: Sor").
    shared = "\n\nHuman: Can you help?\n\nAssistant: Sure.\n\nHuman: Fix my bike."
    values = {"chosen": shared + "\n\nAssistant: Sure, first check the chain.", "rejected": shared + "\n\nAssistant: Sorry, no."}
    example = normalize_preference_row(row(values))
    assert example.prompt == [user("Can you help?"), assistant("Sure."), user("Fix my bike.")]
    assert example.chosen == "Sure, first check the chain."
    assert example.rejected == "Sorry, no."


def test_hh_transcripts_that_diverge():
    values = {
        "chosen": "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Joke?\n\nAssistant: Knock knock.",
        "rejected": "\n\nHuman: Hey\n\nAssistant: Hello.\n\nHuman: Joke?\n\nAssistant: No.",
    }
    message = error_for(values)
    assert_names(message, "rejected")
    assert "diverge at message 0" in message and "'Hi'" in message and "'Hey'" in message


def test_hh_transcript_without_markers():
    message = error_for({"chosen": "Hello there", "rejected": "Go away"})
    assert_names(message, "chosen")
    assert "Human:" in message and "data.columns.prompt" in message


def test_hh_transcript_ending_with_human():
    message = error_for({"chosen": "\n\nHuman: Hi\n\nAssistant: Yo", "rejected": "\n\nHuman: Hi\n\nAssistant: No\n\nHuman: ?"})
    assert_names(message, "rejected")
    assert "must end with an assistant reply" in message


def test_hh_empty_final_reply():
    message = error_for({"chosen": "\n\nHuman: Hi\n\nAssistant: Yo", "rejected": "\n\nHuman: Hi\n\nAssistant:  "})
    assert_names(message, "rejected")
    assert "empty" in message


# -- validation


@pytest.mark.parametrize("missing", ["chosen", "rejected"])
def test_missing_field_names_it_and_suggests_mapping(missing):
    values = {"prompt": "Hi", "chosen": "a", "rejected": "b"}
    del values[missing]
    message = error_for(values)
    assert_names(message, missing)
    assert "columns found: " in message and "prompt" in message
    assert f"data.columns.{missing}=<your column>" in message


@pytest.mark.parametrize(
    "values, field, needle",
    [
        ({"prompt": "   ", "chosen": "a", "rejected": "b"}, "prompt", "empty"),
        ({"prompt": "Hi", "chosen": "", "rejected": "b"}, "chosen", "empty"),
        ({"prompt": "Hi", "chosen": "a", "rejected": "\n\t"}, "rejected", "empty"),
        ({"prompt": 5, "chosen": "a", "rejected": "b"}, "prompt", "expected a string"),
        ({"prompt": None, "chosen": "a", "rejected": "b"}, "prompt", "expected a string"),
        ({"prompt": "Hi", "chosen": 1.5, "rejected": "b"}, "chosen", "expected a string"),
        ({"prompt": "Hi", "chosen": "a", "rejected": ["b"]}, "rejected", "content"),
        ({"prompt": [user("Hi")], "chosen": [{"role": "assistant", "content": 3}], "rejected": "b"}, "chosen", "content"),
        ({"prompt": [{"role": "robot", "content": "Hi"}], "chosen": "a", "rejected": "b"}, "prompt", "role"),
        ({"prompt": [user("  ")], "chosen": "a", "rejected": "b"}, "prompt", "empty"),
        ({"prompt": [], "chosen": "a", "rejected": "b"}, "prompt", "non-empty list"),
        ({"prompt": [user("Hi")], "chosen": [assistant(" ")], "rejected": "b"}, "chosen", "empty"),
        ({"chosen": None, "rejected": "b"}, "chosen", "string or a list"),
        ({"chosen": [user("Hi"), assistant("a")], "rejected": [user("Hi"), assistant("")]}, "rejected", "empty"),
        ({"chosen": [user("Hi"), {"content": "a"}], "rejected": [user("Hi"), assistant("b")]}, "chosen", "role"),
    ],
)
def test_bad_rows_name_file_row_and_field(values, field, needle):
    message = error_for(values)
    assert_names(message, field)
    assert needle in message


@pytest.mark.parametrize(
    "values",
    [
        {"prompt": "Hi", "chosen": "Same answer", "rejected": "Same answer "},
        {"prompt": [user("Hi")], "chosen": [assistant("Same")], "rejected": "Same"},
        {"chosen": [user("Hi"), assistant("Same")], "rejected": [user("Hi"), assistant("Same")]},
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Same", "rejected": "\n\nHuman: Hi\n\nAssistant:  Same"},
    ],
)
def test_identical_chosen_and_rejected(values):
    message = error_for(values)
    assert_names(message, "rejected")
    assert "identical" in message


def test_non_jsonl_source_says_row():
    message = error_for({"prompt": "Hi", "chosen": "", "rejected": "b"}, source="pairs.parquet", index=12)
    assert_names(message, "chosen", source="pairs.parquet", place="row 12")


# -- loading


def test_load_preference_rows_skips_and_counts():
    rows = [
        row({"prompt": "a", "chosen": "x", "rejected": "y"}, index=1),
        row({"prompt": "b", "chosen": "x", "rejected": "x"}, index=2),
        row({"chosen": "no markers", "rejected": "at all"}, index=3),
        row({"chosen": [user("c"), assistant("x")], "rejected": [user("c"), assistant("y")]}, index=4),
        row({"prompt": "d"}, index=5),
    ]
    examples, skipped = load_preference_rows(rows, skip_bad_rows=True)
    assert skipped == 3
    assert [e.source for e in examples] == ["pairs.jsonl, line 1", "pairs.jsonl, line 4"]
    assert examples[1].prompt == [user("c")]


def test_load_preference_rows_raises_first_error():
    rows = [
        row({"prompt": "a", "chosen": "x", "rejected": "y"}, index=1),
        row({"prompt": "b", "chosen": "x", "rejected": "x"}, index=2),
        row({"prompt": "c"}, index=3),
    ]
    with pytest.raises(DataError, match="line 2"):
        load_preference_rows(rows, skip_bad_rows=False)
    examples, skipped = load_preference_rows(rows[:1], skip_bad_rows=False)
    assert (len(examples), skipped) == (1, 0)


def test_jsonl_file_with_every_format(tmp_path):
    path = tmp_path / "pairs.jsonl"
    lines = [
        {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
        {"prompt": [user("Hi")], "chosen": [assistant("Hello")], "rejected": [assistant("Bye")]},
        {"chosen": [user("Hi"), assistant("Hello")], "rejected": [user("Hi"), assistant("Bye")]},
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello", "rejected": "\n\nHuman: Hi\n\nAssistant: Bye"},
        {"prompt": "Hi", "chosen": [user("Hi"), assistant("Hello")], "rejected": [user("Hi"), assistant("Bye")]},
        {"prompt": "Hi", "chosen": "same", "rejected": "same"},
    ]
    path.write_text("\n".join(json.dumps(line, ensure_ascii=False) for line in lines) + "\n", encoding="utf-8")
    rows = read_rows(str(path))
    examples, skipped = load_preference_rows(rows, skip_bad_rows=True)
    assert skipped == 1
    assert [e.prompt for e in examples] == ["2+2?", [user("Hi")], [user("Hi")], [user("Hi")], [user("Hi")]]
    with pytest.raises(DataError) as info:
        load_preference_rows(rows, skip_bad_rows=False)
    assert f"{path}, line 6, field 'rejected'" in str(info.value)


def test_csv_with_column_mapping(tmp_path):
    path = tmp_path / "pairs.csv"
    pd.DataFrame(
        {
            "question": ["Capital of France?", "Capital of Italy?", "Capital of Spain?"],
            "good": ["Paris", "Rome", ""],
            "bad": ["Lyon", "Milan", "Seville"],
        }
    ).to_csv(path, index=False)
    rows = rename_columns(read_rows(str(path)), {"prompt": "question", "chosen": "good", "rejected": "bad"})
    examples, skipped = load_preference_rows(rows, skip_bad_rows=True)
    assert skipped == 1
    assert examples[0] == PreferenceExample("Capital of France?", "Paris", "Lyon", f"{path}, row 1")
    with pytest.raises(DataError) as info:
        load_preference_rows(rows, skip_bad_rows=False)
    assert f"{path}, row 3, field 'chosen'" in str(info.value)


def test_csv_without_mapping_suggests_it(tmp_path):
    path = tmp_path / "pairs.csv"
    pd.DataFrame({"question": ["Q"], "good": ["A"], "bad": ["B"]}).to_csv(path, index=False)
    with pytest.raises(DataError) as info:
        load_preference_rows(read_rows(str(path)), skip_bad_rows=False)
    message = str(info.value)
    assert f"{path}, row 1, field 'chosen'" in message
    assert "columns found: bad, good, question" in message
    assert "data.columns.chosen=<your column>" in message


def test_parquet_conversational_multi_turn(tmp_path):
    path = tmp_path / "pairs.parquet"
    french = "Tu es un assistant utile. Réponds en français."
    shared = [system(french), user("Bonjour"), assistant("Bonjour !"), user("Comment vas-tu ?")]
    pd.DataFrame(
        {
            "conv_good": [shared + [assistant("Très bien, merci.")]],
            "conv_bad": [shared + [assistant("Fine, thanks.")]],
        }
    ).to_parquet(path)
    rows = rename_columns(read_rows(str(path)), {"chosen": "conv_good", "rejected": "conv_bad"})
    (example,), skipped = load_preference_rows(rows, skip_bad_rows=False)
    assert skipped == 0
    assert example.prompt == shared
    assert (example.chosen, example.rejected) == ("Très bien, merci.", "Fine, thanks.")
    assert example.source == f"{path}, row 1"
