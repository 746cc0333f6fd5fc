"""Token picking and the lean sampler against transformers' own generate."""

import torch

from alignlab.demo.tiny import build_model, build_tokenizer
from alignlab.rollout import generate, pick_token


def test_pick_token_top_k_one_and_tiny_top_p_are_argmax():
    torch.manual_seed(0)
    logits = torch.randn(64, 50)
    assert torch.equal(pick_token(logits, 1.0, 1.0, 1), logits.argmax(-1))
    assert torch.equal(pick_token(logits, 1.0, 1e-6, 0), logits.argmax(-1))


def test_pick_token_top_p_keeps_only_the_nucleus():
    # probabilities 0.5, 0.3, 0.15, 0.05: top_p=0.7 keeps the first two tokens only.
    logits = torch.log(torch.tensor([[0.05, 0.5, 0.15, 0.3]])).repeat(4000, 1)
    torch.manual_seed(1)
    picks = pick_token(logits, 1.0, 0.7, 0)
    counts = torch.bincount(picks, minlength=4).float() / len(picks)
    assert counts[0] == 0 and counts[2] == 0
    assert abs(counts[1] - 0.5 / 0.8) < 0.03 and abs(counts[3] - 0.3 / 0.8) < 0.03


def test_greedy_sampler_matches_transformers_generate_with_left_padding():
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, layers=2, hidden=64, seed=5).eval()
    prompts = [tokenizer("12+34=?")["input_ids"], tokenizer("7+8=?")["input_ids"], tokenizer("99+1=?")["input_ids"]]
    ours = generate(model, tokenizer, prompts, num_generations=2, max_new_tokens=6, greedy=True)
    for row, prompt in enumerate(prompts):
        reference = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                   do_sample=False, max_new_tokens=6, pad_token_id=tokenizer.pad_token_id,
                                   eos_token_id=tokenizer.eos_token_id)[0, len(prompt):]
        for copy in range(2):  # both generations of a prompt are identical when greedy
            got = ours.completion_ids[row * 2 + copy][: len(reference)]
            assert torch.equal(got, reference), (row, copy)
