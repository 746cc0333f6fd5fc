"""Reward-model training: a Bradley-Terry scalar score on preference pairs (Ouyang et al. 2022, "Training
language models to follow instructions with human feedback", Eq. 1), on the shared training loop.

Choices, named:
- Model: transformers' `AutoModelForSequenceClassification` with `num_labels=1` on the checkpoint's
  architecture (a causal LM gets a new linear `score` head, seeded by `train.seed`); full fine-tuning,
  or LoRA on the decoder with the score head trained whole (peft `modules_to_save`). Dropout off.
- Score: the head's output at each sequence's last real token, read from the attention mask, never
  by comparing ids with the pad id (`alignlab.scoring.heads`: transformers' own pooling skips a final
  EOS when pad = EOS). The last token is the template's end of turn: the score sees the whole answer.
- Data: every preference format DPO reads, rendered and truncated exactly as DPO renders it
  (`alignlab.data.preference_sets.load_encoded_pairs`): prompt + chosen and prompt + rejected are two
  sequences, scored in one forward.
- Loss (`alignlab.losses.rm.bradley_terry_loss`): -log sigmoid(r_c - r_r - m), m the data's `margin`
  column when `rm.use_margin` (Llama 2), label smoothing `rm.label_smoothing`, reward centring
  `rm.center_coefficient`. The step's loss is the mean over every pair in it (all micro-batches and
  processes), so accumulation and processes change nothing but speed.
- Metrics (TRL's names): loss, accuracy (r_c > r_r), margin (mean r_c - r_r), rewards/chosen,
  rewards/rejected; the same on held-out pairs as eval/...; per data-mixture source
  rewards/accuracies/<source> (as DPO).
- Left out: value heads on a causal LM (TRL's AutoModelForCausalLMWithValueHead), ensembles, and
  multi-objective heads.
"""

from __future__ import annotations

import logging

import torch

from alignlab.data.mixture import finish_per_source, per_source_sums, source_names
from alignlab.data.preference_sets import load_encoded_pairs
from alignlab.data.templates import Templater
from alignlab.engine.data_order import IndexSampler
from alignlab.engine.loop import TrainingRun
from alignlab.errors import ConfigError
from alignlab.losses.rm import bradley_terry_loss
from alignlab.model.loading import count_parameters, load_tokenizer, model_stop_ids
from alignlab.scoring.heads import load_classifier, pad_batch, score_head, sequence_scores

log = logging.getLogger("alignlab")


def pair_length(pair) -> int:
    """Padded width a pair needs in a batch: its prompt and its longer response."""
    return len(pair.prompt_ids) + max(len(pair.chosen_ids), len(pair.rejected_ids))


class RMStep:
    """Loss and metric sums for a list of pairs: the heart of the trainer."""

    def __init__(self, run: TrainingRun, config, head):
        self.run, self.rm, self.head = run, config.rm, head
        self.sources: list[str] = []  # data mixture sources: rewards/accuracies/<source>

    def scores(self, pairs) -> tuple[torch.Tensor, torch.Tensor]:
        """([B] chosen scores, [B] rejected scores): the 2B sequences in one forward."""
        sequences = [p.prompt_ids + p.chosen_ids for p in pairs] + [p.prompt_ids + p.rejected_ids for p in pairs]
        ids, mask = pad_batch(sequences, self.run.tokenizer.pad_token_id, side="right")
        scores = sequence_scores(self.run.model, ids.to(self.run.device), mask.to(self.run.device), head=self.head)
        scores = scores.float()  # [2B]: the loss in float32 under mixed precision
        return scores[: len(pairs)], scores[len(pairs):]

    def __call__(self, pairs):
        """(sum of per-pair losses, metric sums, tokens) for these pairs; the caller normalises."""
        chosen, rejected = self.scores(pairs)  # [B], [B]
        margin = None
        if self.rm.use_margin and any(p.margin is not None for p in pairs):
            margin = torch.tensor([p.margin or 0.0 for p in pairs], dtype=chosen.dtype, device=chosen.device)  # [B]
        out = bradley_terry_loss(chosen, rejected, margin=margin, label_smoothing=self.rm.label_smoothing,
                                 center_coefficient=self.rm.center_coefficient)
        sums = {
            "accuracy": out.accuracies.sum(),
            "margin": out.margins.sum(),
            "rewards/chosen": chosen.detach().sum(),
            "rewards/rejected": rejected.detach().sum(),
        }
        if self.sources:
            sums.update(per_source_sums([p.group for p in pairs], out.accuracies.tolist(), self.sources))
        tokens = float(sum(len(p.prompt_ids) * 2 + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs))
        return out.losses.sum(), {k: float(v) for k, v in sums.items()}, tokens


