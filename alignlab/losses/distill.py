"""Losses of knowledge distillation from a teacher LM: pure functions of log-probs and hidden states.

Two objectives, each picked by `distill.loss`:

- `reverse_kl`, on-policy distillation (Agarwal et al. 2024, GKD, with lambda = 1 and the reverse KL;
  Thinking Machines, "On-Policy Distillation", 2025). For a completion y the student sampled,
  k_t = log pi_student(y_t | y_<t) - log pi_teacher(y_t | y_<t) is a one-sample estimate of the reverse
  KL(pi_student || pi_teacher) at position t. Its negative is a dense per-token reward, and the update
  is a policy gradient with per-token advantage A_t = -sum_{k >= t} gamma^(k - t) k_k (gamma =
  `distill.discount`; 0, the recipe's choice, leaves each token its own term only). The surrogate is
  GRPO's clipped importance ratio (PPO, Schulman et al. 2017, Eq. 7) per token, so a stale or
  mismatched sampler is corrected the same way. The advantage is a constant (no gradient flows
  through the teacher, nor through the student's log-prob inside the advantage): the gradient is
  E[A_t grad log pi_student(y_t)], which is the gradient of the reverse KL summed over the sequence
  when gamma = 1, and its per-token ("myopic") part when gamma = 0.

- `jsd`, the generalised Jensen-Shannon divergence of GKD (Agarwal et al. 2024, Eq. 3) over the
  full next-token distributions, with TRL's convention for beta (`distill.jsd_beta`): with
  M = beta * P_teacher + (1 - beta) * P_student,
      JSD_beta = beta * KL(P_teacher || M) + (1 - beta) * KL(P_student || M),
  beta = 0 is the forward KL(P_teacher || P_student) (supervised KD) and beta = 1 the reverse
  KL(P_student || P_teacher) (both limits taken as those KLs, as TRL does; the formula itself
  goes to 0 there). `chunked_generalized_jsd` computes it over rows of final hidden states, a chunk at
  a time under activation checkpointing, so no [tokens, vocab] tensor of the whole batch exists: at
  most one chunk's student and teacher logits are alive, in forward and in the recomputing backward.

Left out: the sequence-level KD of Kim & Rush (2016) (that is SFT on teacher samples), and any
reward term mixed into the advantage.

Imports only torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, Optional

import torch
from torch.utils.checkpoint import checkpoint


def reverse_kl_advantages(student_logps: torch.Tensor, teacher_logps: torch.Tensor, mask: torch.Tensor, *,
                          discount: float = 0.0) -> torch.Tensor:
    """Per-token advantages [B, T] = -(discounted sum of the reverse-KL estimates from t on).

    student_logps, teacher_logps: [B, T] log-probs of the sampled tokens (at the sampling temperature);
    mask: [B, T], 1 on the tokens the student wrote. Masked positions carry no KL of their own (a tool's
    tokens), but a discounted sum runs through them. Detached: the advantage is a constant of the update."""
    kl = ((student_logps - teacher_logps) * mask).detach()  # [B, T]
    if discount == 0.0:
        return -kl
    returns = torch.zeros_like(kl)  # [B, T]
    running = torch.zeros_like(kl[:, 0])  # [B]
    for t in range(kl.shape[1] - 1, -1, -1):  # right to left: R_t = k_t + gamma * R_{t+1}
        running = kl[:, t] + discount * running
        returns[:, t] = running
    return -returns * mask


@dataclass
class PolicyGradientOutput:
    loss: torch.Tensor  # scalar: the sum over tokens divided by `normalizer`
    clip_ratio: torch.Tensor  # share of masked tokens whose ratio was clipped (no gradient)


def policy_gradient_loss(logps: torch.Tensor, old_logps: Optional[torch.Tensor], advantages: torch.Tensor,
                         mask: torch.Tensor, *, epsilon_low: float = 0.2, epsilon_high: float = 0.2,
                         normalizer: float) -> PolicyGradientOutput:
    """Clipped importance-ratio surrogate with per-token advantages (GRPO's, with A per token).

    logps: [B, T] current log-probs (with gradient); old_logps: [B, T] of the policy that sampled, or None
    when it is the current one (ratio 1, gradient A * grad log p); advantages, mask: [B, T]. `normalizer`:
    the token count of the whole optimizer step, so micro-batches and processes add up exactly."""
    old = logps.detach() if old_logps is None else old_logps
    ratio = torch.exp(logps - old)  # [B, T]
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    per_token = -torch.minimum(ratio * advantages, clipped * advantages)  # [B, T]
    loss = (per_token * mask).sum() / normalizer
    was_clipped = ((ratio * advantages) > (clipped * advantages)).float()  # the min picked the clipped term
    clip_ratio = (was_clipped * mask).sum() / mask.sum().clamp(min=1)
    return PolicyGradientOutput(loss, clip_ratio.detach())


def _kl(p_logps: torch.Tensor, q_logps: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) per row [n] from log-probs [n, V]; a zero-probability term of P adds 0 (not NaN)."""
    p = p_logps.exp()
    return torch.where(p > 0, p * (p_logps - q_logps), torch.zeros_like(p)).sum(-1)


def generalized_jsd(student_logps: torch.Tensor, teacher_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """JSD_beta per row [n] from full log-prob rows [n, V] (module docstring; TRL's convention)."""
    if beta == 0.0:
        return _kl(teacher_logps, student_logps)
    if beta == 1.0:
        return _kl(student_logps, teacher_logps)
    mixture = torch.logsumexp(torch.stack([teacher_logps + math.log(beta),
                                           student_logps + math.log(1 - beta)]), dim=0)  # [n, V]: log M
    return beta * _kl(teacher_logps, mixture) + (1 - beta) * _kl(student_logps, mixture)


def _chunk_jsd(student_hidden, teacher_hidden, student_logits, teacher_logits, beta):
    student = student_logits(student_hidden).log_softmax(-1)  # [n, V]
    with torch.no_grad():  # the teacher is graded against, never trained
        teacher = teacher_logits(teacher_hidden).log_softmax(-1)  # [n, V]
    return generalized_jsd(student, teacher, beta)  # [n]


def chunked_generalized_jsd(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
                            student_logits: Callable[[torch.Tensor], torch.Tensor],
                            teacher_logits: Callable[[torch.Tensor], torch.Tensor], *, beta: float,
                            chunk_size: int) -> torch.Tensor:
    """JSD_beta [N] at N positions, from each model's final hidden states there ([N, H_s], [N, H_t]).

    `student_logits(h)` / `teacher_logits(h)`: [n, V] logits of a chunk of rows, already scaled by
    the architecture and divided by the temperature (alignlab.model.logprobs.head_logits). Each chunk
    runs under activation checkpointing when the student rows need a gradient: backward recomputes
    its logits (both models' heads) instead of keeping [N, V] blocks from forward to backward."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    fn = partial(_chunk_jsd, student_logits=student_logits, teacher_logits=teacher_logits, beta=beta)
    train = student_hidden.requires_grad and torch.is_grad_enabled()
    pieces = []
    for start in range(0, student_hidden.shape[0], chunk_size):
        hs, ht = student_hidden[start : start + chunk_size], teacher_hidden[start : start + chunk_size]
        pieces.append(checkpoint(fn, hs, ht, use_reentrant=False) if train else fn(hs, ht))
    return torch.cat(pieces) if pieces else student_hidden.new_zeros(0)
