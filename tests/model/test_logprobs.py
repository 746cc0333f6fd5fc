"""Shared-prefix log-probs equal scoring every full sequence, in values and gradients."""

import pytest
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


def count_head_rows(model, monkeypatch) -> list[int]:
    """Rows each call of the LM head (not the model's own layers) takes in alignlab.model.logprobs."""
    import torch.nn.functional as F

    from alignlab.model import logprobs

    calls, linear = [], F.linear
    vocab = model.get_output_embeddings().weight.shape[0]

    def counting(x, w, b=None):
        if w.shape[0] == vocab:
            calls.append(x.numel() // x.shape[-1])  # (the model's own head call has no rows: logits_to_keep=[])
        return linear(x, w, b)

    monkeypatch.setattr(logprobs.F, "linear", counting)
    return calls


def test_frozen_head_logps_equal_full_logits_without_recompute(monkeypatch):
    """LoRA (the LM head frozen): log-probs, entropies and LoRA gradients equal the full-logits way
    at a temperature, with several chunks, and each chunk runs the head twice in all (forward and
    the Jacobian), never a third time in backward."""
    from peft import LoraConfig, get_peft_model

    from alignlab.model.logprobs import full_logits_token_logps

    model = build_model(build_tokenizer(), layers=2, hidden=64, seed=3).float()
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"]))
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 0.1)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 200, (3, 12), generator=generator)
    attention = torch.ones_like(ids)
    attention[0, :4] = 0  # left padding
    loss_mask = attention.clone()
    loss_mask[:, :6] = 0
    weights = torch.randn(ids.shape, generator=generator)
    trainable = [p for p in model.parameters() if p.requires_grad]

    def grads(logps):
        return torch.autograd.grad((logps * weights).sum(), trainable)

    want = full_logits_token_logps(model, ids, attention, loss_mask, temperature=0.7)
    want_grads = grads(want)
    head_calls = count_head_rows(model, monkeypatch)
    got, entropy = token_logps(model, ids, attention, loss_mask, chunk_size=5, with_entropy=True, temperature=0.7)
    got_grads = grads(got)
    assert torch.allclose(got, want, atol=1e-5)
    for g, w in zip(got_grads, want_grads):
        assert torch.allclose(g, w, atol=1e-5, rtol=1e-4)
    assert sum(head_calls) == int(loss_mask[:, 1:].sum())  # each scored row through the head once
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention,
                       position_ids=(attention.cumsum(-1) - 1).clamp(min=0)).logits[:, :-1].float() / 0.7
    full_entropy = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)  # [B, T-1]
    scored = loss_mask[:, 1:].bool()
    assert torch.allclose(entropy[:, 1:][scored], full_entropy[scored], atol=1e-5)


@pytest.mark.parametrize("keep", [True, False], ids=["softmax-kept", "recomputed"])
def test_trainable_head_logps_equal_full_logits_with_one_weight_gradient(monkeypatch, keep):
    """Full fine-tuning (the tied head trains): log-probs, entropies and every gradient, the
    embedding/head's included, equal the full-logits way at a temperature over several chunks, and
    backward runs the head once more per chunk (no checkpoint recompute on top)."""

    from alignlab.model import logprobs
    from alignlab.model.logprobs import full_logits_token_logps

    model = build_model(build_tokenizer(), layers=2, hidden=64, seed=4).float()
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 200, (3, 12), generator=generator)
    attention = torch.ones_like(ids)
    attention[1, :3] = 0
    loss_mask = attention.clone()
    loss_mask[:, :5] = 0
    weights = torch.randn(ids.shape, generator=generator)
    params = list(model.parameters())

    def grads(logps):
        return torch.autograd.grad((logps * weights).sum(), params)

    want = full_logits_token_logps(model, ids, attention, loss_mask, temperature=0.7)
    want_grads = grads(want)
    monkeypatch.setattr(logprobs, "TRAINABLE_HEAD_MIN_VOCAB", 0)  # the tiny vocabulary takes the path too
    if not keep:
        monkeypatch.setattr(logprobs, "KEEP_BUDGET_BYTES", 0)
    head_calls = count_head_rows(model, monkeypatch)
    apply, calls = logprobs._TrainableHeadLogps.apply, []
    monkeypatch.setattr(logprobs._TrainableHeadLogps, "apply", lambda *a: calls.append(1) or apply(*a))
    monkeypatch.setattr(logprobs, "checkpoint", None)  # the per-chunk checkpointed path is not taken
    got, entropy = token_logps(model, ids, attention, loss_mask, chunk_size=5, with_entropy=True, temperature=0.7)
    got_grads = grads(got)
    assert calls == [1]  # all chunks in one call
    assert torch.allclose(got, want, atol=1e-5)
    for g, w in zip(got_grads, want_grads):
        assert torch.allclose(g, w, atol=1e-5, rtol=1e-4)
    # forward once; backward once more only when the softmax was not kept
    assert sum(head_calls) == (1 if keep else 2) * int(loss_mask[:, 1:].sum())
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention,
                       position_ids=(attention.cumsum(-1) - 1).clamp(min=0)).logits[:, :-1].float() / 0.7
    full_entropy = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
    scored = loss_mask[:, 1:].bool()
    assert torch.allclose(entropy[:, 1:][scored], full_entropy[scored], atol=1e-5)
