"""Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath, Eq. 3-4) on the shared loop.

Choices, named:
- Batch: `train.batch_size` counts PROMPTS per micro-batch, each with G = `grpo.num_generations`
  completions (TRL's per_device_train_batch_size counts completions). An optimizer step sees
  batch_size x grad_accum x processes prompts.
- Rollout: sampled with a KV cache (`alignlab.generation.sampler`), temperature / top_p / top_k, stopping at
  any EOS id (the tokenizer's and the generation config's); the completion mask keeps the first.
  `grpo.rollout_batch_size` completions are decoded together. Rollout code computes no rewards and
  no loss. Prompts longer than train.max_length - grpo.max_completion_length follow data.on_long
  (drop, truncate from the left, or error).
- Temperature: every log-prob and entropy (current, old, reference) is of softmax(logits / T), the
  distribution the rollout sampled from, as TRL and verl do; otherwise the policy gradient is
  biased at T != 1 and the clipped ratio is not the importance ratio. The sampler records its own
  log-prob of each token, and `sampling/sampling_logp_difference/{mean,max}` (TRL's names) log
  |trainer - sampler| over completion tokens at the first update of each rollout: ~0 in float32.
- Rewards: pure Python functions from `alignlab.rewards`, or reward models (`rm:PATH`, scored on the
  completions' text with their own tokenizer: `alignlab.scoring.rewards`), weighted and summed. A completion every
  function scored None is unscorable: NaN, left out of its group's mean and std, advantage 0 (as
  TRL); counted in `rewards/unscorable`. With grpo.reward_errors=none, failed rows count in
  `rewards/<fn>/errors` and the first error message is logged once.
- Advantages: group-relative, `grpo.scale_rewards` = group (default), batch, or none (Dr. GRPO);
  `grpo.advantage` = group (default), rloo (leave-one-out, RLOO) or reinforce_pp_baseline (group mean
  off, then whitened over the batch, REINFORCE++); `grpo.reward_aggregation` = sum_then_normalize
  (default) or normalize_then_sum (each reward standardised in its group, then summed and whitened:
  GDPO). Computed over the whole global batch (groups are never split across processes).
- Dynamic sampling (`grpo.skip_zero_std_groups`, DAPO): groups whose rewards are all equal carry no
  gradient; they are dropped and the batch is refilled from more prompts, at most
  `grpo.max_resample_rounds` extra rollouts per step.
- Loss: `alignlab.losses.grpo.grpo_loss`: per-token clipped ratio (epsilon_low / epsilon_high),
  or per completion (`grpo.importance_sampling_level=sequence`, GSPO), or CISPO's capped stop-gradient
  weight on log pi (`grpo.loss_type=cispo`, MiniMax-M1), k3 KL to the reference when `grpo.beta` > 0
  (LoRA: adapter disabled; full: frozen copy; beta = 0: no reference), aggregation `grpo.loss_type`
  (grpo, dapo and cispo, dr_grpo normalised by the count
  of the whole optimizer step, so accumulation is exact; bnpo, as TRL, by each micro-batch's own
  token count, averaged over the step's micro-batches).
- `reward_std` is the std of all rewards of the step (TRL's name and meaning); the mean std
  within groups is `reward_std/within_group`.
- mu = `grpo.num_iterations` optimizer steps per rollout batch; the old log-probs are recorded once
  (with mu = 1 they are the current ones, detached: no extra forward pass).
- Backends (`grpo.backend`): hf, our sampler; vllm, a colocated vLLM engine (`alignlab.generation.vllm`)
  that gets the policy's weights before each rollout that follows an optimizer step; its
  sampled-token log-probs drive importance sampling (`grpo.vllm_importance_sampling_{mode,cap}`).
- Tools and environments (`grpo.tools`, `grpo.environment`; `alignlab.generation.multi_turn`): a
  completion is a trajectory of model turns with tool results or observations between them
  (ReTool, Feng et al. 2025; RAGEN, Wang et al. 2025). The loss covers every token the model wrote,
  each assistant turn through its end-of-turn token, in the context it was sampled in, and no tool
  or environment token (`Rollout.loss_mask`); advantages stay one per trajectory; the reward is the
  reward functions' (on the last turn, with the whole trajectory in the columns) plus the weighted
  sum of the environment's per-turn rewards.
- Dropout (`grpo.disable_dropout`, default true): off. The sampler runs without it, so with it the
  trained forward is another function than the one that sampled: the ratio is no importance ratio
  (LoRA's default 0.05 opened `sampling_logp_difference` to ~0.01 after one update; ~1e-7 without).
- Left out: PPO value function, entropy bonus.
"""

