"""Two "nodes" on 127.0.0.1: `accelerate launch --multi_gpu --num_machines 2 --machine_rank 0|1` (one process
each, torchrun under accelerate, gloo on a CPU) train like one process with the same global batch and write one
run directory; `accelerate launch --cpu` for several machines, which would start each process alone, is refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import base_args
from launch import assert_same, assert_written_once, clean_env, free_port, run_ok

from conftest import train_records


def two_nodes(argv: list, cwd: Path) -> list[str]:
    """Both nodes' launchers at once (as on two machines); returns their outputs."""
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
                               "--num_processes", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
                               "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no",
                               "-m", "alignlab", *[str(a) for a in argv]],
                              cwd=cwd, env=clean_env(None), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-4000:]
    return outputs


@pytest.mark.slow
@pytest.mark.parametrize("command", ["sft", "dpo"])
def test_two_nodes_train_like_one_process(command, tmp_path, tiny_model_dir, sft_train, prefs):
    data = sft_train if command == "sft" else prefs
    common = ["train.max_steps=3", "train.lr=3e-3", "train.save_every=3"]
    one, two = tmp_path / "one", tmp_path / "two"
    run_ok(base_args(command, tiny_model_dir, data, one, "train.batch_size=4", *common))
    outputs = two_nodes(base_args(command, tiny_model_dir, data, two, "train.batch_size=2", *common), tmp_path)
    assert sum(output.count(f"done: {two}") for output in outputs) == 1  # only the main process of node 0 says so
    assert "2 processes (data parallel)" in (two / "train.log").read_text()
    assert_written_once(two, 3)
    keys = ("loss", "grad_norm") + (("rewards/accuracies", "rewards/margins") if command == "dpo" else ())
    assert_same(train_records(one), train_records(two), keys)


def test_accelerate_cpu_launch_of_several_processes_is_refused(monkeypatch):
    from alignlab.engine.launch import check_launcher
    from alignlab.errors import AlignlabError

    for name in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # what its simple launcher exports for --num_machines 2
    with pytest.raises(AlignlabError, match="accelerate launch --multi_gpu"):
        check_launcher()
    monkeypatch.setenv("WORLD_SIZE", "2")  # a real group (torchrun): fine
    check_launcher()
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("MASTER_ADDR")  # one process, no group asked for: fine
    check_launcher()
