"""BOS for base models (issue 24, item 6): plain-text prompts start with the tokenizer's BOS exactly when
`tokenizer(text)` puts one first (Llama-3, Mistral, Gemma), once, in every path that tokenises a prompt
(SFT, DPO, GRPO, eval); a chat template that writes BOS itself gets it once, not twice; a tokenizer that
adds none (Qwen) gets none."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from alignlab.data.io import Row
from alignlab.data.preference import PreferenceExample
from alignlab.data.preference_encode import encode_pairs
from alignlab.data.prompts import PromptItem
from alignlab.data.sft import encode_sft_examples, encode_sft_rows
from alignlab.data.templates import Templater

CHAT = [{"role": "user", "content": "2+2=?"}, {"role": "assistant", "content": "4"},
        {"role": "user", "content": "3+3=?"}, {"role": "assistant", "content": "6"}]


def with_bos(tokenizer, *, added: bool = True):
    """The tiny tokenizer with a BOS token that `tokenizer(text)` puts first (`added`), as Llama's does."""
    tok = copy.deepcopy(tokenizer)
    tok.add_special_tokens({"bos_token": "<s>"})
    tok.add_bos_token = added
    assert (tok("7")["input_ids"][0] == tok.bos_token_id) == added
    return tok


@pytest.fixture(scope="module")
def bos_tok(tiny_tokenizer):
    return with_bos(tiny_tokenizer)


def plain(tok, **kwargs) -> Templater:
    return Templater(tok, use_chat_template=False, **kwargs)


def assert_one_bos_first(tok, ids):
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1, tok.decode(ids)


def test_sft_prompt_completion_starts_with_the_bos_tokenizer_would_add(bos_tok):
    ids, mask = encode_sft_examples(Row({"prompt": "37+48=?", "completion": "85"}, "x.jsonl", 1), plain(bos_tok),
                                    "all_turns")[0]
    expected_prompt = bos_tok("37+48=?")["input_ids"]  # with its default special tokens: BOS first
    assert ids == expected_prompt + bos_tok("85" + bos_tok.eos_token, add_special_tokens=False)["input_ids"]
    assert mask == [0] * len(expected_prompt) + [1] * (len(ids) - len(expected_prompt))
    assert_one_bos_first(bos_tok, ids)
    # A system prompt goes after the BOS; a prompt that already starts with it keeps one.
    ids, _ = encode_sft_examples(Row({"prompt": "37+48=?", "completion": "85"}, "x.jsonl", 1),
                                 plain(bos_tok, system_prompt="Add."), "all_turns")[0]
    assert_one_bos_first(bos_tok, ids)
    ids, _ = encode_sft_examples(Row({"prompt": "<s>37+48=?", "completion": "85"}, "x.jsonl", 1), plain(bos_tok),
                                 "all_turns")[0]
    assert_one_bos_first(bos_tok, ids)


@pytest.mark.parametrize("mode", ["all_turns", "per_turn", "last_turn"])
def test_sft_conversations_without_a_template_start_with_one_bos(bos_tok, mode):
    examples = encode_sft_examples(Row({"messages": CHAT}, "x.jsonl", 1), plain(bos_tok), mode)
    assert len(examples) == (2 if mode == "per_turn" else 1)
    for ids, mask in examples:
        assert_one_bos_first(bos_tok, ids)
        assert mask[0] == 0 and bos_tok.decode(ids).startswith("<s>user: 2+2=?\n")


def test_left_truncation_keeps_the_bos(bos_tok):
    """data.on_long=truncate cuts the prompt from the left: the BOS stays first (SFT and DPO)."""
    row = Row({"prompt": "1234567890" * 4, "completion": "85"}, "x.jsonl", 1)
    [example] = encode_sft_rows([row], plain(bos_tok), max_length=16, on_long="truncate", skip_bad_rows=False)
    kept = bos_tok(("1234567890" * 4)[-12:], add_special_tokens=False)["input_ids"]  # 16 - BOS - "85" - EOS
    assert len(example.input_ids) == 16 and example.input_ids[1:13] == kept
    assert_one_bos_first(bos_tok, example.input_ids)
    [pair] = encode_pairs([PreferenceExample("1234567890" * 4, "85", "86")], plain(bos_tok), max_length=16,
                          on_long="truncate")
    assert_one_bos_first(bos_tok, pair.prompt_ids)
    assert len(pair.prompt_ids) + len(pair.chosen_ids) == 16


def test_dpo_prompts_get_one_bos_and_responses_none(bos_tok):
    [pair] = encode_pairs([PreferenceExample("2+2=?", "4", "5")], plain(bos_tok), max_length=64, on_long="error")
    assert pair.prompt_ids == bos_tok("2+2=?")["input_ids"]
    assert_one_bos_first(bos_tok, pair.prompt_ids)
    assert bos_tok.bos_token_id not in pair.chosen_ids + pair.rejected_ids


