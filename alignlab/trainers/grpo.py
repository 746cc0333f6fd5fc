"""Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath, Eq. 3-4) on the shared loop.

Choices, named:
- Batch: `train.batch_size` counts PROMPTS per micro-batch, each with G = `grpo.num_generations`
  completions (TRL's per_device_train_batch_size counts completions). An optimizer step sees
  batch_size x grad_accum x processes prompts.
- Rollout: sampled with a KV cache (`alignlab.rollout`), temperature / top_p / top_k, stopping at
  EOS; the completion mask keeps the first EOS. Rollout code computes no rewards and no loss.
- Rewards: pure Python functions from `alignlab.rewards`, weighted and summed.
- Advantages: group-relative, `grpo.scale_rewards` = group (default), batch, or none (Dr. GRPO);
  computed over the whole global batch (groups are never split across processes).
- Dynamic sampling (`grpo.skip_zero_std_groups`, DAPO): groups whose rewards are all equal carry no
  gradient; they are dropped and the batch is refilled from more prompts, at most
  `grpo.max_resample_rounds` extra rollouts per step.
- Loss: `alignlab.losses.grpo.grpo_loss`: per-token clipped ratio (epsilon_low / epsilon_high),
  k3 KL to the reference when `grpo.beta` > 0 (LoRA: adapter disabled; full: frozen copy; beta = 0:
  no reference at all), aggregation `grpo.loss_type` (grpo, bnpo, dapo, dr_grpo), normalised by the
  count of the whole optimizer step, so accumulation is exact.
- mu = `grpo.num_iterations` optimizer steps per rollout batch; the old log-probs are recorded once
  (with mu = 1 they are the current ones, detached: no extra forward pass).
- Left out: PPO value function, reward models (use a reward function), vLLM, entropy bonus.
"""

from __future__ import annotations

import copy
import logging
import time

import torch

from alignlab.data.prompts import load_prompt_data
from alignlab.data.templates import Templater
from alignlab.errors import ConfigError
from alignlab.evaluate import evaluate_prompts
from alignlab.logprobs import shared_prefix_token_logps, token_logps
from alignlab.losses.grpo import ADVANTAGE_SCALINGS, LOSS_AGGREGATIONS, group_advantages, grpo_loss
from alignlab.models import count_parameters, is_peft, load_model, load_tokenizer
from alignlab.rewards import get_reward, score_completions
from alignlab.rollout import Rollout, concat_rollouts, generate
from alignlab.tracking import append_jsonl
from alignlab.training import IndexSampler, TrainingRun

log = logging.getLogger("alignlab")
ZERO_STD_WARN_FRACTION, ZERO_STD_WARN_STEPS = 0.8, 5


def check_grpo_config(config) -> None:
    """The names only the loss registries know; ranges and the other choices are checked when the
    config loads (alignlab.config.validate)."""
    grpo = config.grpo
    if grpo.scale_rewards not in ADVANTAGE_SCALINGS:
        raise ConfigError(f"grpo.scale_rewards must be one of {sorted(ADVANTAGE_SCALINGS)}, got '{grpo.scale_rewards}'")
    if grpo.loss_type not in LOSS_AGGREGATIONS:
        raise ConfigError(f"grpo.loss_type must be one of {sorted(LOSS_AGGREGATIONS)}, got '{grpo.loss_type}'")


