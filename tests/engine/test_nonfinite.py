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


def _with_cpu_grad_scaler(monkeypatch, init_scale=2.0**8):
    """fp16 training as accelerate sets it up on a GPU (it refuses fp16 on CPU): a GradScaler scales
    the loss, clip_grad_norm_ unscales the gradients, the optimizer steps through the scaler."""
    from alignlab.engine.loop import TrainingRun

    prepare = TrainingRun.prepare
    scalers = []

    def prepare_with_scaler(self, model, tokenizer, **options):
        prepare(self, model, tokenizer, **options)
        from accelerate.optimizer import patch_optimizer_step

        scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
        self.accelerator.scaler = self.optimizer.scaler = scaler
        optimizer = self.optimizer  # what AcceleratedOptimizer sets up when given a scaler
        optimizer._accelerate_step_called = False
        optimizer._optimizer_original_step_method = optimizer.optimizer.step
        optimizer._optimizer_patched_step_method = patch_optimizer_step(optimizer, optimizer.optimizer.step)
        monkeypatch.setattr(self.accelerator, "unscale_gradients",
                            lambda optimizer=None: scaler.unscale_(self.optimizer.optimizer))
        scalers.append(scaler)

    monkeypatch.setattr(TrainingRun, "prepare", prepare_with_scaler)
    return scalers


def test_fp16_overflow_lets_the_scaler_skip_and_back_off(tmp_path, tiny_model_dir, sft_train, cli, poison, monkeypatch):
    """An overflowing fp16 step is skipped by the GradScaler, which halves its scale, and training goes
    on. Skipping without letting the scaler step left it 'unscaled' and the next step raised."""
    scalers = _with_cpu_grad_scaler(monkeypatch)
    poison([2])
    out = tmp_path / "fp16"
    result = cli(sft(tiny_model_dir, sft_train, out, "train.max_steps=3"))
    assert result.code == 0, result.err
    records = train_records(out)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert [r["skipped_steps"] for r in records] == [0, 1, 1]
    assert scalers[0].get_scale() == 2.0**8 / 2  # backed off once, at the overflow


def test_max_grad_norm_zero_means_no_clipping(tmp_path, tiny_model_dir, sft_train, cli):
    """train.max_grad_norm=0 trains exactly as a bound no gradient reaches (it zeroed every gradient)."""
    runs = {}
    for name, bound in (("zero", "0"), ("huge", "1e9")):
        runs[name] = tmp_path / name
        assert cli(sft(tiny_model_dir, sft_train, runs[name], "train.max_steps=3", f"train.max_grad_norm={bound}")).code == 0
    zero, huge = train_records(runs["zero"]), train_records(runs["huge"])
    assert [r["loss"] for r in zero] == pytest.approx([r["loss"] for r in huge], rel=1e-6)
    assert zero[0]["grad_norm"] > 1.0 and zero[-1]["loss"] < zero[0]["loss"]


def test_an_early_stop_logs_its_eval_once(tmp_path, tiny_model_dir, sft_train, sft_eval):
    """The eval that met the stop condition is the run's final eval: not run and logged again."""
    from alignlab.config import load_config
    from alignlab.trainers.sft import train_sft
    from conftest import eval_records

    out = tmp_path / "early"
    config = load_config("sft", None, sft(tiny_model_dir, sft_train, out, "train.max_steps=6", "train.eval_every=2",
                                          f"data.eval={sft_eval}")[1:])
    train_sft(config, stop_fn=lambda record: True)  # stops at the first eval, step 2
    evals = eval_records(out)
    assert [r["step"] for r in evals] == [2]
