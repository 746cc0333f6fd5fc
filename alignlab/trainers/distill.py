"""On-policy distillation (Agarwal et al. 2024, GKD; Thinking Machines, "On-Policy Distillation", 2025):
the student samples, a frozen teacher grades every token. The losses are `alignlab.losses.distill`.

Choices, named:
- Student: `model` (full or LoRA), trained. Teacher: `distill.teacher` (a path, run directory or hub
  id), loaded once with the student's dtype, eval mode, no gradients, dropout off, on the student's
  device. Its tokenizer must be the student's (vocabulary size, special tokens, the ids of a probe
  text: `alignlab.model.teacher`), checked before either model loads; a teacher head padded to
  another size is compared over the tokens both heads have (jsd).
- Batch: `train.batch_size` counts PROMPTS per micro-batch, each with `distill.num_generations`
  completions sampled by our KV-cache sampler (`alignlab.generation.sampler.generate`) at
  `distill.temperature` / top_p / top_k, stopping at any EOS id; the completion mask keeps the first.
  Prompts longer than train.max_length - distill.max_completion_length follow data.on_long.
- Temperature: every log-prob, the student's and the teacher's alike, is of softmax(logits / T), the
  distribution the student sampled from (as GRPO, TRL's GKD and verl do): at T != 1 the student is
  matched to the teacher at the same temperature.
- lambda (`distill.lmbda`, TRL's name; GKD's lambda): each optimizer step is on-policy (the
  student's samples) with probability lambda, else it trains on the data's `completion` column. The
  draw is a function of (train.seed, step), so a resumed run makes the same choices and every
  process makes the same one. `reverse_kl` needs lambda = 1 (checked when the config loads).
- `distill.loss=reverse_kl`: the per-token reverse KL at the sampled token as a dense advantage
  (discount `distill.discount`), GRPO's clipped surrogate per token; one update per rollout, so the
  ratio is 1 and the gradient is A_t * grad log p_t. `distill.loss=jsd`: GKD's generalised JSD over
  the full next-token distributions (`distill.jsd_beta`), chunked over positions from each model's
  hidden states (`distill.logprob_chunk_size`): no [tokens, vocab] tensor of the batch is held.
- Aggregation: the sum over every trained token of the optimizer step (all micro-batches and
  processes) divided by their count, so accumulation and processes change nothing but speed.
- Metrics: `distill/reverse_kl` (mean over tokens of log p_student - log p_teacher at the token: the
  one-sample reverse KL estimate), `distill/teacher_logp`, `distill/student_logp`, `distill/jsd` (jsd),
  `distill/on_policy` (1 when the step sampled), `completions/mean_length`; at eval, accuracy and
  format rate of greedy answers to the eval prompts scored by `distill.rewards` (`alignlab.rewards`).
- Left out (for now): the vLLM backend, tool-using (multi-turn) rollouts, a teacher on another device
  or behind a vLLM server, and several updates per rollout.
"""

from __future__ import annotations

import logging
import random
import time

import torch

from alignlab.data.collate import pad_left, pad_right
from alignlab.data.prompts import load_prompt_data
from alignlab.data.templates import Templater, fit_length
from alignlab.engine.data_order import IndexSampler
from alignlab.engine.loop import TrainingRun
from alignlab.engine.tracking import append_jsonl
from alignlab.errors import AlignlabError, ConfigError, DataError
from alignlab.generation.prompt_eval import evaluate_prompts
from alignlab.generation.sampler import Rollout, generate
from alignlab.losses.distill import chunked_generalized_jsd, policy_gradient_loss, reverse_kl_advantages
from alignlab.model.loading import (count_parameters, disable_dropout, load_model, load_tokenizer, model_stop_ids,
                                    resolve_model_path)
from alignlab.model.logprobs import CHUNK_BUDGET_BYTES, head_logits, score_rows, scored_hidden_states, token_logps
from alignlab.model.teacher import check_same_tokenizer, load_teacher
from alignlab.rewards import get_reward

