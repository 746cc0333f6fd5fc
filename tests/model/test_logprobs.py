"""Shared-prefix log-probs equal scoring every full sequence, in values and gradients."""

import torch

from alignlab.data.collate import pad_left, pad_right
from alignlab.model.tiny import build_model, build_tokenizer
from alignlab.model.logprobs import shared_prefix_token_logps, token_logps


def test_shared_prefix_matches_full_sequences_values_and_gradients():
    model = build_model(build_tokenizer(), layers=2, hidden=64, seed=3).float()
    prompts = [[5, 6, 7, 8, 9], [11, 12, 13]]
    completions = [[20, 21, 22], [23, 24], [25], [26, 27, 28, 29]]
    index = torch.tensor([0, 0, 1, 1])
    prompt_ids, prompt_mask = pad_left(prompts, 0), pad_left([[1] * len(p) for p in prompts], 0)
    completion_ids = pad_right(completions, 0)
    completion_mask = pad_right([[1] * len(c) for c in completions], 0)

    shared = shared_prefix_token_logps(model, prompt_ids, prompt_mask, completion_ids, completion_mask, index)
    shared.sum().backward()
    shared_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    ids = torch.cat([prompt_ids[index], completion_ids], 1)
    attention = torch.cat([prompt_mask[index], completion_mask], 1)
    loss_mask = torch.cat([torch.zeros_like(prompt_mask[index]), completion_mask], 1)
    full = token_logps(model, ids, attention, loss_mask)[:, prompt_ids.shape[1]:]
    full.sum().backward()

    assert torch.allclose(shared, full, atol=1e-5)
    assert (shared[completion_mask == 0] == 0).all() and (shared[completion_mask == 1] < 0).all()
    for got, want in zip(shared_grads, [p.grad for p in model.parameters()]):
        assert torch.allclose(got, want, atol=1e-6)
