"""final/ of a LoRA or QLoRA run: the adapter merged into a fresh, unquantised CPU copy of the base."""

from __future__ import annotations

import json
from dataclasses import replace

import torch
from transformers import AutoModelForCausalLM

from alignlab.config import LoraConfig, ModelConfig
from alignlab.model.loading import is_peft, load_model, save_merged


def test_merge_reloads_the_base_and_leaves_the_live_model_alone(tmp_path, tiny_model_dir, tiny_tokenizer):
    """A QLoRA run's config (load_in_4bit) merges into a bfloat16 base with no quantization_config, so
    final/ loads with plain transformers; the live model keeps its adapter (no copy, no merge in place)."""
    cfg = ModelConfig(name_or_path=str(tiny_model_dir))
    model = load_model(cfg, LoraConfig(enabled=True, r=4, alpha=8))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)  # as if trained
    live_before = {n: p.detach().clone() for n, p in model.named_parameters()}

    out = tmp_path / "final"
    save_merged(model, tiny_tokenizer, out, replace(cfg, load_in_4bit=True))

    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "bfloat16"
    assert not (out / "adapter_config.json").exists()
    merged = dict(AutoModelForCausalLM.from_pretrained(out).named_parameters())
    base = dict(AutoModelForCausalLM.from_pretrained(tiny_model_dir).named_parameters())
    modules = dict(model.named_modules())
    checked = 0
    for name, module in modules.items():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            weight = name.replace("base_model.model.", "") + ".weight"
            delta = 2.0 * module.lora_B["default"].weight @ module.lora_A["default"].weight  # alpha / r = 2
            want = (base[weight].to(torch.bfloat16) + delta.to(torch.bfloat16)).float()
            torch.testing.assert_close(merged[weight].float(), want, atol=2e-2, rtol=2e-2)
            checked += 1
    assert checked == 2 * 7
    assert is_peft(model)
    assert all(torch.equal(p, live_before[n]) for n, p in model.named_parameters())


def test_merge_on_the_cpu_shares_the_live_base_weights(tmp_path, tiny_model_dir, tiny_tokenizer):
    """A float32 run on the CPU: final/ is base + delta exactly as peft merges, built on the live
    model's own base tensors (only the adapted layers' weights are new), and the live model keeps its
    adapter and its base weights bit for bit."""
    from alignlab.model.loading import merged_on_live_weights

    cfg = ModelConfig(name_or_path=str(tiny_model_dir))
    model = load_model(cfg, LoraConfig(enabled=True, r=4, alpha=8))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    live_before = {n: p.detach().clone() for n, p in model.named_parameters()}

    plain = merged_on_live_weights(model)
    live = model.get_base_model()
    assert plain.model.embed_tokens.weight.data_ptr() == live.model.embed_tokens.weight.data_ptr()  # shared
    assert plain.lm_head.weight.data_ptr() == plain.model.embed_tokens.weight.data_ptr()  # still tied
    assert plain.model.layers[0].self_attn.q_proj.weight.data_ptr() != \
        live.model.layers[0].self_attn.q_proj.base_layer.weight.data_ptr()  # merged: a new tensor

    out = tmp_path / "final"
    save_merged(model, tiny_tokenizer, out, cfg)
    assert not (out / "adapter_config.json").exists()
    saved = dict(AutoModelForCausalLM.from_pretrained(out).named_parameters())
    reference = load_model(cfg, LoraConfig(enabled=True, r=4, alpha=8))  # peft's own merge, on a fresh copy
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    set_peft_model_state_dict(reference, get_peft_model_state_dict(model))
    expected = dict(reference.merge_and_unload().named_parameters())
    assert saved.keys() == expected.keys()
    for name, weight in expected.items():
        assert torch.equal(saved[name], weight), name
    assert is_peft(model)
    assert all(torch.equal(p, live_before[n]) for n, p in model.named_parameters())
