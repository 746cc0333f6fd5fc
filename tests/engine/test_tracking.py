"""Experiment tracking: TensorBoard event files and offline W&B runs hold what metrics.jsonl holds; W&B's missing-package message."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest

from conftest import base_args, read_jsonl

HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None
HAS_WANDB = importlib.util.find_spec("wandb") is not None


@pytest.mark.skipif(not HAS_TENSORBOARD, reason="tensorboard is not installed (pip install tensorboard)")
def test_tensorboard_event_files_contain_the_logged_scalars(grpo_tb_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(grpo_tb_run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    logged: dict[str, list[tuple[int, float]]] = {}
    for record in read_jsonl(grpo_tb_run / "metrics.jsonl"):
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                logged.setdefault(key, []).append((record["step"], float(value)))
    assert {"loss", "reward", "kl", "eval/accuracy", "completions/mean_length"} <= set(logged)
    assert set(events.Tags()["scalars"]) == set(logged)
    for key, points in logged.items():
        scalars = events.Scalars(key)
        assert [s.step for s in scalars] == [step for step, _ in points], key
        # TensorBoard stores float32.
        assert [s.value for s in scalars] == pytest.approx([v for _, v in points], rel=1e-6, abs=1e-6), key


def test_wandb_missing_names_the_install_command(tmp_path, tiny_model_dir, sft_train, cli, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError, as when not installed
    result = cli(base_args("sft", tiny_model_dir, sft_train, tmp_path / "run", "train.max_steps=1",
                           "train.report_to=[wandb]"))
    assert result.code == 2
    assert "pip install wandb" in result.err


@pytest.mark.skipif(not HAS_WANDB, reason="wandb is not installed")
def test_wandb_offline_run_needs_no_network(tmp_path, tiny_model_dir, sft_train, cli, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    result = cli(base_args("sft", tiny_model_dir, sft_train, out, "train.max_steps=2", "train.batch_size=4",
                           "train.report_to=[wandb]"))
    assert result.code == 0, result.err
    runs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    # History values are stored as their JSON text: every logged loss and grad norm is in the run file.
    data = runs[0].read_bytes()
    records = [r for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    assert len(records) == 2
    for record in records:
        for key in ("loss", "grad_norm"):
            assert json.dumps(record[key]).encode() in data, (key, record[key])


def test_unknown_tracker_is_a_config_error(tmp_path, tiny_model_dir, sft_train, cli):
    result = cli(base_args("sft", tiny_model_dir, sft_train, tmp_path / "run", "train.report_to=[mlflow]"))
    assert result.code == 2 and "unknown tracker 'mlflow'" in result.err
