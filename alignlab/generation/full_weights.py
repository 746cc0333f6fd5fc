"""The policy's full weights, one tensor at a time, named as a plain transformers model names them:
what a vLLM engine (colocated or a server) loads after each optimizer step.

A LoRA policy yields W + scale * B A, computed one layer at a time as the consumer asks for it,
never a merged copy of the whole model. Sharded policies are gathered one tensor (FSDP2: a
DTensor's `full_tensor()`) or one layer (DeepSpeed ZeRO-3: `GatheredParameters`) at a time: each
gather is a collective, so every process must iterate the same weights in the same order, which
they do (same model, same order), each feeding its own engine.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Iterator

import torch

from alignlab.errors import ConfigError
from alignlab.model.loading import is_peft


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor (FSDP2's shard) gathered whole; any other tensor as it is."""
    full_tensor = getattr(tensor, "full_tensor", None)
    return full_tensor() if callable(full_tensor) else tensor


def _zero3(module) -> bool:
    return any(hasattr(p, "ds_id") for p in module.parameters())


def _gathered(module, zero3: bool):
    """ZeRO-3: the module's parameters gathered whole while the context is open (all processes together)."""
    if not zero3:
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)


def _delta(owner) -> torch.Tensor:
    """scale * B A of a LoRA layer's active adapters, from its (possibly sharded) factors, in the base
    weight's layout. PEFT keeps an embedding's factors as parameters `lora_embedding_A` [r, V] and
    `lora_embedding_B` [H, r], and the weight is [V, H]: its delta is (B A) transposed."""
    total = None
    for adapter in owner.active_adapters:
        if adapter in getattr(owner, "lora_embedding_A", {}):
            a, b = _full(owner.lora_embedding_A[adapter]), _full(owner.lora_embedding_B[adapter])
            delta = (b @ a).T * owner.scaling[adapter]  # [V, H]
        elif adapter in owner.lora_A:
            a, b = _full(owner.lora_A[adapter].weight), _full(owner.lora_B[adapter].weight)
            delta = (b @ a) * owner.scaling[adapter]
            if getattr(owner, "fan_in_fan_out", False):
                delta = delta.T
        else:  # an adapter that does not touch this layer
            continue
        total = delta if total is None else total + delta
    return total


def check_engine_sync(model, sync: str) -> None:
    """Refuse, before any engine starts, LoRA on embeddings that a vLLM engine cannot be given.

    Merged sync writes W + scale * B A into the engine's weights. With tied input and output
    embeddings the engine holds one matrix for both, while the policy applies its embedding adapter
    to the input lookup only (and an `lm_head` adapter to the output only): no single matrix is the
    policy (PEFT's own merge_and_unload changes the output layer the same way). Adapter-only sync hands
    the adapter to vLLM, whose LoRA covers embeddings only for some architectures."""
    inner = model.module if hasattr(model, "module") else model
    if not is_peft(inner):
        return
    base = inner.get_base_model()
    embeddings = {"input": base.get_input_embeddings(), "output": base.get_output_embeddings()}
    adapted = {side: layer for side, layer in embeddings.items() if layer is not None and _adapted(layer)}
    if not adapted:
        return
    names = ", ".join(name for name, module in base.named_modules() if module in adapted.values())
    if sync == "adapter":
        raise ConfigError(f"lora.target_modules adapts the embedding layer(s) {names}, which vLLM's LoRA does not "
                          "cover for every architecture: use grpo.vllm_sync=merged (the adapter is merged into the "
                          "weights the engine gets), or leave them out of lora.target_modules")
    tied = embeddings["output"] is not None and \
        _base_weight(embeddings["input"]) is _base_weight(embeddings["output"])
    if tied:
        raise ConfigError(f"lora.target_modules adapts {names} of a model with tied input and output embeddings "
                          "(tie_word_embeddings): the vLLM engine holds one matrix for both, while the policy's "
                          "adapter changes only one of them, so no merged weight is the policy. Leave the embeddings "
                          "out of lora.target_modules, or use grpo.backend=hf")


def _adapted(layer) -> bool:
    """Whether an active LoRA adapter changes this layer."""
    factors = [getattr(layer, "lora_A", {}), getattr(layer, "lora_embedding_A", {})]
    return any(adapter in f for adapter in getattr(layer, "active_adapters", []) for f in factors)


def _base_weight(layer) -> torch.Tensor:
    return getattr(layer, "base_layer", layer).weight


def policy_weights(model, merge: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
    """(checkpoint name, full tensor) of every weight of the policy (`merge=False`: LoRA layers'
    base weights under the same names, for their shapes and dtypes)."""
    inner = model.module if hasattr(model, "module") else model
    base = inner.get_base_model() if is_peft(inner) else inner
    zero3 = _zero3(inner)
    modules = dict(base.named_modules())
    for name in list(base.state_dict().keys()):
        if ".lora_" in name:
            continue
        lora_owner = name.split(".base_layer.")[0] if ".base_layer." in name else None
        owner = modules[lora_owner if lora_owner is not None else name.rpartition(".")[0]]
        with torch.no_grad(), _gathered(owner, zero3):
            module, _, attr = name.rpartition(".")
            tensor = _full(getattr(modules[module], attr))
            if lora_owner is not None:
                name = name.replace(".base_layer.", ".")
                delta = _delta(owner) if merge and name.endswith(".weight") and not getattr(owner, "merged", False) \
                    else None
                if delta is not None:
                    tensor = tensor + delta.to(tensor.dtype)
            yield name, tensor.detach()
