"""Reproducible randomness of a run: the seeds of each process and the shuffled data order (whose
position is part of every checkpoint)."""

from __future__ import annotations

import copy
import logging
import math
import random
from typing import Optional

import numpy as np
import torch

from alignlab.errors import AlignlabError

log = logging.getLogger("alignlab")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def process_seed(seed: int, process_index: int) -> int:
    """The seed of process `process_index`'s own RNG stream (process 0 keeps `seed`)."""
    return seed + 1_000_003 * process_index


class IndexSampler:
    """Reproducible epochs of shuffled example indices; its state is the data position."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch, self.offset = size, seed, 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.size, generator=generator).tolist()

    def take(self, count: int) -> list[int]:
        out = []
        while len(out) < count:
            if self.offset >= self.size:
                self.epoch, self.offset = self.epoch + 1, 0
                self._order = self._permutation()
            grab = min(count - len(out), self.size - self.offset)
            out += self._order[self.offset : self.offset + grab]
            self.offset += grab
        return out

    def peek(self, count: int) -> list[int]:
        """The next `count` indices `take` would return, without moving on. At most the rest of this
        epoch and one more are listed: by then every index has come up (DPO plans its reference pass)."""
        probe = copy.copy(self)
        return probe.take(min(count, 2 * self.size - self.offset))

    def state(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset}

    def load(self, state: dict) -> None:
        self.epoch, self.offset = state["epoch"], state["offset"]
        self._order = self._permutation()


def steps_for_epochs(config, train_size: Optional[int], num_processes: int) -> int:
    """train.max_steps, or the optimizer steps of train.num_epochs passes over `train_size` examples
    (a global batch of processes x batch_size x grad_accum; the last step may start the next epoch).
    A max_steps given in the config file or on the command line wins; the log says so."""
    from alignlab.config import was_set

    train = config.train
    if train.num_epochs is None:
        return train.max_steps
    if train_size is None:
        raise AlignlabError("train.num_epochs is not supported by this command: set train.max_steps")
    global_batch = train.batch_size * train.grad_accum * num_processes
    steps = max(1, math.ceil(train.num_epochs * train_size / global_batch))
    if was_set(config, "train.max_steps") and train.max_steps != steps:
        log.info("train.max_steps=%d wins over train.num_epochs=%g (%d steps of %d over %d examples)",
                 train.max_steps, train.num_epochs, steps, global_batch, train_size)
        return train.max_steps
    log.info("train.num_epochs=%g: %d steps of %d over %d examples", train.num_epochs, steps, global_batch, train_size)
    return steps
