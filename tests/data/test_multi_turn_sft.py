"""Multi-turn SFT on chat templates that rewrite history (issue 24, 1a): TRL's shipped copies of Qwen3's
hybrid-thinking template (earlier turns lose their <think> block) and DeepSeek-R1-Distill's (every turn
loses its reasoning; the generation prompt opens <think>) train one example per assistant turn, as the
model meets that turn at inference. The expected texts below are written out by hand from the templates."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from alignlab.data.io import Row
from alignlab.data.sft import encode_sft_examples
from alignlab.data.templates import Templater, encode_conversation, resolve_multi_turn, rewrites_history
from alignlab.errors import DataError
from conftest import base_args, train_records, write_jsonl

trl = pytest.importorskip("trl")
TEMPLATES = Path(trl.__file__).parent / "chat_templates"
R1_BOS, R1_EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "1+1=?"},
    {"role": "assistant", "content": "<think>\none and one\n</think>\n\n2"},
    {"role": "user", "content": "2+2=?"},
    {"role": "assistant", "content": "<think>\ntwo and two\n</think>\n\n4"},
]

QWEN3_EXPECTED = [  # (prompt, trained text) per assistant turn: earlier turns without their reasoning
    ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n1+1=?<|im_end|>\n<|im_start|>assistant\n",
     "<think>\none and one\n</think>\n\n2<|im_end|>"),
    ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n1+1=?<|im_end|>\n<|im_start|>assistant\n2<|im_end|>\n"
     "<|im_start|>user\n2+2=?<|im_end|>\n<|im_start|>assistant\n",
     "<think>\ntwo and two\n</think>\n\n4<|im_end|>"),
]

R1_EXPECTED = [  # the generation prompt opens <think>; the model writes the rest of the turn
    (f"{R1_BOS}Be brief.<｜User｜>1+1=?<｜Assistant｜><think>\n", f"one and one\n</think>\n\n2{R1_EOS}"),
    (f"{R1_BOS}Be brief.<｜User｜>1+1=?<｜Assistant｜>\n\n2{R1_EOS}<｜User｜>2+2=?<｜Assistant｜><think>\n",
     f"two and two\n</think>\n\n4{R1_EOS}"),
]


def templated(tokenizer, name: str):
    """A copy of the tiny (byte-level) tokenizer with one of TRL's shipped chat templates."""
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = (TEMPLATES / f"{name}.jinja").read_text()
    if name.startswith("deepseek_r1"):  # its BOS and end-of-turn as the special tokens they are in R1's vocabulary
        tok.add_special_tokens({"bos_token": R1_BOS, "eos_token": R1_EOS})
    return tok


def split(tok, ids, mask) -> tuple[str, str]:
    """(the context's text, the trained text) of one example, whose trained tokens all follow the context."""
    start = mask.index(1)
    assert set(mask[start:]) == {1}, "the trained tokens are one run at the end"
    return tok.decode(ids[:start]), tok.decode(ids[start:])


