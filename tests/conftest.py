"""Shared fixtures: a tiny model written once per session, addition-task data, and an in-process CLI.

Every end-to-end test trains the same small random-init model (2 layers, hidden 64) on a few rows,
so a run costs a second or two of CPU.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

# The test machines have two cores shared with other jobs: a second intra-op thread makes these
# tiny matmuls 10-100x slower under contention, and one thread keeps results bit-reproducible.
torch.set_num_threads(1)
# Runs resolve train.num_threads=auto from it (alignlab.engine.launch), in this process and in the ones it starts.
os.environ["OMP_NUM_THREADS"] = "1"

TINY_LAYERS, TINY_HIDDEN = 2, 64

# The modules of several minutes each (the claimed gains of README's demo and tour, the wheel's demo --fast).
LONGEST_MODULES = ("test_demo", "test_tour_claims", "test_wheel_install")


def pytest_collection_modifyitems(config, items):
    """Longest modules first. Under `-n 2 --dist loadscope` each module goes whole to the next free worker in
    this order: started last, a 10-minute module leaves the other worker idle while it finishes."""
    slow = {item.module.__name__ for item in items if item.get_closest_marker("slow")}

    def rank(item) -> int:
        name = item.module.__name__.rsplit(".", 1)[-1]
        return 0 if name in LONGEST_MODULES else 1 if item.module.__name__ in slow else 2

    items.sort(key=rank)  # stable: each module's own order is kept


def wrong_answer(answer: str) -> str:
    """A different number of the same kind, for rejected responses."""
    return str(int(answer) + 7)


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(rows, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def train_records(run_dir) -> list[dict]:
    """The per-step training records of metrics.jsonl (eval-only lines left out), in step order."""
    return [r for r in read_jsonl(Path(run_dir) / "metrics.jsonl") if "loss" in r]


def eval_records(run_dir) -> list[dict]:
    return [r for r in read_jsonl(Path(run_dir) / "metrics.jsonl") if any(k.startswith("eval/") for k in r)]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from alignlab.model.tiny import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model", layers=TINY_LAYERS, hidden=TINY_HIDDEN)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def addition_splits() -> dict[str, list[dict]]:
    from alignlab.commands.demo.tasks import TASKS, make_splits

    return make_splits(TASKS["addition"], 0)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory, addition_splits) -> Path:
    """addition-task files: sft_train (16 rows), sft_eval (8), prefs (32 pairs), prompts (32)."""
    from alignlab.commands.demo.tasks import write_jsonl as task_write_jsonl

    root = tmp_path_factory.mktemp("data")
    train, dev = addition_splits["train"], addition_splits["dev"]
    task_write_jsonl(train[:16], root / "sft_train.jsonl")
    task_write_jsonl(dev[:8], root / "sft_eval.jsonl")
    task_write_jsonl(train[:32], root / "prompts.jsonl")
    pairs = [
        {"prompt": r["prompt"], "chosen": r["completion"], "rejected": f"<answer>{wrong_answer(r['answer'])}</answer>"}
        for r in train[:32]
    ]
    write_jsonl(pairs, root / "prefs.jsonl")
    return root


@pytest.fixture(scope="session")
def sft_train(data_dir) -> Path:
    return data_dir / "sft_train.jsonl"


@pytest.fixture(scope="session")
def sft_eval(data_dir) -> Path:
    return data_dir / "sft_eval.jsonl"


@pytest.fixture(scope="session")
def prefs(data_dir) -> Path:
    return data_dir / "prefs.jsonl"


@pytest.fixture(scope="session")
def prompts(data_dir) -> Path:
    return data_dir / "prompts.jsonl"


def run_cli(argv: list[str], capsys=None) -> CliResult:
    """`alignlab <argv>` in-process; with capsys, what it printed (earlier output is discarded first)."""
    from alignlab.cli import main

    if capsys is not None:
        capsys.readouterr()
    code = main([str(a) for a in argv])
    if capsys is None:
        return CliResult(code, "", "")
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)


def base_args(command: str, model_dir, train_file, output_dir, *extra) -> list[str]:
    """A training command line with the settings every test shares."""
    return [
        command,
        f"model.name_or_path={model_dir}",
        f"data.train={train_file}",
        f"train.output_dir={output_dir}",
        "train.progress=false",
        *extra,
    ]


# A reward with spread inside nearly every group (distinct completions score differently), so every
# GRPO step has non-zero advantages and a real gradient to compare.
CRC_REWARD = """
import zlib

def crc(completions, **_):
    return [float(zlib.crc32(c.encode()) % 1000) / 1000 for c in completions]
"""


@pytest.fixture(scope="session")
def crc_reward(tmp_path_factory):
    path = tmp_path_factory.mktemp("rewards") / "crc_reward.py"
    path.write_text(CRC_REWARD)
    return f"{path}:crc"


@pytest.fixture(scope="session")
def sharded_grpo_args(crc_reward, prompts) -> list[str]:
    """GRPO settings the sharded runs (FSDP, ZeRO-3) are compared with DDP on: full fine-tuning with a
    KL term (a frozen reference copy), two updates per rollout, evaluation with generation."""
    return ["train.lr=3e-3", "train.max_steps=4", "train.save_every=2", "train.batch_size=2", "grpo.num_generations=4",
            "grpo.max_completion_length=8", "grpo.beta=0.04", "grpo.num_iterations=2", "grpo.eval_max_prompts=8",
            f"grpo.rewards=[{crc_reward}]", f"data.eval={prompts}", "train.eval_every=2"]


@pytest.fixture(scope="session")
def grpo_ddp_run(tmp_path_factory, tiny_model_dir, prompts, sharded_grpo_args) -> Path:
    """A 2-process DDP GRPO run with `sharded_grpo_args`, shared by the tests that compare with it."""
    from launch import torchrun

    root = tmp_path_factory.mktemp("grpo_ddp")
    torchrun(base_args("grpo", tiny_model_dir, prompts, root / "ddp", *sharded_grpo_args), root)
    assert "data parallel" in (root / "ddp" / "train.log").read_text()
    return root / "ddp"


@pytest.fixture
def poison(monkeypatch):
    """`poison(steps)`: NaN gradients on those optimizer-step attempts (tests/poison.py), undone
    after the test (or by `monkeypatch.undo()`)."""
    from alignlab.engine.loop import TrainingRun
    from poison import install

    monkeypatch.setattr(TrainingRun, "backward", TrainingRun.backward)
    return install


@pytest.fixture
def cli(capsys):
    return lambda argv: run_cli(argv, capsys)


@pytest.fixture(scope="session")
def grpo_tb_run(tmp_path_factory, tiny_model_dir, prompts, sft_eval) -> Path:
    """A 2-step GRPO run with TensorBoard, evaluated every step (so samples.jsonl has completions)."""
    out = tmp_path_factory.mktemp("grpo_tb") / "run"
    result = run_cli(base_args(
        "grpo", tiny_model_dir, prompts, out, f"data.eval={sft_eval}", "train.max_steps=2", "train.batch_size=2",
        "grpo.num_generations=4", "grpo.max_completion_length=6", "train.eval_every=1", "grpo.eval_max_prompts=4",
        "train.report_to=[tensorboard]",
    ))
    assert result.code == 0
    return out
