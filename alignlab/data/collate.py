"""Padding token-id lists into tensors. Masks come from lengths, never from comparing ids to pad_id."""

from __future__ import annotations

import torch


def pad_right(sequences: list[list[int]], pad_value: int, dtype=torch.long) -> torch.Tensor:
    """[B, T] tensor with each sequence left-aligned."""
    width = max(len(s) for s in sequences)
    out = torch.full((len(sequences), width), pad_value, dtype=dtype)
    for row, seq in enumerate(sequences):
        out[row, : len(seq)] = torch.tensor(seq, dtype=dtype)
    return out


def pad_left(sequences: list[list[int]], pad_value: int) -> torch.Tensor:
    """[B, T] tensor with each sequence right-aligned (for generation)."""
    width = max(len(s) for s in sequences)
    out = torch.full((len(sequences), width), pad_value, dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            out[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
    return out


def collate_masked(ids: list[list[int]], loss_masks: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids, attention_mask and loss_mask, each [B, T]."""
    return {
        "input_ids": pad_right(ids, pad_id),
        "attention_mask": pad_right([[1] * len(s) for s in ids], 0),
        "loss_mask": pad_right(loss_masks, 0),
    }
