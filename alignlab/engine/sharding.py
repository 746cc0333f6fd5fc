"""Sharded training through accelerate: FSDP (version 2) and DeepSpeed ZeRO-2/3, and what the
training loop does differently when processes hold only shards of the weights or optimizer state.

- Under FSDP and ZeRO-3 every forward is a collective (weights are all-gathered on the fly), so all
  processes must run the same number of forwards: generation stops only when every process is done
  (`alignlab.generation.sampler.all_done`), and work split across processes is padded to equal shares.
- FSDP: saving gathers the full weights and optimizer state to the main process (a collective),
  which moves the weights into a plain copy of the model built on the meta device (no second load)
  and saves that: checkpoints look exactly like unsharded ones, and any number of processes resumes them.
- DeepSpeed: the engine steps inside the backward of a step's last micro-batch, and keeps its own
  partitioned optimizer state, saved and loaded by the engine (training.py). Weights are saved as
  under FSDP (ZeRO-3 gathers them first).
- accelerate sets FSDP and DeepSpeed up only on accelerators; on CPU (gloo) it ignores them and runs
  DDP. Both work on CPU, so `enable_on_cpu` switches accelerate's state there: the same code paths
  run in CI on two CPU processes.
"""

from __future__ import annotations

import os
import sys

import torch

from alignlab.errors import AlignlabError


def distributed_name(accelerator) -> str:
    return str(accelerator.distributed_type).rsplit(".", 1)[-1]


def fsdp_requested() -> bool:
    """`accelerate launch` with an FSDP config exports ACCELERATE_USE_FSDP=true to every process."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def deepspeed_requested() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def import_deepspeed_only_when_used() -> None:
    """accelerate's unwrap, which every `save_pretrained` and `Accelerator.unwrap_model` call goes
    through, imports DeepSpeed whenever it is installed, only to check whether the model is a
    DeepSpeed engine: seconds of import and DeepSpeed's "Setting accelerator to CPU" warning in
    runs that never use it. A model can be an engine only once deepspeed is imported, so until then
    the check is skipped; the answer is the same."""
    from accelerate.utils import other

    available = getattr(other, "is_deepspeed_available", None)
    if available is None or getattr(available, "only_when_imported", False):
        return

    def imported_and_available() -> bool:
        return "deepspeed" in sys.modules and available()

    imported_and_available.only_when_imported = True
    other.is_deepspeed_available = imported_and_available


def enable_on_cpu(accelerator) -> None:
    """Use FSDP or DeepSpeed on a CPU-only multi-process run when the launcher asked for it."""
    from accelerate.state import PartialState
    from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin

    if accelerator.distributed_type != DistributedType.MULTI_CPU:
        return
    if fsdp_requested():
        accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* variables
        kind = DistributedType.FSDP
    elif deepspeed_requested():
        plugin = DeepSpeedPlugin()  # reads the ACCELERATE_DEEPSPEED_* variables
        plugin.set_mixed_precision(accelerator.state.mixed_precision)
        plugin.select(_from_accelerator_state=True)
        accelerator.state.deepspeed_plugins = plugin
        accelerator.deepspeed_engine_wrapped = None  # set by Accelerator() only when it chose DeepSpeed itself
        kind = DistributedType.DEEPSPEED
    else:
        return
    # Both shared states: accelerate re-reads the process-level one whenever it builds an
    # AcceleratorState (prepare does), which would quietly switch it back to plain data parallel.
    accelerator.state.distributed_type = kind
    PartialState._shared_state["distributed_type"] = kind


def is_deepspeed(accelerator) -> bool:
    return distributed_name(accelerator) == "DEEPSPEED"


def zero_stage(accelerator) -> int:
    """DeepSpeed's ZeRO stage (0 when not under DeepSpeed)."""
    return accelerator.state.deepspeed_plugin.zero_stage if is_deepspeed(accelerator) else 0


def configure_deepspeed(accelerator, train) -> None:
    """Fill DeepSpeed's batch and clipping settings from the alignlab config: they are train.*'s, not
    the accelerate config's (accelerate leaves them "auto" when it prepares no dataloader). The
    trainer marks the last micro-batch of each optimizer step as DeepSpeed's accumulation boundary,
    so the accumulation count only sets how DeepSpeed scales the loss (TrainingRun.backward)."""
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    accelerator.gradient_accumulation_steps = train.grad_accum  # else accelerate warns that they differ
    config.update(
        train_micro_batch_size_per_gpu=train.batch_size,
        gradient_accumulation_steps=train.grad_accum,
        train_batch_size=train.batch_size * train.grad_accum * accelerator.num_processes,
        gradient_clipping=train.max_grad_norm,
        zero_allow_untested_optimizer=True,  # torch's AdamW, as in every other mode
    )
    zero = config.setdefault("zero_optimization", {})
    if zero.get("stage", 0) >= 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True  # checkpoints hold full weights


