"""Batched sampling with a KV cache: prompts -> completions (ids, masks, texts). No rewards, no loss.

Prompts are left-padded (transformers' `generate` derives position ids from the attention mask).
The completion mask keeps every token up to and including the first EOS and drops everything
after it; it is built from positions, never by comparing ids to pad_id (pad may equal EOS).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignlab.data.collate import pad_left


@dataclass
class Rollout:
    prompt_ids: torch.Tensor  # [N, P], left-padded
    prompt_mask: torch.Tensor  # [N, P]
    completion_ids: torch.Tensor  # [N, C]
    completion_mask: torch.Tensor  # [N, C]: 1 up to and including the first EOS
    texts: list[str]  # decoded completions, special tokens skipped
    ended: torch.Tensor  # [N] bool: the completion stopped at EOS (False = cut at max length)

    def sequences(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask, loss_mask), each [N, P + C], for scoring the completions."""
        input_ids = torch.cat([self.prompt_ids, self.completion_ids], dim=1)
        attention = torch.cat([self.prompt_mask, self.completion_mask], dim=1)
        loss_mask = torch.cat([torch.zeros_like(self.prompt_mask), self.completion_mask], dim=1)
        return input_ids, attention, loss_mask

    def select(self, rows: list[int]) -> "Rollout":
        return Rollout(
            self.prompt_ids[rows], self.prompt_mask[rows], self.completion_ids[rows], self.completion_mask[rows],
            [self.texts[i] for i in rows], self.ended[rows],
        )


def completion_mask(completion_ids: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask [N, C], ended [N]): ones through the first EOS; all ones when there is none."""
    is_eos = completion_ids == eos_id  # [N, C]
    ended = is_eos.any(dim=1)  # [N]
    width = completion_ids.shape[1]
    first_eos = torch.where(ended, is_eos.float().argmax(dim=1), torch.full_like(ended, width, dtype=torch.long))  # [N]
    positions = torch.arange(width, device=completion_ids.device)[None, :]  # [1, C]
    return (positions <= first_eos[:, None]).long(), ended


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[list[int]],
    *,
    num_generations: int = 1,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    greedy: bool = False,
    batch_size: int = 512,
    device=None,
) -> Rollout:
    """G completions per prompt, grouped: rows [i*G, (i+1)*G) belong to prompts[i]."""
    device = device or next(model.parameters()).device
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    repeated = [p for p in prompts for _ in range(num_generations)]
    was_training = model.training
    model.eval()
    chunks = []
    for start in range(0, len(repeated), batch_size):
        prompt_ids = pad_left(repeated[start : start + batch_size], pad_id)
        prompt_mask = pad_left([[1] * len(p) for p in repeated[start : start + batch_size]], 0)
        out = model.generate(
            input_ids=prompt_ids.to(device),
            attention_mask=prompt_mask.to(device),
            do_sample=not greedy,
            temperature=temperature if not greedy else None,
            top_p=top_p if not greedy else None,
            top_k=(top_k or None) if not greedy else None,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_id,
            eos_token_id=eos_id,
        )
        chunks.append((prompt_ids, prompt_mask, out[:, prompt_ids.shape[1]:].cpu()))
    model.train(was_training)
    prompt_width = max(c[0].shape[1] for c in chunks)
    completion_width = max(c[2].shape[1] for c in chunks)
    prompt_ids = torch.cat([_left_to(c[0], prompt_width, pad_id) for c in chunks])
    prompt_mask = torch.cat([_left_to(c[1], prompt_width, 0) for c in chunks])
    completion_ids = torch.cat([_right_to(c[2], completion_width, pad_id) for c in chunks])
    mask, ended = completion_mask(completion_ids, eos_id)
    texts = tokenizer.batch_decode([ids[m.bool()].tolist() for ids, m in zip(completion_ids, mask)], skip_special_tokens=True)
    return Rollout(prompt_ids, prompt_mask, completion_ids, mask, texts, ended)


def _left_to(tensor: torch.Tensor, width: int, value: int) -> torch.Tensor:
    extra = width - tensor.shape[1]
    return torch.nn.functional.pad(tensor, (extra, 0), value=value) if extra else tensor


def _right_to(tensor: torch.Tensor, width: int, value: int) -> torch.Tensor:
    extra = width - tensor.shape[1]
    return torch.nn.functional.pad(tensor, (0, extra), value=value) if extra else tensor
