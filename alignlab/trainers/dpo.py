"""Direct Preference Optimization (Rafailov et al. 2023, Eq. 7) on the shared training loop.

Choices, named:
- Loss: picked by name from `alignlab.losses.dpo.DPO_LOSSES` (`dpo.loss_type`: sigmoid, robust,
  hinge, ipo), with `dpo.label_smoothing` (cDPO / rDPO) and an optional RPO NLL term on chosen
  (`dpo.sft_weight`). `dpo.length_normalize` feeds per-token mean log-probs instead of sums; by
  default it is on for IPO only (see `alignlab.losses.dpo`).
- Reference (`dpo.reference`): `auto` = precomputed when `dpo.precompute_ref` (default), else the
  adapter-disabled policy for LoRA and a frozen copy for full fine-tuning; `none` is reference-free.
  Precomputed log-probs are cached across runs (see `alignlab.model.pair_logps`).
- Batching: `train.batch_size` pairs per micro-batch; chosen and rejected in one forward; the
  step's loss is the mean over every pair in it (all micro-batches and processes).
- Log-probs: completion tokens only, never the full [B, T, V] float32 logits (`alignlab.model.logprobs`).
- Metrics: loss, rewards/{chosen,rejected,accuracies,margins}, logps/{chosen,rejected}, and the
  same on the eval set as eval/... every `train.eval_every` steps.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import time
from pathlib import Path

import torch

from alignlab.data.mixture import finish_per_source, per_source_sums, source_names
from alignlab.data.preference_encode import pairs_fingerprint
from alignlab.data.preference_sets import load_encoded_pairs
from alignlab.data.templates import Templater
from alignlab.errors import ConfigError
from alignlab.losses.dpo import DPO_LOSSES, nll_loss
from alignlab.model.loading import count_parameters, is_peft, load_model, load_tokenizer, model_stop_ids
from alignlab.model.pair_logps import ReferenceCache, cache_key, compute_all, model_fingerprint, pair_logps
from alignlab.generation.sampler import generate
from alignlab.engine.tracking import append_jsonl
from alignlab.engine.data_order import IndexSampler
from alignlab.engine.loop import TrainingRun

log = logging.getLogger("alignlab")


def load_pairs(config, templater):
    """(train pairs, eval pairs) encoded, with counts reported (alignlab.data.preference_sets)."""
    return load_encoded_pairs(config, templater, "DPO")


def resolve_reference(config, model) -> str:
    """The reference strategy actually used: precomputed | adapter | copy | none."""
    choice = config.dpo.reference
    if choice not in ("auto", "adapter", "copy", "none"):
        raise ConfigError(f"dpo.reference must be auto, adapter, copy or none, got '{choice}'")
    if choice == "none":
        return "none"
    if choice == "adapter" and not is_peft(model):
        raise ConfigError("dpo.reference=adapter needs LoRA (lora.enabled=true)")
    if config.dpo.precompute_ref:
        return "precomputed"
    if choice == "auto":
        return "adapter" if is_peft(model) else "copy"
    return choice


def reference_by_shares(run: TrainingRun, config, pairs, model=None) -> torch.Tensor:
    """[N, 2] reference log-probs, each process scoring an equal contiguous share of the pairs (the
    last share padded with copies of the last pair: under FSDP or ZeRO-3 all must run as many forwards).
    `model`: the reference weights when the policy no longer holds them (default: the policy, its
    adapter disabled under LoRA)."""
    share = math.ceil(len(pairs) / run.num_processes)
    padded = pairs + [pairs[-1]] * (share * run.num_processes - len(pairs))
    index = run.accelerator.process_index
    model = model if model is not None else run.unwrapped
    with model.disable_adapter() if is_peft(model) else contextlib.nullcontext(), run.autocast():
        mine = compute_all(
            model, padded[index * share : (index + 1) * share], run.tokenizer.pad_token_id, run.device,
            batch_size=max(config.train.eval_batch_size, config.train.batch_size),
            chunk_size=config.dpo.logprob_chunk_size, progress=config.train.progress and run.is_main,
        )  # [share, 2]
    if run.num_processes == 1:
        return mine
    return run.accelerator.gather(mine.to(run.device)).cpu()[: len(pairs)]  # in process order = pair order


def resolved_length_normalize(dpo) -> bool:
    return dpo.length_normalize if dpo.length_normalize is not None else dpo.loss_type == "ipo"


def reference_settings(config) -> dict:
    """Every setting that changes the reference's log-probs beyond the token ids and the weights: a
    stale cached reference would silently make DPO optimise, e.g., quantisation error."""
    model, train = config.model, config.train
    return {
        "max_length": train.max_length, "template": config.data.chat_template, "dtype": model.dtype,
        "load_in_4bit": model.load_in_4bit, "mixed_precision": train.mixed_precision,
        "attn_implementation": model.attn_implementation, "chunk_size": config.dpo.logprob_chunk_size,
    }


class ReferenceLogps:
    """[N, 2] reference log-probs of one split (chosen, rejected per pair), filled as needed: from the
    shared cache, else computed (each process scoring a share) and added to it. `ensure(indices)`
    makes those pairs available; every process calls it with the same indices and holds the same
    table (the main process's reading of the cache, broadcast), so all decide alike whether to run
    forwards (under FSDP or ZeRO-3 they must run as many)."""

    def __init__(self, run: TrainingRun, config, pairs, name: str):
        self.run, self.config, self.pairs, self.name = run, config, pairs, name
        dpo = config.dpo
        self.cache = ReferenceCache(Path(dpo.ref_cache_dir) if dpo.ref_cache_dir else run.run_dir.parent / ".ref_cache")
        self.key = cache_key(pairs_fingerprint(pairs), model_fingerprint(config.model.name_or_path, config.model.revision),
                             reference_settings(config))
        values = self.cache.load(self.key) if run.is_main else None
        if values is None or values.shape != (len(pairs), 2):
            values = torch.full((len(pairs), 2), float("nan"))
        if run.num_processes > 1:
            from accelerate.utils import broadcast

            values = broadcast(values.to(run.device), from_process=0).cpu()
        self.values = values  # NaN = not computed yet
        self.report = {"pairs": 0, "computed": 0, "reused": 0, "seconds": 0.0, "cache": str(self.cache.path(self.key))}
        if run.is_main:
            (run.run_dir / f"ref_cache_{name}.txt").write_text(str(self.cache.path(self.key)) + "\n")

    def missing(self, indices) -> list[int]:
        wanted = torch.tensor(sorted(set(indices)), dtype=torch.long)
        return wanted[self.values[wanted].isnan().any(dim=1)].tolist() if len(wanted) else []

    def ensure(self, indices, *, planned: bool = False) -> None:
        """Compute the reference of those of `indices` not known yet, and cache it."""
        todo = self.missing(indices)
        if planned:
            self.report["pairs"] = len(set(indices))
            self.report["reused"] = self.report["pairs"] - len(todo)
        if todo:
            tick = time.perf_counter()
            initial = None
            if not planned and not is_peft(self.run.unwrapped):
                # Full fine-tuning, mid-run: the policy's weights have moved on; the reference is the
                # initial model, loaded again for these pairs only.
                initial = load_model(self.config.model, None, for_training=False).to(self.run.device)
            self.values[todo] = reference_by_shares(self.run, self.config, [self.pairs[i] for i in todo], initial)
            del initial
            if self.run.is_main:
                self.values = self.cache.store(self.key, self.values)
            self.report["computed"] += len(todo)
            self.report["seconds"] += time.perf_counter() - tick
        if not self.run.is_main:
            return
        path = self.cache.path(self.key)
        if planned and todo:
            log.info("reference log-probs for %d %s pairs computed and cached in %s (%.1f s; %d of the %d pairs this run "
                     "will see were there already)", len(todo), self.name, path, self.report["seconds"],
                     self.report["reused"], self.report["pairs"])
        elif planned:
            log.info("reference log-probs for %d %s pairs reused from %s", self.report["pairs"], self.name, path)
        elif todo:  # pairs beyond the plan: steps skipped for a non-finite loss took more
            log.info("reference log-probs for %d more %s pairs computed at step %d", len(todo), self.name, self.run.step + 1)

    def __getitem__(self, rows) -> torch.Tensor:
        return self.values[rows]


def write_reference_report(run: TrainingRun, references: dict) -> None:
    """reference.json: per split, the pairs planned, computed (and their seconds) and reused."""
    if run.is_main:
        report = {name: ref.report for name, ref in references.items() if ref is not None}
        (run.run_dir / "reference.json").write_text(json.dumps(report, indent=1) + "\n")


class DPOStep:
    """Loss and metrics for a list of pairs: the heart of the trainer."""

    def __init__(self, run: TrainingRun, config, reference: str, ref_model=None):
        self.run, self.config, self.reference, self.ref_model = run, config, reference, ref_model
        self.loss_fn = DPO_LOSSES[config.dpo.loss_type]
        self.length_normalize = resolved_length_normalize(config.dpo)
        self.sources: list[str] = []  # data mixture source names: rewards/accuracies/<source> is logged per source

    def reference_logps(self, pairs, cached):
        if self.reference == "precomputed":
            return cached[:, 0].to(self.run.device), cached[:, 1].to(self.run.device)
        if self.reference == "none":
            zeros = torch.zeros(len(pairs), device=self.run.device)
            return zeros, zeros
        with torch.no_grad():
            if self.reference == "adapter":
                with self.run.unwrapped.disable_adapter():
                    ref = pair_logps(self.run.model, pairs, self.run.tokenizer.pad_token_id, self.run.device)
            else:
                ref = pair_logps(self.ref_model, pairs, self.run.tokenizer.pad_token_id, self.run.device)
        return self._normalise(ref.chosen, ref.chosen_tokens), self._normalise(ref.rejected, ref.rejected_tokens)

    def _normalise(self, logps, lengths):
        return logps / lengths.clamp(min=1) if self.length_normalize else logps

    def __call__(self, pairs, cached_ref=None):
        """(sum of per-pair losses, metric sums) for these pairs; the caller normalises."""
        dpo = self.config.dpo
        policy = pair_logps(self.run.model, pairs, self.run.tokenizer.pad_token_id, self.run.device,
                            chunk_size=dpo.logprob_chunk_size)
        chosen = self._normalise(policy.chosen, policy.chosen_tokens)  # [B]
        rejected = self._normalise(policy.rejected, policy.rejected_tokens)  # [B]
        if cached_ref is not None and self.length_normalize:
            cached_ref = cached_ref / torch.stack([policy.chosen_tokens, policy.rejected_tokens], 1).cpu().clamp(min=1)
        ref_chosen, ref_rejected = self.reference_logps(pairs, cached_ref)
        out = self.loss_fn(chosen, rejected, ref_chosen, ref_rejected, beta=dpo.beta, label_smoothing=dpo.label_smoothing)
        losses = out.losses  # [B]
        if dpo.sft_weight:
            losses = losses + dpo.sft_weight * nll_loss(policy.chosen, policy.chosen_tokens)
        margins = out.chosen_rewards - out.rejected_rewards
        sums = {
            "rewards/chosen": out.chosen_rewards.sum(),
            "rewards/rejected": out.rejected_rewards.sum(),
            "rewards/accuracies": (margins > 0).float().sum(),
            "rewards/margins": margins.sum(),
            "logps/chosen": policy.chosen.detach().sum(),
            "logps/rejected": policy.rejected.detach().sum(),
        }
        if self.sources:
            sums.update(per_source_sums([p.group for p in pairs], (margins > 0).float().tolist(), self.sources))
        tokens = float(policy.chosen_tokens.sum() + policy.rejected_tokens.sum())
        return losses.sum(), {k: float(v) for k, v in sums.items()}, tokens


def pair_length(pair) -> int:
    """Padded width a pair needs in a batch: its prompt and its longer response."""
    return len(pair.prompt_ids) + max(len(pair.chosen_ids), len(pair.rejected_ids))


def log_samples(run: TrainingRun, config, pairs, step: int) -> None:
    """Greedy answers to the first `dpo.num_samples_logged` distinct eval prompts, with the pair's
    chosen and rejected responses, appended to samples.jsonl (shown by `alignlab report`)."""
    prompts = list({tuple(p.prompt_ids): p for p in pairs}.values())[: config.dpo.num_samples_logged]
    if not prompts:
        return
    tokenizer = run.tokenizer
    rollout = generate(run.unwrapped, tokenizer, [p.prompt_ids for p in prompts], greedy=True,
                       max_new_tokens=config.dpo.sample_max_new_tokens, device=run.device, synced=run.lockstep_forwards)
    if not run.is_main:
        return
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    for pair, completion in zip(prompts, rollout.texts):
        append_jsonl(run.run_dir / "samples.jsonl", {
            "step": step, "prompt": tokenizer.decode(pair.prompt_ids), "completion": completion,
            "chosen": decode(pair.chosen_ids), "rejected": decode(pair.rejected_ids)})


def train_dpo(config) -> TrainingRun:
    if config.dpo.loss_type not in DPO_LOSSES:
        raise ConfigError(f"dpo.loss_type '{config.dpo.loss_type}' is not one of {sorted(DPO_LOSSES)}")
    if config.dpo.label_smoothing and config.dpo.loss_type in ("hinge", "ipo"):
        raise ConfigError(f"dpo.label_smoothing is defined for the sigmoid and robust losses, not '{config.dpo.loss_type}'")
    run = TrainingRun("dpo", config)
    tokenizer = load_tokenizer(config.model.name_or_path, trust_remote_code=config.model.trust_remote_code)
    templater = Templater(tokenizer, use_chat_template=config.data.chat_template, system_prompt=config.data.system_prompt,
                          stop_ids=model_stop_ids(config.model, tokenizer))
    train_pairs, eval_pairs = load_pairs(config, templater)
    model = load_model(config.model, config.lora, gradient_checkpointing=config.train.gradient_checkpointing)
    reference = resolve_reference(config, model)
    ref_model = None
    if reference == "copy":
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    trainable, total = count_parameters(model)
    log.info("run dir %s | %s trainable of %s parameters | reference: %s", run.run_dir, f"{trainable:,}", f"{total:,}", reference)
    run.prepare(model, tokenizer, train_size=len(train_pairs))
    if ref_model is not None:
        ref_model.to(run.device)

    train = config.train
    sampler = IndexSampler(len(train_pairs), train.seed)
    global_batch = train.batch_size * train.grad_accum * run.num_processes
    cached_train = cached_eval = None
    if reference == "precomputed":
        # Before resuming, which loads trained weights; only the pairs the rest of the run will see
        # (the data order is fixed by the seed, from the resumed position on). Every eval pair is
        # used at each eval.
        done, position = run.resume_position()
        planner = IndexSampler(len(train_pairs), train.seed)
        if position:
            planner.load(position)
        cached_train = ReferenceLogps(run, config, train_pairs, "train")
        cached_train.ensure(planner.peek(max(train.max_steps - done, 0) * global_batch), planned=True)
        if eval_pairs:
            cached_eval = ReferenceLogps(run, config, eval_pairs, "eval")
            cached_eval.ensure(range(len(eval_pairs)), planned=True)
        write_reference_report(run, {"train": cached_train, "eval": cached_eval})
    run.maybe_resume(sampler)
    step = DPOStep(run, config, reference, ref_model)
    step.sources = source_names(train_pairs + eval_pairs)

    def step_fn(_):
        picked = sampler.take(global_batch)  # the same on every process
        if cached_train is not None:
            cached_train.ensure(picked)  # already there, unless skipped steps took more pairs than planned
        indices = run.rank_slice(picked)
        total_pairs = run.global_sum(len(indices))
        sums, tokens = {}, 0.0
        for micro in run.micro_batches(indices, train.batch_size, length=lambda i: pair_length(train_pairs[i])):
            cached = cached_train[micro] if cached_train is not None else None
            loss_sum, metric_sums, micro_tokens = step([train_pairs[i] for i in micro], cached)
            run.backward(loss_sum / total_pairs)
            tokens += micro_tokens
            for key, value in {"loss": float(loss_sum.detach()), **metric_sums}.items():
                sums[key] = sums.get(key, 0.0) + value
        means = finish_per_source({k: run.global_sum(v) / total_pairs for k, v in sums.items()}, step.sources)
        return {**means, "tokens": tokens}

    def eval_fn(step_index):
        run.model.eval()
        sums = {}
        with torch.no_grad():
            for start in range(0, len(eval_pairs), train.eval_batch_size):
                idx = list(range(start, min(start + train.eval_batch_size, len(eval_pairs))))
                cached = cached_eval[idx] if cached_eval is not None else None
                loss_sum, metric_sums, _ = step([eval_pairs[i] for i in idx], cached)
                for key, value in {"loss": float(loss_sum), **metric_sums}.items():
                    sums[key] = sums.get(key, 0.0) + value
        log_samples(run, config, eval_pairs, step_index)
        return finish_per_source({k: v / len(eval_pairs) for k, v in sums.items()}, step.sources)

    run.loop(step_fn, eval_fn=eval_fn if eval_pairs else None, sampler=sampler)
    return run
