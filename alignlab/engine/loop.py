"""The training loop every trainer shares: run directory, accelerate, optimizer, sampling, checkpoints.

A trainer supplies `step_fn(step) -> metrics` that runs forward/backward over its micro-batches
(using `run.micro_batches` so gradient sync happens once per step) and `eval_fn(step) -> metrics`.
This module owns everything around it: optimizer and schedule, clipping, non-finite steps,
logging, progress, checkpoints and resume.

Gradient accumulation is done here rather than with `accelerator.accumulate`, because the loss of
each micro-batch is divided by the token (or pair) count of the whole optimizer step across all
processes: 1x8 and 8x1 then give the same gradient, not just the same expected gradient.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from alignlab.config import to_dict, to_yaml, was_set
from alignlab.engine import checkpoint as ckpt
from alignlab.engine import sharding
from alignlab.engine.data_order import IndexSampler, process_seed, seed_everything, steps_for_epochs
from alignlab.engine.hub_push import check_can_push, push_run
from alignlab.engine.preflight import preflight
from alignlab.engine.launch import (apply_num_threads, check_launcher, check_precision, cpu_only_multiprocess,
                                    launched_processes)
from alignlab.engine.run_checkpoints import RunCheckpoints
from alignlab.engine.run_dir import resolve_run_dir
from alignlab.engine.tracking import Tracker, read_jsonl, setup_logging
from alignlab.errors import AlignlabError, Interrupted
from alignlab.model.loading import resolve_model_path

log = logging.getLogger("alignlab")




class TrainingRun(RunCheckpoints):
    """One run directory and the accelerate objects that train in it."""

    def __init__(self, command: str, config):
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        self.command, self.config = command, config
        check_precision(config)
        preflight(config)  # data files, model path, rewards, tools, trackers: before anything loads
        # Runs started one after another in one process (the demo, iterate, tests) may differ in mixed
        # precision, which accelerate keeps in a process-wide state; the process group (PartialState) stays.
        AcceleratorState._reset_state()
        check_launcher()
        # step_scheduler_with_optimizer=False: accelerate would otherwise step the LR schedule once per
        # process at every optimizer step (it assumes a dataloader whose batches it split), running
        # warmup and decay N times too fast; here one optimizer step is one schedule step.
        self.accelerator = Accelerator(mixed_precision=config.train.mixed_precision, cpu=cpu_only_multiprocess(),
                                       step_scheduler_with_optimizer=False)
        if launched_processes() > 1 and self.accelerator.num_processes == 1:
            raise AlignlabError(
                f"launched as {launched_processes()} processes, but accelerate set up a single-process run "
                f"({self.accelerator.distributed_type}); every process would train alone and write the same run "
                "directory. Check the launcher's settings (see configs/accelerate/)."
            )
        sharding.enable_on_cpu(self.accelerator)
        sharding.check_supported(self.accelerator)
        self.sharded = sharding.is_sharded(self.accelerator)  # FSDP: every process holds a shard
        self.deepspeed = sharding.is_deepspeed(self.accelerator)  # the model is a DeepSpeed engine
        self.zero_stage = sharding.zero_stage(self.accelerator)
        # FSDP and ZeRO-3 gather weights from every process in each forward, so all processes must
        # run the same number of forwards (generation, evaluation).
        self.lockstep_forwards = self.sharded or self.zero_stage >= 3
        if self.sharded:
            sharding.quiet_view_warning()
        if self.deepspeed:
            sharding.load_models_whole()
        self.is_main = self.accelerator.is_main_process
        self.run_dir, self.resuming = resolve_run_dir(command, config)
        # The run directory is made by prepare(), once the data and model have loaded, so a start that
        # fails on them leaves nothing behind; what is logged until then is held for train.log.
        setup_logging(None, console=self.is_main, hold=self.is_main)
        apply_num_threads(config.train.num_threads)  # once, at the start of every run (the CLI's, the API's)
        self._log_model()
        if config.train.push_to_hub:  # offline or without a token, say so now, not after the training
            check_can_push(config.train.push_to_hub)
        if self.num_processes > 1:
            mode = ("FSDP: weights, gradients and optimizer state sharded" if self.sharded else
                    f"DeepSpeed ZeRO-{self.zero_stage}" if self.deepspeed else "data parallel")
            log.info("%d processes (%s)", self.num_processes, mode)
        self.tracker: Optional[Tracker] = None  # from prepare() on
        seed_everything(config.train.seed)
        self.model = self.optimizer = self.scheduler = self.tokenizer = None
        self.step = 0
        self.bad_steps = 0
        self.skipped_steps = 0

    def _log_model(self) -> None:
        name = self.config.model.name_or_path
        if name == "tiny" and not was_set(self.config, "model.name_or_path"):
            log.warning("model.name_or_path is not set: training `tiny`, the small random-init model alignlab builds for "
                        "offline tests. Set model.name_or_path to a hub id, a model directory or a run directory.")
            return
        path = resolve_model_path(name)  # a wrong path fails here, before any data is read
        log.info("model: %s", name if path == name else f"{name} ({path})")

    def _open_run_dir(self) -> None:
        """The run directory, with config.yaml, train.log (from what was held) and the trackers."""
        created = not self.run_dir.exists()
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.atomic_write_text(self.run_dir / "config.yaml", f"# alignlab {self.command}\n" + to_yaml(self.config))
        self.accelerator.wait_for_everyone()
        setup_logging(self.run_dir / "train.log" if self.is_main else None, console=self.is_main)
        try:
            self.tracker = Tracker(self.run_dir, self.config.train.report_to, to_dict(self.config), enabled=self.is_main)
        except AlignlabError:  # e.g. tensorboard not installed: the run never started
            if created and self.is_main:
                shutil.rmtree(self.run_dir, ignore_errors=True)
            raise

    @property
    def device(self):
        return self.accelerator.device

    @property
    def num_processes(self) -> int:
        return self.accelerator.num_processes

    def prepare(self, model, tokenizer, train_size: Optional[int] = None) -> None:
        """Optimizer over trainable parameters, the LR schedule (over train.num_epochs of `train_size`
        examples when that is set), and accelerate's wrapping."""
        from transformers import get_scheduler

        train = self.config.train
        train.max_steps = steps_for_epochs(self.config, train_size, self.num_processes)  # config.yaml records it
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise AlignlabError("the model has no trainable parameters")
        # fused: one kernel for all parameters instead of ~10 ops per tensor (CPU and CUDA, fp32/bf16).
        fused = all(p.dtype in (torch.float32, torch.bfloat16, torch.float16) for p in params)
        optimizer = torch.optim.AdamW(
            params, lr=train.lr, betas=(train.adam_beta1, train.adam_beta2), weight_decay=train.weight_decay, fused=fused
        )
        name = "constant_with_warmup" if train.lr_scheduler == "constant" else train.lr_scheduler
        scheduler = get_scheduler(name, optimizer, num_warmup_steps=train.warmup_steps, num_training_steps=train.max_steps)
        if self.deepspeed:
            sharding.configure_deepspeed(self.accelerator, train)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self.tokenizer = tokenizer
        self._open_run_dir()
        # Every process built the same model from the same seed; from here on each draws from its own
        # stream, so GRPO's processes sample different completions (and dropout masks differ), as one
        # process sampling the whole batch would. Process 0 is untouched: a 1-process run is unchanged.
        if self.accelerator.process_index > 0:
            seed_everything(process_seed(train.seed, self.accelerator.process_index))

    @property
    def unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    # ------------------------------------------------------------ batches

    def rank_slice(self, items: list) -> list:
        """This process's share of a global batch (contiguous, so groups stay whole when sizes divide)."""
        per_rank = len(items) // self.num_processes
        start = self.accelerator.process_index * per_rank
        return items[start : start + per_rank]

    def micro_batches(self, items: list, size: int, length: Optional[Callable] = None):
        """Yield micro-batches; gradients are synchronised across processes only on the last one.

        With `length` (and train.sort_by_length), the step's items are sorted by it first, so each
        micro-batch pads to a similar length. The gradient does not change: every micro-batch's loss
        is normalised by the count of the whole step, so the step's gradient is a sum over its items
        in any grouping."""
        if length is not None and self.config.train.sort_by_length:
            items = sorted(items, key=length)
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        for index, chunk in enumerate(chunks):
            last = index == len(chunks) - 1
            if self.deepspeed:
                # accelerate's backward passes this flag to the engine as its accumulation boundary,
                # where it reduces, clips and steps (what accelerate.accumulate() sets; our own loop).
                self.accelerator.gradient_state._set_sync_gradients(last)
            with contextlib.nullcontext() if last or self.deepspeed else self.accelerator.no_sync(self.model):
                yield chunk

    def global_sum(self, value: float) -> float:
        """Sum of a number over all processes (e.g. the loss tokens in this optimizer step)."""
        return self.global_sums([value])[0]

    def global_sums(self, values: list[float]) -> list[float]:
        """Element-wise sums over all processes, in one collective."""
        if self.num_processes == 1:
            return [float(v) for v in values]
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        return self.accelerator.reduce(tensor, reduction="sum").tolist()

    def autocast(self):
        """The run's mixed precision (`train.mixed_precision`) for work outside the prepared model's
        forward, which accelerate already wraps: the chunked LM head of `alignlab.model.logprobs` (it runs on
        the hidden states the forward returns, which accelerate upcasts to float32), frozen reference
        copies, and DPO's reference pass before training. Without it the head of a bf16 model would meet
        float32 hidden states, and a float32 model's head would run in float32 under bf16 training,
        unlike the model's own head. The loop runs every step and eval under it."""
        return self.accelerator.autocast()

    def backward(self, loss: torch.Tensor) -> None:
        # DDP averages gradients over processes; our losses are already normalised by the global
        # count, so scale back up to make the average a sum. DeepSpeed also divides by its
        # accumulation count, which our normalisation has already done.
        scale = self.num_processes * (self.model.gradient_accumulation_steps() if self.deepspeed else 1)
        # Backward outside autocast, as torch advises; recomputed chunks restore the forward's autocast.
        with torch.autocast(self.device.type, enabled=False):
            self.accelerator.backward(loss * scale)

    def mean_over_processes(self, metrics: dict) -> dict:
        if self.num_processes == 1 or not metrics:
            return metrics
        keys = sorted(metrics)
        values = torch.tensor([float(metrics[k]) for k in keys], device=self.device)
        values = self.accelerator.reduce(values, reduction="mean")
        return dict(zip(keys, values.tolist()))

    # ------------------------------------------------------------ checkpoints

    def optimizer_step(self) -> tuple[float, bool]:
        """Clip, check for non-finite gradients, step. Returns (grad_norm, stepped)."""
        if self.deepspeed:
            # The engine clipped and stepped inside the step's last backward, or skipped the step (and
            # dropped its gradients) when their norm was not finite, as is done here otherwise.
            grad_norm = self.model.get_global_grad_norm()
            grad_norm = float("nan") if grad_norm is None else float(grad_norm)
            if not self.model.was_step_applied():
                return grad_norm, False
            self.scheduler.step()  # ours, not the engine's: it sets the learning rate of the optimizer the engine steps
            return grad_norm, True
        # max_grad_norm 0 means no clipping (as under DeepSpeed and HF Trainer): an infinite bound still
        # measures the norm (and unscales fp16 gradients) but scales nothing.
        max_norm = self.config.train.max_grad_norm if self.config.train.max_grad_norm > 0 else float("inf")
        grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), max_norm)
        grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)  # FSDP: a DTensor
        if not math.isfinite(grad_norm):
            if self.accelerator.scaler is not None:
                # fp16: the scaler has unscaled these gradients and found inf. Its step skips the update
                # and its update lowers the loss scale; without them the next step's unscale raises.
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            return grad_norm, False
        self.optimizer.step()
        if self.accelerator.optimizer_step_was_skipped:  # fp16 overflow the norm did not show
            self.optimizer.zero_grad(set_to_none=True)
            return grad_norm, False
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm, True

    def loop(
        self,
        step_fn: Callable[[int], dict],
        *,
        eval_fn: Optional[Callable[[int], dict]] = None,
        extra_state_fn: Optional[Callable[[], dict]] = None,
        sampler: Optional[IndexSampler] = None,
        tokens_key: str = "tokens",
        stop_fn: Optional[Callable[[dict], bool]] = None,
    ) -> list[dict]:
        """Run optimizer steps until train.max_steps (or `stop_fn(eval record)` says enough);
        returns the logged records of this process."""
        from tqdm.auto import tqdm

        train = self.config.train
        history = []
        bar = tqdm(
            total=train.max_steps, initial=self.step, desc=self.command, disable=not (self.is_main and train.progress),
            dynamic_ncols=True,
        )
        start = time.perf_counter()
        # Resumed from the checkpoint written at the very end, after the final eval was logged: that
        # eval is in metrics.jsonl already, and logging it again would duplicate it.
        finished = self.resuming and self.step >= train.max_steps
        evaluated_at = None  # the step of the last in-loop eval: an early stop's eval is the final one
        self.model.train()
        ctrl_c = CtrlC()
        try:
            while self.step < train.max_steps:
                if self._any_process(ctrl_c.pressed):  # checked between steps, by every process alike
                    bar.close()
                    self.save(extra_state_fn() if extra_state_fn else None, sampler)
                    raise Interrupted(
                        f"interrupted at step {self.step}; checkpoint saved. Resume with: "
                        f"alignlab {self.command} -c {self.run_dir / 'config.yaml'} train.resume={self.run_dir}"
                    )
                tick = time.perf_counter()
                with self.autocast():
                    metrics = step_fn(self.step)
                loss = metrics.get("loss", 0.0)
                # Under DeepSpeed the engine has already stepped or skipped: ask it which.
                grad_norm, stepped = (self.optimizer_step() if math.isfinite(loss) or self.deepspeed
                                      else (float("nan"), False))
                if not stepped:
                    self._bad_step(loss, grad_norm)
                    continue
                self.bad_steps = 0
                self.step += 1
                seconds = time.perf_counter() - tick
                record = self.mean_over_processes({k: v for k, v in metrics.items() if k != tokens_key})
                record.update(
                    grad_norm=grad_norm, lr=self.scheduler.get_last_lr()[0], step_seconds=seconds,
                    elapsed=time.perf_counter() - start, skipped_steps=self.skipped_steps, **peak_memory(),
                )
                if tokens_key in metrics:
                    record["tokens_per_second"] = self.global_sum(metrics[tokens_key]) / max(seconds, 1e-9)
                stop = False
                if eval_fn and train.eval_every and self.step % train.eval_every == 0 and self.step < train.max_steps:
                    with self.autocast():
                        record.update({f"eval/{k}": v for k, v in eval_fn(self.step).items()})
                    evaluated_at = self.step
                    self.model.train()
                    stop = bool(stop_fn and stop_fn(record))
                    stop = self._any_process(stop and self.is_main)  # the main process decides for all
                if self.step % train.log_every == 0 or self.step == train.max_steps:
                    self.tracker.log(self.step, record)
                history.append({"step": self.step, **record})
                bar.update(1)
                bar.set_postfix(_postfix(record), refresh=False)
                if train.save_every and self.step % train.save_every == 0 and self.step < train.max_steps:
                    self.save(extra_state_fn() if extra_state_fn else None, sampler)
                if stop:
                    log.info("stopping at step %d: the stop condition was met", self.step)
                    break
        finally:
            ctrl_c.restore()
        bar.close()
        if eval_fn and not finished and evaluated_at != self.step:
            with self.autocast():
                final_eval = {f"eval/{k}": v for k, v in eval_fn(self.step).items()}
            self.tracker.log(self.step, final_eval)
            history.append({"step": self.step, **final_eval})
        model = self.model_for_saving()  # under FSDP a gather of the full weights: once for both saves
        self.save(extra_state_fn() if extra_state_fn else None, sampler, model=model)
        self.save_final(model=model)
        self.tracker.close()
        if self.is_main:
            log.info("%s", run_summary(read_jsonl(self.tracker.path) + history, self.step, self.run_dir / "final"))
            if self.config.train.push_to_hub:
                push_run(self.run_dir, self.config.train.push_to_hub, private=self.config.train.hub_private)
        return history

    def _any_process(self, flag: bool) -> bool:
        """Whether `flag` is set on any process (a collective when there are several)."""
        return self.global_sum(float(flag)) > 0 if self.num_processes > 1 else flag

    def _bad_step(self, loss: float, grad_norm: float) -> None:
        self.bad_steps += 1
        self.skipped_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        log.warning("step %d: non-finite loss %s / grad norm %s; skipped", self.step + 1, loss, grad_norm)
        if self.bad_steps >= self.config.train.max_bad_steps:
            raise AlignlabError(
                f"{self.bad_steps} steps in a row had a non-finite loss or gradient; stopping. The last good checkpoint "
                f"is in {self.run_dir}. Try a lower train.lr, train.max_grad_norm, or float32 (model.dtype=float32)."
            )