class GRPOTrainer:
    def __init__(self, config):
        check_grpo_config(config)
        self.config, self.grpo, self.train = config, config.grpo, config.train
        self.run = TrainingRun("grpo", config)
        self.tokenizer = load_tokenizer(config.model.name_or_path, trust_remote_code=config.model.trust_remote_code)
        self.templater = Templater(self.tokenizer, use_chat_template=config.data.chat_template, system_prompt=config.data.system_prompt)
        self.prompts, self.eval_prompts = load_prompt_data(config)
        self.prompt_ids = [self.templater.ids(self.templater.prompt_text(p.prompt)) for p in self.prompts]
        self.sources = sorted({p.group for p in self.prompts} - {""})  # data mixture sources: reward/<source>
        # Metric names use a plugin's function name, not its file path.
        self.reward_fns = [(name.rsplit(":", 1)[-1], get_reward(name)) for name in self.grpo.rewards]
        self.weights = self.grpo.reward_weights or [1.0] * len(self.reward_fns)
        model = load_model(config.model, config.lora, gradient_checkpointing=config.train.gradient_checkpointing)
        self.ref_model = None
        if self.grpo.beta > 0 and not is_peft(model):
            self.ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        trainable, total = count_parameters(model)
        log.info("run dir %s | %s trainable of %s parameters | %d prompts x %d generations per step",
                 self.run.run_dir, f"{trainable:,}", f"{total:,}",
                 self.train.batch_size * self.train.grad_accum * self.run.num_processes, self.grpo.num_generations)
        self.run.prepare(model, self.tokenizer)
        if self.ref_model is not None:
            self.ref_model.to(self.run.device)
        self.sampler = IndexSampler(len(self.prompts), self.train.seed)
        self.buffer: list = []  # remaining (rollout, iteration) work of the current rollout batch
        self.zero_std_streak = 0

    # ------------------------------------------------------------ rollout

    def _rollout(self, indices: list[int]) -> tuple[Rollout, dict, torch.Tensor]:
        model = self.run.unwrapped
        rollout = generate(
            model, self.tokenizer, [self.prompt_ids[i] for i in indices],
            num_generations=self.grpo.num_generations, max_new_tokens=self.grpo.max_completion_length,
            temperature=self.grpo.temperature, top_p=self.grpo.top_p, top_k=self.grpo.top_k, device=self.run.device,
            synced=self.run.lockstep_forwards,
        )
        columns = self._columns(indices, self.prompts, self.grpo.num_generations)
        columns["completion_lengths"] = rollout.completion_mask.sum(1).tolist()
        scores = score_completions(self.reward_fns, self.weights, rollout.texts, columns, on_error=self.grpo.reward_errors)
        return rollout, scores.per_function, torch.tensor(scores.total, dtype=torch.float32)

    @staticmethod
    def _columns(indices, items, repeat) -> dict[str, list]:
        names = sorted({k for i in indices for k in items[i].columns})
        return {n: [items[i].columns.get(n) for i in indices for _ in range(repeat)] for n in names}

    def collect(self) -> tuple[Rollout, torch.Tensor, dict]:
        """A rollout batch for this process with rewards and advantages; dynamic sampling if asked."""
        G = self.grpo.num_generations
        count = self.train.batch_size * self.train.grad_accum
        global_indices = self.sampler.take(count * self.run.num_processes)
        indices = self.run.rank_slice(global_indices)
        rollout, per_fn, rewards = self._rollout(indices)
        stats = self._reward_stats(per_fn, rewards, rollout)
        stats.update(self._source_rewards(indices, rewards))
        if self.grpo.skip_zero_std_groups:
            rollout, rewards = self._refill(rollout, rewards, count)
        all_rewards = self.run.accelerator.gather(rewards.to(self.run.device)).cpu()  # [processes * N]
        advantages = group_advantages(all_rewards, G, self.grpo.scale_rewards)  # [processes * N]
        advantages = self.run.rank_slice(advantages.tolist()) if self.run.num_processes > 1 else advantages.tolist()
        return rollout, torch.tensor(advantages), stats

    def _refill(self, rollout: Rollout, rewards: torch.Tensor, count: int):
        """Keep groups with reward variance; sample more prompts until `count` groups or the bound."""
        G = self.grpo.num_generations
        keep_rollouts, keep_rewards = [], []
        for round_ in range(self.grpo.max_resample_rounds + 1):
            grouped = rewards.view(-1, G)  # [n, G]
            useful = [g for g in range(grouped.shape[0]) if grouped[g].max() > grouped[g].min()]
            rows = [g * G + j for g in useful for j in range(G)]
            if rows:
                keep_rollouts.append(rollout.select(rows))
                keep_rewards.append(rewards[rows])
            have = sum(len(r) for r in keep_rewards) // G
            # Decided for all processes at once: each draws the next prompts from the same global
            # order (and under FSDP or ZeRO-3 every rollout is a collective), so all must sample as often.
            if self.run.global_sum(float(have < count)) == 0 or round_ == self.grpo.max_resample_rounds:
                break
            rollout, _, rewards = self._rollout(self.run.rank_slice(self.sampler.take(count * self.run.num_processes)))
        if not keep_rewards or sum(len(r) for r in keep_rewards) // G < count:
            # Not enough informative groups within the bound: top up with uninformative ones (advantage 0).
            keep_rollouts.append(rollout)
            keep_rewards.append(rewards)
        merged = concat_rollouts(keep_rollouts, self.tokenizer.pad_token_id)
        rows = list(range(count * G))
        return merged.select(rows), torch.cat(keep_rewards)[rows]

    def _source_rewards(self, indices: list[int], rewards: torch.Tensor) -> dict:
        """Mean reward per data mixture source over every process's completions (same keys everywhere)."""
        groups = [self.prompts[i].group for i in indices for _ in range(self.grpo.num_generations)]
        picked = [[r for g, r in zip(groups, rewards.tolist()) if g == name] for name in self.sources]
        means = self._global_means(picked)
        return {f"reward/{name}": mean for name, mean in zip(self.sources, means) if mean is not None}

    def _global_means(self, value_lists) -> list:
        """Mean of each list over every process (None where no process has a value), in one collective."""
        value_lists = list(value_lists)
        totals = self.run.global_sums([x for values in value_lists for x in (sum(values), len(values))])
        return [total / count if count else None for total, count in zip(totals[0::2], totals[1::2])]

    def _reward_stats(self, per_fn: dict, rewards: torch.Tensor, rollout: Rollout) -> dict:
        grouped = rewards.view(-1, self.grpo.num_generations)  # [n, G]
        group_std = grouped.std(dim=1) if grouped.shape[1] > 1 else torch.zeros(grouped.shape[0])
        lengths = rollout.completion_mask.sum(1).float()
        stats = {
            "reward": float(rewards.mean()),
            "reward_std": float(group_std.nan_to_num(0.0).mean()),
            "frac_reward_zero_std": float((grouped.max(1).values == grouped.min(1).values).float().mean()),
            "completions/mean_length": float(lengths.mean()),
            "completions/clipped_ratio": float((~rollout.ended).float().mean()),
        }
        # Over every process's scored completions: a failed reward (None) leaves counts unequal, so a
        # mean of per-process means would weigh them wrongly.
        means = self._global_means([v for v in values if v is not None] for values in per_fn.values())
        for name, mean in zip(per_fn, means):
            stats[f"rewards/{name}/mean"] = float("nan") if mean is None else mean
        return stats

    # ------------------------------------------------------------ update

    def _logps(self, model, rollout: Rollout, rows, *, with_entropy=False):
        """Per-token log-probs [b, C] of the completions in `rows` (whole groups, in order)."""
        G, device = self.grpo.num_generations, self.run.device
        if self.train.gradient_checkpointing or len(rows) % G:
            # transformers disables the KV cache under gradient checkpointing: score full sequences.
            input_ids, attention, loss_mask = (t[rows].to(device) for t in rollout.sequences())
            out = token_logps(model, input_ids, attention, loss_mask, with_entropy=with_entropy)
            width = rollout.prompt_ids.shape[1]
            return (out[0][:, width:], out[1][:, width:]) if with_entropy else out[:, width:]
        heads = rows[::G]  # one row per group: its prompt
        index = torch.arange(len(heads), device=device).repeat_interleave(G)  # [b]
        return shared_prefix_token_logps(
            model, rollout.prompt_ids[heads].to(device), rollout.prompt_mask[heads].to(device),
            rollout.completion_ids[rows].to(device), rollout.completion_mask[rows].to(device), index,
            with_entropy=with_entropy,
        )

    @torch.no_grad()
    def _frozen_logps(self, rollout: Rollout, reference: bool) -> torch.Tensor:
        """Per-token log-probs of the whole rollout under the reference (or the rollout policy)."""
        micro = self.train.batch_size * self.grpo.num_generations
        out = []
        for start in range(0, len(rollout.texts), micro):
            rows = list(range(start, min(start + micro, len(rollout.texts))))
            if reference and self.ref_model is not None:
                out.append(self._logps(self.ref_model, rollout, rows))
            elif reference:
                with self.run.unwrapped.disable_adapter():
                    out.append(self._logps(self.run.model, rollout, rows))
            else:
                out.append(self._logps(self.run.model, rollout, rows))
        return torch.cat(out).cpu()

    def step(self, _step: int) -> dict:
        tick = time.perf_counter()
        if not self.buffer:
            rollout, advantages, stats = self.collect()
            generation_seconds = time.perf_counter() - tick
            ref = self._frozen_logps(rollout, reference=True) if self.grpo.beta > 0 else None
            old = self._frozen_logps(rollout, reference=False) if self.grpo.num_iterations > 1 else None
            self.buffer = [(rollout, advantages, ref, old, stats, generation_seconds)] * self.grpo.num_iterations
            self._warn_if_flat(stats)
        rollout, advantages, ref, old, stats, generation_seconds = self.buffer.pop()
        fresh = len(self.buffer) == self.grpo.num_iterations - 1
        train_tick = time.perf_counter()
        metrics = self._update(rollout, advantages, ref, old)
        metrics.update(stats)
        metrics["time/generation"] = generation_seconds if fresh else 0.0
        metrics["time/training"] = time.perf_counter() - train_tick
        return metrics

    def _update(self, rollout: Rollout, advantages, ref, old) -> dict:
        grpo, G = self.grpo, self.grpo.num_generations
        mask_all = rollout.completion_mask.float()  # [N, C]
        normalizer = {
            "grpo": len(rollout.texts),
            "bnpo": float(mask_all.sum()),
            "dapo": float(mask_all.sum()),
            "dr_grpo": len(rollout.texts) * grpo.max_completion_length,
        }[grpo.loss_type]
        normalizer = self.run.global_sum(normalizer)
        rows_all = list(range(len(rollout.texts)))
        sums = {"loss": 0.0, "kl": 0.0, "clip_ratio": 0.0, "entropy": 0.0}
        tokens = 0.0
        for rows in self.run.micro_batches(rows_all, self.train.batch_size * G):
            logps, entropy = self._logps(self.run.model, rollout, rows, with_entropy=True)  # [b, C]
            mask = rollout.completion_mask[rows].to(self.run.device)  # [b, C]
            out = grpo_loss(
                logps, old[rows].to(self.run.device) if old is not None else None,
                ref[rows].to(self.run.device) if ref is not None else None,
                advantages[rows].to(self.run.device), mask,
                epsilon_low=grpo.epsilon_low, epsilon_high=grpo.epsilon_high, beta=grpo.beta,
                loss_type=grpo.loss_type, max_completion_length=grpo.max_completion_length, normalizer=normalizer,
            )
            self.run.backward(out.loss)
            active = float(mask.sum())
            tokens += float(rollout.sequences()[1][rows].sum())
            sums["loss"] += float(out.loss.detach())
            sums["kl"] += float(out.kl) * active
            sums["clip_ratio"] += float(out.clip_ratio) * active
            sums["entropy"] += float((entropy * mask).sum())
        # Token means over every process's completions (not a mean of per-process means).
        active_all = self.run.global_sum(float(mask_all.sum()))
        return {
            "loss": self.run.global_sum(sums["loss"]),
            **{k: self.run.global_sum(sums[k]) / max(active_all, 1.0) for k in ("kl", "clip_ratio", "entropy")},
            "tokens": tokens,
        }

    def _warn_if_flat(self, stats: dict) -> None:
        self.zero_std_streak = self.zero_std_streak + 1 if stats["frac_reward_zero_std"] >= ZERO_STD_WARN_FRACTION else 0
        if self.zero_std_streak == ZERO_STD_WARN_STEPS:
            log.warning(
                "for %d steps, %.0f%%+ of prompt groups got the same reward for every completion, so their advantages "
                "are 0 and they teach nothing (this is why the loss can sit at 0). If all are wrong, the task is too "
                "hard for the model: start from an SFT model, use easier prompts, or add a format reward. If all are "
                "right, it is too easy. Also try more generations (grpo.num_generations), a higher "
                "grpo.temperature, or grpo.skip_zero_std_groups=true.",
                ZERO_STD_WARN_STEPS, 100 * ZERO_STD_WARN_FRACTION,
            )

    # ------------------------------------------------------------ eval and run

    def evaluate(self, step: int) -> dict:
        prompts = self.eval_prompts[: self.grpo.eval_max_prompts]
        result = evaluate_prompts(
            self.run.unwrapped, self.tokenizer, self.templater, prompts, self.reward_fns, self.weights,
            max_new_tokens=self.grpo.max_completion_length, batch_size=max(self.train.eval_batch_size, 64),
            synced=self.run.lockstep_forwards,
        )
        if self.run.is_main:
            for sample in result.samples[: self.grpo.num_samples_logged]:
                append_jsonl(self.run.run_dir / "samples.jsonl", {"step": step, **sample})
        return result.metrics

    def _extra_state(self) -> dict:
        # With grpo.num_iterations > 1 a checkpoint can fall inside a rollout batch: keep its remaining
        # updates, so a resumed run trains on the same rollout as an uninterrupted one.
        return {"buffer": self.buffer, "zero_std_streak": self.zero_std_streak}

    def fit(self) -> TrainingRun:
        extra = self.run.maybe_resume(self.sampler)
        if extra:
            self.buffer = extra.get("buffer", [])
            self.zero_std_streak = extra.get("zero_std_streak", 0)
        self.run.loop(self.step, eval_fn=self.evaluate if self.eval_prompts else None,
                      extra_state_fn=self._extra_state, sampler=self.sampler)
        return self.run


def train_grpo(config) -> TrainingRun:
    return GRPOTrainer(config).fit()
