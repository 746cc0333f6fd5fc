"""What the launcher started (processes, devices) and the precision settings that cannot train, checked
before a run directory is made."""

from __future__ import annotations

import os

import torch

from alignlab.errors import AlignlabError


def launched_processes() -> int:
    """How many processes the launcher (torchrun, accelerate launch, mpirun) started."""
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def cpu_only_multiprocess() -> bool:
    """Several processes and no accelerator. accelerate sets up gloo (MULTI_CPU) only when told
    `cpu=True`; without it, every process of `torchrun --nproc_per_node 2` trains alone and believes
    it is the main process (all write the same run directory)."""
    if launched_processes() <= 1:
        return False
    accel = getattr(torch, "accelerator", None)
    return not (accel.is_available() if accel is not None else torch.cuda.is_available())


def check_precision(config) -> None:
    """Refuse precision settings that cannot train, before any work."""
    dtype, mixed = config.model.dtype, config.train.mixed_precision
    if mixed == "fp16" and not torch.cuda.is_available():
        raise AlignlabError("train.mixed_precision=fp16 needs a CUDA GPU (loss scaling); on this machine use bf16 or 'no'")
    trains_weights = not (config.lora.enabled or config.model.load_in_4bit)
    if mixed == "fp16" and dtype == "float16" and trains_weights:
        raise AlignlabError("model.dtype=float16 with train.mixed_precision=fp16 cannot train the full model: the "
                            "loss scaler cannot unscale float16 gradients. Load float32 weights (model.dtype=float32) "
                            "for mixed precision, or use LoRA (its adapters are float32)")
    if mixed == "bf16" and dtype == "float16":
        raise AlignlabError("model.dtype=float16 with train.mixed_precision=bf16 mixes two half-precision formats: "
                            "use model.dtype=bfloat16 (or float32)")
