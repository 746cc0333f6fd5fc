"""Resume equals an uninterrupted run, and gradient accumulation changes nothing but speed.

Each comparison runs the same config twice on the tiny model; metrics.jsonl must agree step by step.
"""

from __future__ import annotations

import pytest
import torch

import alignlab.trainers.grpo as grpo_module
from conftest import base_args, read_jsonl, run_cli, train_records



def run_ok(argv):
    result = run_cli(argv)
    assert result.code == 0
    return argv


def assert_same_steps(a, b, steps, keys=("loss", "grad_norm"), tol=1e-6):
    by_step_a = {r["step"]: r for r in a}
    by_step_b = {r["step"]: r for r in b}
    for step in steps:
        for key in keys:
            assert by_step_a[step][key] == pytest.approx(by_step_b[step][key], abs=tol, rel=tol), (step, key)


def interrupted_and_uninterrupted(tmp_path, command, model_dir, data, extra, *, total=8, every=4):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = [f"train.save_every={every}", *extra]
    run_ok(base_args(command, model_dir, data, straight, f"train.max_steps={total}", *common))
    run_ok(base_args(command, model_dir, data, resumed, f"train.max_steps={every}", *common))
    assert [r["step"] for r in train_records(resumed)] == list(range(1, every + 1))
    run_ok(base_args(command, model_dir, data, resumed, f"train.max_steps={total}", "train.resume=true", *common))
    return straight, resumed


# ------------------------------------------------------------------------------ resume


def test_sft_resume_equals_uninterrupted(tmp_path, tiny_model_dir, sft_train, sft_eval):
    straight, resumed = interrupted_and_uninterrupted(
        tmp_path, "sft", tiny_model_dir, sft_train,
        ["train.batch_size=4", "train.lr=3e-3", f"data.eval={sft_eval}"],
    )
    a, b = train_records(straight), train_records(resumed)
    # Resume truncated nothing it should keep and logged each step once.
    assert [r["step"] for r in b] == list(range(1, 9))
    assert_same_steps(a, b, range(1, 9))
    # The sampler position was restored: batch size 4 over 16 rows means steps 5-8 are a new epoch.
    assert "resumed from" in (resumed / "train.log").read_text()
    assert [c["step"] for c in read_jsonl(resumed / "checkpoints.jsonl")] == [4, 8]
    final_eval = [r for r in read_jsonl(straight / "metrics.jsonl") if "eval/loss" in r][-1]
    resumed_eval = [r for r in read_jsonl(resumed / "metrics.jsonl") if "eval/loss" in r and r["step"] == 8][-1]
    assert resumed_eval["eval/loss"] == pytest.approx(final_eval["eval/loss"], abs=1e-6)


def test_dpo_resume_equals_uninterrupted(tmp_path, tiny_model_dir, prefs):
    straight, resumed = interrupted_and_uninterrupted(
        tmp_path, "dpo", tiny_model_dir, prefs, ["train.batch_size=4", "train.lr=1e-3"],
    )
    assert_same_steps(train_records(straight), train_records(resumed), range(1, 9),
                      keys=("loss", "grad_norm", "rewards/margins"))


def test_grpo_resume_equals_uninterrupted(tmp_path, tiny_model_dir, prompts, crc_reward, sft_eval):
    """Sampling draws from the torch RNG: identical rollouts after resume need its state restored."""
    straight, resumed = interrupted_and_uninterrupted(
        tmp_path, "grpo", tiny_model_dir, prompts,
        ["train.batch_size=2", "grpo.num_generations=4", "grpo.max_completion_length=8",
         f"grpo.rewards=[{crc_reward}]", "train.lr=3e-3", f"data.eval={sft_eval}", "grpo.eval_max_prompts=4"],
    )
    assert_same_steps(train_records(straight), train_records(resumed), range(1, 9),
                      keys=("loss", "grad_norm", "reward", "completions/mean_length"))


def test_grpo_resume_inside_a_rollout_batch(tmp_path, tiny_model_dir, prompts, crc_reward):
    """num_iterations=2 reuses each rollout for two steps; a checkpoint after step 3 falls between them.
    The resumed run must finish that rollout's second update, not sample a new one."""
    straight, resumed = interrupted_and_uninterrupted(
        tmp_path, "grpo", tiny_model_dir, prompts,
        ["train.batch_size=2", "grpo.num_generations=4", "grpo.max_completion_length=8",
         f"grpo.rewards=[{crc_reward}]", "train.lr=3e-3", "grpo.num_iterations=2"],
        total=6, every=3,
    )
    a, b = train_records(straight), train_records(resumed)
    assert a[2]["reward"] == a[3]["reward"]  # steps 3 and 4 share a rollout
    assert_same_steps(a, b, range(1, 7), keys=("loss", "grad_norm", "reward", "clip_ratio"))


# ------------------------------------------------------------------------------ accumulation


def test_sft_accumulation_invariance(tmp_path, tiny_model_dir, sft_train):
    common = ["train.max_steps=6", "train.lr=3e-3"]
    run_ok(base_args("sft", tiny_model_dir, sft_train, tmp_path / "a", "train.batch_size=8", "train.grad_accum=1", *common))
    run_ok(base_args("sft", tiny_model_dir, sft_train, tmp_path / "b", "train.batch_size=1", "train.grad_accum=8", *common))
    a, b = train_records(tmp_path / "a"), train_records(tmp_path / "b")
    assert len(a) == len(b) == 6
    assert_same_steps(a, b, range(1, 7), tol=1e-5)
    assert a[-1]["loss"] < a[0]["loss"]  # it trained: the trajectories are not trivially equal