from __future__ import annotations

import copy
import logging
import math
import time

import torch

from alignlab.data.prompts import load_prompt_data, reward_columns
from alignlab.data.templates import Templater, fit_length
from alignlab.errors import ConfigError, DataError
from alignlab.generation.prompt_eval import evaluate_prompts
from alignlab.model.logprobs import shared_prefix_token_logps, token_logps
from alignlab.losses.grpo import (ADVANTAGE_SCALINGS, LOSS_AGGREGATIONS, constant_groups, group_advantages,
                                  grpo_loss, importance_sampling_weights)
from alignlab.model.loading import (count_parameters, disable_dropout, is_peft, load_model, load_tokenizer,
                                    model_stop_ids)
from alignlab.rewards import RewardScores, score_completions
from alignlab.scoring.rewards import EvalRewards, resolve_rewards
from alignlab.generation.sampler import Rollout, concat_rollouts, generate
from alignlab.generation.multi_turn import multi_turn_rollout, process_max, trajectory_columns, turn_settings
from alignlab.generation.vllm import build_engine, draw_seed, engine_awake, engine_or_none
from alignlab.generation.sandbox import set_python_sandbox
from alignlab.engine.tracking import append_jsonl
from alignlab.engine.data_order import IndexSampler
from alignlab.engine.loop import TrainingRun
from alignlab.trainers.grpo_stats import (ImportanceSamplingStats, advantage_options, global_means, reward_parts,
                                          reward_stats, trajectory_stats, warn_if_flat, with_environment_reward)

