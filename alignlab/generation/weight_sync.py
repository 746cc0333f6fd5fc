"""A two-member torch.distributed group between a trainer and a vLLM server, for pushing weights.

It is its own group (a TCPStore the trainer hosts, and a gloo or NCCL process group of world size
2 built on it), not the default one, so it coexists with the trainer's DDP/FSDP group and needs no
launcher. The trainer is rank 0 and broadcasts; the server is rank 1 and receives. gloo on CPU,
NCCL between GPUs (the server's and the trainer's).
"""

from __future__ import annotations

import datetime
from typing import Callable, Iterator

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def weight_group(host: str, port: int, rank: int, backend: str, timeout_s: float = 300.0):
    """Join the group (rank 0 hosts the store and must be reachable at host:port by rank 1)."""
    from torch.distributed import PrefixStore, TCPStore

    timeout = datetime.timedelta(seconds=timeout_s)
    store = TCPStore(host, port, world_size=2, is_master=rank == 0, timeout=timeout, wait_for_workers=False)
    store = PrefixStore("alignlab-weights", store)
    if backend == "nccl":
        from torch.distributed import ProcessGroupNCCL

        return ProcessGroupNCCL(store, rank, 2)
    from torch.distributed import ProcessGroupGloo

    return ProcessGroupGloo(store, rank, 2, timeout)


def send(group, tensors) -> None:
    """Rank 0: broadcast each tensor to the server, in order."""
    for tensor in tensors:
        group.broadcast(tensor.contiguous(), 0).wait()


def receive(group, specs, device) -> Iterator[tuple[str, torch.Tensor]]:
    """Rank 1: the tensors of `specs` [(name, dtype name, shape)], received in order as they are asked
    for. A stream, not a list: the engine loads each before the next arrives, so receiving never holds
    a second copy of the weights (a list held all of them at once before the first was loaded)."""
    for name, dtype, shape in specs:
        tensor = torch.empty(shape, dtype=DTYPES[dtype], device=device)
        group.broadcast(tensor, 0).wait()
        yield name, tensor


def load_streamed(group, specs, device, load: Callable[[Iterator], None]) -> None:
    """`load(stream)` over `receive`; if it stops early (an error), the rest is still received and
    dropped: the trainer broadcasts every tensor and would otherwise wait at the next one until its
    group times out, instead of getting the error."""
    stream = receive(group, specs, device)
    try:
        load(stream)
    finally:
        for _ in stream:
            pass
