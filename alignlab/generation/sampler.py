"""Batched sampling with a KV cache: prompts -> completions (ids, masks, texts). No rewards, no loss.

Prompts are left-padded (transformers' `generate` derives position ids from the attention mask).
The completion mask keeps every token up to and including the first stop token (any EOS id of the
tokenizer or the generation config) and drops everything after it; it is built from positions,
never by comparing ids to pad_id (pad may equal EOS).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from alignlab.data.collate import pad_left
from alignlab.model.logprobs import returned_cache
from alignlab.model.loading import merged_lora, stop_token_ids


@dataclass
class Rollout:
    prompt_ids: torch.Tensor  # [N, P], left-padded
    prompt_mask: torch.Tensor  # [N, P]
    completion_ids: torch.Tensor  # [N, C]
    completion_mask: torch.Tensor  # [N, C]: 1 up to and including the first stop token
    texts: list[str]  # decoded completions, special tokens skipped
    ended: torch.Tensor  # [N] bool: the completion stopped at a stop token (False = cut at max length)
    # [N, C] float32: the sampler's log-prob of each sampled token under softmax(logits / temperature),
    # before top-k / top-p (the distribution the trainer scores); for the trainer/sampler mismatch.
    sampling_logps: Optional[torch.Tensor] = None
    # Multi-turn rollouts (alignlab.generation.multi_turn): [N, C] 1 where a token came from a tool or
    # the environment (attended, never trained), and each trajectory's messages and counts.
    tool_mask: Optional[torch.Tensor] = None
    trajectories: Optional[list[dict]] = None

    @property
    def loss_mask(self) -> torch.Tensor:
        """[N, C]: the tokens the policy wrote (the completion mask less tool and environment tokens)."""
        if self.tool_mask is None:
            return self.completion_mask
        return self.completion_mask * (1 - self.tool_mask)

    def sequences(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask, loss_mask), each [N, P + C], for scoring the completions."""
        input_ids = torch.cat([self.prompt_ids, self.completion_ids], dim=1)
        attention = torch.cat([self.prompt_mask, self.completion_mask], dim=1)
        loss_mask = torch.cat([torch.zeros_like(self.prompt_mask), self.loss_mask], dim=1)
        return input_ids, attention, loss_mask

    def select(self, rows: list[int]) -> "Rollout":
        return Rollout(
            self.prompt_ids[rows], self.prompt_mask[rows], self.completion_ids[rows], self.completion_mask[rows],
            [self.texts[i] for i in rows], self.ended[rows],
            self.sampling_logps[rows] if self.sampling_logps is not None else None,
            self.tool_mask[rows] if self.tool_mask is not None else None,
            [self.trajectories[i] for i in rows] if self.trajectories is not None else None,
        )


def all_done(done: bool, device) -> bool:
    """True when every process is done decoding (a collective: all processes must call it together;
    under FSDP or ZeRO-3 each forward is one, so all decode until the last is done)."""
    flag = torch.tensor([0 if done else 1], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.SUM)
    return int(flag.item()) == 0


