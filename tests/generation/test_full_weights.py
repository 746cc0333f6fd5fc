"""The weights a vLLM engine is given: LoRA merged layer by layer, embeddings included (float64)."""

import copy

import pytest
import torch
from transformers import Qwen2ForCausalLM

from alignlab.config import LoraConfig
from alignlab.errors import ConfigError
from alignlab.generation.full_weights import check_engine_sync, policy_weights
from alignlab.model.loading import apply_lora
from alignlab.model.tiny import build_model


def _policy(tokenizer, *, tied: bool, targets: list[str]):
    """The tiny model in float64 with LoRA on `targets`, its factors random (B is zero at init)."""
    model = build_model(tokenizer, layers=2, hidden=64, heads=2, seed=3)
    if not tied:
        config = copy.deepcopy(model.config)
        config.tie_word_embeddings = False
        untied = Qwen2ForCausalLM(config)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        untied.load_state_dict(state, strict=False)
        untied.lm_head.weight.data = model.lm_head.weight.data.clone() + 0.01  # a head of its own
        model = untied
    model = model.double()
    peft = apply_lora(model, LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0, target_modules=targets))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator, dtype=param.dtype) * 0.3)
    return peft.eval()


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_embedding_lora_merges_like_peft(tiny_tokenizer, tied):
    """PEFT keeps embedding LoRA as lora_embedding_A/B: the merged embedding equals what PEFT's
    merge_and_unload writes, and so does every other weight. Tied, PEFT's merge also moves the output
    layer (one matrix), which the policy does not apply: why check_engine_sync refuses that case."""
    peft = _policy(tiny_tokenizer, tied=tied, targets=["embed_tokens", "q_proj"])
    ours = dict(policy_weights(peft))
    reference = copy.deepcopy(peft).merge_and_unload().state_dict()
    assert "model.embed_tokens.weight" in ours
    assert set(ours) == set(reference)
    for name, tensor in reference.items():
        if not (tied and name == "lm_head.weight"):
            torch.testing.assert_close(ours[name], tensor, rtol=0, atol=1e-12, msg=name)
    embedding = peft.get_base_model().model.embed_tokens
    assert not torch.equal(ours["model.embed_tokens.weight"], embedding.base_layer.weight)  # the adapter moved it


def test_merged_untied_weights_are_the_policy(tiny_tokenizer):
    """Loaded into a plain model, the merged weights give the LoRA policy's logits (float64)."""
    peft = _policy(tiny_tokenizer, tied=False, targets=["embed_tokens", "q_proj", "lm_head"])
    check_engine_sync(peft, "merged")  # untied: the engine can be given this policy
    plain = Qwen2ForCausalLM(peft.get_base_model().config).double().eval()
    plain.load_state_dict(dict(policy_weights(peft)))
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, peft(input_ids=ids).logits, rtol=0, atol=1e-10)


@pytest.mark.parametrize("targets, sync, message", [
    (["embed_tokens"], "merged", "tied input and output embeddings"),
    (["lm_head"], "merged", "tied input and output embeddings"),
    (["embed_tokens", "q_proj"], "adapter", "grpo.vllm_sync=merged"),
])
def test_embedding_lora_the_engine_cannot_hold_is_refused(tiny_tokenizer, targets, sync, message):
    peft = _policy(tiny_tokenizer, tied=sync == "merged", targets=targets)
    with pytest.raises(ConfigError, match=message) as info:
        check_engine_sync(peft, sync)
    assert "lora.target_modules" in str(info.value)


def test_linear_only_lora_passes_the_check(tiny_tokenizer):
    peft = _policy(tiny_tokenizer, tied=True, targets=["q_proj", "v_proj"])
    for sync in ("merged", "adapter"):
        check_engine_sync(peft, sync)
