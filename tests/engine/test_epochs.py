"""train.num_epochs: steps from the data size and the global batch, the LR schedule over them, max_steps
winning when both are set (and the log saying so), and an exact resume from the middle of an epoch."""

from __future__ import annotations

import os
import signal

import pytest

from conftest import base_args, read_jsonl, run_cli, train_records

# 16 rows, batch 4 -> 4 steps an epoch; 1.5 epochs -> 6 steps, the last ones in the second epoch.
EPOCHS = ["train.num_epochs=1.5", "train.batch_size=4", "train.lr=3e-3", "train.lr_scheduler=linear",
          "train.warmup_steps=1"]


@pytest.fixture(scope="module")
def epochs_run(tmp_path_factory, tiny_model_dir, sft_train):
    out = tmp_path_factory.mktemp("epochs") / "run"
    assert run_cli(base_args("sft", tiny_model_dir, sft_train, out, *EPOCHS)).code == 0
    return out


def test_num_epochs_sets_the_steps_and_the_schedule(epochs_run):
    records = train_records(epochs_run)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    # linear warmup 1 step then decay to 0 at step 6: lr at step k is 3e-3 * (6 - k) / 5 after the step
    assert [r["lr"] for r in records] == pytest.approx([3e-3 * (6 - k) / 5 for k in range(1, 7)])
    assert "train.num_epochs=1.5: 6 steps of 4 over 16 examples" in (epochs_run / "train.log").read_text()
    assert "max_steps: 6" in (epochs_run / "config.yaml").read_text()  # a resume reads the same schedule


def test_max_steps_wins_and_says_so(tmp_path, tiny_model_dir, sft_train):
    out = tmp_path / "run"
    assert run_cli(base_args("sft", tiny_model_dir, sft_train, out, *EPOCHS, "train.max_steps=2")).code == 0
    assert [r["step"] for r in train_records(out)] == [1, 2]
    assert "train.max_steps=2 wins over train.num_epochs=1.5 (6 steps" in (out / "train.log").read_text()


def test_resume_from_the_middle_of_an_epoch_equals_the_uninterrupted_run(epochs_run, tmp_path, tiny_model_dir,
                                                                        sft_train, monkeypatch):
    """Ctrl-C after step 3 (mid first epoch): the checkpoint keeps the data position and the schedule; the
    resumed run's steps 4-6 equal the uninterrupted run's."""
    import alignlab.trainers.sft as sft

    collate, calls = sft.collate_masked, []

    def collate_then_ctrl_c(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # during step 3 (one micro-batch a step)
            os.kill(os.getpid(), signal.SIGINT)
        return collate(*args, **kwargs)

    out = tmp_path / "run"
    monkeypatch.setattr(sft, "collate_masked", collate_then_ctrl_c)
    assert run_cli(base_args("sft", tiny_model_dir, sft_train, out, *EPOCHS)).code == 130
    monkeypatch.setattr(sft, "collate_masked", collate)
    assert [r["step"] for r in train_records(out)] == [1, 2, 3]
    assert run_cli(base_args("sft", tiny_model_dir, sft_train, out, *EPOCHS, "train.resume=true")).code == 0
    full, resumed = train_records(epochs_run), train_records(out)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(full, resumed):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-6) and b["lr"] == pytest.approx(a["lr"])
    assert read_jsonl(out / "checkpoints.jsonl")[0]["step"] == 3