def tokens(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("name,expected", [("qwen3", "per_turn"), ("deepseek_r1_distill", "per_turn"),
                                           ("qwen2_5", "all_turns"), (None, "all_turns")])
def test_auto_detects_templates_that_rewrite_history(tiny_tokenizer, name, expected):
    tok = templated(tiny_tokenizer, name) if name else tiny_tokenizer  # None: the tiny model's own template
    templater = Templater(tok)
    assert rewrites_history(templater) == (expected == "per_turn")
    assert resolve_multi_turn(templater, "auto") == expected
    assert resolve_multi_turn(templater, "last_turn") == "last_turn"  # an explicit choice stands
    assert not rewrites_history(Templater(tok, use_chat_template=False))  # plain text keeps history


def test_qwen3_one_example_per_turn_as_rendered_when_it_is_last(tiny_tokenizer):
    tok = templated(tiny_tokenizer, "qwen3")
    examples = encode_conversation(Templater(tok), CHAT, mode="per_turn")
    assert len(examples) == 2
    for (ids, mask), (prompt, trained), turn in zip(examples, QWEN3_EXPECTED, (2, 4)):
        assert split(tok, ids, mask) == (prompt, trained)
        assert ids[: mask.index(1)] == tokens(tok, prompt) and ids[mask.index(1):] == tokens(tok, trained)
        assert ids[-1] == tok.eos_token_id  # the end-of-turn token is trained
        # prompt + completion is the template's render with this turn last, tokenised (its trailing newline
        # after <|im_end|> is neither trained nor generated).
        whole = tok.apply_chat_template(CHAT[: turn + 1], tokenize=False)
        assert tokens(tok, whole) == ids + tokens(tok, "\n")
        assert tok.apply_chat_template(CHAT[:turn], tokenize=False, add_generation_prompt=True) == prompt
    last = encode_conversation(Templater(tok), CHAT, mode="last_turn")
    assert last == examples[-1:]


def test_r1_distill_turns_continue_its_think_prefill(tiny_tokenizer):
    tok = templated(tiny_tokenizer, "deepseek_r1_distill")
    examples = encode_conversation(Templater(tok), CHAT, mode="per_turn")
    assert [split(tok, ids, mask) for ids, mask in examples] == R1_EXPECTED
    for (ids, mask), (prompt, trained), turn in zip(examples, R1_EXPECTED, (2, 4)):
        assert ids == tokens(tok, prompt + trained) and ids.count(tok.bos_token_id) == 1
        assert ids[-1] == tok.eos_token_id
        assert tok.apply_chat_template(CHAT[:turn], tokenize=False, add_generation_prompt=True) == prompt


@pytest.mark.parametrize("name", ["qwen3", "deepseek_r1_distill"])
def test_one_sequence_on_a_rewriting_template_fails_naming_the_row(tiny_tokenizer, name):
    """all_turns (one sequence, a mask per turn) cannot show both turns as generated: an error, not a count."""
    templater = Templater(templated(tiny_tokenizer, name))
    row = Row({"messages": CHAT}, "chat.jsonl", 7)
    with pytest.raises(DataError, match=r"chat\.jsonl, line 7: message \d \(assistant\).*data\.multi_turn=per_turn"):
        encode_sft_examples(row, templater, "all_turns")
    assert templater.stats.prefix_mismatches == 0


def test_r1_turn_without_the_prefilled_think_fails_naming_row_and_message(tiny_tokenizer):
    """The model answers after `<think>\\n`; a turn that does not start there cannot be trained as generated."""
    templater = Templater(templated(tiny_tokenizer, "deepseek_r1_distill"))
    chat = CHAT[:3] + [CHAT[3], {"role": "assistant", "content": "4"}]
    row = Row({"messages": chat}, "chat.jsonl", 3)
    with pytest.raises(DataError, match=r"chat\.jsonl, line 3: message 4 \(assistant\).*<think>"):
        encode_sft_examples(row, templater, "per_turn")


def test_qwen3_tool_turns_are_context(tiny_tokenizer):
    """A tool result between two assistant turns: the second is trained after it, reasoning of both kept
    (Qwen3 keeps the reasoning of turns after the last user message), the tool turn never trained."""
    tok = templated(tiny_tokenizer, "qwen3")
    chat = [{"role": "user", "content": "7*6?"},
            {"role": "assistant", "content": "<think>\nuse the tool\n</think>\n\n<tool_call>mul(7, 6)</tool_call>"},
            {"role": "tool", "content": "42"},
            {"role": "assistant", "content": "<think>\nit said 42\n</think>\n\n42"}]
    examples = encode_conversation(Templater(tok), chat, mode="per_turn")
    prompt, trained = split(tok, *examples[1])
    assert prompt == ("<|im_start|>user\n7*6?<|im_end|>\n<|im_start|>assistant\n<think>\nuse the tool\n</think>\n\n"
                      "<tool_call>mul(7, 6)</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n42\n"
                      "</tool_response><|im_end|>\n<|im_start|>assistant\n")
    assert trained == "<think>\nit said 42\n</think>\n\n42<|im_end|>"


@pytest.mark.parametrize("chat_template", [True, False])
def test_per_turn_on_a_template_that_keeps_history_trains_the_same_tokens(tiny_tokenizer, chat_template):
    """Where history is kept, turn k's example is the all_turns sequence up to turn k with only turn k trained:
    every assistant token is trained once, after the same context, so the two modes' losses agree."""
    templater = Templater(tiny_tokenizer, use_chat_template=chat_template)
    [(all_ids, all_mask)] = encode_conversation(templater, CHAT, mode="all_turns")
    examples = encode_conversation(templater, CHAT, mode="per_turn")
    trained = []  # positions in the all_turns sequence
    for ids, mask in examples:
        assert ids == all_ids[: len(ids)]
        trained += [i for i, m in enumerate(mask) if m]
    assert trained == [i for i, m in enumerate(all_mask) if m]



def test_per_turn_and_all_turns_give_the_same_mean_nll_where_history_is_kept(tiny_tokenizer, tiny_model_dir):
    """The eval loss (mean NLL over trained tokens) of one conversation, each example scored alone in float64."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64).eval()

    def mean_nll(examples):
        total, count = 0.0, 0
        for ids, mask in examples:
            with torch.no_grad():
                logps = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1], -1)  # [T-1, V]
            picked = logps.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
            total -= float((picked * torch.tensor(mask[1:], dtype=torch.float64)).sum())
            count += sum(mask[1:])
        return total / count

    templater = Templater(tiny_tokenizer)
    per_turn = mean_nll(encode_conversation(templater, CHAT, mode="per_turn"))
    assert per_turn == pytest.approx(mean_nll(encode_conversation(templater, CHAT, mode="all_turns")), rel=1e-9)

def test_sft_on_qwen3_multi_turn_data_through_the_cli(cli, tmp_path, tiny_model_dir):
    """data.multi_turn=auto picks per_turn for Qwen3's template, reports examples per row, and trains."""
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    (model_dir / "chat_template.jinja").write_text((TEMPLATES / "qwen3.jinja").read_text())
    rows = [{"messages": [{"role": "user", "content": f"{a}+1=?"},
                          {"role": "assistant", "content": f"<think>\n{a} and one\n</think>\n\n{a + 1}"},
                          {"role": "user", "content": "and +2?"},
                          {"role": "assistant", "content": f"{a + 3}"}]} for a in range(6)]
    data = write_jsonl(rows, tmp_path / "chat.jsonl")
    result = cli(base_args("sft", model_dir, data, tmp_path / "out", "train.max_steps=2", "train.batch_size=4"))
    assert result.code == 0, result.err
    assert "data.multi_turn=auto: per_turn" in result.err
    assert "12 examples from 6 rows" in result.err and "mismatch" not in result.err
    records = train_records(tmp_path / "out")
    assert len(records) == 2 and all(r["loss"] > 0 for r in records)
    result = cli(base_args("sft", model_dir, data, tmp_path / "bad", "data.multi_turn=all_turns"))
    assert result.code == 2 and "chat.jsonl, line 1: message 3 (assistant)" in result.err
    result = cli(base_args("sft", model_dir, data, tmp_path / "bad2", "data.multi_turn=every_turn"))
    assert result.code == 2 and "data.multi_turn must be" in result.err
