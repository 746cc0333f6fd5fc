"""Per-token log-probs of chosen tokens without materialising the [B, T, V] float32 logits.

The model runs with `logits_to_keep` empty, so it returns its final hidden states [B, T, H] and no
logits. We gather the hidden states of the positions that predict a loss token ([N, H], N = the
completion tokens in the batch) and push them through the output layer in chunks of rows. Each
chunk is recomputed in backward (activation checkpointing), so at most one [chunk, V] float32
block of logits is alive at a time, whatever the vocabulary size.

Imports only torch.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


CHUNK_BUDGET_BYTES = 256 * 2**20
# A trainable head keeps the softmax of every chunk from forward to backward when they fit in this.
KEEP_BUDGET_BYTES = 512 * 2**20
# The one-call trainable-head path pays off at real vocabularies (a [V, H] gradient block per chunk is
# 545 MiB at Qwen2.5's); below this the per-chunk checkpoints cost nothing and keep the tiny model's
# trajectories (and the tour's measured claims) exactly as they were.
TRAINABLE_HEAD_MIN_VOCAB = 16384


def _chunk_logits(project, hidden, scale, softcap, temperature):
    logits = project(hidden).float()  # [n, V]
    if scale != 1.0:
        logits = logits * scale
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits / temperature if temperature != 1.0 else logits


def _chunk_logps(project, hidden: torch.Tensor, targets: torch.Tensor, scale, softcap, temperature) -> torch.Tensor:
    logits = _chunk_logits(project, hidden, scale, softcap, temperature)
    return torch.gather(logits.log_softmax(-1), 1, targets[:, None]).squeeze(1)  # [n]


def _chunk_logps_and_entropy(project, hidden, targets, scale, softcap, temperature):
    logp_all = _chunk_logits(project, hidden, scale, softcap, temperature).log_softmax(-1)  # [n, V]
    entropy = -(logp_all.exp() * logp_all).sum(-1)  # [n]
    return torch.gather(logp_all, 1, targets[:, None]).squeeze(1), entropy


class _FrozenHeadLogps(torch.autograd.Function):
    """Log-probs [n] (and detached entropies [n]) of `targets` through a frozen LM head, with no
    recompute in backward. A token's log-prob is one number, so its gradient with respect to its
    hidden state is one vector: d log p(y | h) / d h = f * (W[y] - softmax(f * W h) @ W), with
    f = scale / temperature. That [n, H] Jacobian is computed in forward (the matmul backward would
    do anyway) and kept instead of any [n, V] block; backward only scales it. Used where the head
    takes no gradient (LoRA, frozen models) and has no soft-cap: two LM-head matmuls per chunk
    instead of the three of a checkpointed chunk (forward, recompute, backward)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, factor: float, with_entropy: bool):
        logits = F.linear(hidden, weight).float()  # [n, V]
        if factor != 1.0:
            logits = logits * factor
        logp_all = logits.log_softmax(-1)  # [n, V]
        del logits
        logps = torch.gather(logp_all, 1, targets[:, None]).squeeze(1)  # [n]
        probs = logp_all.exp()  # [n, V]: softmax
        entropy = logps.new_zeros(0)
        if with_entropy:  # -sum p log p as a batched dot product (no [n, V] product), in float32 under autocast too
            with torch.autocast(probs.device.type, enabled=False):
                entropy = -torch.bmm(probs[:, None, :], logp_all[:, :, None]).reshape(-1)  # [n]
        del logp_all
        expected = probs.to(weight.dtype) @ weight  # [n, H]: the softmax-weighted mean output embedding
        jacobian = (weight[targets] - expected).float() * factor  # [n, H]
        ctx.save_for_backward(jacobian)
        ctx.hidden_dtype = hidden.dtype
        return logps, entropy

    @staticmethod
    def backward(ctx, grad_logps, _grad_entropy):
        (jacobian,) = ctx.saved_tensors
        return (grad_logps[:, None] * jacobian).to(ctx.hidden_dtype), None, None, None, None


