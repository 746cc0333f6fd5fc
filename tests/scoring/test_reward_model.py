"""alignlab.scoring: a reward model's score is a plain transformers forward of the sequence alone, whatever the
padding side, batch or pad token; a causal LM is refused as a reward model."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from alignlab.errors import AlignlabError
from alignlab.scoring.heads import pad_batch, sequence_scores
from alignlab.scoring.reward_model import RewardModel

PROMPTS = ["1+1=?", "12+30=?", "a much longer prompt: 45+45=?", "7+8=?"]
COMPLETIONS = ["<answer>2</answer>", "<answer>42</answer>", "<answer>90</answer> and more text", "15"]


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory, tiny_model_dir):
    """The tiny model as a one-output classifier with a seeded random head, saved as a reward model."""
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)  # scores far apart, so a wrong token would show
    out = tmp_path_factory.mktemp("rm") / "model"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def alone(model, ids: list[int]) -> float:
    """The plain transformers forward of one unpadded sequence: its pooled logit."""
    with torch.no_grad():
        return float(model(torch.tensor([ids])).logits[0, 0])


def test_scores_equal_a_plain_forward_of_each_sequence_alone(rm_dir):
    rm = RewardModel.load(rm_dir, batch_size=3)  # batches of mixed lengths
    plain = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    scores = rm.score(PROMPTS, COMPLETIONS)
    expected = [alone(plain, rm.encode(p, c)) for p, c in zip(PROMPTS, COMPLETIONS)]
    assert scores == pytest.approx(expected, abs=1e-5)
    assert len(set(round(s, 3) for s in scores)) == len(scores)  # the test can tell rows apart
    # What is scored is the chat template's render, ending with the end-of-turn token.
    ids = rm.encode(PROMPTS[0], COMPLETIONS[0])
    assert rm.tokenizer.decode(ids).endswith("<answer>2</answer><|im_end|>")


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("pad_is_eos", [False, True])
def test_padding_side_and_last_token(rm_dir, side, pad_is_eos):
    """Left or right padding, and a pad token that is also the EOS ending every sequence (where transformers'
    pooling, which looks for the rightmost non-pad id, picks the token before the EOS): the score is the
    head's output at the last real token, as for the sequence alone."""
    rm = RewardModel.load(rm_dir)
    model = rm.model
    sequences = [rm.encode(p, c) for p, c in zip(PROMPTS, COMPLETIONS)]
    eos = rm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert all(seq[-1] == eos for seq in sequences)
    pad = eos if pad_is_eos else rm.tokenizer.pad_token_id
    ids, mask = pad_batch(sequences, pad, side=side)
    with torch.no_grad():
        ours = sequence_scores(model, ids, mask).tolist()
        # The head at the last position of each sequence alone, from the hidden states (no pooling involved).
        reference = []
        for seq in sequences:
            hidden = model.model(torch.tensor([seq])).last_hidden_state[0, -1]
            reference.append(float(model.score(hidden)[0]))
    assert ours == pytest.approx(reference, abs=1e-5)
    if pad_is_eos:
        model.config.pad_token_id = eos
        try:
            with torch.no_grad():
                pooled = model(input_ids=ids, attention_mask=mask).logits[:, 0].tolist()
        finally:
            model.config.pad_token_id = rm.tokenizer.pad_token_id
        assert all(abs(a - b) > 1e-3 for a, b in zip(pooled, reference))  # the pain this avoids


def test_truncation_keeps_the_completion_and_is_counted(rm_dir):
    rm = RewardModel.load(rm_dir, max_length=16)
    ids = rm.encode("9+9=? " * 20, "<answer>18</answer>")
    assert len(ids) == 16 and rm.tokenizer.decode(ids).endswith("<answer>18</answer><|im_end|>")
    assert rm.truncated == 1


def test_a_causal_lm_is_not_a_reward_model(tiny_model_dir):
    with pytest.raises(AlignlabError, match="is not a reward model"):
        RewardModel.load(tiny_model_dir)


def test_conversation_scores_its_last_turn_in_context(rm_dir):
    rm = RewardModel.load(rm_dir)
    conversation = [{"role": "user", "content": "1+1=?"}, {"role": "assistant", "content": "<answer>2</answer>"}]
    assert rm.score_conversations([conversation]) == pytest.approx(rm.score(["1+1=?"], ["<answer>2</answer>"]))