def completion_mask(completion_ids: torch.Tensor, stop_ids) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask [N, C], ended [N]): ones through the first stop token; all ones when there is none.
    `stop_ids`: one id or a list of them."""
    stop = torch.as_tensor([stop_ids] if isinstance(stop_ids, int) else list(stop_ids), device=completion_ids.device)
    is_stop = torch.isin(completion_ids, stop)  # [N, C]
    ended = is_stop.any(dim=1)  # [N]
    width = completion_ids.shape[1]
    first_stop = torch.where(ended, is_stop.float().argmax(dim=1), torch.full_like(ended, width, dtype=torch.long))  # [N]
    positions = torch.arange(width, device=completion_ids.device)[None, :]  # [1, C]
    return (positions <= first_stop[:, None]).long(), ended


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
    synced: bool = False,
    stop_ids: Optional[list[int]] = None,
    merge_lora: bool = False,
) -> Rollout:
    """G completions per prompt, grouped: rows [i*G, (i+1)*G) belong to prompts[i].

    `batch_size` bounds the completions decoded together (and so the KV cache's peak). Each prompt
    is encoded once; its keys and values are repeated for its G completions in the cache. `synced`
    (FSDP or ZeRO-3, where every forward is a collective): every process calls this together and
    decodes until all are done. `stop_ids`: the ids that end a completion (default: the tokenizer's
    and the model's generation config's EOS ids, `stop_token_ids`). `merge_lora`: decode with the
    LoRA adapters merged into the base weights where that is exact enough (`merged_lora`; never
    under `synced`, whose weights are sharded), unmerged after. Off by default: on CPU it did not
    pay at Qwen2.5-0.5B's width (bench/RESULTS.md: a decoding step is the same speed merged or not
    at 4 layers, ~5% faster at 24, and merging plus unmerging costs as much as 3 s there).
    """
    device = device or next(model.parameters()).device
    stop_ids = stop_ids or stop_token_ids(tokenizer, getattr(model, "generation_config", None))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    per_chunk = max(1, batch_size // num_generations)
    was_training = model.training
    model.eval()
    chunks = []
    with merged_lora(model, enabled=merge_lora and not synced):
        for start in range(0, len(prompts), per_chunk):
            part = prompts[start : start + per_chunk]
            prompt_ids = pad_left(part, pad_id)  # [n, Lp]
            prompt_mask = pad_left([[1] * len(p) for p in part], 0)  # [n, Lp]
            completions, logps = sample(
                model, prompt_ids.to(device), prompt_mask.to(device), num_generations=num_generations,
                max_new_tokens=max_new_tokens, stop_ids=stop_ids, pad_id=pad_id, temperature=temperature,
                top_p=top_p, top_k=top_k, greedy=greedy, synced=synced,
            )
            repeat = lambda t: t.repeat_interleave(num_generations, dim=0)  # noqa: E731  [n*G, ...]
            chunks.append((repeat(prompt_ids), repeat(prompt_mask), completions.cpu(), logps.cpu()))
    model.train(was_training)
    prompt_width = max(c[0].shape[1] for c in chunks)
    completion_width = max(c[2].shape[1] for c in chunks)
    prompt_ids = torch.cat([_left_to(c[0], prompt_width, pad_id) for c in chunks])
    prompt_mask = torch.cat([_left_to(c[1], prompt_width, 0) for c in chunks])
    completion_ids = torch.cat([_right_to(c[2], completion_width, pad_id) for c in chunks])
    sampling_logps = torch.cat([_right_to(c[3], completion_width, 0.0) for c in chunks])
    mask, ended = completion_mask(completion_ids, stop_ids)
    texts = tokenizer.batch_decode([ids[m.bool()].tolist() for ids, m in zip(completion_ids, mask)], skip_special_tokens=True)
    return Rollout(prompt_ids, prompt_mask, completion_ids, mask, texts, ended, sampling_logps * mask)


# Finished rows leave the decode batch (their KV cache rows dropped) once at least this share of it is
# finished: every step then costs what its unfinished rows need. Any share pays off on CPU, where a
# step's cost is about proportional to its rows and dropping rows from the cache costs a copy of it.
COMPACT_AT = 0.25


@torch.no_grad()
def sample(model, prompt_ids, prompt_mask, *, num_generations, max_new_tokens, stop_ids, pad_id,
           temperature=1.0, top_p=1.0, top_k=0, greedy=False, synced=False,
           compact_at: float = COMPACT_AT) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode completions with a KV cache, stopping when every row has emitted a stop token.
    Returns (ids [n*G, C], the sampler's log-probs of those ids [n*G, C]: see `Rollout.sampling_logps`).

    A lean loop instead of `model.generate`: one forward per token and nothing else per step,
    which is most of the cost for small models. Finished rows are padded (masked later) and leave
    the decode batch once `compact_at` of it is finished (0 < compact_at <= 1; above 1: never).
    Each step draws one uniform number per row of the whole batch, whichever rows are still in
    it, so the tokens do not depend on when rows leave. `synced` (FSDP / ZeRO-3): the loop keeps
    calling the model, with at least one row, until every process is done.
    """
    stop = torch.as_tensor([stop_ids] if isinstance(stop_ids, int) else list(stop_ids), device=prompt_ids.device)
    positions = (prompt_mask.long().cumsum(-1) - 1).clamp(min=0)  # [n, Lp]
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    cache_name, cache = returned_cache(out)
    if num_generations > 1:
        cache.batch_repeat_interleave(num_generations)
    logits = out.logits[:, -1].float().repeat_interleave(num_generations, dim=0)  # [N, V]
    attention = prompt_mask.repeat_interleave(num_generations, dim=0)  # [b, Lp]: b = rows still decoded
    next_position = prompt_mask.long().sum(-1).repeat_interleave(num_generations)[:, None]  # [b, 1]
    total, device = logits.shape[0], logits.device
    rows = torch.arange(total, device=device)  # [b]: the batch row of each decoded row
    finished = torch.zeros(total, dtype=torch.bool, device=device)  # [N]
    tokens = torch.full((max_new_tokens, total), pad_id, dtype=torch.long, device=device)  # [C, N]
    logps = torch.zeros(max_new_tokens, total, device=device)  # [C, N]
    steps = 0
    for step in range(max_new_tokens):
        scaled = logits if greedy else logits / temperature  # [b, V]
        if greedy:
            token = logits.argmax(-1)  # [b]
        else:
            token = pick_token(scaled, top_p, top_k, uniform=torch.rand(total, device=device)[rows])  # [b]
        was_finished = finished[rows]  # [b]
        token = torch.where(was_finished, torch.full_like(token, pad_id), token)
        tokens[step, rows] = token
        logp = scaled.gather(1, token[:, None]).squeeze(1) - scaled.logsumexp(-1)  # [b]
        logps[step, rows] = torch.where(was_finished, 0.0, logp)  # 0 after the stop token, whatever the batch
        finished[rows] = was_finished | torch.isin(token, stop)
        steps = step + 1
        done = bool(finished.all())
        if synced:
            done = all_done(done, device)
        if done or step == max_new_tokens - 1:
            break
        live = ~finished[rows]  # [b]
        if compact_at <= 1 and int((~live).sum()) >= max(compact_at * len(rows), 1):
            keep = live.nonzero().squeeze(1)  # [b']
            if not len(keep):  # synced: this process is done, the others are not; one row keeps it stepping
                keep = keep.new_zeros(1)
            if len(keep) < len(rows):
                cache.batch_select_indices(keep)
                rows, token, attention, next_position = rows[keep], token[keep], attention[keep], next_position[keep]
        attention = torch.cat([attention, attention.new_ones(attention.shape[0], 1)], dim=1)  # [b, Lp + t + 1]
        out = model(input_ids=token[:, None], attention_mask=attention, position_ids=next_position,
                    use_cache=True, **{cache_name: cache})
        next_position = next_position + 1
        logits = out.logits[:, -1].float()  # [b, V]
    return tokens[:steps].T.contiguous(), logps[:steps].T.contiguous()  # [N, C], [N, C]


