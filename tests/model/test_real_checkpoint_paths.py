"""Paths real checkpoints take and the tiny model's defaults do not: chat templates that rewrite
earlier turns (Qwen3 / R1-distill <think> stripping), several EOS ids, logit scaling."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignlab.data.templates import Templater, encode_conversation
from conftest import base_args, run_cli, train_records, write_jsonl

# Like Qwen3's: every assistant turn but the last loses its <think> block.
REWRITING_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' and not loop.last %}"
    "{{ '<|im_start|>assistant\\n' + m['content'].split('</think>')[-1].lstrip() + '<|im_end|>\\n' }}"
    "{% else %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

CONVERSATION = [
    {"role": "user", "content": "1+1=?"},
    {"role": "assistant", "content": "<think>one and one</think>2"},
    {"role": "user", "content": "2+2=?"},
    {"role": "assistant", "content": "<think>two and two</think>4"},
]


@pytest.fixture
def rewriting_tokenizer(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = REWRITING_TEMPLATE
    return tokenizer


def test_multi_turn_sft_with_a_template_that_rewrites_history(rewriting_tokenizer):
    """One example per assistant turn (data.multi_turn=per_turn), each as the template renders it when that
    turn is the last: the first with its reasoning, trained through <|im_end|>; the second after the first as
    the template shows it later (reasoning dropped). One sequence for both (all_turns) fails naming the turn."""
    from alignlab.errors import DataError

    tok = rewriting_tokenizer
    examples = encode_conversation(Templater(tok), CONVERSATION, mode="per_turn")
    for (ids, mask), turn in zip(examples, (1, 3)):
        full = tok.apply_chat_template(CONVERSATION[: turn + 1], tokenize=False)
        assert ids == tok(full, add_special_tokens=False)["input_ids"][: len(ids)]
        prompt = tok.apply_chat_template(CONVERSATION[:turn], tokenize=False, add_generation_prompt=True)
        assert tok.decode(ids[: mask.index(1)]) == prompt and set(mask[mask.index(1):]) == {1}
    assert [tok.decode([i for i, m in zip(ids, mask) if m]) for ids, mask in examples] == [
        "<think>one and one</think>2<|im_end|>", "<think>two and two</think>4<|im_end|>"]
    with pytest.raises(DataError, match="message 3 \\(assistant\\).*data.multi_turn=per_turn"):
        encode_conversation(Templater(tok), CONVERSATION, mode="all_turns")


def test_a_turn_the_template_drops_fails_naming_it(rewriting_tokenizer):
    from alignlab.errors import DataError

    tok = rewriting_tokenizer
    # Rewrites user turns too, only inside longer conversations: the last turn's history renders differently.
    tok.chat_template = REWRITING_TEMPLATE.replace("{% else %}", "{% elif m['role'] == 'user' and loop.length > 3 "
                                                   "%}{{ '<|im_start|>user\\n[elided]<|im_end|>\\n' }}{% else %}")
    with pytest.raises(DataError, match="message 3 \\(assistant\\)"):
        encode_conversation(Templater(tok), CONVERSATION, mode="per_turn")


@pytest.fixture(scope="module")
def two_eos_model(tmp_path_factory, tiny_model_dir):
    """The tiny model whose generation config also stops at another id (as Qwen2.5-Instruct's lists
    <|im_end|> and <|endoftext|>), and a template that ends turns with that other token."""
    path = tmp_path_factory.mktemp("two_eos") / "model"
    shutil.copytree(tiny_model_dir, path)
    tok = AutoTokenizer.from_pretrained(path)
    other = tok.convert_tokens_to_ids("<|endoftext|>")
    assert other != tok.eos_token_id
    config = json.loads((path / "generation_config.json").read_text())
    config["eos_token_id"] = [tok.eos_token_id, other]
    (path / "generation_config.json").write_text(json.dumps(config))
    (path / "chat_template.jinja").write_text((path / "chat_template.jinja").read_text()
                                              .replace("'<|im_end|>' + '\n'", "'<|endoftext|>' + '\n'"))
    return path, other


def test_sft_responses_end_at_any_eos_id(two_eos_model):
    from alignlab.config import ModelConfig
    from alignlab.model.loading import model_stop_ids

    path, other = two_eos_model
    tok = AutoTokenizer.from_pretrained(path)
    stop_ids = model_stop_ids(ModelConfig(name_or_path=str(path)), tok)
    assert other in stop_ids and tok.eos_token_id in stop_ids
    _, response = Templater(tok, stop_ids=stop_ids).encode("1+1=?", "2")
    assert response[-1] == other  # the template's "\n" after the end-of-turn token is not trained
    _, unaware = Templater(tok).encode("1+1=?", "2")
    assert unaware[-1] != other  # knowing only the tokenizer's EOS, the response ran past it


def test_rollouts_stop_at_any_eos_id(two_eos_model, tiny_tokenizer):
    """A model that always emits the generation config's second EOS first: every completion stops there."""
    from alignlab.generation.sampler import generate

    path, other = two_eos_model
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    bump = torch.zeros(model.config.vocab_size)
    bump[other] = 100.0  # argmax at every step
    model.lm_head.register_forward_hook(lambda module, inputs, output: output + bump)
    tok = AutoTokenizer.from_pretrained(path)
    rollout = generate(model, tok, [[5, 6, 7]], num_generations=2, max_new_tokens=6, greedy=True)
    assert rollout.completion_ids[:, 0].tolist() == [other, other]
    assert rollout.ended.all() and rollout.completion_mask.sum(1).tolist() == [1, 1]


def test_grpo_with_a_history_rewriting_template(tmp_path, tiny_model_dir):
    """Multi-turn prompts whose earlier assistant turns carry reasoning: GRPO renders them with the
    template (which strips it) and trains."""
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    (model_dir / "chat_template.jinja").write_text(REWRITING_TEMPLATE)
    rows = [{"prompt": CONVERSATION[:3], "answer": "4"} for _ in range(4)]
    prompts = write_jsonl(rows, tmp_path / "prompts.jsonl")
    out = tmp_path / "grpo"
    result = run_cli(base_args("grpo", model_dir, prompts, out, "grpo.num_generations=2",
                               "grpo.max_completion_length=4", "train.max_steps=2", "train.batch_size=2",
                               "grpo.temperature=0.8"))
    assert result.code == 0
    records = train_records(out)
    assert len(records) == 2 and all(r["sampling/sampling_logp_difference/max"] < 1e-3 for r in records)


def test_logit_scaling_is_applied_in_log_probs(tiny_model_dir):
    """Cohere's logit_scale and Granite's logits_scaling change the model's logits; the chunked head
    must give the same log-probs as those logits (it applied neither)."""
    from alignlab.model.logprobs import full_logits_token_logps, token_logps

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    attention, loss_mask = torch.ones_like(ids), torch.tensor([[0, 0, 1, 1, 1, 1]])
    for name, value, applied in (("logit_scale", 0.25, 0.25), ("logits_scaling", 4.0, 1 / 4.0)):
        model.config.update({name: value})
        original_forward = model.lm_head.forward
        model.lm_head.forward = lambda h, f=original_forward, a=applied: f(h) * a  # what the architecture does
        with torch.no_grad():
            ours = token_logps(model, ids, attention, loss_mask)
            want = full_logits_token_logps(model, ids, attention, loss_mask)
        model.lm_head.forward = original_forward
        delattr(model.config, name)
        torch.testing.assert_close(ours, want, atol=1e-5, rtol=1e-5)
