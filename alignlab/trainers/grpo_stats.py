"""GRPO's reward and trajectory metrics, over every process's completions (the same on all processes)."""

from __future__ import annotations

import logging
import math

import torch

from alignlab.losses.grpo import constant_groups, nan_std

log = logging.getLogger("alignlab")
ZERO_STD_WARN_FRACTION, ZERO_STD_WARN_STEPS = 0.8, 5


def reward_parts(scores, aggregation: str) -> torch.Tensor:
    """[N, K], what the advantages start from: the weighted total, K = 1 (sum_then_normalize), or each
    reward function's own score, NaN where it gave none (normalize_then_sum: GDPO normalises each first)."""
    if aggregation == "sum_then_normalize":
        return torch.tensor(scores.total, dtype=torch.float32)[:, None]  # [N, 1]
    columns = [[math.nan if v is None else v for v in values] for values in scores.per_function.values()]
    return torch.tensor(columns, dtype=torch.float32).T  # [N, K]


def advantage_options(grpo, weights) -> dict:
    """group_advantages' keyword arguments for this config (alignlab/losses/grpo.py). GDPO whitens the
    summed normalised rewards over the batch: reinforce_pp_baseline on them (their group mean is 0)."""
    gdpo = grpo.reward_aggregation == "normalize_then_sum"
    return {"scale": grpo.scale_rewards, "estimator": "reinforce_pp_baseline" if gdpo else grpo.advantage,
            "aggregation": grpo.reward_aggregation, "weights": list(weights) if gdpo else None}


def warn_if_flat(streak: int, stats: dict) -> int:
    """The count of steps in a row where most groups had no reward variance; warns once when it gets long."""
    streak = streak + 1 if stats["frac_reward_zero_std"] >= ZERO_STD_WARN_FRACTION else 0
    if streak == ZERO_STD_WARN_STEPS:
        log.warning(
            "for %d steps, %.0f%%+ of prompt groups got the same reward for every completion, so their advantages "
            "are 0 and they teach nothing (this is why the loss can sit at 0). If all are wrong, the task is too "
            "hard for the model: start from an SFT model, use easier prompts, or add a format reward. If all are "
            "right, it is too easy. Also try more generations (grpo.num_generations), a higher "
            "grpo.temperature, or grpo.skip_zero_std_groups=true.",
            ZERO_STD_WARN_STEPS, 100 * ZERO_STD_WARN_FRACTION,
        )
    return streak


def with_environment_reward(totals: list[float], environment: list[float], weight: float, has_functions: bool):
    """Reward functions' total plus `weight` x the trajectory's summed environment reward. Without reward
    functions the environment's reward is the whole reward; with them, an unscorable row stays NaN."""
    if not has_functions:
        return [weight * e for e in environment]
    return [t + weight * e for t, e in zip(totals, environment)]


def global_means(run, value_lists) -> list:
    """Mean of each list over every process (None where no process has a value), in one collective."""
    value_lists = list(value_lists)
    totals = run.global_sums([x for values in value_lists for x in (sum(values), len(values))])
    return [total / count if count else None for total, count in zip(totals[0::2], totals[1::2])]