def test_dpo_accumulation_invariance(tmp_path, tiny_model_dir, prefs):
    common = ["train.max_steps=6", "train.lr=1e-3"]
    run_ok(base_args("dpo", tiny_model_dir, prefs, tmp_path / "a", "train.batch_size=4", "train.grad_accum=1", *common))
    run_ok(base_args("dpo", tiny_model_dir, prefs, tmp_path / "b", "train.batch_size=1", "train.grad_accum=4", *common))
    a, b = train_records(tmp_path / "a"), train_records(tmp_path / "b")
    assert_same_steps(a, b, range(1, 7), keys=("loss", "grad_norm", "rewards/accuracies", "rewards/margins"), tol=1e-5)
    assert a[-1]["rewards/margins"] != 0.0


def test_grpo_accumulation_invariance(tmp_path, tiny_model_dir, prompts, crc_reward, monkeypatch):
    """batch_size=2 x grad_accum=1 vs 1 x 2. The trainer samples the whole step's prompts in one
    generate call whatever the micro-batching, so with the same seed both runs must see identical
    rollouts; the update (normalised by the whole step's token count) must then agree too."""
    rollouts: dict[str, list[torch.Tensor]] = {"a": [], "b": []}
    real_generate = grpo_module.generate
    current = {"name": "a"}

    def recording_generate(*args, **kwargs):
        out = real_generate(*args, **kwargs)
        rollouts[current["name"]].append(out.completion_ids.clone())
        return out

    monkeypatch.setattr(grpo_module, "generate", recording_generate)
    common = ["train.max_steps=4", "train.lr=3e-3", "grpo.num_generations=4", "grpo.max_completion_length=8",
              f"grpo.rewards=[{crc_reward}]"]
    run_ok(base_args("grpo", tiny_model_dir, prompts, tmp_path / "a", "train.batch_size=2", "train.grad_accum=1", *common))
    current["name"] = "b"
    run_ok(base_args("grpo", tiny_model_dir, prompts, tmp_path / "b", "train.batch_size=1", "train.grad_accum=2", *common))

    assert len(rollouts["a"]) == len(rollouts["b"]) == 4  # one generate call per step, 2 prompts x 4 each
    for step, (x, y) in enumerate(zip(rollouts["a"], rollouts["b"]), start=1):
        assert x.shape[0] == 8
        assert torch.equal(x, y), f"step {step}: different rollouts"
    a, b = train_records(tmp_path / "a"), train_records(tmp_path / "b")
    assert all(r["grad_norm"] > 0 for r in a)
    assert_same_steps(a, b, range(1, 5), keys=("loss", "grad_norm", "reward", "kl", "entropy"), tol=1e-5)


def test_a_checkpoint_is_on_disk_before_its_state_json(tmp_path, monkeypatch):
    """Every weight and optimizer file is fsync'd before state.json is written, and the folder is
    renamed into place only after that (power loss must not leave state.json beside truncated weights)."""
    import os

    from alignlab.engine import checkpoint as ckpt

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)

    def save_model(out_dir):
        out_dir.mkdir()
        (out_dir / "model.safetensors").write_bytes(b"weights")

    final = ckpt.save_checkpoint(tmp_path, 3, save_model_fn=save_model, optimizer_state={"a": 1},
                                 scheduler_state={}, state={})
    state_json = next(i for i, (kind, path) in enumerate(events) if kind == "replace" and path.endswith("state.json"))
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt"):
        first = next(i for i, (kind, path) in enumerate(events) if kind == "fsync" and path.endswith(name))
        assert first < state_json, name
    rename = next(i for i, (kind, path) in enumerate(events) if kind == "replace" and path == str(final))
    assert state_json < rename
    assert ("fsync", str(tmp_path)) in events[rename:]  # the run directory, after the rename


class _Crash(Exception):
    pass


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_resume_after_a_crash_keeps_the_lr_schedule(tmp_path, tiny_model_dir, sft_train, monkeypatch, schedule):
    """Both legs run with the same max_steps (a real crash does not shorten the run), under a decaying
    schedule with warmup: the resumed run's LR and losses equal the uninterrupted run's at every step."""
    from alignlab.engine.loop import TrainingRun

    common = ["train.max_steps=8", "train.save_every=3", "train.batch_size=4", "train.lr=3e-3",
              "train.warmup_steps=3", f"train.lr_scheduler={schedule}"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_ok(base_args("sft", tiny_model_dir, sft_train, straight, *common))

    save = TrainingRun.save

    def save_then_crash(self, *args, **kwargs):
        save(self, *args, **kwargs)
        if self.step == 6:
            raise _Crash  # killed right after the checkpoint of step 6

    monkeypatch.setattr(TrainingRun, "save", save_then_crash)
    with pytest.raises(_Crash):
        run_cli(base_args("sft", tiny_model_dir, sft_train, resumed, *common))
    monkeypatch.undo()
    run_ok(base_args("sft", tiny_model_dir, sft_train, resumed, *common, "train.resume=true"))
    a, b = train_records(straight), train_records(resumed)
    assert [r["step"] for r in b] == list(range(1, 9))
    assert [r["lr"] for r in b] == pytest.approx([r["lr"] for r in a], rel=1e-9)
    assert len({round(r["lr"], 12) for r in a}) >= 6  # warmup then decay: the schedule really moves
    assert_same_steps(a, b, range(1, 9))