class _TrainableHeadLogps(torch.autograd.Function):
    """Log-probs [N] (and detached entropies [N]) through a head that takes a gradient (full fine-
    tuning), all chunks in one call: backward adds every chunk's weight gradient into one [V, H]
    buffer. `keep`: forward keeps each chunk's softmax for backward (when all of them fit in
    KEEP_BUDGET_BYTES: a GRPO step's completions at a 151,936-token vocabulary), else backward
    recomputes each chunk's logits, one more pass through the head. Per-chunk checkpoints instead
    give autograd one [V, H] gradient per chunk to add up: at a 151,936-row vocabulary a second
    545 MiB block alive while the rest of the backward still holds its activations."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, factor: float, chunk_size: int, with_entropy: bool, keep: bool = False):
        logps, entropies, kept = [], [], []
        for start in range(0, hidden.shape[0], chunk_size):
            logits = F.linear(hidden[start : start + chunk_size], weight).float()  # [n, V]
            logp_all = (logits * factor if factor != 1.0 else logits).log_softmax(-1)
            del logits
            logps.append(torch.gather(logp_all, 1, targets[start : start + chunk_size, None]).squeeze(1))
            probs = logp_all.exp() if with_entropy or keep else None
            if with_entropy:
                entropies.append(-torch.bmm(probs[:, None, :], logp_all[:, :, None]).reshape(-1))
            if keep:  # the softmax kept for backward: no recompute of the chunk's logits
                kept.append(probs)
        ctx.save_for_backward(hidden, weight, targets)
        ctx.factor, ctx.chunk_size, ctx.kept = factor, chunk_size, kept
        entropy = torch.cat(entropies) if entropies else hidden.new_zeros(0, dtype=torch.float32)
        ctx.mark_non_differentiable(entropy)
        return torch.cat(logps), entropy

    @staticmethod
    def backward(ctx, grad_logps, _grad_entropy):
        hidden, weight, targets = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        for start in range(0, hidden.shape[0], ctx.chunk_size):
            h, y = hidden[start : start + ctx.chunk_size], targets[start : start + ctx.chunk_size]
            g = grad_logps[start : start + ctx.chunk_size].float()  # [n]
            # d logp(y) / d logits = onehot(y) - softmax, times the factor and the upstream gradient.
            if ctx.kept:
                grad_logits = ctx.kept[start // ctx.chunk_size] * -g[:, None]  # [n, V]
            else:
                logits = F.linear(h, weight).float()
                grad_logits = (logits * ctx.factor if ctx.factor != 1.0 else logits).softmax(-1).mul_(-g[:, None])
                del logits
            grad_logits[torch.arange(len(y), device=y.device), y] += g
            if ctx.factor != 1.0:
                grad_logits.mul_(ctx.factor)
            grad_logits = grad_logits.to(weight.dtype)
            if grad_hidden is not None:
                grad_hidden[start : start + ctx.chunk_size] = grad_logits @ weight
            if grad_weight is not None:
                grad_weight.addmm_(grad_logits.T, h)
        return grad_hidden, grad_weight, None, None, None, None, None


def logit_transform(config) -> tuple[float, float | None]:
    """(scale, softcap) that the architecture applies to the LM head's output before softmax:
    Cohere multiplies by `logit_scale`, Granite divides by `logits_scaling`, Gemma 2/3 soft-cap with
    `final_logit_softcapping`. Our head must apply them too, or every log-prob disagrees with the
    logits the model (and so the sampler) produces."""
    scale = float(getattr(config, "logit_scale", None) or 1.0)
    divisor = getattr(config, "logits_scaling", None)
    if divisor:
        scale /= float(divisor)
    return scale, getattr(config, "final_logit_softcapping", None)


def output_layer(model):
    """(project, vocabulary size, scale, softcap) of the LM head, looking through PEFT and accelerate
    wrappers: `project(hidden)` gives the logits before the architecture's scaling and soft-cap.

    Normally `project` is F.linear on the weight taken now, which a recomputed chunk reuses in
    backward (FSDP2 may have swapped the module's attribute for its shard by then). Under DeepSpeed
    ZeRO-3 the weight here is only a partition: `project` is the module itself, whose call gathers
    the weight, in forward and again in backward."""
    inner = model.module if hasattr(model, "module") else model
    head = inner.get_output_embeddings()
    scale, softcap = logit_transform(inner.config)
    if partitioned(head):
        return head, head.weight.ds_shape[0], scale, softcap
    return (partial(F.linear, weight=head.weight, bias=getattr(head, "bias", None)), head.weight.shape[0],
            scale, softcap)


def returned_cache(out) -> tuple[str, object]:
    """(keyword, cache) of a forward's KV cache: transformers 5.24 renamed `past_key_values` to
    `cache`, in outputs and arguments alike, so the output tells which name the next call takes."""
    if "cache" in (out.keys() if hasattr(out, "keys") else ()):
        return "cache", out["cache"]
    return "past_key_values", out.past_key_values


def kv_cache_usable(model) -> bool:
    """Whether a forward of `model` now returns a KV cache. transformers drops the cache when
    gradient checkpointing is on in train mode, whoever turned it on (train.gradient_checkpointing,
    or peft's prepare_model_for_kbit_training for QLoRA), so this reads the modules' own state."""
    inner = model.module if hasattr(model, "module") else model
    return not any(getattr(m, "gradient_checkpointing", False) is True and m.training for m in inner.modules())


def partitioned(module) -> bool:
    """Whether DeepSpeed ZeRO-3 holds this module's weights partitioned (gathered only during its calls)."""
    return any(hasattr(p, "ds_shape") for p in module.parameters(recurse=False))


def token_logps(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    chunk_size: int = 0,
    position_ids: torch.Tensor | None = None,
    with_entropy: bool = False,
    temperature: float = 1.0,
):
    """Log-prob of each token where `loss_mask` is 1, as a [B, T] tensor (0 elsewhere).

    input_ids, attention_mask, loss_mask: [B, T]. Token t is scored by position t-1, so the first
    column of the result is always 0. With `with_entropy`, also returns the [B, T] entropy of the
    predictive distribution at the scored positions (for diagnostics; no gradient). `temperature`:
    log-probs of softmax(logits / T), the distribution a sampler at temperature T draws from.
    """
    rows = scored_hidden_states(model, input_ids, attention_mask, loss_mask, position_ids)
    scored = loss_mask[:, 1:].bool()  # [B, T-1]: positions that predict a loss token
    flat_logps, flat_entropy = score_rows(model, rows, input_ids[:, 1:][scored], chunk_size, with_entropy, temperature)
    result = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)  # [B, T]
    result[:, 1:] = result[:, 1:].masked_scatter(scored, flat_logps)
    if not with_entropy:
        return result
    entropy = torch.zeros_like(result)
    entropy[:, 1:] = entropy[:, 1:].masked_scatter(scored, flat_entropy)
    return result, entropy


def scored_hidden_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor,
                         position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Final (normed) hidden states [N, H] of the positions that predict the tokens where `loss_mask`
    ([B, T]) is 1, in row-major order: token t is predicted by position t-1. No logits are computed."""
    if position_ids is None:
        # Left padding needs explicit positions: a plain forward does not infer them.
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    empty = torch.zeros(0, dtype=torch.long, device=input_ids.device)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                output_hidden_states=True, logits_to_keep=empty, use_cache=False)
    hidden = out.hidden_states[-1][:, :-1]  # [B, T-1, H]
    return hidden[loss_mask[:, 1:].bool()]


def head_logits(model, temperature: float = 1.0, vocab_size: int | None = None):
    """`logits(hidden [n, H]) -> [n, V]` float32: the model's LM head with the architecture's scale and
    soft-cap, divided by `temperature`; the first `vocab_size` columns only when given (two models
    whose heads are padded to different sizes compare over the tokens both have)."""
    project, _, scale, softcap = output_layer(model)

    def logits(hidden: torch.Tensor) -> torch.Tensor:
        out = _chunk_logits(project, hidden, scale, softcap, temperature)
        return out[:, :vocab_size] if vocab_size is not None else out

    return logits


def score_rows(model, rows: torch.Tensor, targets: torch.Tensor, chunk_size: int, with_entropy: bool = False,
               temperature: float = 1.0):
    """Log-probs [N] (and entropies [N], detached) of `targets` given final hidden states `rows` [N, H]."""
    project, vocab_size, scale, softcap = output_layer(model)
    # The recomputation check compares the saved tensors' shapes after the call, when ZeRO-3 has
    # partitioned the head's weight again (it gathers it anew for backward); skip it there.
    check = "none" if isinstance(project, torch.nn.Module) else "default"
    if chunk_size <= 0:
        # A chunk's logits, log-softmax and gradient are about 3 [chunk, V] float32 buffers.
        chunk_size = max(16, CHUNK_BUDGET_BYTES // (3 * 4 * vocab_size))
    weight = getattr(project, "keywords", {}).get("weight")
    # A frozen head (LoRA) and its hidden states needing a gradient: the Jacobian path, no recompute.
    frozen_head = (weight is not None and not weight.requires_grad and project.keywords.get("bias") is None
                   and not softcap and rows.requires_grad and torch.is_grad_enabled())
    if (weight is not None and weight.requires_grad and project.keywords.get("bias") is None and not softcap
            and vocab_size >= TRAINABLE_HEAD_MIN_VOCAB and torch.is_grad_enabled()
            and not torch.is_autocast_enabled(rows.device.type)):
        # A head that trains (full fine-tuning), without mixed precision: one weight-gradient buffer.
        keep = rows.shape[0] * vocab_size * 4 <= KEEP_BUDGET_BYTES
        logps, entropy = _TrainableHeadLogps.apply(rows, weight, targets, scale / temperature, chunk_size, with_entropy,
                                                   keep)
        return logps, entropy.detach()
    pieces, entropies = [], []
    for start in range(0, rows.shape[0], chunk_size):
        h, y = rows[start : start + chunk_size], targets[start : start + chunk_size]
        args = (project, h, y, scale, softcap, temperature)
        if frozen_head:
            lp, ent = _FrozenHeadLogps.apply(h, weight, y, scale / temperature, with_entropy)
            if with_entropy:
                entropies.append(ent.detach())
        elif with_entropy:
            lp, ent = checkpoint(_chunk_logps_and_entropy, *args, use_reentrant=False, determinism_check=check)
            entropies.append(ent.detach())
        elif torch.is_grad_enabled():
            lp = checkpoint(_chunk_logps, *args, use_reentrant=False, determinism_check=check)
        else:
            lp = _chunk_logps(*args)
        pieces.append(lp)
    empty = rows.new_zeros(0, dtype=torch.float32)
    return (torch.cat(pieces) if pieces else empty), (torch.cat(entropies) if entropies else empty)


def shared_prefix_token_logps(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    prompt_index: torch.Tensor,
    *,
    chunk_size: int = 0,
    with_entropy: bool = False,
    temperature: float = 1.0,
):
    """Per-token log-probs [N, C] of completions that share prompts, running each prompt once.

    prompt_ids, prompt_mask: [P, Lp], left-padded. completion_ids, completion_mask: [N, C],
    right-padded. prompt_index: [N], the prompt row each completion continues. The prompts' keys
    and values are computed once (with gradient) and repeated for their completions through the
    KV cache, so G completions of one prompt cost one prompt forward instead of G (GRPO), and a
    DPO pair costs one instead of two. Gradients flow through the cache into the prompt pass.
    When the model returns no cache (gradient checkpointing in train mode), each completion is
    scored with its prompt as one sequence instead: the same numbers, without the sharing.
    """
    if not kv_cache_usable(model):
        input_ids = torch.cat([prompt_ids[prompt_index], completion_ids], dim=1)  # [N, Lp + C]
        attention = torch.cat([prompt_mask[prompt_index], completion_mask], dim=1)
        loss_mask = torch.cat([torch.zeros_like(prompt_mask[prompt_index]), completion_mask], dim=1)
        out = token_logps(model, input_ids, attention, loss_mask, chunk_size=chunk_size, with_entropy=with_entropy,
                          temperature=temperature)
        width = prompt_ids.shape[1]
        return (out[0][:, width:], out[1][:, width:]) if with_entropy else out[:, width:]
    # Only the completion pass goes through a DDP wrapper: one synchronising forward per backward.
    inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    empty = torch.zeros(0, dtype=torch.long, device=prompt_ids.device)
    prompt_positions = (prompt_mask.long().cumsum(-1) - 1).clamp(min=0)  # [P, Lp]
    first = inner(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=prompt_positions,
                  use_cache=True, output_hidden_states=True, logits_to_keep=empty)
    cache_name, cache = returned_cache(first)
    cache.batch_select_indices(prompt_index)  # [P, ...] -> [N, ...]
    last_prompt_hidden = first.hidden_states[-1][:, -1][prompt_index]  # [N, H]: predicts completion token 0
    attention = torch.cat([prompt_mask[prompt_index], completion_mask], dim=1)  # [N, Lp + C]
    offsets = prompt_mask.long().sum(-1)[prompt_index]  # [N]
    positions = offsets[:, None] + torch.arange(completion_ids.shape[1], device=completion_ids.device)[None]  # [N, C]
    second = model(input_ids=completion_ids, attention_mask=attention, position_ids=positions,
                   use_cache=True, output_hidden_states=True, logits_to_keep=empty, **{cache_name: cache})
    predictors = torch.cat([last_prompt_hidden[:, None], second.hidden_states[-1][:, :-1]], dim=1)  # [N, C, H]
    scored = completion_mask.bool()  # [N, C]
    flat_logps, flat_entropy = score_rows(model, predictors[scored], completion_ids[scored], chunk_size, with_entropy,
                                          temperature)
    result = torch.zeros(completion_ids.shape, dtype=torch.float32, device=completion_ids.device)  # [N, C]
    result = result.masked_scatter(scored, flat_logps)
    if not with_entropy:
        return result
    return result, torch.zeros_like(result).masked_scatter(scored, flat_entropy)


def full_logits_token_logps(model, input_ids, attention_mask, loss_mask, position_ids=None,
                            temperature: float = 1.0) -> torch.Tensor:
    """The straightforward reference: the model's own full [B, T, V] logits, in float32. For tests and
    benchmarks only."""
    if position_ids is None:
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits.float()
    logits = logits / temperature
    logps = torch.gather(logits[:, :-1].log_softmax(-1), 2, input_ids[:, 1:, None]).squeeze(2)  # [B, T-1]
    result = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    result[:, 1:] = logps * loss_mask[:, 1:]
    return result
