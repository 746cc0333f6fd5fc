"""Fuzzing the edges users touch: data rows and configs. Any input gives a result or one of our
errors (DataError / ConfigError, which the CLI prints as one line), never another exception.

Data: random JSON rows (random columns, random value types, near-miss message lists, HH-RLHF
transcripts, GSM8K rows) through every row adapter, then through tokenisation and truncation, whose
output must fit train.max_length. Files: random bytes as .jsonl/.json/.csv. Configs: random YAML files
of known and unknown keys with random value types, plus random override strings; a loaded config's
fields must match their declared types. (Reward functions are fuzzed in test_rewards.py.)
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Union

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alignlab.config import RUN_CONFIGS, load_config
from alignlab.data.io import Row, read_rows
from alignlab.data.preference import PreferenceExample, normalize_preference_row
from alignlab.data.preference_encode import encode_pairs
from alignlab.data.prompts import PromptItem, prompt_item
from alignlab.data.sft import encode_sft_row, encode_sft_rows
from alignlab.data.templates import Templater
from alignlab.errors import ConfigError, DataError

FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))

# ------------------------------------------------------------------------------ values

FRAGMENTS = ["", " ", "\n", "\n\nHuman: ", "\n\nAssistant: ", "Human:", "Assistant:", "####", "#### 1,234", "#### ",
             "<|im_end|>", "<|endoftext|>", "<|im_start|>", "<answer>", "</answer>", "{{ x }}", "{%", "é☃\U0001f600",
             "\x00", "\r\n", "\t"]
texts = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=6)), max_size=5).map("".join)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(10**12), 10**12), st.floats(), texts)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3), max_leaves=6
)
ROLES = ["system", "user", "assistant", "tool"]
roles = st.one_of(st.sampled_from(ROLES), st.sampled_from(["", "bot", "Human", "USER"]), json_values)
good_message = st.builds(lambda role, content: {"role": role, "content": content}, st.sampled_from(ROLES), texts)
any_message = st.one_of(
    good_message,
    st.fixed_dictionaries({}, optional={"role": roles, "content": st.one_of(texts, json_values), "name": texts}),
    json_values,
)
conversations = st.one_of(st.lists(good_message, max_size=4), st.lists(any_message, max_size=4))
hh_texts = st.lists(
    st.tuples(st.sampled_from(["\n\nHuman: ", "\n\nAssistant: ", "Human: ", "\nAssistant:"]), texts), max_size=4
).map(lambda turns: "".join(marker + text for marker, text in turns))
field_values = st.one_of(texts, conversations, hh_texts, json_values)
KNOWN_COLUMNS = ["prompt", "completion", "messages", "chosen", "rejected", "question", "answer", "id"]
random_rows = st.dictionaries(st.one_of(st.sampled_from(KNOWN_COLUMNS), texts), field_values, max_size=5)


@st.composite
def preference_rows(draw):
    """Mostly well-formed pairs in each accepted format, then perhaps broken in one place."""
    shape = draw(st.sampled_from(["explicit", "conversational", "implicit", "hh", "random"]))
    a, b = draw(texts), draw(texts)
    shared = draw(st.lists(good_message, max_size=3)) + [{"role": "user", "content": draw(texts)}]
    if shape == "explicit":
        row = {"prompt": draw(texts), "chosen": a, "rejected": b}
    elif shape == "conversational":
        row = {"prompt": shared, "chosen": [{"role": "assistant", "content": a}],
               "rejected": [{"role": "assistant", "content": b}]}
    elif shape == "implicit":
        row = {"chosen": shared + [{"role": "assistant", "content": a}],
               "rejected": shared + [{"role": "assistant", "content": b}]}
    elif shape == "hh":
        context = draw(hh_texts)
        row = {"chosen": f"{context}\n\nAssistant: {a}", "rejected": f"{context}\n\nAssistant: {b}"}
    else:
        row = draw(random_rows)
    if draw(st.booleans()):
        row[draw(st.sampled_from(KNOWN_COLUMNS))] = draw(field_values)
    if draw(st.booleans()) and row:
        row.pop(draw(st.sampled_from(sorted(row))))
    return row


@st.composite
def sft_rows(draw):
    shape = draw(st.sampled_from(["pair", "messages", "random"]))
    if shape == "pair":
        row = {"prompt": draw(st.one_of(texts, conversations)), "completion": draw(texts)}
    elif shape == "messages":
        row = {"messages": draw(conversations)}
    else:
        row = draw(random_rows)
    if draw(st.booleans()):
        row[draw(st.sampled_from(KNOWN_COLUMNS))] = draw(field_values)
    return row


@st.composite
def prompt_rows(draw):
    shape = draw(st.sampled_from(["prompt", "gsm8k", "random"]))
    if shape == "prompt":
        row = {"prompt": draw(st.one_of(texts, conversations)), "answer": draw(field_values)}
    elif shape == "gsm8k":
        row = {"question": draw(st.one_of(texts, json_values)), "answer": draw(texts) + draw(st.sampled_from(["#### 7", "####", ""]))}
    else:
        row = draw(random_rows)
    return row


@pytest.fixture(scope="module", params=["chat", "plain", "chat+system"])
def templater(request, tiny_tokenizer):
    return Templater(tiny_tokenizer, use_chat_template=request.param != "plain",
                     system_prompt="Be brief." if request.param.endswith("system") else None)


def row(values: dict, source: str = "fuzz.jsonl") -> Row:
    return Row(values, source, 1)


def is_message_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in value)


# ------------------------------------------------------------------------------ data rows


@FUZZ
@given(values=sft_rows(), max_length=st.integers(1, 48))
def test_sft_rows_encode_or_raise_data_error(templater, values, max_length):
    try:
        ids, mask = encode_sft_row(row(values), templater)
    except DataError:
        return
    assert len(ids) == len(mask) and set(mask) <= {0, 1} and all(isinstance(i, int) for i in ids)
    for on_long in ("truncate", "drop"):
        try:
            examples = encode_sft_rows([row(values)], templater, max_length=max_length, on_long=on_long,
                                       skip_bad_rows=False)
        except DataError:
            continue
        assert all(len(e.input_ids) <= max_length and sum(e.loss_mask) > 0 for e in examples)


@FUZZ
@given(values=preference_rows(), max_length=st.integers(1, 48))
def test_preference_rows_normalize_or_raise_data_error(templater, values, max_length):
    try:
        example = normalize_preference_row(row(values))
    except DataError:
        return
    assert isinstance(example, PreferenceExample)
    assert isinstance(example.chosen, str) and isinstance(example.rejected, str)
    assert isinstance(example.prompt, str) or is_message_list(example.prompt)
    for on_long in ("truncate", "drop", "error"):
        try:
            pairs = encode_pairs([example], templater, max_length=max_length, on_long=on_long)
        except DataError:
            continue
        for pair in pairs:
            assert len(pair.prompt_ids) + max(len(pair.chosen_ids), len(pair.rejected_ids)) <= max_length
            assert pair.chosen_ids != pair.rejected_ids


@FUZZ
@given(values=prompt_rows())
def test_prompt_rows_parse_or_raise_data_error(templater, values):
    try:
        item = prompt_item(row(values))
    except DataError:
        return
    assert isinstance(item, PromptItem)
    assert isinstance(item.prompt, str) or is_message_list(item.prompt)
    assert isinstance(templater.prompt_text(item.prompt), str)


@FUZZ
@given(content=st.one_of(st.binary(max_size=60), texts.map(lambda t: t.encode("utf-8", "surrogatepass"))),
       suffix=st.sampled_from([".jsonl", ".json", ".csv"]))
def test_data_files_read_or_raise_data_error(tmp_path_factory, content, suffix):
    path = tmp_path_factory.mktemp("files") / f"data{suffix}"
    path.write_bytes(content)
    try:
        rows = read_rows(str(path))
    except DataError:
        return
    assert rows and all(isinstance(r.values, dict) for r in rows)


# ------------------------------------------------------------------------------ configs


def section_fields(command: str) -> dict[str, dict[str, Any]]:
    """{section: {field: annotation}} of a run config."""
    config = RUN_CONFIGS[command]()
    return {f.name: typing.get_type_hints(type(getattr(config, f.name))) for f in dataclasses.fields(config)}


yaml_scalars = st.one_of(scalars, st.dates(), st.just(float("inf")), st.sampled_from(["1e-4", "true", "null", "[a, b]"]))
yaml_values = st.recursive(
    yaml_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3), max_leaves=5
)
odd_keys = st.one_of(texts, st.integers(-5, 5), st.booleans(), st.none(), st.floats(allow_nan=False))


@st.composite
def config_documents(draw, command):
    sections = section_fields(command)
    doc: dict = {}
    for _ in range(draw(st.integers(0, 4))):
        section = draw(st.one_of(st.sampled_from(sorted(sections)), odd_keys))
        if section in sections and draw(st.integers(0, 4)):
            body = doc.setdefault(section, {}) if isinstance(doc.get(section), dict) else {}
            for _ in range(draw(st.integers(0, 3))):
                key = draw(st.one_of(st.sampled_from(sorted(sections[section])), odd_keys))
                body[key] = draw(yaml_values)
            doc[section] = body
        else:
            doc[section] = draw(yaml_values)
    return doc


@st.composite
def overrides(draw, command):
    sections = section_fields(command)
    known = [f"{s}.{k}" for s, fields in sections.items() for k in fields]
    items = []
    for _ in range(draw(st.integers(0, 4))):
        key = draw(st.one_of(st.sampled_from(known), st.sampled_from(sorted(sections)), texts,
                             st.sampled_from(known).map(lambda k: k + ".x")))
        value = draw(st.one_of(texts, st.sampled_from(["1", "-1", "0", "1e-4", "true", "null", "[]", "[a, 1]", "{a: 1}",
                                                       "nan", ".inf", "1e400", "2020-01-01", "'3'", "[", "x: [y"])))
        items.append(draw(st.sampled_from([f"{key}={value}", key, f"{key}=={value}", f" {key} = {value}"])))
    return items


def conforms(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin is Union:
        return any(conforms(value, arg) for arg in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(conforms(v, item) for v in value)
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        return isinstance(value, dict) and all(conforms(k, key_tp) and conforms(v, value_tp) for k, v in value.items())
    if tp is float:
        return isinstance(value, float)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def check_loaded(config, command: str) -> None:
    for section, fields in section_fields(command).items():
        for name, tp in fields.items():
            value = getattr(getattr(config, section), name)
            assert conforms(value, tp), f"{section}.{name} = {value!r} is not {tp}"


@pytest.mark.parametrize("command", sorted(RUN_CONFIGS))
@FUZZ
@given(data=st.data())
def test_configs_load_or_raise_config_error(tmp_path_factory, command, data):
    document = data.draw(config_documents(command))
    args = data.draw(overrides(command))
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
    for file, extra in ((str(path), args), (str(path), []), (None, args)):
        try:
            config = load_config(command, file, extra)
        except ConfigError:
            continue
        check_loaded(config, command)


@FUZZ
@given(content=st.one_of(st.binary(max_size=80), texts.map(lambda t: t.encode("utf-8", "surrogatepass")),
                         st.lists(st.sampled_from(["train:", "  lr: 1", "- a", "model: {", "&a [*a]", ": :", "\t",
                                                   "!!python/object:os.system", "data:\n  train: x"]),
                                  max_size=4).map(lambda lines: "\n".join(lines).encode())))
def test_config_files_of_any_bytes_load_or_raise_config_error(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    path.write_bytes(content)
    try:
        check_loaded(load_config("sft", str(path), []), "sft")
    except ConfigError:
        pass
