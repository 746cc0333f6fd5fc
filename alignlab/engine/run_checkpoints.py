"""The checkpoint side of a training run: what gets saved (gathered under FSDP / ZeRO-3), each
step's checkpoint, resume, and final/ (LoRA merged). A mixin of `TrainingRun`, which holds the
accelerator, model, optimizer, scheduler and run directory these methods use."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Optional

from alignlab.engine import checkpoint as ckpt
from alignlab.engine import sharding
from alignlab.engine.data_order import IndexSampler, process_seed, seed_everything
from alignlab.errors import AlignlabError
from alignlab.model.loading import is_peft, save_merged, save_model
from alignlab.model.run_files import latest_checkpoint

log = logging.getLogger("alignlab")

GATHER = object()  # save()/save_final(): build the model to save (see TrainingRun.model_for_saving)
DEEPSPEED_DIR, DEEPSPEED_TAG = "deepspeed", "state"  # checkpoint-N/deepspeed/state/: the engine's own files


class RunCheckpoints:
    def model_for_saving(self):
        """The model whose weights get saved: the live one, or under FSDP and ZeRO-3 a plain copy
        holding the gathered weights, built on the main process (None elsewhere). A collective there."""
        if self.zero_stage >= 3:
            state = self.accelerator.get_state_dict(self.model)  # the full weights, on the main process
        elif self.sharded:
            state = sharding.full_model_state(self.model)
        else:
            return self.unwrapped
        return sharding.plain_copy(self.unwrapped, state) if self.is_main else None

    def save(self, extra_state: Optional[dict] = None, sampler: Optional[IndexSampler] = None, model=GATHER) -> None:
        """A checkpoint of this step; `model`: what `model_for_saving` returned, when the caller has it
        (under FSDP that is None on all but the main process)."""
        self.accelerator.wait_for_everyone()
        per_process = None
        if self.num_processes > 1:
            from accelerate.utils import gather_object

            per_process = gather_object([{"rng": ckpt.rng_state(), "extra": extra_state}])
        model = self.model_for_saving() if model is GATHER else model
        optimizer_state = None
        if self.deepspeed:  # every process writes its own partition of the optimizer state
            if self.is_main:
                ckpt.start_checkpoint(self.run_dir, self.step)
            self.accelerator.wait_for_everyone()
            tmp = ckpt.tmp_checkpoint_dir(self.run_dir, self.step)
            # Trainable weights and their optimizer state only: the full weights are in model/.
            self.model.save_checkpoint(str(tmp / DEEPSPEED_DIR), tag=DEEPSPEED_TAG, exclude_frozen_parameters=True)
            self.accelerator.wait_for_everyone()
        elif self.sharded or self.is_main:  # gathering FSDP's shards takes every process
            optimizer_state = sharding.optimizer_state(self.unwrapped, self.optimizer.optimizer, self.sharded)
        if self.is_main:
            path = ckpt.save_checkpoint(
                self.run_dir,
                self.step,
                save_model_fn=lambda out_dir: save_model(model, self.tokenizer, out_dir),
                optimizer_state=optimizer_state,
                scheduler_state=self.scheduler.state_dict(),
                state={"sampler": sampler.state() if sampler else None, "skipped_steps": self.skipped_steps},
                extra=extra_state,
                keep=self.config.train.save_total_limit,
                per_process=per_process,
                prepared_tmp=self.deepspeed,
            )
            log.info("saved %s", path)
        self.accelerator.wait_for_everyone()

    def resume_position(self) -> tuple[int, Optional[dict]]:
        """(step, sampler state) that `maybe_resume` will restore, read without loading anything:
        (0, None) when the run starts afresh. For work planned before the weights change (DPO's
        reference pass over the pairs the rest of the run will see)."""
        latest = latest_checkpoint(self.run_dir) if self.resuming else None
        if latest is None:
            return 0, None
        state = json.loads((latest / "state.json").read_text())
        return state["step"], state.get("sampler")

    def maybe_resume(self, sampler: Optional[IndexSampler] = None) -> Optional[dict]:
        """Restore the latest checkpoint when resuming; returns the trainer's extra state."""
        if not self.resuming:
            return None
        latest = latest_checkpoint(self.run_dir)
        if latest is None:
            log.info("no checkpoint in %s yet: starting from scratch", self.run_dir)
            self.tracker.truncate_after(0)
            return None
        index = self.accelerator.process_index
        state, extra, own = ckpt.load_checkpoint(
            latest,
            load_model_fn=lambda d: self._load_weights(d),
            load_optimizer_fn=lambda saved: self._load_optimizer(saved, latest),
            scheduler=self.scheduler,
            process_index=index,
            num_processes=self.num_processes,
        )
        if not own:
            # Written by another number of processes: the main process's RNG and trainer state do not
            # belong to the others (e.g. GRPO's rollout buffer holds process 0's groups).
            # Every process drops it alike, so they keep calling the same collectives.
            if index > 0:
                seed_everything(process_seed(self.config.train.seed + state["step"], index))
            extra = None
            log.warning("%s was written by another number of processes: per-process state (RNG streams, "
                        "GRPO's pending rollout) is not restored exactly", latest)
        self.step = state["step"]
        self.skipped_steps = state.get("skipped_steps", 0)
        if sampler is not None and state.get("sampler"):
            sampler.load(state["sampler"])
        self.tracker.truncate_after(self.step)
        log.info("resumed from %s at step %d", latest, self.step)
        return extra

    def _load_weights(self, model_dir: Path) -> None:
        if not self.deepspeed:  # DeepSpeed restores the trained weights with its optimizer state
            ckpt.load_model_weights(self.unwrapped, model_dir, sharded=self.sharded)

    def _load_optimizer(self, saved: Optional[dict], checkpoint: Path) -> None:
        engine_state = checkpoint / DEEPSPEED_DIR
        if self.deepspeed:
            if not engine_state.is_dir():
                raise AlignlabError(f"{checkpoint} was written without DeepSpeed (no {DEEPSPEED_DIR}/ in it): resume "
                                    "it the way it was launched, or start a new run from its weights")
            loaded, _ = self.model.load_checkpoint(str(engine_state), tag=DEEPSPEED_TAG, load_module_strict=False)
            if loaded is None:
                raise AlignlabError(f"DeepSpeed could not load its state from {engine_state}")
        elif saved is None:
            raise AlignlabError(f"{checkpoint} was written under DeepSpeed (its optimizer state is in {DEEPSPEED_DIR}/): "
                                "resume it under DeepSpeed with the same number of processes")
        else:
            sharding.load_optimizer_state(self.unwrapped, self.optimizer.optimizer, saved, self.sharded)

    def save_final(self, model=GATHER) -> None:
        """final/: weights loadable by plain transformers (LoRA merged into the base)."""
        self.accelerator.wait_for_everyone()
        model = self.model_for_saving() if model is GATHER else model
        if self.is_main:
            out = self.run_dir / "final"
            tmp = out.with_name("final.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            if is_peft(model):
                # The live model: merged into a fresh CPU copy of the base. A gathered copy (FSDP, ZeRO-3): in place.
                save_merged(model, self.tokenizer, tmp, self.config.model if model is self.unwrapped else None)
            else:
                save_model(model, self.tokenizer, tmp)
            ckpt.sync_tree(tmp)
            shutil.rmtree(out, ignore_errors=True)
            tmp.rename(out)
            ckpt.sync_dir(self.run_dir)
            loader = "AutoModelForSequenceClassification" if self.command == "rm" else "AutoModelForCausalLM"
            log.info("final model (loadable with %s.from_pretrained): %s", loader, out)
        # No process returns (and exits, closing its connections) while the main one still writes.
        self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------ the loop
