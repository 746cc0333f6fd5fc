"""Sequence classifiers with one output (reward models): loading them, and reading their score of a sequence.

The model is transformers' own `AutoModelForSequenceClassification` with `num_labels=1` (a linear
`score` head on the decoder's last hidden state); nothing here writes a head by hand.

Which token is scored: transformers pools at "the rightmost token that is not pad_token_id". That
reads ids, not the attention mask, so when the pad token is also a token that ends a sequence
(pad = EOS, which alignlab's tokenizer loading sets when a tokenizer has no pad token, as many
trainers do) it silently scores the token *before* the final EOS, and with no pad id at all it
scores whatever sits at the last position, padding included. `sequence_scores` instead takes the
head's output at every position (a forward hook on the head) and picks each row's last real token
from the attention mask, with position ids from the mask, so left and right padding give the same
score as the sequence alone. For one unpadded sequence whose last token is not the pad token, this
is exactly what a plain `AutoModelForSequenceClassification` forward returns.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

from alignlab.errors import AlignlabError
from alignlab.model.loading import (DTYPES, _is_adapter_dir, _load_error, disable_dropout, ensure_tiny_model,
                                    hub_options, lora_targets, quiet_peft_deprecations, resolve_model_path)

log = logging.getLogger("alignlab")


def score_head(model) -> torch.nn.Module:
    """The classifier's output layer (`score` in transformers' decoder classifiers; peft wraps it when trained)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name in ("score", "classifier"):
        head = getattr(base, name, None)
        if isinstance(head, torch.nn.Module):
            return head
    raise AlignlabError(f"{type(base).__name__} has no `score` or `classifier` head: not a sequence classifier")


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B] index of each row's last real token (mask 1), whether the batch is padded left or right."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)  # [T]
    return (positions * attention_mask).argmax(-1)  # [B]


def sequence_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                    head: Optional[torch.nn.Module] = None) -> torch.Tensor:
    """[B] scalar scores of `input_ids` [B, T] at each row's last real token. `model` may be wrapped
    (DDP, peft); `head`: its score layer when the wrapper hides it (default: found on `model`)."""
    head = head if head is not None else score_head(model)
    captured = []
    handle = head.register_forward_hook(lambda module, inputs, output: captured.append(output))
    # Left padding shifts the real tokens right: their positions must still count from 0.
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, T]
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    finally:
        handle.remove()
    logits = captured[-1]  # [B, T, 1]: the head applied at every position
    rows = torch.arange(input_ids.shape[0], device=logits.device)
    return logits[rows, last_token_index(attention_mask).to(logits.device), 0]  # [B]


def pad_batch(sequences: list[list[int]], pad_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [B, T], attention_mask [B, T]) of token-id lists padded on `side`."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
        ids[row, span] = torch.tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


def is_reward_model_dir(path: str) -> bool:
    """Whether a model directory holds a one-output sequence classifier (or an adapter trained as one)."""
    import json
    from pathlib import Path

    directory = Path(path)
    if (directory / "adapter_config.json").is_file():
        return json.loads((directory / "adapter_config.json").read_text()).get("task_type") == "SEQ_CLS"
    if not (directory / "config.json").is_file():
        return True  # a hub id: checked when it loads
    config = json.loads((directory / "config.json").read_text())
    return any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or []) and \
        len(config.get("id2label") or {"0": ""}) == 1


def load_classifier(model_cfg, lora_cfg=None, *, pad_token_id: Optional[int] = None, for_training: bool = True,
                    require_trained: bool = False, gradient_checkpointing: bool = False):
    """A one-output `AutoModelForSequenceClassification`: from a causal LM checkpoint (a new score head,
    seeded by the run's seed) or from a reward model; a LoRA adapter directory is merged first. With
    `lora_cfg.enabled` the decoder gets LoRA and the score head is trained whole (`modules_to_save`).
    `require_trained`: refuse a checkpoint without a trained head (scoring with a random head is noise)."""
    from transformers import AutoModelForSequenceClassification

    path = resolve_model_path(ensure_tiny_model(model_cfg.name_or_path))
    if require_trained and not is_reward_model_dir(path):
        raise AlignlabError(f"{model_cfg.name_or_path} ({path}) is not a reward model: its config.json names no "
                            "...ForSequenceClassification with one label, so its score head would be random. Train one "
                            "with `alignlab rm`, or give a sequence-classification model")
    kwargs = dict(dtype=DTYPES[model_cfg.dtype], trust_remote_code=model_cfg.trust_remote_code, num_labels=1,
                  **hub_options(path, model_cfg.revision))
    if model_cfg.revision:
        kwargs["revision"] = model_cfg.revision
    if model_cfg.attn_implementation:
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    try:
        if _is_adapter_dir(path):
            from peft import AutoPeftModelForSequenceClassification

            model = AutoPeftModelForSequenceClassification.from_pretrained(path, **kwargs).merge_and_unload()
        else:
            model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise _load_error("reward model", model_cfg.name_or_path, path, exc) from None
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id  # transformers' pooling refuses batches without one
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if not for_training:
        return model.eval().requires_grad_(False)
    if lora_cfg is not None and lora_cfg.enabled:
        from peft import LoraConfig, get_peft_model

        with quiet_peft_deprecations():
            config = LoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                                target_modules=lora_targets(model, lora_cfg.target_modules), task_type="SEQ_CLS",
                                modules_to_save=["score"])
            model = get_peft_model(model, config)
    disable_dropout(model)  # chosen and rejected are compared: both must be scored by the same function (TRL too)
    return model
