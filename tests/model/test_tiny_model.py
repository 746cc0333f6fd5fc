"""The tiny offline model and its byte-level tokenizer, saved in plain Hugging Face format."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignlab.model.tiny import ROLE_TOKENS, TASK_TOKENS, build_model, build_tokenizer
from conftest import TINY_HIDDEN, TINY_LAYERS

TEXTS = [
    "Ça a été un été déjà très chaud à Noël, garçon!",
    "emoji 🙂👍🏽 and a flag 🇫🇷 and a zwj family 👨\u200d👩\u200d👧",
    "你好，世界。日本語のテキスト、한국어",
    "def f(x):\n\tif x:\n\t\treturn x  # trailing spaces   \n\n",
    "   leading and trailing spaces   ",
    "\n\n mixed\r\nline endings\r\n",
    " ",
    "null\x00byte and \x7f del",
]


def ids_of(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_is_exact(tiny_tokenizer, text):
    ids = ids_of(tiny_tokenizer, text)
    assert tiny_tokenizer.decode(ids) == text
    assert tiny_tokenizer.decode(ids, skip_special_tokens=True) == text
    # Byte-level with no merges: one token per UTF-8 byte (these texts contain no tag words).
    assert len(ids) == len(text.encode("utf-8"))


def test_each_digit_is_one_token(tiny_tokenizer):
    digit_ids = [ids_of(tiny_tokenizer, d) for d in "0123456789"]
    assert all(len(ids) == 1 for ids in digit_ids)
    assert len({ids[0] for ids in digit_ids}) == 10
    # In context too: a number is its digits, each the same id as alone.
    ids = ids_of(tiny_tokenizer, "12+907=919")
    assert len(ids) == 10
    for char, token in zip("12+907=919", ids):
        if char.isdigit():
            assert [token] == digit_ids[int(char)]
            assert tiny_tokenizer.decode([token]) == char


@pytest.mark.parametrize("tag", ["<answer>", "</answer>", "<think>", "</think>", "\\boxed{"])
def test_task_tags_are_single_non_special_tokens(tiny_tokenizer, tag):
    assert tag in TASK_TOKENS
    assert len(ids_of(tiny_tokenizer, tag)) == 1
    assert tiny_tokenizer.decode(ids_of(tiny_tokenizer, tag), skip_special_tokens=True) == tag


def test_answer_survives_skip_special_tokens_but_eos_does_not(tiny_tokenizer):
    text = "<answer>85</answer>"
    ids = ids_of(tiny_tokenizer, text + tiny_tokenizer.eos_token)
    assert len(ids) == 1 + 2 + 1 + 1  # <answer>, 8, 5, </answer>, EOS
    assert ids[0] == tiny_tokenizer.convert_tokens_to_ids("<answer>")
    assert ids[3] == tiny_tokenizer.convert_tokens_to_ids("</answer>")
    assert ids[-1] == tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tiny_tokenizer.decode(ids, skip_special_tokens=False) == text + "<|im_end|>"


def test_special_and_role_tokens(tiny_tokenizer):
    assert tiny_tokenizer.eos_token == "<|im_end|>"
    assert tiny_tokenizer.pad_token == "<|endoftext|>"
    assert tiny_tokenizer.pad_token_id != tiny_tokenizer.eos_token_id
    for role in ROLE_TOKENS:
        assert len(ids_of(tiny_tokenizer, role)) == 1
    rendered = tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": "1+1=?"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == "<|im_start|>user\n1+1=?<|im_end|>\n<|im_start|>assistant\n"


def test_padding_side_is_left_after_reload(tiny_model_dir, tiny_tokenizer):
    assert tiny_tokenizer.padding_side == "left"
    saved = json.loads((tiny_model_dir / "tokenizer_config.json").read_text())
    assert saved.get("padding_side") == "left"
    batch = tiny_tokenizer(["7", "123"], padding=True, add_special_tokens=False)
    pad = tiny_tokenizer.pad_token_id
    assert batch["input_ids"][0][:2] == [pad, pad]
    assert batch["attention_mask"] == [[0, 0, 1], [1, 1, 1]]


def test_reload_gives_identical_logits(tiny_model_dir):
    """The saved files reload into the same model: same weights, same logits, bit for bit."""
    tokenizer = build_tokenizer()
    in_memory = build_model(tokenizer, layers=TINY_LAYERS, hidden=TINY_HIDDEN, seed=0).eval()
    reloaded = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    reloaded_tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "<|im_start|>user\n37+48=?<|im_end|>\n<|im_start|>assistant\n<answer>85</answer>"
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert torch.equal(ids, reloaded_tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"])
    with torch.no_grad():
        expected = in_memory(ids).logits
        got = reloaded(ids).logits
        other_seed = build_model(tokenizer, layers=TINY_LAYERS, hidden=TINY_HIDDEN, seed=1).eval()(ids).logits
    assert torch.equal(expected, got)
    assert not torch.allclose(expected, other_seed)  # the comparison can tell models apart
    assert reloaded.generation_config.eos_token_id == reloaded_tokenizer.eos_token_id
    assert reloaded.generation_config.pad_token_id == reloaded_tokenizer.pad_token_id
    assert reloaded.config.vocab_size == len(reloaded_tokenizer)


def test_default_size_is_about_a_million_parameters():
    model = build_model(build_tokenizer())
    count = sum(p.numel() for p in model.parameters())
    assert 500_000 <= count <= 2_000_000
    assert model.config.num_hidden_layers == 4 and model.config.hidden_size == 128


def test_cli_tiny_model_writes_loadable_files(cli, tmp_path):
    out = tmp_path / "m"
    result = cli(["tiny-model", str(out), "--layers", "1", "--hidden", "32", "--heads", "2"])
    assert result.code == 0, result.err
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["hidden_size"] == 32 and config["num_attention_heads"] == 2
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.vocab_size == len(tokenizer)
    assert tokenizer.chat_template  # the chat template is saved with it
    with torch.no_grad():
        logits = model(torch.tensor([ids_of(tokenizer, "1+2=?")])).logits
    assert logits.shape == (1, 5, len(tokenizer))


def test_build_model_rejects_indivisible_heads(capsys):
    from alignlab.cli import main
    from alignlab.errors import AlignlabError

    with pytest.raises(AlignlabError, match="divisible"):
        build_model(build_tokenizer(), hidden=30, heads=4)
    assert main(["tiny-model", "/tmp/never-written", "--hidden", "30"]) == 2
    assert "divisible" in capsys.readouterr().err
