"""Reward models as rewards (`rm:PATH`): GRPO with a reward model whose tokenizer, chat template and architecture
differ from the policy's; running normalisation and clipping; the reward-hacking rule; eval-only gold checks."""

from __future__ import annotations

import math

import pytest
import torch

from alignlab.scoring.reward_model import RewardModel
from alignlab.scoring.rewards import HACKING_DROP, EvalRewards, RMReward, hacking_warning, resolve_rewards
from conftest import base_args, eval_records, read_jsonl, run_cli, train_records

OTHER_TEMPLATE = ("{% for m in messages %}{{ m['role'] | upper }}: {{ m['content'] }}{% if m['role'] == 'assistant' %}"
                  "</s>{% endif %}{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}ASSISTANT: {% endif %}")


@pytest.fixture(scope="module")
def other_rm(tmp_path_factory):
    """A Llama-architecture reward model with its own byte-level BPE tokenizer and chat template: nothing in
    common with the tiny Qwen2 policy (vocabulary, ids, template, EOS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = [f"USER: {a}+{b}=?\nASSISTANT: <answer>{a + b}</answer></s>" for a in range(30) for b in range(0, 90, 7)]
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "</s>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="</s>", pad_token="<pad>",
                                        chat_template=OTHER_TEMPLATE)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    model = LlamaForSequenceClassification(config)
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)
    out = tmp_path_factory.mktemp("other_rm") / "model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_scores_are_rendered_with_the_reward_models_own_tokenizer(other_rm, tiny_tokenizer):
    rm = RewardModel.load(other_rm)
    ids = rm.encode("12+30=?", "<answer>42</answer>")
    assert rm.tokenizer.decode(ids) == "USER: 12+30=?\nASSISTANT: <answer>42</answer></s>"
    assert len(rm.tokenizer) != len(tiny_tokenizer)


def test_grpo_with_a_reward_model_of_another_tokenizer_and_a_gold_check(tmp_path, tiny_model_dir, prompts, other_rm):
    out = tmp_path / "grpo_rm"
    result = run_cli(base_args(
        "grpo", tiny_model_dir, prompts, out, f"data.eval={prompts}", "train.max_steps=2", "train.batch_size=2",
        "grpo.num_generations=4", "grpo.max_completion_length=8", f"grpo.rewards=[rm:{other_rm}]",
        "grpo.eval_rewards=[answer_correct]", "grpo.eval_max_prompts=4", "grpo.num_samples_logged=4",
        "rm.normalize=true", "rm.clip=3"))
    assert result.code == 0
    steps = train_records(out)
    assert "rewards/rm/mean" in steps[0] and all(abs(r["rewards/rm/mean"]) <= 3 for r in steps)
    final = eval_records(out)[-1]
    # Eval: the raw reward-model score is the reward; the gold check is logged beside it, never summed in.
    assert final["eval/reward"] == pytest.approx(final["eval/rewards/rm/mean"], abs=1e-6)
    assert "eval/accuracy" in final and "eval/rewards/answer_correct/mean" in final
    # Each logged sample's reward is the reward model's score of the raw prompt and the completion's text.
    samples = read_jsonl(out / "samples.jsonl")[-4:]
    rows = read_jsonl(prompts)[:4]
    rm = RewardModel.load(other_rm)
    expected = rm.score([r["prompt"] for r in rows], [s["completion"] for s in samples])
    assert [s["reward"] for s in samples] == pytest.approx(expected, abs=1e-4)


class FakeRM:
    def __init__(self, values):
        self.values = list(values)

    def score(self, prompts, completions):
        return [self.values.pop(0) for _ in completions]


def test_running_normalisation_and_clipping():
    raw = [1.0, 3.0, 5.0, 10.0, -4.0]
    reward = RMReward(FakeRM(raw), normalize=True, clip=1.5)
    first = reward(["a", "b", "c"], prompts=["p"] * 3)
    mean, std = 3.0, math.sqrt(8 / 3)  # population statistics of the 3 seen so far
    assert first == pytest.approx([(v - mean) / std for v in raw[:3]], abs=1e-12)
    second = reward(["d", "e"], prompts=["p"] * 2)
    seen = raw
    mean = sum(seen) / 5
    std = math.sqrt(sum((v - mean) ** 2 for v in seen) / 5)
    assert second == pytest.approx([min(max((v - mean) / std, -1.5), 1.5) for v in raw[3:]], abs=1e-12)
    assert second[0] == 1.5  # clipped


def test_reward_hacking_rule():
    before = {"rewards/rm/mean": 0.2, "accuracy": 0.60}
    assert hacking_warning(before, {"rewards/rm/mean": 0.5, "accuracy": 0.60 - HACKING_DROP}) is not None
    assert hacking_warning(before, {"rewards/rm/mean": 0.5, "accuracy": 0.58}) is None  # a small fall
    assert hacking_warning(before, {"rewards/rm/mean": 0.1, "accuracy": 0.40}) is None  # both fell: no hacking
    assert hacking_warning(None, before) is None
    evals = EvalRewards([], [], ["answer_correct"])
    assert [name for name, _ in evals.fns] == ["answer_correct"] and evals.weights == [0.0]
    assert evals.check(before) is None and evals.check({"rewards/rm/mean": 0.9, "accuracy": 0.3}) is not None


def test_resolve_rewards_names_reward_models(other_rm):
    names = [name for name, _ in resolve_rewards([f"rm:{other_rm}", "answer_format", f"rm:{other_rm}"])]
    assert names == ["rm", "answer_format", "rm2"]
