"""Run directories: resuming nothing is an error, a failed start leaves no directory, and a run says
which model it trains and how it ended."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import base_args, train_records

REPO = Path(__file__).resolve().parents[2]


def no_traceback(result):
    assert "Traceback" not in result.err and "Traceback" not in result.out
    return result


# ------------------------------------------------------------------------------ resume


def test_resume_true_without_a_run_there_is_an_error(cli, tmp_path, tiny_model_dir, sft_train):
    out = tmp_path / "never_ran"
    result = no_traceback(cli(base_args("sft", tiny_model_dir, sft_train, out, "train.resume=true")))
    assert result.code == 2 and "nothing to resume" in result.err and f"{out} does not exist" in result.err
    assert not out.exists()


def test_resume_from_a_path_that_does_not_exist_is_an_error(cli, tmp_path, tiny_model_dir, sft_train):
    missing = tmp_path / "no_such_run"
    result = no_traceback(cli(base_args("sft", tiny_model_dir, sft_train, tmp_path / "out", f"train.resume={missing}")))
    assert result.code == 2 and f"train.resume={missing}: nothing to resume" in result.err
    assert not missing.exists() and not (tmp_path / "out").exists()


def test_resume_auto_starts_a_new_run_then_continues_it(cli, tmp_path, tiny_model_dir, sft_train):
    out = tmp_path / "out"
    args = base_args("sft", tiny_model_dir, sft_train, out, "train.resume=auto", "train.batch_size=4")
    assert cli(args + ["train.max_steps=2"]).code == 0
    result = cli(args + ["train.max_steps=3"])
    assert result.code == 0, result.err
    assert "resumed from" in (out / "train.log").read_text()
    assert [r["step"] for r in train_records(out)] == [1, 2, 3]


# ------------------------------------------------------------------------------ failed starts


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Work in an empty directory, where default run directories go to ./runs/."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_dpo_without_its_data_leaves_no_run_directory(cli, in_tmp, tiny_model_dir):
    result = no_traceback(cli(["dpo", f"model.name_or_path={tiny_model_dir}", f"data.train={in_tmp / 'none.jsonl'}"]))
    assert result.code == 2 and "data file not found" in result.err
    assert not (in_tmp / "runs").exists() or list((in_tmp / "runs").iterdir()) == []


def test_dpo_with_a_bad_model_path_leaves_no_run_directory(cli, in_tmp, prefs):
    result = no_traceback(cli(["dpo", f"model.name_or_path={in_tmp / 'no_model'}", f"data.train={prefs}"]))
    assert result.code == 2 and "does not exist" in result.err
    assert not (in_tmp / "runs").exists()


def test_a_failed_start_into_a_named_directory_leaves_nothing(cli, tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    result = no_traceback(cli(base_args("dpo", tiny_model_dir, tmp_path / "none.jsonl", out)))
    assert result.code == 2 and not out.exists()


# ------------------------------------------------------------------------------ what a run says


def test_the_implicit_default_model_is_warned_about(cli, in_tmp):
    (in_tmp / "bad.jsonl").write_text("not json\n")  # fails as it is read: after the start's checks and the warning
    result = no_traceback(cli(["sft", f"data.train={in_tmp / 'bad.jsonl'}"]))
    assert result.code == 2 and "bad.jsonl, line 1" in result.err
    assert "model.name_or_path is not set: training `tiny`" in result.err


def test_a_run_logs_its_model_and_ends_with_its_eval_metrics(cli, tmp_path, tiny_model_dir, sft_train, sft_eval):
    out = tmp_path / "out"
    result = cli(base_args("sft", tiny_model_dir, sft_train, out, f"data.eval={sft_eval}", "train.max_steps=4",
                           "train.eval_every=2", "train.batch_size=4"))
    assert result.code == 0, result.err
    log = (out / "train.log").read_text()
    assert f"model: {tiny_model_dir}" in log and "not set" not in log
    last = log.strip().splitlines()[-1]
    assert "finished at step 4: last eval (step 4): eval/loss=" in last
    assert "best eval/loss=" in last and "(of 2 evals)" in last and f"Final model: {out / 'final'}" in last
    # Saved weights get the mode of every other file (safetensors writes them 0600).
    umask = os.umask(0)
    os.umask(umask)
    for path in (out / "final" / "model.safetensors", out / "final" / "config.json",
                 next(out.glob("checkpoint-*")) / "model" / "model.safetensors"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


def test_a_run_without_evals_ends_with_its_loss(cli, tmp_path, tiny_model_dir, sft_train):
    out = tmp_path / "out"
    assert cli(base_args("sft", tiny_model_dir, sft_train, out, "train.max_steps=1")).code == 0
    assert "finished at step 1: final loss " in (out / "train.log").read_text()


def test_progress_bar_labels_are_whole():
    from alignlab.engine.loop import _postfix

    labels = _postfix({"loss": 1.0, "rewards/accuracies": 0.5, "tokens_per_second": 1234.5, "lr": 1e-4, "other": 1})
    assert labels == {"loss": "1", "acc": "0.5", "lr": "0.0001", "tok/s": "1.23e+03"}


def test_tiny_model_files_are_not_private(tiny_model_dir):
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tiny_model_dir / "model.safetensors").stat().st_mode) == 0o666 & ~umask


def test_a_kept_log_file_holds_every_runs_lines(cli, tmp_path, tiny_model_dir, sft_train):
    """How the demo's demo.log gets each stage's log, while each run still writes its own train.log."""
    from alignlab.engine.tracking import drop_log_file, keep_log_file

    handler = keep_log_file(tmp_path / "all.log")
    try:
        for name in ("a", "b"):
            assert cli(base_args("sft", tiny_model_dir, sft_train, tmp_path / name, "train.max_steps=1")).code == 0
    finally:
        drop_log_file(handler)
    text = (tmp_path / "all.log").read_text()
    assert f"saved {tmp_path / 'a'}" in text and f"saved {tmp_path / 'b'}" in text
    assert f"saved {tmp_path / 'b'}" not in (tmp_path / "a" / "train.log").read_text()


@pytest.mark.skipif(__import__("importlib").util.find_spec("deepspeed") is None, reason="DeepSpeed is not installed")
def test_deepspeed_is_imported_only_when_used(tmp_path):
    """Saving a model (here `alignlab tiny-model`) went through accelerate's unwrap, which imported
    DeepSpeed and printed its 'Setting accelerator to CPU' warning on every command."""
    code = ("import sys; from alignlab.cli import main; rc = main(['tiny-model', sys.argv[1]]); "
            "print('deepspeed imported' if 'deepspeed' in sys.modules else 'no deepspeed', rc)")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m")], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "no deepspeed 0"
    assert "Setting accelerator" not in done.stderr