def train_rm(config) -> TrainingRun:
    if config.model.load_in_4bit:
        raise ConfigError("model.load_in_4bit is not supported by `alignlab rm` yet: train the reward model in "
                          "bfloat16 (model.dtype=bfloat16) with lora.enabled=true")
    run = TrainingRun("rm", config)
    tokenizer = load_tokenizer(config.model.name_or_path, trust_remote_code=config.model.trust_remote_code)
    templater = Templater(tokenizer, use_chat_template=config.data.chat_template, system_prompt=config.data.system_prompt,
                          stop_ids=model_stop_ids(config.model, tokenizer))
    train_pairs, eval_pairs = load_encoded_pairs(config, templater, "reward model")
    if tokenizer.pad_token_id in templater.stop_ids:
        log.info("the pad token is also an end-of-turn token: scores are read at each sequence's last real token "
                 "(from the attention mask), which transformers' own pooling would skip")
    model = load_classifier(config.model, config.lora, pad_token_id=tokenizer.pad_token_id,
                            gradient_checkpointing=config.train.gradient_checkpointing)
    trainable, total = count_parameters(model)
    log.info("run dir %s | reward model on %s: %s trainable of %s parameters", run.run_dir, config.model.name_or_path,
             f"{trainable:,}", f"{total:,}")
    head = score_head(model)  # found before accelerate wraps the model
    run.prepare(model, tokenizer, train_size=len(train_pairs))

    train = config.train
    sampler = IndexSampler(len(train_pairs), train.seed)
    run.maybe_resume(sampler)
    global_batch = train.batch_size * train.grad_accum * run.num_processes
    step = RMStep(run, config, head)
    step.sources = source_names(train_pairs + eval_pairs)

    def step_fn(_):
        indices = run.rank_slice(sampler.take(global_batch))
        total_pairs = run.global_sum(len(indices))
        sums, tokens = {}, 0.0
        for micro in run.micro_batches(indices, train.batch_size, length=lambda i: pair_length(train_pairs[i])):
            loss_sum, metric_sums, micro_tokens = step([train_pairs[i] for i in micro])
            run.backward(loss_sum / total_pairs)
            tokens += micro_tokens
            for key, value in {"loss": float(loss_sum.detach()), **metric_sums}.items():
                sums[key] = sums.get(key, 0.0) + value
        means = finish_per_source({k: run.global_sum(v) / total_pairs for k, v in sums.items()}, step.sources)
        return {**means, "tokens": tokens}

    def eval_fn(_):
        run.model.eval()
        sums = {}
        with torch.no_grad():
            for start in range(0, len(eval_pairs), train.eval_batch_size):
                loss_sum, metric_sums, _ = step(eval_pairs[start : start + train.eval_batch_size])
                for key, value in {"loss": float(loss_sum), **metric_sums}.items():
                    sums[key] = sums.get(key, 0.0) + value
        return finish_per_source({k: v / len(eval_pairs) for k, v in sums.items()}, step.sources)

    run.loop(step_fn, eval_fn=eval_fn if eval_pairs else None, sampler=sampler)
    return run