def load_models_whole() -> None:
    """Under ZeRO-3 accelerate tells transformers to build every model already partitioned
    (deepspeed.zero.Init). alignlab loads whole models and lets DeepSpeed partition the trained one
    when it is prepared, as under FSDP: frozen copies (reference models) and the meta-device copies
    used for saving stay plain modules."""
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()


def quiet_view_warning() -> None:
    """fully_shard warns when the root returns a view (transformers' hidden states are views), in
    case the caller modifies it in place; alignlab never does (tests/test_fsdp.py checks the numbers)."""
    import warnings

    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")


def check_supported(accelerator) -> None:
    """FSDP version 1 stops here with what to use instead."""
    name = distributed_name(accelerator)
    if name == "FSDP" and getattr(accelerator.state.fsdp_plugin, "fsdp_version", 1) != 2:
        raise AlignlabError(
            "launched with FSDP version 1; alignlab supports FSDP version 2 (per-parameter sharding, which mixes frozen "
            "and LoRA weights freely). Set `fsdp_version: 2` in the accelerate config (see configs/accelerate/fsdp.yaml)."
        )


def is_sharded(accelerator) -> bool:
    return distributed_name(accelerator) == "FSDP"


# ------------------------------------------------------------------ state dicts


def _options(sharded: bool, **kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Full (unsharded) tensors on CPU, gathered to the main process; unsharded models need neither.
    return StateDictOptions(full_state_dict=sharded, cpu_offload=sharded, **kwargs)


def full_model_state(model) -> dict:
    """The whole model's weights on the main process's CPU ({} elsewhere). A collective."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(True))


def optimizer_state(model, optimizer, sharded: bool) -> dict:
    """Optimizer state keyed by parameter name (the same layout sharded or not, so a checkpoint
    resumes on any number of processes). Under FSDP a collective; the main process gets it all."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options(sharded))


def load_optimizer_state(model, optimizer, state: dict, sharded: bool) -> None:
    """Every process passes the whole saved state; under FSDP each keeps its own shard of it."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    if state.get("state") and all(isinstance(k, int) for k in state["state"]):
        optimizer.load_state_dict(state)  # checkpoints from before name-keyed optimizer state
        return
    set_optimizer_state_dict(model, optimizer, state, options=_options(sharded))


def load_model_state(model, state: dict) -> tuple[list[str], list[str]]:
    """Full weights (every process passes all of them) into a sharded model; each keeps its shard.
    Returns (missing keys, unexpected keys), as `load_state_dict` does."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    result = set_model_state_dict(model, state, options=_options(True, strict=False))
    return list(result.missing_keys), list(result.unexpected_keys)


def adapter_to_model_keys(saved: dict, model_keys, adapter_name: str) -> dict:
    """PEFT saves adapter weights without the adapter's name ("lora_A.weight" for the model's
    "lora_A.default.weight"); rename saved keys to the model's."""
    by_saved_name = {k.replace(f".{adapter_name}", ""): k for k in model_keys if f".{adapter_name}." in k}
    unknown = [k for k in saved if k not in by_saved_name]
    if unknown:
        raise AlignlabError(f"adapter weights {unknown[:3]} do not match the model's adapter '{adapter_name}'")
    return {by_saved_name[k]: v for k, v in saved.items()}


def plain_copy(model, state: dict):
    """An unsharded copy of `model` holding `state` (the gathered full weights), for saving.

    Built on the meta device, so no memory is spent on weights about to be replaced; the state's
    tensors are then assigned in place of the meta ones."""
    from transformers import AutoModelForCausalLM

    from alignlab.model.loading import is_peft

    base_config = model.get_base_model().config if is_peft(model) else model.config
    with torch.device("meta"):
        copy = AutoModelForCausalLM.from_config(base_config)
        if is_peft(model):
            from peft import get_peft_model

            copy = get_peft_model(copy, model.peft_config[model.active_adapter])
    copy.load_state_dict(state, strict=False, assign=True)
    copy.tie_weights()  # re-ties embeddings and LM head when the config ties them; else nothing
    meta = [name for name, p in copy.named_parameters() if p.is_meta]
    if meta:
        raise AlignlabError(f"gathered weights are missing {meta[:3]}")
    copy.generation_config = model.generation_config
    return copy
