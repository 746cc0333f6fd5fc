"""Supervised fine-tuning: next-token cross-entropy on completion / assistant tokens only.

The loss of an optimizer step is the mean over every trained token in it (all micro-batches and
processes), so gradient accumulation and data parallelism change nothing but speed.
"""

from __future__ import annotations

import logging

import torch

from alignlab.data.collate import collate_masked
from alignlab.data.sft import load_sft_data
from alignlab.data.templates import Templater
from alignlab.model.logprobs import token_logps
from alignlab.model.loading import count_parameters, load_model, load_tokenizer, model_stop_ids
from alignlab.engine.data_order import IndexSampler
from alignlab.engine.loop import TrainingRun

log = logging.getLogger("alignlab")


def train_sft(config, *, extra_eval=None, stop_fn=None) -> TrainingRun:
    """Train; `extra_eval(model) -> metrics` adds to each eval (e.g. task accuracy) and
    `stop_fn(record) -> bool` ends training early (the demo stops on a dev-accuracy threshold)."""
    run = TrainingRun("sft", config)
    tokenizer = load_tokenizer(config.model.name_or_path, trust_remote_code=config.model.trust_remote_code)
    templater = Templater(tokenizer, use_chat_template=config.data.chat_template, system_prompt=config.data.system_prompt,
                          stop_ids=model_stop_ids(config.model, tokenizer))
    train_set, eval_set = load_sft_data(config, templater)
    model = load_model(config.model, config.lora, gradient_checkpointing=config.train.gradient_checkpointing)
    trainable, total = count_parameters(model)
    log.info("run dir %s | model %s: %s trainable of %s parameters", run.run_dir, config.model.name_or_path, f"{trainable:,}", f"{total:,}")
    run.prepare(model, tokenizer, train_size=len(train_set))

    train = config.train
    sampler = IndexSampler(len(train_set), train.seed)
    run.maybe_resume(sampler)
    global_batch = train.batch_size * train.grad_accum * run.num_processes

    def row_losses(examples):
        """([B] summed NLL of each example's trained tokens, [B] their counts)."""
        batch = {k: v.to(run.device) for k, v in collate_masked(
            [e.input_ids for e in examples], [e.loss_mask for e in examples], tokenizer.pad_token_id).items()}
        logps = token_logps(run.model, batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
        return -logps.sum(-1), batch["loss_mask"][:, 1:].sum(-1).float()

    def batch_loss(examples):
        nll, counts = row_losses(examples)
        return nll.sum(), float(counts.sum())

    def step_fn(step):
        examples = run.rank_slice([train_set[i] for i in sampler.take(global_batch)])
        total_tokens = run.global_sum(sum(sum(e.loss_mask[1:]) for e in examples))
        loss_sum, tokens = 0.0, 0.0
        for micro in run.micro_batches(examples, train.batch_size, length=lambda e: len(e.input_ids)):
            nll, count = batch_loss(micro)
            run.backward(nll / total_tokens)
            loss_sum += float(nll.detach())
            tokens += count
        loss = run.global_sum(loss_sum) / total_tokens
        return {"loss": loss, "tokens": sum(len(e.input_ids) for e in examples)}

    def eval_fn(step):
        run.model.eval()
        metrics = extra_eval(run.unwrapped) if extra_eval else {}
        if not eval_set:
            return metrics
        nll, count = {}, {}  # per data-mixture source ("" without a mixture)
        with torch.no_grad():
            for start in range(0, len(eval_set), train.eval_batch_size):
                examples = eval_set[start : start + train.eval_batch_size]
                row_nll, row_count = row_losses(examples)
                for example, value, tokens in zip(examples, row_nll.tolist(), row_count.tolist()):
                    nll[example.group] = nll.get(example.group, 0.0) + value
                    count[example.group] = count.get(example.group, 0.0) + tokens
        metrics["loss"] = sum(nll.values()) / max(sum(count.values()), 1.0)
        if len(nll) > 1:
            metrics.update({f"loss/{name}": nll[name] / max(count[name], 1.0) for name in sorted(nll)})
        return metrics

    has_eval = bool(eval_set) or extra_eval is not None
    run.loop(step_fn, eval_fn=eval_fn if has_eval else None, sampler=sampler, stop_fn=stop_fn)
    return run
