"""Launching 2-process runs from tests (torchrun or accelerate launch, gloo on CPU) and comparing them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import read_jsonl, run_cli, train_records

ROOT = Path(__file__).resolve().parents[1]

# What `accelerate launch` with configs/accelerate/fsdp.yaml exports to each process.
FSDP_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP"}


def deepspeed_env(stage: int) -> dict:
    """What `accelerate launch` with configs/accelerate/deepspeed_zero<stage>.yaml exports."""
    return {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": str(stage),
            "ACCELERATE_DEEPSPEED_ZERO3_INIT": "false"}


def clean_env(env_extra: dict | None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           **(env_extra or {})}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def launch(command: list, cwd: Path, env_extra: dict | None = None, ok: bool = True) -> str:
    """Run `command`; it must succeed (or, with ok=False, fail). Returns its output."""
    proc = subprocess.run(command, cwd=cwd, env=clean_env(env_extra), capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert (proc.returncode == 0) == ok, output[-4000:]
    return output


def free_port() -> int:
    """A port nothing listens on now: parallel test workers must not share accelerate's default 29500."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_launch(config: str, argv: list, cwd: Path, env_extra: dict | None = None, ok: bool = True) -> str:
    """`accelerate launch --config_file configs/accelerate/<config> -m alignlab <argv>`; returns its output."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "configs" / "accelerate" / config), "--main_process_port", str(free_port()),
               "-m", "alignlab", *[str(a) for a in argv]]
    return launch(command, cwd, env_extra, ok=ok)


def torchrun(argv: list, cwd: Path, env_extra: dict | None = None, script: Path | None = None, ok: bool = True) -> str:
    """`torchrun --standalone --nproc_per_node 2 -m alignlab <argv>` (or `<script> <argv>`); returns its output."""
    entry = [str(script)] if script else ["-m", "alignlab"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               *entry, *[str(a) for a in argv]]
    return launch(command, cwd, env_extra, ok=ok)


def run_ok(argv):
    result = run_cli(argv)
    assert result.code == 0


def assert_same(one: list[dict], two: list[dict], keys, tol=1e-5):
    assert [r["step"] for r in one] == [r["step"] for r in two]
    for a, b in zip(one, two):
        for key in keys:
            assert b[key] == pytest.approx(a[key], rel=tol, abs=tol), (a["step"], key, a[key], b[key])


def assert_written_once(run_dir: Path, steps: int):
    """Each step's line once in metrics.jsonl, each checkpoint once in checkpoints.jsonl: only the
    main process writes."""
    records = train_records(run_dir)
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    checkpoints = [c["step"] for c in read_jsonl(run_dir / "checkpoints.jsonl")]
    assert len(checkpoints) == len(set(checkpoints))
    assert (run_dir / "config.yaml").read_text().startswith("# alignlab ")




def safetensors_of(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    state = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        state.update(load_file(shard))
    return state


def assert_same_weights(a: Path, b: Path, atol=1e-4) -> None:
    import torch

    left, right = safetensors_of(a), safetensors_of(b)
    assert sorted(left) == sorted(right)
    for key in left:
        torch.testing.assert_close(right[key], left[key], atol=atol, rtol=0, msg=key)


def assert_grpo_like_ddp(ddp: Path, other: Path) -> None:
    """A sharded GRPO run logged DDP's numbers and sampled DDP's completions, with a real KL term
    and gradient, and wrote every step and checkpoint once."""
    keys = ("loss", "grad_norm", "reward", "reward_std", "kl", "completions/mean_length", "entropy")
    assert_same(train_records(ddp), train_records(other), keys)
    assert any(r["kl"] > 0 for r in train_records(other)) and all(r["grad_norm"] > 0 for r in train_records(other))
    samples = lambda d: [(s["step"], s["completion"]) for s in read_jsonl(d / "samples.jsonl")]  # noqa: E731
    assert samples(other) == samples(ddp) and samples(other)
    assert_written_once(other, 4)
