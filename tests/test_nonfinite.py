"""A step whose gradients are NaN is skipped (weights, optimizer state and LR schedule untouched),
counted, and logged; too many in a row stop the run, leaving the last good checkpoint to resume."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import base_args, read_jsonl, train_records


def sft(tiny_model_dir, sft_train, out, *extra):
    return base_args("sft", tiny_model_dir, sft_train, out, "train.batch_size=4", "train.lr=3e-3",
                     "train.warmup_steps=4", "train.lr_scheduler=linear", *extra)


def test_nan_gradient_steps_are_skipped_and_counted(tmp_path, tiny_model_dir, sft_train, cli, poison):
    clean = tmp_path / "clean"
    assert cli(sft(tiny_model_dir, sft_train, clean, "train.max_steps=4")).code == 0
    poison([2, 3])  # attempts 2 and 3 fail; attempt 4 becomes step 2
    bad = tmp_path / "bad"
    result = cli(sft(tiny_model_dir, sft_train, bad, "train.max_steps=4", "train.max_bad_steps=3"))
    assert result.code == 0, result.err

    records, reference = train_records(bad), train_records(clean)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert [r["skipped_steps"] for r in records] == [0, 2, 2, 2]
    # The schedule moved once per applied step: warmup LRs as in the clean run.
    assert [r["lr"] for r in records] == pytest.approx([r["lr"] for r in reference])
    assert records[0]["loss"] == pytest.approx(reference[0]["loss"])
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in records)
    log = (bad / "train.log").read_text()
    assert log.count("non-finite") == 2 and "step 2: non-finite loss" in log

    from safetensors.torch import load_file

    weights = load_file(bad / "final" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    optimizer = torch.load(bad / "checkpoint-000004" / "optimizer.pt", weights_only=False)
    moments = [t for s in optimizer["state"].values() for t in s.values() if torch.is_tensor(t)]
    assert moments and all(torch.isfinite(t).all() for t in moments)


def test_too_many_bad_steps_in_a_row_stop_with_the_last_good_checkpoint(tmp_path, tiny_model_dir, sft_train, cli,
                                                                       poison, monkeypatch):
    run = tmp_path / "run"
    poison(range(3, 100))
    result = cli(sft(tiny_model_dir, sft_train, run, "train.max_steps=6", "train.save_every=2",
                     "train.max_bad_steps=2"))
    assert result.code != 0
    assert "2 steps in a row had a non-finite loss or gradient" in result.err
    assert str(run) in result.err and "Traceback" not in result.err
    assert [r["step"] for r in train_records(run)] == [1, 2]
    assert [c["step"] for c in read_jsonl(run / "checkpoints.jsonl")] == [2]

    monkeypatch.undo()  # the poison off
    resumed = cli(sft(tiny_model_dir, sft_train, run, "train.max_steps=6", "train.save_every=2",
                      "train.resume=true"))
    assert resumed.code == 0, resumed.err
    assert [r["step"] for r in train_records(run)] == list(range(1, 7))
    assert (run / "final" / "model.safetensors").is_file()
