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


def spec_problems(specs, expected: dict[str, list[int]], limit: int = 5) -> list[str]:
    """What is wrong with a tensor list `specs` [(name, dtype name, shape)] for a model whose weights are
    `expected` {name: shape}: the server refuses an update with any of these before receiving a byte (a
    wrong shape would otherwise arrive in full and then fail to load, or be copied into the wrong weight).
    At most `limit` problems, then a count.

    >>> spec_problems([("a", "float32", [2]), ("b", "int8", [1]), ("c", "float32", [1])], {"a": [3], "b": [1], "d": [1]})
    ['a: shape [2], the model has [3]', 'b: dtype int8 is not one of bfloat16, float16, float32', 'c: not a weight of this model']
    """
    if not isinstance(specs, list) or not specs:
        return ["tensors must be a non-empty list of [name, dtype, shape]"]
    if len(specs) > len(expected):
        return [f"{len(specs)} tensors, the model has {len(expected)} weights"]
    problems, seen = [], set()
    for spec in specs:
        if not (isinstance(spec, (list, tuple)) and len(spec) == 3 and isinstance(spec[0], str)):
            problems.append(f"{str(spec)[:80]}: not [name, dtype, shape]")
            continue
        name, dtype, shape = spec
        if name in seen:
            problems.append(f"{name}: listed twice")
        elif name not in expected:
            problems.append(f"{name}: not a weight of this model")
        elif dtype not in DTYPES:
            problems.append(f"{name}: dtype {dtype} is not one of {', '.join(sorted(DTYPES))}")
        elif not isinstance(shape, (list, tuple)) or list(shape) != expected[name]:
            problems.append(f"{name}: shape {shape}, the model has {expected[name]}")
        seen.add(name)
    if len(problems) > limit:
        problems = problems[:limit] + [f"... and {len(problems) - limit} more"]
    return problems