def test_eval_generation_prompts_get_one_bos(bos_tok, monkeypatch):
    """`alignlab eval` / GRPO's evaluation: the ids handed to the sampler."""
    from alignlab.generation import prompt_eval

    seen = []

    def record(model, tokenizer, prompt_ids, **_):
        seen.extend(prompt_ids)
        raise StopIteration  # the prompts are all this test needs

    monkeypatch.setattr(prompt_eval, "generate", record)
    items = [PromptItem("2+2=?"), PromptItem([{"role": "user", "content": "3+3=?"}])]
    with pytest.raises(StopIteration):
        prompt_eval.evaluate_prompts(None, bos_tok, plain(bos_tok), items, [], [], max_new_tokens=2)
    assert len(seen) == 2
    for ids in seen:
        assert_one_bos_first(bos_tok, ids)


@pytest.fixture(scope="module")
def bos_model_dir(tmp_path_factory, tiny_model_dir, tiny_tokenizer) -> Path:
    """The tiny model with a BOS-adding tokenizer (its embeddings grown by the new token)."""
    import shutil

    from transformers import AutoModelForCausalLM

    path = tmp_path_factory.mktemp("bos") / "model"
    shutil.copytree(tiny_model_dir, path)
    tok = with_bos(tiny_tokenizer)
    tok.save_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(path)
    return path


@pytest.mark.parametrize("chat_template", [False, True])
def test_grpo_prompts(bos_model_dir, tmp_path, prompts, chat_template):
    """GRPO's rollout prompts: one BOS without a chat template; with the tiny model's template, which writes
    none, none (the template decides, as apply_chat_template(tokenize=True) and vLLM's chat do)."""
    from alignlab.config import load_config
    from alignlab.trainers.grpo import GRPOTrainer
    from conftest import base_args

    argv = base_args("grpo", bos_model_dir, prompts, tmp_path / "out", f"data.chat_template={chat_template}",
                     "data.max_rows=4")[1:]
    trainer = GRPOTrainer(load_config("grpo", None, argv))
    bos = trainer.tokenizer.bos_token_id
    assert len(trainer.prompt_ids) >= 3
    for ids in trainer.prompt_ids:
        assert ids.count(bos) == (0 if chat_template else 1) and (chat_template or ids[0] == bos)


def test_grpo_prompts_truncated_from_the_left_keep_their_bos(bos_model_dir, tmp_path, prompts):
    """data.on_long=truncate cuts a prompt's start, where the question is not; the BOS stays first."""
    from alignlab.config import load_config
    from alignlab.trainers.grpo import GRPOTrainer
    from conftest import base_args

    argv = base_args("grpo", bos_model_dir, prompts, tmp_path / "out", "data.chat_template=false", "data.max_rows=4",
                     "data.on_long=truncate", "train.max_length=10", "grpo.max_completion_length=4")[1:]
    trainer = GRPOTrainer(load_config("grpo", None, argv))
    bos = trainer.tokenizer.bos_token_id
    full = trainer.templater.ids(trainer.templater.prompt_text(trainer.prompts[0].prompt))
    assert len(full) > 6 and trainer.prompt_ids[0] == [bos] + full[len(full) - 5:]


@pytest.mark.parametrize("name", ["llama3", "deepseek_r1_distill"])
def test_a_template_that_writes_bos_gets_one_not_two(bos_tok, name):
    trl = pytest.importorskip("trl")
    tok = copy.deepcopy(bos_tok)
    tok.chat_template = (Path(trl.__file__).parent / "chat_templates" / f"{name}.jinja").read_text()
    templater = Templater(tok)
    answer = "<think>\nadd\n</think>\n\n"  # R1-Distill's generation prompt opens the <think> block
    prompt_ids, response_ids = templater.encode([{"role": "user", "content": "2+2=?"}], answer + "4")
    assert_one_bos_first(tok, prompt_ids)
    assert tok.bos_token_id not in response_ids
    assert_one_bos_first(tok, templater.ids(templater.prompt_text("2+2=?")))  # GRPO's and eval's prompts
    [pair] = encode_pairs([PreferenceExample("2+2=?", answer + "4", answer + "5")], templater, max_length=256,
                          on_long="error")
    assert_one_bos_first(tok, pair.prompt_ids)


@pytest.mark.parametrize("added", [None, False])
def test_a_tokenizer_that_adds_no_bos_gets_none(tiny_tokenizer, added):
    """Qwen's tokenizers have no BOS (None); others name one but do not add it (False): none is added."""
    tok = tiny_tokenizer if added is None else with_bos(tiny_tokenizer, added=False)
    templater = plain(tok)
    ids, _ = encode_sft_examples(Row({"prompt": "2+2=?", "completion": "4"}, "x.jsonl", 1), templater, "all_turns")[0]
    expected = tok("2+2=?")["input_ids"]  # what the tokenizer adds by default: nothing
    assert ids[: len(expected)] == expected == tok("2+2=?", add_special_tokens=False)["input_ids"]
    if tok.bos_token_id is not None:
        assert tok.bos_token_id not in ids
    [(ids, _)] = encode_sft_examples(Row({"messages": CHAT}, "x.jsonl", 1), templater, "all_turns")
    assert tok.decode(ids).startswith("user: 2+2=?\n")