def reward_stats(run, scores, rewards: torch.Tensor, rollout, num_generations: int, *, count_errors: bool) -> dict:
    """Reward metrics of one rollout: `reward_std` over the whole batch (TRL's name and meaning),
    within-group std, the share of groups with no reward variance, per-function means."""
    everyone = run.accelerator.gather(rewards.to(run.device)).cpu().double()  # [processes * n*G]
    grouped = everyone.view(-1, num_generations)  # [groups, G]
    lengths = rollout.loss_mask.sum(1).float()  # the model's tokens (no tool or environment tokens), as TRL
    stats = {
        "reward": float(everyone.nanmean()) if not everyone.isnan().all() else float("nan"),
        "reward_std": float(nan_std(everyone)),
        "reward_std/within_group": float(nan_std(grouped, dim=1).mean()),
        "frac_reward_zero_std": float(constant_groups(grouped).double().mean()),
        "rewards/unscorable": float(everyone.isnan().sum()),
        "completions/mean_length": float(lengths.mean()),
        "completions/clipped_ratio": float((~rollout.ended).float().mean()),
    }
    # Over every process's scored completions: a failed reward (None) leaves counts unequal, so a
    # mean of per-process means would weigh them wrongly.
    per_fn = scores.per_function
    means = global_means(run, ([v for v in values if v is not None] for values in per_fn.values()))
    error_counts = run.global_sums([scores.error_rows.get(name, 0) for name in per_fn])
    for name, mean, failed in zip(per_fn, means, error_counts):
        stats[f"rewards/{name}/mean"] = float("nan") if mean is None else mean
        if count_errors:
            stats[f"rewards/{name}/errors"] = failed
    if scores.metrics:  # an LLM judge's judge/requests, judge/seconds, ...: summed over processes
        stats.update(zip(scores.metrics, run.global_sums(list(scores.metrics.values()))))
    return stats


def trajectory_stats(run, records: list[dict], *, environment: bool) -> dict:
    """Tool calls per trajectory (TRL's tools/call_frequency), the share of calls that failed
    (tools/failure_frequency), model turns per trajectory, the share cut by a limit, and the mean
    summed environment reward."""
    totals = run.global_sums([len(records), sum(r["tool_calls"] for r in records),
                              sum(r["tool_failures"] for r in records), sum(len(r["turns"]) for r in records),
                              sum(r["environment_reward"] for r in records), sum(r["truncated"] for r in records)])
    count, calls, failures, turns, reward, truncated = totals
    stats = {"tools/call_frequency": calls / count, "tools/failure_frequency": failures / calls if calls else 0.0,
             "turns/mean": turns / count, "turns/truncated_ratio": truncated / count}
    if environment:
        stats["environment/reward"] = reward / count
    return stats


class ImportanceSamplingStats:
    """An update's importance-sampling ratios (sampler/trainer mismatch) after the cap or mask, the
    weights the loss used (`sampling/importance_sampling_ratio/*`: TRL's names and meaning), and before
    it (`sampling/raw_importance_sampling_ratio/*`: how far the sampler drifted, which the capped
    numbers hide). Over every process's tokens, or completions in the sequence modes."""

    KEYS = {"bounded": "sampling/importance_sampling_ratio", "raw": "sampling/raw_importance_sampling_ratio"}

    def __init__(self):
        self.count = 0
        self.sums = {key: 0.0 for key in self.KEYS}
        self.highs = {key: -math.inf for key in self.KEYS}
        self.lows = {key: math.inf for key in self.KEYS}

    def add(self, weights) -> None:
        """One micro-batch's `alignlab.losses.grpo.ImportanceWeights`."""
        self.count += weights.raw.numel()
        for key in self.KEYS:
            values = getattr(weights, key).double()
            if values.numel():
                self.sums[key] += float(values.sum())
                self.highs[key] = max(self.highs[key], float(values.max()))
                self.lows[key] = min(self.lows[key], float(values.min()))

    def metrics(self, run) -> dict:
        """Collective: every process calls it."""
        count, *sums = run.global_sums([self.count] + [self.sums[key] for key in self.KEYS])
        extremes = [self.highs[key] for key in self.KEYS] + [-self.lows[key] for key in self.KEYS]
        if run.num_processes > 1:
            gathered = run.accelerator.gather(torch.tensor(extremes, dtype=torch.float64, device=run.device))
            extremes = gathered.view(run.num_processes, -1).max(0).values.tolist()
        metrics = {}
        for index, (key, name) in enumerate(self.KEYS.items()):
            if count:  # no counted token anywhere: nothing to report
                metrics[f"{name}/mean"] = sums[index] / count
                metrics[f"{name}/max"] = extremes[index]
                metrics[f"{name}/min"] = -extremes[len(self.KEYS) + index]
        return metrics
