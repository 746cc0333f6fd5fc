"""What the launcher started (processes, devices), the CPU threads a run uses, and the precision settings
that cannot train, checked before a run directory is made."""

from __future__ import annotations

import logging
import os
from typing import Optional

import torch

from alignlab.errors import AlignlabError

log = logging.getLogger("alignlab")


def launched_processes() -> int:
    """How many processes the launcher (torchrun, accelerate launch, mpirun) started."""
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def check_launcher() -> None:
    """`accelerate launch --cpu` with several processes or machines starts each process alone: it exports
    MASTER_ADDR but no rank or world size, so every process (every node) would train alone and write
    the same run directory. Its torchrun path (`--multi_gpu`) sets up the group, with gloo on a CPU."""
    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true"
    if cpu and "MASTER_ADDR" in os.environ and "WORLD_SIZE" not in os.environ:
        raise AlignlabError(
            "started by `accelerate launch --cpu` for several processes or machines, which starts each process on "
            "its own (no RANK or WORLD_SIZE): every one would train alone and write the same run directory. Launch "
            "with `accelerate launch --multi_gpu ...` instead (it runs torchrun, with gloo when there is no GPU), "
            "or with torchrun")


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


def local_processes() -> int:
    """How many processes the launcher started on this machine (torchrun and accelerate set LOCAL_WORLD_SIZE)."""
    value = os.environ.get("LOCAL_WORLD_SIZE", "")
    return int(value) if value.isdigit() and int(value) > 0 else launched_processes()


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask: a container's or taskset's limit), not
    every core of the machine as os.cpu_count() says."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def resolve_num_threads(setting, *, on_accelerator: bool) -> tuple[Optional[int], str]:
    """(torch intra-op threads for `train.num_threads`, and why), or (None, why) to leave torch's own.

    An explicit number wins. `auto` takes OMP_NUM_THREADS when it is set (launchers such as torchrun
    set it to 1 per process); leaves torch's default on a GPU run, where the CPU only feeds the GPU;
    and on a CPU run takes half the available cores shared by this machine's processes, at least 1.
    Why half: measured on 2 shared cores (README, "CPU threads"), a second thread made SFT steps
    several times slower whenever another job ran on the machine, and gained little when none did;
    half the logical cores is also the physical cores of an SMT machine, where more threads add no
    matmul throughput."""
    if setting != "auto":
        return int(setting), f"train.num_threads={setting}"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env), f"OMP_NUM_THREADS={env}"
    if on_accelerator:
        return None, "torch's default on a GPU run"
    cores, processes = available_cores(), local_processes()
    threads = max(1, cores // (2 * processes))
    per = f" shared by {processes} processes" if processes > 1 else ""
    return threads, f"auto: half of the {cores} cores available{per}"


def apply_num_threads(setting) -> int:
    """Set torch's intra-op threads for a run (see resolve_num_threads), log the choice, return the count."""
    accel = getattr(torch, "accelerator", None)
    on_accelerator = accel.is_available() if accel is not None else torch.cuda.is_available()
    threads, why = resolve_num_threads(setting, on_accelerator=on_accelerator)
    if threads is not None and threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    log.info("torch threads: %d (%s)", torch.get_num_threads(), why)
    return torch.get_num_threads()
