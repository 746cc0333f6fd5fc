"""GRPO: group-relative advantages and the clipped surrogate loss with optional k3 KL.

Paper: Shao et al. 2024, "DeepSeekMath", Eq. 3 (the GRPO objective, a PPO-style clipped surrogate
averaged over the G completions of a prompt and their tokens) with the KL penalty of Eq. 4,

    k3 = ref/pi - log(ref/pi) - 1 = exp(ref_logp - logp) - (ref_logp - logp) - 1,

Schulman's unbiased, always non-negative estimator of KL(pi || ref). Outcome-supervised advantages
(Sec. 4.1.2) are the completion's reward standardised within its group.

Choices made:
  * Advantages (`ADVANTAGE_SCALINGS`): "group" divides by the group's std (DeepSeekMath); "batch" by
    the std over the whole batch, keeping the group mean as baseline (as TRL's scale_rewards="batch");
    "none" only subtracts the group mean (Dr. GRPO, Liu et al. 2025, who argue std scaling biases
    towards too easy and too hard prompts). The std is unbiased (Bessel), as torch.std and TRL, and
    1e-4 is added to it so a near-constant group cannot explode.
  * Advantage estimators (`ADVANTAGE_ESTIMATORS`), one advantage per completion: "group" (above);
    "rloo", r_i minus the mean of the group's other scored completions (Ahmadian et al. 2024, Eq. 5; no
    scaling, as TRL's RLOOTrainer by default); "reinforce_pp_baseline", the group mean subtracted, then
    whitened over the batch (REINFORCE++-baseline, Hu et al. 2025): over completions, where verl and
    OpenRLHF whiten over tokens (a long completion counts once here, not once per token).
  * Several rewards (`REWARD_AGGREGATIONS`): "sum_then_normalize", the weighted sum is the reward;
    "normalize_then_sum", each reward standardised within its group first, then the weighted sum
    (GDPO, Liu et al. 2026: a small 0/1 reward is not drowned by a large one). GDPO then whitens the
    sum over the batch, which is "reinforce_pp_baseline" on it (the group mean of the sum is 0).
  * A group of one completion, or a group whose rewards are all equal, carries no relative signal, so
    its advantages are exactly 0: never NaN (torch's std of one sample) nor rounding noise from the mean.
  * Clipping is decoupled, 1 - epsilon_low .. 1 + epsilon_high ("Clip-Higher", DAPO, Yu et al. 2025,
    Sec. 3.1); epsilon_low == epsilon_high is the symmetric PPO/GRPO clip.
  * The KL term is added per token after clipping, inside the same aggregation as the surrogate (Eq. 3),
    not as a separate reward penalty.
  * `old_logps=None` means the rollout policy is the current one (one policy update per rollout
    batch, mu = 1): the ratio is exp(logp - logp.detach()), which is 1 but keeps the policy gradient.
  * Aggregations (`LOSS_AGGREGATIONS`) over the masked per-token loss l[b, t]:
      grpo     sum_b (mean over b's active tokens of l) / normalizer, normalizer = B by default: each
               sequence weighs the same whatever its length (Eq. 3's 1/|o_i|).
      dapo     sum of l over all active tokens / normalizer, normalizer = active tokens by default:
               every token weighs the same (DAPO Sec. 3.3, token-level policy-gradient loss).
      bnpo     same formula as dapo. TRL tells them apart only by which token count it divides by (the
               micro-batch's, or the whole accumulation window's); here that count is the caller's
               `normalizer`.
      dr_grpo  sum of l over all active tokens / normalizer, normalizer = B * max_completion_length by
               default (max_completion_length defaults to T): a constant, so no length bias (Dr. GRPO).
  * `normalizer` makes gradient accumulation exact: a trainer splitting an optimizer step into
    micro-batches passes the count for the whole step (total active tokens for dapo/bnpo, total
    sequences for grpo, total sequences * max_completion_length for dr_grpo) to every micro-batch, and
    the micro-batch losses then sum to the full-batch loss. Without it each micro-batch normalises by
    its own count and accumulation re-weights tokens or sequences.
  * Importance ratio (`POLICY_RATIO_LEVELS`): "token", pi/pi_old per token (DeepSeekMath); "sequence",
    GSPO (Zheng et al. 2025, Eq. 7), s_i = exp(mean over o_i's tokens of log pi/pi_old), the
    length-normalised sequence ratio, clipped once per completion and shared by its tokens. GSPO's
    objective averages over completions: loss_type=grpo; with dapo/bnpo/dr_grpo each completion weighs
    by its length (TRL warns the same). The paper clips far tighter (eps ~3e-4 / 4e-4).
  * loss_type=cispo (MiniMax-M1, Eq. 4): -sg(min(r, 1 + epsilon_high)) * A * log pi per token, token
    aggregation. The weight is capped, never the gradient: every token, however far its ratio moved,
    still learns. No lower bound (the paper sets eps_low large). TRL caps at epsilon_high itself
    (ScaleRL's eps_max, 5.0 suggested): TRL's 5.0 is our 4.0. clip_ratio_high: tokens whose weight was
    capped.
  * Metrics (kl, clip ratios) are detached means over the active tokens of this call.

  * Unscorable completions (NaN rewards) are left out of the group statistics and get advantage 0.
  * Sampler/trainer mismatch (a vLLM engine's kernels, bf16 sampling): the tokens were drawn from the
    sampler's distribution mu, not the rollout policy pi_old. Importance sampling re-weights each
    token's policy-gradient term (`importance_sampling_weights`, TRL 1.16's modes and meanings, C =
    grpo.vllm_importance_sampling_cap, 3 by default as TRL):
      token_truncate     min(pi_old(y_t) / mu(y_t), C) per token (truncated IS, Yao et al. 2025, "Your
                         efficient RL framework secretly brings you off-policy RL training")
      token_mask         the token's ratio, or 0 where it exceeds C
      sequence_truncate  min(pi_old(y) / mu(y), C), the whole completion's ratio, on all its tokens
      sequence_mask      the completion's ratio, or 0 for every token of a completion past C (TRL 1.16's
                         default; ours stays token_truncate, what earlier runs used)
    No lower bound (TRL's clip_min, unset by default there). The KL term is not re-weighted.

Left out: SAPO/VESPO, the GSPO-token variant, the dual-clip delta bound,
entropy bonus and masking, token-level [B, T] advantages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "ADVANTAGE_SCALINGS",
    "LOSS_AGGREGATIONS",
    "POLICY_RATIO_LEVELS",
    "REWARD_AGGREGATIONS",
    "SURROGATES",
    "GRPOLossOutput",
    "IMPORTANCE_SAMPLING_BOUNDS",
    "ImportanceWeights",
    "constant_groups",
    "group_advantages",
    "grpo_loss",
    "importance_sampling_weights",
    "nan_std",
]

# Added to the std so that a group with tiny but non-zero spread gets large, not infinite, advantages.
STD_EPS = 1e-4

Count = Union[int, float, torch.Tensor]


# ----------------------------------------------------------------------------------------- advantages


def nan_std(values: torch.Tensor, dim: Optional[int] = None) -> torch.Tensor:
    """Bessel-corrected std over the non-NaN entries (all of them, or along `dim` keeping it); 0
    where fewer than two entries are numbers, instead of NaN."""
    present = ~values.isnan()
    count = present.sum() if dim is None else present.sum(dim=dim, keepdim=True)  # [] or [B, 1]
    mean = values.nanmean() if dim is None else values.nanmean(dim=dim, keepdim=True)
    squares = ((values - mean) ** 2).nan_to_num(0.0)
    total = squares.sum() if dim is None else squares.sum(dim=dim, keepdim=True)
    return torch.where(count > 1, (total / (count - 1).clamp(min=1)).sqrt(), torch.zeros_like(total))


def _scale_by_group_std(centered: torch.Tensor, grouped: torch.Tensor) -> torch.Tensor:
    return centered / (nan_std(grouped, dim=1) + STD_EPS)  # [B, G]


def _scale_by_batch_std(centered: torch.Tensor, grouped: torch.Tensor) -> torch.Tensor:
    return centered / (nan_std(grouped) + STD_EPS)  # [B, G]


def _no_scaling(centered: torch.Tensor, grouped: torch.Tensor) -> torch.Tensor:
    return centered  # [B, G]


ADVANTAGE_SCALINGS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "group": _scale_by_group_std,
    "batch": _scale_by_batch_std,
    "none": _no_scaling,
}


def constant_groups(grouped: torch.Tensor) -> torch.Tensor:
    """[B] bool: groups [B, G] (or [B, G, K], K rewards each) whose numeric (non-NaN) rewards are all equal
    (in every one of the K), or that have none."""
    present = ~grouped.isnan()
    high = grouped.masked_fill(~present, float("-inf")).amax(dim=1)  # [B] or [B, K]
    low = grouped.masked_fill(~present, float("inf")).amin(dim=1)  # [B] or [B, K]
    return (high <= low).reshape(grouped.shape[0], -1).all(dim=1)  # [B]


def _group_baseline(grouped: torch.Tensor, scale: str) -> torch.Tensor:
    centered = grouped - grouped.nanmean(dim=1, keepdim=True)  # [B, G]: NaN where unscorable
    return ADVANTAGE_SCALINGS[scale](centered, grouped)  # [B, G]


def _leave_one_out(grouped: torch.Tensor, scale: str) -> torch.Tensor:
    # r_i - mean of the other scored completions = n / (n - 1) * (r_i - group mean), n scored in the group.
    count = (~grouped.isnan()).sum(dim=1, keepdim=True)  # [B, 1]
    centered = grouped - grouped.nanmean(dim=1, keepdim=True)  # [B, G]
    return centered * count / (count - 1).clamp(min=1)  # [B, G]: a lone scored completion gets 0 below


def _group_mean_then_batch_whiten(grouped: torch.Tensor, scale: str) -> torch.Tensor:
    centered = grouped - grouped.nanmean(dim=1, keepdim=True)  # [B, G]
    return (centered - centered.nanmean()) / (nan_std(centered) + STD_EPS)  # [B, G]


# Each maps rewards [B, G] (NaN = unscorable) to advantages [B, G]; only "group" reads `scale`.
ADVANTAGE_ESTIMATORS: dict[str, Callable[[torch.Tensor, str], torch.Tensor]] = {
    "group": _group_baseline,
    "rloo": _leave_one_out,
    "reinforce_pp_baseline": _group_mean_then_batch_whiten,
}


def _weighted_nansum(parts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    total = (parts * weights).nansum(dim=1)  # [N]
    return total.masked_fill(parts.isnan().all(dim=1), float("nan"))  # [N]: no reward at all stays unscorable


def _sum_then_normalize(parts: torch.Tensor, weights: torch.Tensor, group_size: int) -> torch.Tensor:
    return _weighted_nansum(parts, weights)  # [N]


def _normalize_then_sum(parts: torch.Tensor, weights: torch.Tensor, group_size: int) -> torch.Tensor:
    grouped = parts.view(-1, group_size, parts.shape[1])  # [B, G, K]
    standardized = (grouped - grouped.nanmean(dim=1, keepdim=True)) / (nan_std(grouped, dim=1) + STD_EPS)
    # A reward constant within a group tells its completions nothing apart: exactly 0, not rounding noise.
    flat = constant_groups(grouped.transpose(1, 2).reshape(-1, group_size)).view(-1, 1, parts.shape[1])  # [B, 1, K]
    standardized = standardized.masked_fill(flat & ~grouped.isnan(), 0.0)  # [B, G, K]
    return _weighted_nansum(standardized.reshape(parts.shape), weights)  # [N]


# Each maps per-reward scores [N, K] and their weights [K] to one reward per completion [N].
REWARD_AGGREGATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]] = {
    "sum_then_normalize": _sum_then_normalize,
    "normalize_then_sum": _normalize_then_sum,
}


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str, *, estimator: str = "group",
                     aggregation: str = "sum_then_normalize", weights: Optional[list[float]] = None) -> torch.Tensor:
    """Group-relative advantages, shape [B*G], for rewards [B*G] (or [B*G, K]: K rewards per completion,
    combined by `aggregation`, a key of REWARD_AGGREGATIONS, with `weights`, K of them, 1 by default)
    laid out prompt by prompt.

    Entries g*G .. g*G + G - 1 are the G completions of prompt g. `estimator`: a key of
    ADVANTAGE_ESTIMATORS; `scale` (for "group"): a key of ADVANTAGE_SCALINGS. A NaN reward marks an
    unscorable completion (every reward function returned None): it is left out of its group's
    statistics (and the batch's), and its own advantage is 0, so it neither moves the baseline nor
    gets pushed up or down (as TRL does).
    """
    if scale not in ADVANTAGE_SCALINGS:
        raise ValueError(f"unknown advantage scale {scale!r}; valid options: {sorted(ADVANTAGE_SCALINGS)}")
    if estimator not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {estimator!r}; valid options: {sorted(ADVANTAGE_ESTIMATORS)}")
    if aggregation not in REWARD_AGGREGATIONS:
        raise ValueError(f"unknown reward aggregation {aggregation!r}; valid options: {sorted(REWARD_AGGREGATIONS)}")
    if rewards.dim() not in (1, 2):
        raise ValueError(f"rewards must be [B*G] or [B*G, K], got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.shape[0] % group_size != 0:
        raise ValueError(
            f"rewards has {rewards.shape[0]} rows, which is not a whole number of groups of "
            f"group_size={group_size}"
        )
    if not rewards.is_floating_point():
        rewards = rewards.float()
    parts = rewards if rewards.dim() == 2 else rewards[:, None]  # [B*G, K]
    if weights is not None and len(weights) != parts.shape[1]:
        raise ValueError(f"{len(weights)} reward weights for {parts.shape[1]} rewards per completion")
    weight = parts.new_tensor(weights) if weights is not None else parts.new_ones(parts.shape[1])  # [K]
    grouped = REWARD_AGGREGATIONS[aggregation](parts, weight, group_size).view(-1, group_size)  # [B, G]
    advantages = ADVANTAGE_ESTIMATORS[estimator](grouped, scale)  # [B, G]
    # The mean of equal floats need not equal them bit for bit; force the exact 0 such groups deserve.
    flat = constant_groups(parts.view(-1, group_size, parts.shape[1]))  # [B]: no reward varies in the group
    advantages = advantages.masked_fill(flat[:, None], 0.0)  # [B, G]
    advantages = advantages.nan_to_num(0.0)  # unscorable completions: no signal
    return advantages.reshape(-1)  # [B*G]


# ----------------------------------------------------------------------------------------------- loss


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # clamp: an all-padding batch yields 0 instead of NaN.
    return (values * mask).sum() / mask.sum().clamp(min=1.0)  # []


def _aggregate_sequence_mean(
    per_token: torch.Tensor, mask: torch.Tensor, normalizer: Optional[Count], max_completion_length: Optional[int]
) -> torch.Tensor:
    # clamp: a completion with no active token contributes 0, not 0/0.
    sequence_means = (per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)  # [B]
    denominator = per_token.shape[0] if normalizer is None else normalizer
    return sequence_means.sum() / denominator  # []


def _aggregate_token_sum_over_tokens(
    per_token: torch.Tensor, mask: torch.Tensor, normalizer: Optional[Count], max_completion_length: Optional[int]
) -> torch.Tensor:
    denominator = mask.sum().clamp(min=1.0) if normalizer is None else normalizer
    return (per_token * mask).sum() / denominator  # []


def _aggregate_token_sum_over_constant(
    per_token: torch.Tensor, mask: torch.Tensor, normalizer: Optional[Count], max_completion_length: Optional[int]
) -> torch.Tensor:
    if normalizer is None:
        length = per_token.shape[1] if max_completion_length is None else max_completion_length
        normalizer = per_token.shape[0] * length
    return (per_token * mask).sum() / normalizer  # []


LOSS_AGGREGATIONS: dict[
    str, Callable[[torch.Tensor, torch.Tensor, Optional[Count], Optional[int]], torch.Tensor]
] = {
    "grpo": _aggregate_sequence_mean,
    "bnpo": _aggregate_token_sum_over_tokens,
    "dapo": _aggregate_token_sum_over_tokens,
    "dr_grpo": _aggregate_token_sum_over_constant,
    "cispo": _aggregate_token_sum_over_tokens,  # MiniMax-M1 Eq. 4's 1 / sum_i |o_i|
}


def _token_log_ratio(log_ratio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return log_ratio  # [B, T]


def _sequence_log_ratio(log_ratio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # GSPO Eq. 7: log s_i = (1 / |o_i|) sum_t log(pi(y_t) / pi_old(y_t)); clamp: an empty completion gives 0.
    return ((log_ratio * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)).unsqueeze(1)  # [B, 1]


# log pi/pi_old per token [B, T] -> the log importance ratio the surrogate clips: [B, T] or [B, 1].
POLICY_RATIO_LEVELS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "token": _token_log_ratio,
    "sequence": _sequence_log_ratio,
}

# Per-token policy term -> (loss [B, T], tokens whose low / high bound bit: [B, T] or [B, 1] bool).
Surrogate = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float, float], tuple]


def _clipped_surrogate(ratio, logps, advantages, epsilon_low, epsilon_high) -> tuple:
    unclipped = ratio * advantages  # [B, T] or [B, 1]
    clipped = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high) * advantages
    # The pessimistic (smaller) objective: clipping only ever removes the incentive to move further.
    # Only these tokens have their gradient zeroed by the clip; a ratio beyond the bound on the other
    # side of 1 keeps the unclipped term and is not counted.
    low = (ratio < 1.0 - epsilon_low) & (advantages < 0)
    high = (ratio > 1.0 + epsilon_high) & (advantages > 0)
    return -torch.minimum(unclipped, clipped), low, high


def _cispo_surrogate(ratio, logps, advantages, epsilon_low, epsilon_high) -> tuple:
    # MiniMax-M1 Eq. 4: sg(clip(r, ., 1 + eps_high)) * A * log pi. No lower bound (the paper sets eps_low
    # large); every token keeps its gradient, only its weight is capped.
    weight = ratio.clamp(max=1.0 + epsilon_high).detach()  # [B, T] or [B, 1]
    high = ratio > 1.0 + epsilon_high
    return -weight * advantages * logps, torch.zeros_like(high), high


SURROGATES: dict[str, Surrogate] = {"clip": _clipped_surrogate, "cispo": _cispo_surrogate}
SURROGATE_OF_LOSS_TYPE = {"cispo": "cispo"}  # every other loss_type: the PPO clip


@dataclass
class GRPOLossOutput:
    loss: torch.Tensor  # [], carries the gradient
    kl: torch.Tensor  # [], detached; 0 when beta == 0
    clip_ratio: torch.Tensor  # [], detached: share of active tokens whose clipped term was chosen
    clip_ratio_low: torch.Tensor  # [], detached: ratio < 1 - epsilon_low with A < 0
    clip_ratio_high: torch.Tensor  # [], detached: ratio > 1 + epsilon_high with A > 0 (cispo: any A)


def grpo_loss(
    logps: torch.Tensor,
    old_logps: Optional[torch.Tensor],
    ref_logps: Optional[torch.Tensor],
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    beta: float = 0.0,
    loss_type: str = "dapo",
    max_completion_length: Optional[int] = None,
    normalizer: Optional[Count] = None,
    importance_weights: Optional[torch.Tensor] = None,
    importance_sampling_level: str = "token",
) -> GRPOLossOutput:
    """Clipped GRPO surrogate (+ beta * k3 KL) over completion tokens.

    logps, old_logps, ref_logps, mask: [B, T] per-token log-probs of the completion tokens and the
    1/0 mask of real (non-padding) tokens. old_logps=None: on-policy (ratio 1). ref_logps may be None
    when beta == 0. advantages: [B], one per completion. loss_type: a key of LOSS_AGGREGATIONS (cispo
    also swaps the clipped ratio for CISPO's term). importance_sampling_level: a key of
    POLICY_RATIO_LEVELS (sequence: GSPO). normalizer: the aggregation's denominator for the whole
    optimizer step (see module docstring). importance_weights: [B, T] or None, truncated importance
    weights of the rollout policy against the sampler that drew the tokens (see module docstring),
    multiplying the policy-gradient term.
    """
    if loss_type not in LOSS_AGGREGATIONS:
        raise ValueError(f"unknown GRPO loss_type {loss_type!r}; valid options: {sorted(LOSS_AGGREGATIONS)}")
    if importance_sampling_level not in POLICY_RATIO_LEVELS:
        raise ValueError(f"unknown importance_sampling_level {importance_sampling_level!r}; "
                         f"valid options: {sorted(POLICY_RATIO_LEVELS)}")
    if beta != 0.0 and ref_logps is None:
        raise ValueError(f"beta={beta} needs ref_logps for the KL term; pass them or set beta to 0")

    mask = mask.to(logps.dtype)  # [B, T]
    if old_logps is None:
        old_logps = logps.detach()  # [B, T]
    ratio = torch.exp(POLICY_RATIO_LEVELS[importance_sampling_level](logps - old_logps, mask))  # [B, T] or [B, 1]
    token_advantages = advantages.unsqueeze(1)  # [B, 1]
    surrogate = SURROGATES[SURROGATE_OF_LOSS_TYPE.get(loss_type, "clip")]
    per_token, low, high = surrogate(ratio, logps, token_advantages, epsilon_low, epsilon_high)
    per_token = per_token.expand_as(logps)  # [B, T]: a sequence-level term on each of its tokens
    if importance_weights is not None:
        per_token = per_token * importance_weights  # [B, T]: the sampler's tokens, re-weighted to the policy's

    if beta != 0.0:
        log_ref_over_policy = ref_logps - logps  # [B, T]
        per_token_kl = torch.exp(log_ref_over_policy) - log_ref_over_policy - 1.0  # [B, T]
        per_token = per_token + beta * per_token_kl  # [B, T]
        kl = _masked_mean(per_token_kl.detach(), mask)  # []
    else:
        kl = logps.new_zeros(())  # []

    loss = LOSS_AGGREGATIONS[loss_type](per_token, mask, normalizer, max_completion_length)  # []

    with torch.no_grad():
        # Shares of active tokens (sequence level: each token counts its completion's ratio).
        clip_ratio_low = _masked_mean(low.expand_as(mask).to(logps.dtype), mask)  # []
        clip_ratio_high = _masked_mean(high.expand_as(mask).to(logps.dtype), mask)  # []
        # low and high never overlap (opposite advantage signs; cispo has no low bound), so the shares add up.
        clip_ratio = clip_ratio_low + clip_ratio_high  # []

    return GRPOLossOutput(loss, kl, clip_ratio, clip_ratio_low, clip_ratio_high)


# ------------------------------------------------------------------------------ importance sampling


def _truncate_above(ratio: torch.Tensor, cap: float) -> torch.Tensor:
    return ratio.clamp(max=cap)


def _zero_above(ratio: torch.Tensor, cap: float) -> torch.Tensor:
    return ratio.masked_fill(ratio > cap, 0.0)


IMPORTANCE_SAMPLING_BOUNDS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "truncate": _truncate_above,
    "mask": _zero_above,
}
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")


@dataclass
class ImportanceWeights:
    weights: torch.Tensor  # [B, T]: multiplies each token's policy-gradient term
    raw: torch.Tensor  # [N]: the ratios before the cap, one per active token (token_*) or completion (sequence_*)
    bounded: torch.Tensor  # [N]: the same ratios after the cap or mask (what TRL logs)


def importance_sampling_weights(behaviour_logps: torch.Tensor, sampling_logps: torch.Tensor, mask: torch.Tensor, *,
                                mode: str = "token_truncate", cap: float = 3.0) -> ImportanceWeights:
    """Weights that correct the sampler/trainer mismatch (module docstring), all detached.

    behaviour_logps: [B, T] the rollout policy's log-probs of the sampled tokens; sampling_logps: [B, T]
    the sampler's; mask: [B, T] the tokens that count (the model's own). mode: `<level>_<bound>`, a level of
    IMPORTANCE_SAMPLING_LEVELS and a key of IMPORTANCE_SAMPLING_BOUNDS.
    """
    level, _, bound = mode.partition("_")
    if level not in IMPORTANCE_SAMPLING_LEVELS or bound not in IMPORTANCE_SAMPLING_BOUNDS:
        modes = [f"{lv}_{b}" for lv in IMPORTANCE_SAMPLING_LEVELS for b in IMPORTANCE_SAMPLING_BOUNDS]
        raise ValueError(f"unknown importance sampling mode {mode!r}; valid options: {modes}")
    mask = mask.to(behaviour_logps.dtype)  # [B, T]
    log_ratio = (behaviour_logps - sampling_logps).detach() * mask  # [B, T]: 0 where the token does not count
    if level == "sequence":
        log_ratio = log_ratio.sum(dim=1, keepdim=True)  # [B, 1]: log pi_old(y) / mu(y) of the whole completion
    raw = torch.exp(log_ratio)  # [B, T] or [B, 1]
    bounded = IMPORTANCE_SAMPLING_BOUNDS[bound](raw, cap)  # [B, T] or [B, 1]
    counted = mask.bool() if level == "token" else torch.ones_like(raw, dtype=torch.bool)
    return ImportanceWeights(bounded.expand_as(mask), raw[counted], bounded[counted])