log = logging.getLogger("alignlab")


def fit_prompts(items: list, ids: list[list[int]], limit: int, policy: str, bos_id) -> tuple[list, list[list[int]]]:
    """Apply data.on_long to prompts longer than `limit` tokens (no room for a whole completion)."""
    long = [i for i, p in enumerate(ids) if len(p) > limit]
    if not long:
        return items, ids
    if policy == "error":
        raise DataError(f"{items[long[0]].where}: the prompt has {len(ids[long[0]])} tokens, more than "
                        f"train.max_length - distill.max_completion_length = {limit} (set data.on_long=truncate or drop)")
    if policy == "truncate":  # keep the end, where the question is; a leading BOS stays
        log.warning("%d prompts longer than %d tokens truncated from the left", len(long), limit)
        return items, [fit_length(p, [], limit, keep_prompt=limit, bos_id=bos_id)[0] for p in ids]
    keep = [i for i in range(len(ids)) if len(ids[i]) <= limit]
    if not keep:
        raise DataError(f"every prompt is longer than train.max_length - distill.max_completion_length = {limit} tokens")
    log.warning("dropped %d of %d prompts longer than %d tokens (data.on_long=truncate keeps them)",
                len(long), len(ids), limit)
    return [items[i] for i in keep], [ids[i] for i in keep]


def on_policy_step(seed: int, step: int, lmbda: float) -> bool:
    """Whether optimizer step `step` samples from the student: the same answer on every process and
    after a resume (string seeds are hashed the same way in every Python process)."""
    return lmbda >= 1.0 or random.Random(f"distill:{seed}:{step}").random() < lmbda


