"""The trainer -> vLLM server weight group (gloo, both ends in this process): tensors stream in."""

import threading

import pytest
import torch

from alignlab.generation import weight_sync
from launch import free_port

SHAPES = [[3, 4], [5], [2, 2, 2], [7, 1]]


def _tensors():
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=generator) for shape in SHAPES]


@pytest.fixture
def groups():
    """(trainer end, server end) of one weight group."""
    port, ends = free_port(), {}

    def join(rank):
        ends[rank] = weight_sync.weight_group("127.0.0.1", port, rank, "gloo", timeout_s=20)

    server = threading.Thread(target=join, args=(1,))
    server.start()
    join(0)
    server.join()
    return ends[0], ends[1]


def _send_in_thread(group, tensors, outcome):
    def send():
        try:
            weight_sync.send(group, tensors)
            outcome["sent"] = True
        except Exception as exc:  # reported to the test, not lost in the thread
            outcome["error"] = exc

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def test_received_tensors_stream_one_at_a_time(groups, monkeypatch):
    """When the loader takes tensor k, only k + 1 have been allocated: never a second copy of the weights."""
    trainer, server = groups
    sent, outcome = _tensors(), {}
    allocated, empty = [], torch.empty

    def counting_empty(*args, **kwargs):
        allocated.append(args[0])
        return empty(*args, **kwargs)

    monkeypatch.setattr(weight_sync.torch, "empty", counting_empty)
    thread = _send_in_thread(trainer, sent, outcome)
    specs = [(f"w{i}", "float32", list(t.shape)) for i, t in enumerate(sent)]
    seen = []
    for index, (name, tensor) in enumerate(weight_sync.receive(server, specs, "cpu")):
        seen.append(len(allocated))
        assert name == f"w{index}" and torch.equal(tensor, sent[index])
    thread.join(20)
    assert outcome == {"sent": True}
    assert seen == [1, 2, 3, 4]


def test_a_load_that_fails_midway_still_takes_every_tensor(groups):
    """The server's loader raises on the second tensor: the rest is drained, so the trainer's broadcast
    finishes (and it gets the server's error) instead of waiting for its group to time out."""
    trainer, server = groups
    sent, outcome = _tensors(), {}
    thread = _send_in_thread(trainer, sent, outcome)
    specs = [(f"w{i}", "float32", list(t.shape)) for i, t in enumerate(sent)]

    def load(stream):
        next(stream)
        raise RuntimeError("no such parameter: w1")

    with pytest.raises(RuntimeError, match="w1"):
        weight_sync.load_streamed(server, specs, "cpu", load)
    thread.join(20)
    assert outcome == {"sent": True}
