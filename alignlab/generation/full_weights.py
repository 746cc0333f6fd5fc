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
    """scale * B A of a LoRA layer's active adapters, from its (possibly sharded) factors."""
    total = None
    for adapter in owner.active_adapters:
        a, b = _full(owner.lora_A[adapter].weight), _full(owner.lora_B[adapter].weight)
        delta = (b @ a) * owner.scaling[adapter]
        if getattr(owner, "fan_in_fan_out", False):
            delta = delta.T
        total = delta if total is None else total + delta
    return total


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
                if merge and name.endswith(".weight") and not getattr(owner, "merged", False):
                    tensor = tensor + _delta(owner).to(tensor.dtype)
            yield name, tensor.detach()