log = logging.getLogger("alignlab")


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
        set_python_sandbox(self.grpo.python_sandbox)  # before the python tool loads (preflight): it checks the sandbox
        self.run = TrainingRun("grpo", config)
        self.tokenizer = load_tokenizer(config.model.name_or_path, trust_remote_code=config.model.trust_remote_code)
        self.turns = turn_settings(self.grpo.tools, tool_parser=self.grpo.tool_parser,
                                   max_tool_turns=self.grpo.max_tool_turns, tool_timeout=self.grpo.tool_timeout,
                                   environment=self.grpo.environment, on_long=config.data.on_long,
                                   max_completion_length=self.grpo.max_completion_length, max_length=self.train.max_length)
        self.templater = Templater(self.tokenizer, use_chat_template=config.data.chat_template,
                                   system_prompt=config.data.system_prompt,
                                   stop_ids=model_stop_ids(config.model, self.tokenizer),
                                   tools=self.turns.tool_schemas if self.turns else None)
        self.prompts, self.eval_prompts = load_prompt_data(config)
        self.prompts, self.prompt_ids = self._fit_prompts(
            self.prompts, [self.templater.ids(self.templater.prompt_text(p.prompt)) for p in self.prompts])
        self.sources = sorted({p.group for p in self.prompts} - {""})  # data mixture sources: reward/<source>
        self.reward_fns = resolve_rewards(self.grpo.rewards, config.rm, self.run.device,  # rm:PATH reward models, judge
                                          judge=config.judge, group_size=self.grpo.num_generations, preflight=False)
        self.weights = self.grpo.reward_weights or [1.0] * len(self.reward_fns)
        self.eval_rewards = EvalRewards(self.reward_fns, self.weights, self.grpo.eval_rewards)  # + eval-only gold checks
        model = load_model(config.model, config.lora, gradient_checkpointing=config.train.gradient_checkpointing)
        if self.grpo.disable_dropout:
            disable_dropout(model)
        self.ref_model = None
        if self.grpo.beta > 0 and not is_peft(model):
            self.ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        trainable, total = count_parameters(model)
        log.info("run dir %s | %s trainable of %s parameters | %d prompts x %d generations per step",
                 self.run.run_dir, f"{trainable:,}", f"{total:,}",
                 self.train.batch_size * self.train.grad_accum * self.run.num_processes, self.grpo.num_generations)
        self.run.prepare(model, self.tokenizer, train_size=len(self.prompts))
        if self.ref_model is not None:
            self.ref_model.to(self.run.device)
        self.engine = engine_or_none(self.grpo.backend, self._build_engine)
        self.engine_step = None  # the optimizer step whose weights the engine holds
        self.sampler = IndexSampler(len(self.prompts), self.train.seed)
        self.advantage = advantage_options(self.grpo, self.weights)  # grpo.advantage, reward_aggregation
        self.buffer: list = []  # remaining (rollout, iteration) work of the current rollout batch
        self.zero_std_streak = 0
        self.reward_error_logged = False

    def _fit_prompts(self, items: list, ids: list[list[int]]) -> tuple[list, list[list[int]]]:
        """Apply data.on_long to prompts that leave no room for a whole completion in train.max_length."""
        limit = self.train.max_length - self.grpo.max_completion_length
        if limit < 1:
            raise ConfigError(f"train.max_length={self.train.max_length} leaves no room for a prompt next to "
                              f"grpo.max_completion_length={self.grpo.max_completion_length}: raise train.max_length")
        long = [i for i, p in enumerate(ids) if len(p) > limit]
        if not long:
            return items, ids
        policy = self.config.data.on_long
        if policy == "error":
            raise DataError(f"{items[long[0]].where}: the prompt has {len(ids[long[0]])} tokens, more than "
                            f"train.max_length - grpo.max_completion_length = {limit} (set data.on_long=truncate or drop)")
        if policy == "truncate":  # keep the end of the prompt, where the question and the generation prompt are
            log.warning("%d prompts longer than %d tokens truncated from the left", len(long), limit)
            bos = self.tokenizer.bos_token_id  # a leading BOS is not context: it stays
            return items, [fit_length(p, [], limit, keep_prompt=limit, bos_id=bos)[0] for p in ids]
        keep = [i for i in range(len(ids)) if len(ids[i]) <= limit]
        if not keep:
            raise DataError(f"every prompt is longer than train.max_length - grpo.max_completion_length = {limit} tokens")
        log.warning("dropped %d of %d prompts longer than train.max_length - grpo.max_completion_length = %d tokens "
                    "(data.on_long=truncate keeps them)", len(long), len(ids), limit)
        return [items[i] for i in keep], [ids[i] for i in keep]

    # ------------------------------------------------------------ rollout

    def _build_engine(self):
        if self.grpo.vllm_mode == "server":
            from alignlab.generation.vllm_client import VLLMServerClient

            model, several = self.run.unwrapped, self.run.num_processes > 1
            return VLLMServerClient(self.grpo.vllm_server, self.tokenizer, model.config, model.generation_config,
                                    is_main=self.run.is_main, sharded=self.run.lockstep_forwards,
                                    barrier=self.run.accelerator.wait_for_everyone if several else None)
        if self.run.lockstep_forwards and self.grpo.vllm_sync == "adapter":
            raise ConfigError("grpo.vllm_sync=adapter is not supported under FSDP or DeepSpeed ZeRO-3 (the adapter "
                              "is sharded there); use grpo.vllm_sync=merged, which gathers one layer at a time")
        return build_engine(
            self.config.model, self.tokenizer, self.run.unwrapped,
            max_model_len=self.grpo.vllm_max_model_len or self.train.max_length,
            gpu_memory_utilization=self.grpo.vllm_gpu_memory_utilization,
            seed=self.train.seed, sleep=self.grpo.vllm_sleep,
            lora_rank=self.config.lora.r if self.grpo.vllm_sync == "adapter" and is_peft(self.run.unwrapped) else 0,
        )

    def _generate(self, prompts: list[list[int]], num_generations: int, max_new_tokens: int, turn: int = 0) -> Rollout:
        """One turn of completions for `prompts` from the configured backend."""
        model = self.run.unwrapped
        sampling = dict(num_generations=num_generations, max_new_tokens=max_new_tokens,
                        temperature=self.grpo.temperature, top_p=self.grpo.top_p, top_k=self.grpo.top_k)
        if self.engine is None:
            return generate(model, self.tokenizer, prompts, device=self.run.device, synced=self.run.lockstep_forwards,
                            batch_size=self.grpo.rollout_batch_size, **sampling)
        if self.engine_step != self.run.step:  # an optimizer step since the last push
            self.engine.load_weights(model)
            self.engine_step = self.run.step
        # Seeded by the data position, which a checkpoint restores: a resumed run draws what the
        # uninterrupted one drew. Every process, refill round and tool turn gets its own draws.
        draw = (self.train.seed, self.run.accelerator.process_index, self.sampler.epoch, self.sampler.offset)
        if turn:
            draw += (turn,)
        return self.engine.generate(prompts, seed=draw_seed(*draw), **sampling)

    def _rollout(self, indices: list[int]) -> tuple[Rollout, RewardScores]:
        G = self.grpo.num_generations
        if self.turns is None:
            rollout = self._generate([self.prompt_ids[i] for i in indices], G, self.grpo.max_completion_length)
        else:  # hf under FSDP / ZeRO-3: every forward is a collective, so all processes take every turn
            rows, synced = [self.prompts[i] for i in indices], self.run.lockstep_forwards and self.engine is None
            rollout = multi_turn_rollout(self._generate, self.templater, [p.prompt for p in rows], [p.columns for p in rows],
                                         num_generations=G, settings=self.turns, locations=[p.where for p in rows],
                                         lockstep=process_max(self.run.device) if synced else None)
        columns = reward_columns([self.prompts[i] for i in indices], G)
        columns["completion_lengths"] = rollout.loss_mask.sum(1).tolist()  # the model's tokens, for length rewards
        columns["max_completion_length"] = [self.grpo.max_completion_length] * len(rollout.texts)
        if rollout.trajectories is not None:
            columns.update(trajectory_columns(rollout))
        scores = score_completions(self.reward_fns, self.weights, rollout.texts, columns, on_error=self.grpo.reward_errors)
        if self.turns is not None and self.turns.environment is not None:
            scores.total = with_environment_reward(scores.total, columns["environment_reward"],
                                                   self.grpo.environment_reward_weight, bool(self.reward_fns))
        if scores.errors and not self.reward_error_logged:
            log.warning("a reward function failed and its rows score None (grpo.reward_errors=none); the first error: "
                        "%s. Failures are counted in rewards/<fn>/errors.", scores.errors[0])
            self.reward_error_logged = True
        return rollout, scores

    def collect(self) -> tuple[Rollout, torch.Tensor, dict]:
        """A rollout batch for this process with rewards and advantages; dynamic sampling if asked."""
        G = self.grpo.num_generations
        count = self.train.batch_size * self.train.grad_accum
        global_indices = self.sampler.take(count * self.run.num_processes)
        indices = self.run.rank_slice(global_indices)
        rollout, scores = self._rollout(indices)
        rewards = torch.tensor(scores.total, dtype=torch.float32)  # [N]: NaN where unscorable
        stats = self._reward_stats(scores, rewards, rollout)
        stats.update(self._source_rewards(indices, rewards))
        rewards = reward_parts(scores, self.grpo.reward_aggregation)  # [N, K]: what the advantages start from
        if self.grpo.skip_zero_std_groups:
            rollout, rewards = self._refill(rollout, rewards, count)
        all_rewards = self.run.accelerator.gather(rewards.to(self.run.device)).cpu()  # [processes * N, K]
        advantages = group_advantages(all_rewards, G, **self.advantage)  # [processes * N]
        advantages = self.run.rank_slice(advantages.tolist()) if self.run.num_processes > 1 else advantages.tolist()
        return rollout, torch.tensor(advantages), stats

    def _refill(self, rollout: Rollout, rewards: torch.Tensor, count: int):
        """Keep groups with reward variance; sample more prompts until `count` groups or the bound."""
        G = self.grpo.num_generations
        keep_rollouts, keep_rewards = [], []
        for round_ in range(self.grpo.max_resample_rounds + 1):
            flat = constant_groups(rewards.view(-1, G, rewards.shape[1]))  # [n]: no reward variance, no gradient
            rows = [g * G + j for g in range(flat.shape[0]) if not flat[g] for j in range(G)]
            rest = [g * G + j for g in range(flat.shape[0]) if flat[g] for j in range(G)]
            if rows:
                keep_rollouts.append(rollout.select(rows))
                keep_rewards.append(rewards[rows])
            have = sum(len(r) for r in keep_rewards) // G
            # Decided for all processes at once: each draws the next prompts from the same global
            # order (and under FSDP or ZeRO-3 every rollout is a collective), so all must sample as often.
            if self.run.global_sum(float(have < count)) == 0 or round_ == self.grpo.max_resample_rounds:
                break
            rollout, scores = self._rollout(self.run.rank_slice(self.sampler.take(count * self.run.num_processes)))
            rewards = reward_parts(scores, self.grpo.reward_aggregation)  # [n, K]
        if sum(len(r) for r in keep_rewards) // G < count:
            # Not enough informative groups within the bound: top up with the last round's uninformative
            # ones (advantage 0). Its informative groups are kept already; adding them again would
            # train on them twice.
            keep_rollouts.append(rollout.select(rest))
            keep_rewards.append(rewards[rest])
        merged = concat_rollouts(keep_rollouts, self.tokenizer.pad_token_id)
        rows = list(range(count * G))
        return merged.select(rows), torch.cat(keep_rewards)[rows]

    def _source_rewards(self, indices: list[int], rewards: torch.Tensor) -> dict:
        """Mean reward per data mixture source over every process's completions (same keys everywhere)."""
        groups = [self.prompts[i].group for i in indices for _ in range(self.grpo.num_generations)]
        picked = [[r for g, r in zip(groups, rewards.tolist()) if g == name] for name in self.sources]
        means = global_means(self.run, picked)
        return {f"reward/{name}": mean for name, mean in zip(self.sources, means) if mean is not None}

    def _reward_stats(self, scores: RewardScores, rewards: torch.Tensor, rollout: Rollout) -> dict:
        stats = reward_stats(self.run, scores, rewards, rollout, self.grpo.num_generations,
                             count_errors=self.grpo.reward_errors == "none")
        if rollout.trajectories is not None:
            stats.update(trajectory_stats(self.run, rollout.trajectories,
                                          environment=self.turns is not None and self.turns.environment is not None))
        return stats

    # ------------------------------------------------------------ update

    def _logps(self, model, rollout: Rollout, rows, *, with_entropy=False):
        """Per-token log-probs [b, C] of the completions in `rows` at the sampling temperature."""
        G, device, temperature = self.grpo.num_generations, self.run.device, self.grpo.temperature
        if len(rows) % G:  # not whole groups: score each completion with its own prompt
            input_ids, attention, loss_mask = (t[rows].to(device) for t in rollout.sequences())
            out = token_logps(model, input_ids, attention, loss_mask, with_entropy=with_entropy, temperature=temperature)
            width = rollout.prompt_ids.shape[1]
            return (out[0][:, width:], out[1][:, width:]) if with_entropy else out[:, width:]
        heads = rows[::G]  # one row per group: its prompt
        index = torch.arange(len(heads), device=device).repeat_interleave(G)  # [b]
        return shared_prefix_token_logps(
            model, rollout.prompt_ids[heads].to(device), rollout.prompt_mask[heads].to(device),
            rollout.completion_ids[rows].to(device), rollout.completion_mask[rows].to(device), index,
            with_entropy=with_entropy, temperature=temperature,
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
            with engine_awake(self.engine):  # sleep mode: one wake and one sleep per step, not per turn
                rollout, advantages, stats = self.collect()
            generation_seconds = time.perf_counter() - tick
            ref = self._frozen_logps(rollout, reference=True) if self.grpo.beta > 0 else None
            old = self._frozen_logps(rollout, reference=False) if self.grpo.num_iterations > 1 else None
            self.buffer = [(rollout, advantages, ref, old, stats, generation_seconds)] * self.grpo.num_iterations
            self.zero_std_streak = warn_if_flat(self.zero_std_streak, stats)
        rollout, advantages, ref, old, stats, generation_seconds = self.buffer.pop()
        fresh = len(self.buffer) == self.grpo.num_iterations - 1
        train_tick = time.perf_counter()
        metrics = self._update(rollout, advantages, ref, old, fresh)
        metrics.update(stats)
        metrics["time/generation"] = generation_seconds if fresh else 0.0
        metrics["time/training"] = time.perf_counter() - train_tick
        return metrics

    def _update(self, rollout: Rollout, advantages, ref, old, fresh: bool = True) -> dict:
        grpo, G = self.grpo, self.grpo.num_generations
        mask_all = rollout.loss_mask.float()  # [N, C]: the policy's own tokens (no tool or environment tokens)
        micro = self.train.batch_size * G
        rows_all = list(range(len(rollout.texts)))
        normalizer = None
        if grpo.loss_type != "bnpo":
            normalizer = self.run.global_sum({
                "grpo": len(rollout.texts),
                **dict.fromkeys(("dapo", "cispo"), float(mask_all.sum())),
                "dr_grpo": len(rollout.texts) * grpo.max_completion_length,
            }[grpo.loss_type])
        # bnpo (TRL): each micro-batch by its own tokens, averaged over the step's micro-batches of all processes.
        micro_batches = math.ceil(len(rows_all) / micro) * self.run.num_processes
        sums = {"loss": 0.0, "kl": 0.0, "clip_ratio": 0.0, "entropy": 0.0, "logp_gap": 0.0}
        tokens, gap_max, is_stats = 0.0, 0.0, ImportanceSamplingStats()
        cap = grpo.vllm_importance_sampling_cap
        correct = self.engine is not None and cap > 0 and rollout.sampling_logps is not None
        for rows in self.run.micro_batches(rows_all, micro):
            logps, entropy = self._logps(self.run.model, rollout, rows, with_entropy=True)  # [b, C]
            mask = rollout.loss_mask[rows].to(self.run.device)  # [b, C]
            if fresh and rollout.sampling_logps is not None:
                # The policy being updated is the one that sampled: any gap is a trainer/sampler mismatch.
                gap = (logps.detach() - rollout.sampling_logps[rows].to(self.run.device)).abs() * mask  # [b, C]
                sums["logp_gap"] += float(gap.sum())
                gap_max = max(gap_max, float(gap.max()) if gap.numel() else 0.0)
            if grpo.loss_type == "bnpo":
                normalizer = float(mask.sum().clamp(min=1)) * micro_batches
            weights = None
            if correct:  # importance sampling: rollout policy over sampler (grpo.vllm_importance_sampling_mode)
                behaviour = old[rows].to(self.run.device) if old is not None else logps.detach()
                sampled = importance_sampling_weights(behaviour, rollout.sampling_logps[rows].to(self.run.device), mask,
                                                      mode=grpo.vllm_importance_sampling_mode, cap=cap)
                weights = sampled.weights  # [b, C]
                is_stats.add(sampled)
            out = grpo_loss(
                logps, old[rows].to(self.run.device) if old is not None else None,
                ref[rows].to(self.run.device) if ref is not None else None,
                advantages[rows].to(self.run.device), mask,
                epsilon_low=grpo.epsilon_low, epsilon_high=grpo.epsilon_high, beta=grpo.beta,
                loss_type=grpo.loss_type, max_completion_length=grpo.max_completion_length, normalizer=normalizer,
                importance_weights=weights, importance_sampling_level=grpo.importance_sampling_level,
            )
            self.run.backward(out.loss)
            active = float(mask.sum())
            tokens += float(rollout.sequences()[1][rows].sum())
            sums["loss"] += float(out.loss.detach())
            sums["kl"] += float(out.kl) * active
            sums["clip_ratio"] += float(out.clip_ratio) * active
            sums["entropy"] += float((entropy * mask).sum())
        # Token means over every process's completions (not a mean of per-process means).
        keys = ("kl", "clip_ratio", "entropy", "logp_gap")
        totals = self.run.global_sums([sums["loss"], float(mask_all.sum())] + [sums[k] for k in keys])
        loss, means = totals[0], [t / max(totals[1], 1.0) for t in totals[2:]]
        metrics = {"loss": loss, **dict(zip(keys[:3], means[:3])), "tokens": tokens}
        if fresh and rollout.sampling_logps is not None:
            metrics["sampling/sampling_logp_difference/mean"] = means[3]
            metrics["sampling/sampling_logp_difference/max"] = self._global_max(gap_max)
        if correct and fresh:
            metrics.update(is_stats.metrics(self.run))
        return metrics

    def _global_max(self, value: float) -> float:
        if self.run.num_processes == 1:
            return value
        return float(self.run.accelerator.gather(torch.tensor([value], device=self.run.device)).max())

    # ------------------------------------------------------------ eval and run

    def evaluate(self, step: int) -> dict:
        prompts = self.eval_prompts[: self.grpo.eval_max_prompts]
        result = evaluate_prompts(
            self.run.unwrapped, self.tokenizer, self.templater, prompts, self.eval_rewards.fns, self.eval_rewards.weights,
            max_new_tokens=self.grpo.max_completion_length, batch_size=self.train.eval_batch_size,
            synced=self.run.lockstep_forwards, turns=self.turns,
        )
        if self.run.is_main:
            for sample in result.samples[: self.grpo.num_samples_logged]:
                append_jsonl(self.run.run_dir / "samples.jsonl", {"step": step, **sample})
        self.eval_rewards.check(result.metrics)  # warns when a reward model's score rises as the gold metric falls
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
