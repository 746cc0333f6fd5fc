"""SIGKILL a training run at random moments (one of them inside a checkpoint save), restart it with
train.resume=auto until it finishes, and get exactly the uninterrupted run's numbers.

After every kill, each file in the run directory must still parse: metrics.jsonl and
checkpoints.jsonl line by line as JSON, config.yaml as YAML, and every complete checkpoint
(one with state.json) must load. A checkpoint being written lives in checkpoint-NNNNNN.tmp/ and is
never resumed from.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import base_args, read_jsonl, run_cli, train_records

STEPS, SAVE_EVERY = 30, 3
DEADLINE_S = 30  # the kill phase; then the run is let finish
LAUNCH_LIMIT_S = 60  # a launch that neither finishes nor reaches its kill moment by then is killed


def sft_args(model_dir, data, eval_data, out) -> list[str]:
    return base_args(
        "sft", model_dir, data, out, f"data.eval={eval_data}", f"train.max_steps={STEPS}",
        f"train.save_every={SAVE_EVERY}", "train.eval_every=10", "train.batch_size=4", "train.lr=3e-3",
        "train.resume=auto",  # the first launch starts the run; every later one continues it
    )


def check_parseable(run_dir: Path) -> list[int]:
    """Every file a reader may open parses; returns the steps of the complete checkpoints."""
    from safetensors.torch import load_file

    for name in ("metrics.jsonl", "checkpoints.jsonl"):
        path = run_dir / name
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                json.loads(line)  # no torn or empty lines
    if (run_dir / "config.yaml").exists():
        assert isinstance(yaml.safe_load((run_dir / "config.yaml").read_text()), dict)
    steps = []
    for ckpt in sorted(run_dir.glob("checkpoint-*")):
        if not ckpt.name.split("-", 1)[1].isdigit() or not (ckpt / "state.json").is_file():
            continue  # being written (.tmp) or being deleted (state.json goes first): never resumed from
        state = json.loads((ckpt / "state.json").read_text())
        for name in ("optimizer.pt", "scheduler.pt", "rng_and_extra.pt"):
            torch.load(ckpt / name, weights_only=False)
        assert load_file(ckpt / "model" / "model.safetensors")
        steps.append(state["step"])
    for entry in read_jsonl(run_dir / "checkpoints.jsonl") if (run_dir / "checkpoints.jsonl").exists() else []:
        assert (Path(entry["path"]) / "state.json").is_file(), entry  # the index names whole checkpoints only
    return steps


def tmp_dirs(run_dir: Path) -> set:
    """Checkpoints being written, by (name, inode): a re-save of a step makes a new directory."""
    found = set()
    for path in run_dir.glob("checkpoint-*.tmp"):
        try:
            found.add((path.name, path.stat().st_ino))
        except FileNotFoundError:  # renamed into place meanwhile
            pass
    return found


def wait_and_kill(proc: subprocess.Popen, run_dir: Path, how: str, rng: random.Random) -> tuple[bool, bool]:
    """Kill `proc` at a moment chosen by `how`; returns (killed, a checkpoint was being written)."""
    metrics = run_dir / "metrics.jsonl"
    lines = lambda: len(metrics.read_text().splitlines()) if metrics.exists() else 0  # noqa: E731
    seen, give_up = lines(), time.monotonic() + LAUNCH_LIMIT_S
    running = lambda: proc.poll() is None and time.monotonic() < give_up  # noqa: E731
    leftovers = tmp_dirs(run_dir)  # from earlier kills: not this launch's saves
    if how == "mid_save":
        skip = rng.randint(0, 1)  # the first save this launch, or the second
        seen_saves = set(leftovers)
        while running():
            new = tmp_dirs(run_dir) - seen_saves
            if new:
                if skip == 0:
                    break
                skip -= 1
                seen_saves |= new
            time.sleep(0.0005)
    elif how == "at_end":  # the last step is logged: final eval, last checkpoint, final/
        while running() and lines() < STEPS:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.05))
    elif how == "after_steps":
        target = seen + rng.randint(1, 5)
        while running() and lines() < target:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.02))
    else:  # "anytime": from launch, so possibly while loading, resuming or truncating metrics
        time.sleep(rng.uniform(0.5, 6.0))
    if proc.poll() is not None:
        return False, False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True, bool(tmp_dirs(run_dir) - leftovers)


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_matches_uninterrupted(tmp_path, tiny_model_dir, sft_train, sft_eval):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert run_cli(sft_args(tiny_model_dir, sft_train, sft_eval, straight)).code == 0

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "alignlab", *sft_args(tiny_model_dir, sft_train, sft_eval, killed)]
    rng = random.Random(1234)
    plan = ["mid_save", "after_steps", "mid_save", "after_steps", "at_end", "anytime", "mid_save"]
    begin, kills, mid_saves, history, finished = time.monotonic(), 0, 0, [], False
    for how in plan:
        if time.monotonic() - begin > DEADLINE_S:
            break
        proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        was_killed, mid_save = wait_and_kill(proc, killed, how, rng)
        steps = check_parseable(killed)
        history.append((how, was_killed, mid_save, max(steps, default=0)))
        if not was_killed:
            assert proc.returncode == 0, proc.stderr.read().decode()[-3000:]
            finished = True
            break
        kills, mid_saves = kills + 1, mid_saves + mid_save
    if not finished:  # the plan (or the time budget) ran out with the run killed: let it finish
        proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
    print("kills:", history)
    assert kills >= 3, history
    assert mid_saves >= 1, history  # at least one kill landed inside a checkpoint save

    check_parseable(killed)
    a, b = train_records(straight), train_records(killed)
    assert [r["step"] for r in b] == list(range(1, STEPS + 1)), history  # each step logged once
    for x, y in zip(a, b):
        assert y["loss"] == pytest.approx(x["loss"], abs=1e-6, rel=1e-6), (x["step"], history)
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], abs=1e-6, rel=1e-6), (x["step"], history)
    evals = lambda d: [(r["step"], r["eval/loss"]) for r in read_jsonl(d / "metrics.jsonl") if "eval/loss" in r]  # noqa: E731
    assert [s for s, _ in evals(killed)] == [s for s, _ in evals(straight)]
    assert [v for _, v in evals(killed)] == pytest.approx([v for _, v in evals(straight)], abs=1e-6)
    assert [c["step"] for c in read_jsonl(killed / "checkpoints.jsonl")][-1] == STEPS
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(killed / "final")


def test_ctrl_c_saves_a_checkpoint_and_prints_how_to_resume(tmp_path, tiny_model_dir, sft_train):
    """SIGINT mid-run: a checkpoint of the last finished step, exit code 130, no traceback, and a
    resume command that, run as printed, finishes with the uninterrupted run's numbers."""
    import shlex

    def args(out):
        return base_args("sft", tiny_model_dir, sft_train, out, "train.max_steps=40", "train.save_every=0",
                         "train.batch_size=4", "train.lr=3e-3")

    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert run_cli(args(straight)).code == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "alignlab", *args(stopped)], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics, give_up = stopped / "metrics.jsonl", time.monotonic() + LAUNCH_LIMIT_S
    while proc.poll() is None and time.monotonic() < give_up:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=LAUNCH_LIMIT_S)

    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    found = re.search(r"interrupted at step (\d+); checkpoint saved\. Resume with: (alignlab .+)$", err, re.M)
    assert found, err[-3000:]
    step = int(found.group(1))
    assert 3 <= step < 40
    assert check_parseable(stopped) == [step]
    assert [r["step"] for r in train_records(stopped)] == list(range(1, step + 1))

    resume = shlex.split(found.group(2))
    assert resume[:2] == ["alignlab", "sft"]
    assert run_cli(resume[1:]).code == 0
    a, b = train_records(straight), train_records(stopped)
    assert [r["step"] for r in b] == list(range(1, 41))
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], abs=1e-6, rel=1e-6)


@pytest.mark.slow
def test_ctrl_c_under_torchrun_stops_every_process_at_the_same_step(tmp_path, tiny_model_dir, sft_train):
    """A terminal's Ctrl-C reaches the launcher and both workers. The workers agree to stop between
    the same two steps (else one would wait forever in the other's collective), save one checkpoint
    together, and the resume command is printed once."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "alignlab",
               *base_args("sft", tiny_model_dir, sft_train, out, "train.max_steps=200", "train.save_every=0",
                          "train.batch_size=4")]
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group, as a terminal's foreground job
    metrics, give_up = out / "metrics.jsonl", time.monotonic() + LAUNCH_LIMIT_S
    while proc.poll() is None and time.monotonic() < give_up:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGINT)
    output, _ = proc.communicate(timeout=LAUNCH_LIMIT_S)

    assert output.count("checkpoint saved. Resume with:") == 1, output[-3000:]
    step = int(re.search(r"interrupted at step (\d+)", output).group(1))
    assert 3 <= step < 200
    assert check_parseable(out) == [step]
    assert [r["step"] for r in train_records(out)] == list(range(1, step + 1))