def pick_token(scaled_logits: torch.Tensor, top_p: float, top_k: int, uniform: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Sample one token per row [N] from temperature-scaled logits [N, V] with top-k and nucleus (top-p).

    By inversion: row i takes the first token whose cumulative probability exceeds `uniform[i]`
    (one draw in [0, 1) per row; drawn here when not given), so a row's token depends on its own
    logits and draw only, not on the rest of the batch (torch.multinomial's draws do)."""
    logits = scaled_logits
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # [N, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)  # [N, V]
        probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens ranked above it already cover top_p (the first always stays).
        drop = (probs.cumsum(-1) - probs) > top_p  # [N, V]
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    if uniform is None:
        uniform = torch.rand(logits.shape[0], device=logits.device)
    cdf = logits.softmax(-1).cumsum_(-1)  # [N, V], non-decreasing
    target = uniform[:, None].to(cdf.dtype) * cdf[:, -1:]  # [N, 1]
    token = torch.searchsorted(cdf, target, right=True).squeeze(1)  # [N]: first index with cdf > target
    # Rounding can put the target at the very top: then the last token with any probability.
    return torch.minimum(token, cdf.argmax(-1))


def _left_to(tensor: torch.Tensor, width: int, value: int) -> torch.Tensor:
    extra = width - tensor.shape[1]
    return torch.nn.functional.pad(tensor, (extra, 0), value=value) if extra else tensor


def _right_to(tensor: torch.Tensor, width: int, value: int) -> torch.Tensor:
    extra = width - tensor.shape[1]
    return torch.nn.functional.pad(tensor, (0, extra), value=value) if extra else tensor


def concat_rollouts(parts: list[Rollout], pad_id: int) -> Rollout:
    """One rollout from several, re-padded to common prompt and completion widths."""
    p = max(r.prompt_ids.shape[1] for r in parts)
    c = max(r.completion_ids.shape[1] for r in parts)
    return Rollout(
        torch.cat([_left_to(r.prompt_ids, p, pad_id) for r in parts]),
        torch.cat([_left_to(r.prompt_mask, p, 0) for r in parts]),
        torch.cat([_right_to(r.completion_ids, c, pad_id) for r in parts]),
        torch.cat([_right_to(r.completion_mask, c, 0) for r in parts]),
        [t for r in parts for t in r.texts],
        torch.cat([r.ended for r in parts]),
        (torch.cat([_right_to(r.sampling_logps, c, 0.0) for r in parts])
         if all(r.sampling_logps is not None for r in parts) else None),
        (torch.cat([_right_to(r.tool_mask, c, 0) for r in parts]) if all(r.tool_mask is not None for r in parts)
         else None),
        [t for r in parts for t in r.trajectories] if all(r.trajectories is not None for r in parts) else None,
    )