class DistillTrainer:
    def __init__(self, config):
        self.config, self.distill, self.train = config, config.distill, config.train
        teacher = self.distill.teacher
        if not teacher:
            raise ConfigError("distill.teacher is not set: give the teacher model (a path, run directory or hub id)")
        try:
            resolve_model_path(teacher)
        except AlignlabError as exc:
            raise ConfigError(f"distill.teacher: {exc}") from None
        self.run = TrainingRun("distill", config)
        self.tokenizer = load_tokenizer(config.model.name_or_path, trust_remote_code=config.model.trust_remote_code)
        check_same_tokenizer(self.tokenizer, load_tokenizer(teacher, trust_remote_code=config.model.trust_remote_code),
                             config.model.name_or_path, teacher)
        self.templater = Templater(self.tokenizer, use_chat_template=config.data.chat_template,
                                   system_prompt=config.data.system_prompt,
                                   stop_ids=model_stop_ids(config.model, self.tokenizer))
        self.prompts, self.eval_prompts = load_prompt_data(config)
        limit = self.train.max_length - self.distill.max_completion_length
        if limit < 1:
            raise ConfigError(f"train.max_length={self.train.max_length} leaves no room for a prompt next to "
                              f"distill.max_completion_length={self.distill.max_completion_length}")
        self.prompts, self.prompt_ids = fit_prompts(
            self.prompts, [self.templater.ids(self.templater.prompt_text(p.prompt)) for p in self.prompts],
            limit, config.data.on_long, self.tokenizer.bos_token_id)
        self.completion_ids = self._encode_completions() if self.distill.lmbda < 1 else None
        self.reward_fns = [(name.rsplit(":", 1)[-1], get_reward(name)) for name in self.distill.rewards]
        model = load_model(config.model, config.lora, gradient_checkpointing=self.train.gradient_checkpointing)
        disable_dropout(model)  # the trained forward is the function that sampled
        trainable, total = count_parameters(model)
        log.info("run dir %s | student %s: %s trainable of %s parameters | teacher %s | loss %s, lambda %s",
                 self.run.run_dir, config.model.name_or_path, f"{trainable:,}", f"{total:,}", teacher,
                 self.distill.loss, self.distill.lmbda)
        self.run.prepare(model, self.tokenizer, train_size=len(self.prompts))
        self.teacher = load_teacher(config.model, teacher, self.run.device)
        student_vocab = self.run.unwrapped.get_output_embeddings().weight.shape[0]
        self.vocab = min(student_vocab, self.teacher.get_output_embeddings().weight.shape[0])
        self.sampler = IndexSampler(len(self.prompts), self.train.seed)

    def _encode_completions(self) -> list[list[int]]:
        """The data's completions as token ids (end of turn included), for the off-policy batches."""
        out = []
        for item in self.prompts:
            if not isinstance(item.completion, str) or not item.completion:
                raise DataError(f"{item.where}: no `completion` text, which distill.lmbda={self.distill.lmbda} < 1 "
                                "trains on in its off-policy batches (give every row one, or set distill.lmbda=1)")
            completion = self.templater.encode(item.prompt, item.completion)[1]
            out.append(completion[: self.distill.max_completion_length])
        return out

    # ------------------------------------------------------------ batches

    def _sampled(self, indices: list[int]) -> Rollout:
        d = self.distill
        return generate(self.run.unwrapped, self.tokenizer, [self.prompt_ids[i] for i in indices],
                        num_generations=d.num_generations, max_new_tokens=d.max_completion_length,
                        temperature=d.temperature, top_p=d.top_p, top_k=d.top_k, batch_size=d.rollout_batch_size,
                        device=self.run.device, synced=self.run.lockstep_forwards)

    def _from_data(self, indices: list[int]) -> Rollout:
        """The data's completions of these prompts, one each, in the sampler's layout."""
        pad = self.tokenizer.pad_token_id
        prompts, completions = [self.prompt_ids[i] for i in indices], [self.completion_ids[i] for i in indices]
        return Rollout(pad_left(prompts, pad), pad_left([[1] * len(p) for p in prompts], 0),
                       pad_right(completions, pad), pad_right([[1] * len(c) for c in completions], 0),
                       [self.prompts[i].completion for i in indices],
                       torch.tensor([bool(c) and c[-1] in self.templater.stop_ids for c in completions]))

    # ------------------------------------------------------------ update

    def _reverse_kl(self, input_ids, attention, loss_mask, normalizer: float):
        """(loss, student log-probs [b, L], teacher log-probs [b, L]) at the sampled tokens."""
        temperature = self.distill.temperature
        student = token_logps(self.run.model, input_ids, attention, loss_mask, temperature=temperature)  # [b, L]
        with torch.no_grad():
            teacher = token_logps(self.teacher, input_ids, attention, loss_mask, temperature=temperature)  # [b, L]
        mask = loss_mask.float()
        advantages = reverse_kl_advantages(student, teacher, mask, discount=self.distill.discount)  # [b, L]
        out = policy_gradient_loss(student, None, advantages, mask, normalizer=normalizer)
        return out.loss, student.detach(), teacher, None

    def _jsd(self, input_ids, attention, loss_mask, normalizer: float):
        """(loss, student and teacher log-probs [b, L] at the tokens, JSD sum) from one forward of each model."""
        d, scored = self.distill, loss_mask[:, 1:].bool()  # [b, L-1]: positions predicting a trained token
        student_rows = scored_hidden_states(self.run.model, input_ids, attention, loss_mask)  # [n, H_s]
        with torch.no_grad():
            teacher_rows = scored_hidden_states(self.teacher, input_ids, attention, loss_mask)  # [n, H_t]
        chunk = d.logprob_chunk_size or max(16, CHUNK_BUDGET_BYTES // (6 * 4 * self.vocab))  # ~6 [chunk, V] blocks
        per_token = chunked_generalized_jsd(
            student_rows, teacher_rows, head_logits(self.run.model, d.temperature, self.vocab),
            head_logits(self.teacher, d.temperature, self.vocab), beta=d.jsd_beta, chunk_size=chunk)  # [n]
        targets = input_ids[:, 1:][scored]  # [n]
        with torch.no_grad():  # the metrics' log-probs: the same hidden states, through the heads only
            logps = [score_rows(m, rows.detach(), targets, chunk, temperature=d.temperature)[0]
                     for m, rows in ((self.run.model, student_rows), (self.teacher, teacher_rows))]
        spread = [torch.zeros(input_ids.shape, device=input_ids.device) for _ in logps]  # [b, L] each
        for full, flat in zip(spread, logps):
            full[:, 1:] = full[:, 1:].masked_scatter(scored, flat)
        return per_token.sum() / normalizer, spread[0], spread[1], per_token.detach().sum()

    def step(self, step: int) -> dict:
        tick = time.perf_counter()
        on_policy = on_policy_step(self.train.seed, step, self.distill.lmbda)
        global_indices = self.sampler.take(self.train.batch_size * self.train.grad_accum * self.run.num_processes)
        indices = self.run.rank_slice(global_indices)
        rollout = self._sampled(indices) if on_policy else self._from_data(indices)
        generation_seconds = time.perf_counter() - tick
        mask_all = rollout.loss_mask.float()  # [N, C]
        normalizer = self.run.global_sum(float(mask_all.sum()))
        update = self._reverse_kl if self.distill.loss == "reverse_kl" else self._jsd
        micro = self.train.batch_size * (self.distill.num_generations if on_policy else 1)
        sums = {"loss": 0.0, "reverse_kl": 0.0, "teacher_logp": 0.0, "student_logp": 0.0, "jsd": 0.0}
        tokens = 0.0
        for rows in self.run.micro_batches(list(range(len(rollout.texts))), micro):
            input_ids, attention, loss_mask = (t.to(self.run.device) for t in rollout.select(rows).sequences())
            loss, student, teacher, jsd = update(input_ids, attention, loss_mask, normalizer)
            self.run.backward(loss)
            mask = loss_mask.float()
            sums["loss"] += float(loss.detach())
            sums["reverse_kl"] += float(((student - teacher) * mask).sum())
            sums["teacher_logp"] += float((teacher * mask).sum())
            sums["student_logp"] += float((student * mask).sum())
            sums["jsd"] += float(jsd) if jsd is not None else 0.0
            tokens += float(attention.sum())
        keys = ("reverse_kl", "teacher_logp", "student_logp", "jsd")
        totals = self.run.global_sums([sums["loss"], len(rollout.texts)] + [sums[k] for k in keys])
        metrics = {"loss": totals[0], **{f"distill/{k}": v / max(normalizer, 1.0) for k, v in zip(keys, totals[2:])}}
        if self.distill.loss != "jsd":
            del metrics["distill/jsd"]
        metrics.update({"completions/mean_length": normalizer / max(totals[1], 1.0), "distill/on_policy": float(on_policy),
                        "time/generation": generation_seconds, "tokens": tokens})
        return metrics

    # ------------------------------------------------------------ eval and run

    def evaluate(self, step: int) -> dict:
        prompts = self.eval_prompts[: self.distill.eval_max_prompts]
        result = evaluate_prompts(
            self.run.unwrapped, self.tokenizer, self.templater, prompts, self.reward_fns, [1.0] * len(self.reward_fns),
            max_new_tokens=self.distill.max_completion_length, batch_size=self.train.eval_batch_size,
            synced=self.run.lockstep_forwards)
        if self.run.is_main:
            for sample in result.samples[: self.distill.num_samples_logged]:
                append_jsonl(self.run.run_dir / "samples.jsonl", {"step": step, **sample})
        return result.metrics

    def fit(self) -> TrainingRun:
        self.run.maybe_resume(self.sampler)
        self.run.loop(self.step, eval_fn=self.evaluate if self.eval_prompts else None, sampler=self.sampler)
        return self.run


def train_distill(config) -> TrainingRun:
    return DistillTrainer(config).fit()