class CtrlC:
    """While training, the first Ctrl-C (SIGINT) only asks the loop to stop after the current step:
    a checkpoint taken mid-step would hold a sampler, RNG and rollout state already advanced into
    that step, and the resumed run would differ. A second Ctrl-C stops at once, without a checkpoint."""

    def __init__(self):
        self.pressed = False
        self.previous = None
        if threading.current_thread() is threading.main_thread():  # only there can Python take signals
            self.previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed = True
        log.warning("Ctrl-C: saving a checkpoint after this step (Ctrl-C again to stop now, without one)")

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def peak_memory() -> dict:
    """This process's peak memory so far: resident set (Linux), and GPU memory allocated by torch."""
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                out["memory/peak_rss_mib"] = float(line.split()[1]) / 1024
    except OSError:
        pass
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["memory/peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def run_summary(records: list[dict], step: int, final_dir: Path) -> str:
    """How the run went: the last eval's metrics and, after several evals, the best value of the
    headline one (eval/loss, else eval/accuracy, else eval/reward); without evals, the last loss."""
    evals = {}  # step -> eval metrics; a record of the same step logged twice counts once
    for record in records:
        metrics = {k: v for k, v in record.items() if k.startswith("eval/") and isinstance(v, (int, float))}
        if metrics:
            evals.setdefault(record["step"], {}).update(metrics)
    parts = []
    if evals:
        last = evals[max(evals)]
        parts.append(f"last eval (step {max(evals)}): " + ", ".join(f"{k}={v:.4g}" for k, v in last.items()))
        headline = next((k for k in ("eval/loss", "eval/accuracy", "eval/reward") if k in last), next(iter(last)))
        scored = [(metrics[headline], s) for s, metrics in sorted(evals.items())
                  if math.isfinite(metrics.get(headline, float("nan")))]
        if len(scored) > 1:
            value, at = (min if "loss" in headline else max)(scored, key=lambda vs: vs[0])
            parts.append(f"best {headline}={value:.4g} at step {at} (of {len(scored)} evals)")
    else:
        losses = [r["loss"] for r in records if isinstance(r.get("loss"), (int, float))]
        parts.append(f"final loss {losses[-1]:.4g} (no eval set)" if losses else "no steps logged")
    return f"finished at step {step}: {'; '.join(parts)}. Final model: {final_dir}"


# Progress bar labels: short enough that tqdm shows them whole.
POSTFIX = {"loss": "loss", "reward": "reward", "rewards/accuracies": "acc", "eval/accuracy": "eval_acc", "lr": "lr",
           "tokens_per_second": "tok/s"}


def _postfix(record: dict) -> dict:
    return {label: f"{record[k]:.3g}" for k, label in POSTFIX.items() if record.get(k) is not None}
