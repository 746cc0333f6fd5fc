"""Two CPU processes (torchrun, gloo) train exactly like one process with the same global batch.

A 2-process run with batch_size=B must match a 1-process run with batch_size=2B step by step (SFT and
DPO: same loss, gradient norm and metrics), write each file once, resume, compute DPO's reference
once, and (GRPO, where each process samples with its own RNG) aggregate rewards over both processes'
whole groups. The 1-process references run in-process; the 2-process runs are real `torchrun`s.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import base_args, read_jsonl, train_records, write_jsonl
from launch import assert_same, assert_written_once, run_ok, torchrun

G = 4  # GRPO completions per prompt

# Scores each completion by its CRC (so groups have reward spread) and appends what it saw (prompt
# ids, completions, rewards) to <REWARD_LOG>.rank<RANK>: one line per call, i.e. per training step.
LOGGING_REWARD = """
import json, os, zlib

def crc(completions, id=None, **_):
    # About a third score None (no score): per-process counts of scored completions then differ.
    out = [float(zlib.crc32(c.encode()) % 1000) / 1000 for c in completions]
    out = [None if x < 0.3 else x for x in out]
    path = os.environ.get("REWARD_LOG")
    if path:
        with open(f"{path}.rank{os.environ.get('RANK', '0')}", "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"ids": id, "completions": completions, "rewards": out}) + "\\n")
    return out
"""


# ------------------------------------------------------------------------------ SFT


@pytest.mark.slow
def test_sft_two_processes_equal_one_and_resume(tmp_path, tiny_model_dir, sft_train, sft_eval):
    """2 x 4 rows per step == 1 x 8; the 2-process run stops at step 2 and resumes to 4. The learning
    rate warms up and decays on the same schedule (one schedule step per optimizer step)."""
    common = ["train.lr=3e-3", "train.save_every=2", "train.eval_every=2", f"data.eval={sft_eval}",
              "train.warmup_steps=2"]
    one, two = tmp_path / "one", tmp_path / "two"
    run_ok(base_args("sft", tiny_model_dir, sft_train, one, "train.max_steps=4", "train.batch_size=8", *common))
    first = torchrun(base_args("sft", tiny_model_dir, sft_train, two, "train.max_steps=2", "train.batch_size=4", *common),
                     tmp_path)
    assert first.count(f"done: {two}") == 1  # the CLI's last line, from the main process only
    torchrun(base_args("sft", tiny_model_dir, sft_train, two, "train.max_steps=4", "train.batch_size=4",
                       "train.resume=true", *common), tmp_path)

    a, b = train_records(one), train_records(two)
    assert_same(a, b, ("loss", "grad_norm", "lr"))
    assert a[-1]["loss"] < a[0]["loss"]  # it trained: equality is not trivial
    assert [r["lr"] for r in b] == pytest.approx([1.5e-3, 3e-3, 3e-3, 3e-3])  # 2 warmup steps, then constant
    eval_one = [r["eval/loss"] for r in read_jsonl(one / "metrics.jsonl") if "eval/loss" in r]
    eval_two = [r["eval/loss"] for r in read_jsonl(two / "metrics.jsonl") if "eval/loss" in r]
    assert eval_two == pytest.approx(eval_one, rel=1e-5)
    assert_written_once(two, 4)
    assert [c["step"] for c in read_jsonl(two / "checkpoints.jsonl")] == [2, 4]
    log = (two / "train.log").read_text()
    assert log.count("run dir ") == 2  # once per launch, not once per process
    assert log.count("resumed from") == 1
    assert log.count("saved ") == 2 and log.count("checkpoint-000004") == 1


# ------------------------------------------------------------------------------ DPO


def test_dpo_two_processes_equal_one_reference_once(tmp_path, tiny_model_dir, prefs):
    common = ["train.lr=1e-3", "train.max_steps=4", "data.eval_fraction=0.25"]
    one, two = tmp_path / "one", tmp_path / "two"
    run_ok(base_args("dpo", tiny_model_dir, prefs, one, "train.batch_size=8", f"dpo.ref_cache_dir={tmp_path / 'c1'}",
                     *common))
    torchrun(base_args("dpo", tiny_model_dir, prefs, two, "train.batch_size=4", f"dpo.ref_cache_dir={tmp_path / 'c2'}",
                       *common), tmp_path)

    keys = ("loss", "grad_norm", "rewards/margins", "rewards/accuracies", "rewards/chosen", "logps/rejected")
    a, b = train_records(one), train_records(two)
    assert_same(a, b, keys)
    assert any(r["rewards/margins"] != 0.0 for r in a)
    final = lambda d: [r for r in read_jsonl(d / "metrics.jsonl") if "eval/loss" in r][-1]  # noqa: E731
    assert final(two)["eval/loss"] == pytest.approx(final(one)["eval/loss"], rel=1e-5)
    assert_written_once(two, 4)
    # The reference was computed once per split by the main process; the other process loaded it.
    assert sorted(p.suffix for p in (tmp_path / "c2").iterdir()) == [".pt", ".pt"]
    log = (two / "train.log").read_text()
    assert log.count("train pairs computed and cached") == 1
    assert log.count("eval pairs computed and cached") == 1
    assert "reused" not in log


def test_dpo_two_processes_reference_of_the_pairs_they_will_see(tmp_path, tiny_model_dir, prefs):
    """2 x 2 pairs x 3 steps see 12 of the 32 pairs: both processes score shares of those 12 only,
    as one process would; a longer run on that cache (read by the main process, broadcast) scores
    only the pairs not there yet."""
    import json

    one, two, longer = tmp_path / "one", tmp_path / "two", tmp_path / "longer"
    run_ok(base_args("dpo", tiny_model_dir, prefs, one, "train.batch_size=4", "train.max_steps=3", "train.lr=1e-3",
                     f"dpo.ref_cache_dir={tmp_path / 'c1'}"))
    common = ["train.batch_size=2", "train.lr=1e-3", f"dpo.ref_cache_dir={tmp_path / 'c2'}"]
    torchrun(base_args("dpo", tiny_model_dir, prefs, two, "train.max_steps=3", *common), tmp_path)
    assert_same(train_records(one), train_records(two), ("loss", "grad_norm", "rewards/margins", "logps/rejected"))
    report = json.loads((two / "reference.json").read_text())["train"]
    assert (report["pairs"], report["computed"], report["reused"]) == (12, 12, 0)
    cached = lambda d: torch.load(Path((d / "ref_cache_train.txt").read_text().strip()))  # noqa: E731
    known = ~cached(one).isnan().any(1)
    assert int(known.sum()) == 12 and torch.equal(known, ~cached(two).isnan().any(1))
    torch.testing.assert_close(cached(two)[known], cached(one)[known], atol=1e-5, rtol=1e-6)

    torchrun(base_args("dpo", tiny_model_dir, prefs, longer, "train.max_steps=5", *common), tmp_path)
    report = json.loads((longer / "reference.json").read_text())["train"]
    assert (report["pairs"], report["computed"], report["reused"]) == (20, 8, 12)
    assert int((~cached(longer).isnan().any(1)).sum()) == 20


def test_dpo_two_processes_lora_accumulation_checkpointing(tmp_path, tiny_model_dir, prefs):
    """LoRA (reference = adapter disabled, precomputed), 2 micro-batches per step (no_sync on the
    first), gradient checkpointing (no shared prompt pass): 2 x (2 x 2) pairs == 1 x (4 x 2).
    LoRA dropout is off: each process draws its own dropout masks, so they could not match."""
    common = ["train.lr=1e-3", "train.max_steps=3", "train.grad_accum=2", "lora.enabled=true", "lora.dropout=0.0",
              "train.gradient_checkpointing=true", f"dpo.ref_cache_dir={tmp_path / 'cache'}"]
    one, two = tmp_path / "one", tmp_path / "two"
    run_ok(base_args("dpo", tiny_model_dir, prefs, one, "train.batch_size=4", *common))
    torchrun(base_args("dpo", tiny_model_dir, prefs, two, "train.batch_size=2", *common), tmp_path)
    a, b = train_records(one), train_records(two)
    assert_same(a, b, ("loss", "grad_norm", "rewards/margins", "logps/chosen"))
    assert a[-1]["rewards/margins"] != 0.0
    assert "reused from" in (two / "train.log").read_text()  # the 1-process run's cache


# ------------------------------------------------------------------------------ GRPO


@pytest.fixture
def grpo_inputs(tmp_path, prompts):
    reward = tmp_path / "logging_reward.py"
    reward.write_text(LOGGING_REWARD)
    with_ids = write_jsonl([{**row, "id": i} for i, row in enumerate(read_jsonl(prompts))], tmp_path / "prompts.jsonl")
    return with_ids, f"{reward}:crc"


def read_reward_log(path: Path) -> list[dict]:
    return read_jsonl(path) if path.exists() else []


@pytest.mark.slow
def test_grpo_two_processes_whole_groups_rewards_and_resume(tmp_path, tiny_model_dir, grpo_inputs, monkeypatch):
    prompts, reward = grpo_inputs
    common = ["train.lr=3e-3", "train.max_steps=4", "train.save_every=2", f"grpo.num_generations={G}",
              "grpo.max_completion_length=8", f"grpo.rewards=[{reward}]"]
    one, two = tmp_path / "one", tmp_path / "two"
    monkeypatch.setenv("REWARD_LOG", str(tmp_path / "log_one"))
    run_ok(base_args("grpo", tiny_model_dir, prompts, one, "train.batch_size=4", *common))
    monkeypatch.delenv("REWARD_LOG")
    torchrun(base_args("grpo", tiny_model_dir, prompts, two, "train.batch_size=2", *common), tmp_path,
             {"REWARD_LOG": str(tmp_path / "log_two")})

    single = read_reward_log(tmp_path / "log_one.rank0")
    ranks = [read_reward_log(tmp_path / f"log_two.rank{r}") for r in (0, 1)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 4  # one reward call per step and process
    records = train_records(two)
    assert_written_once(two, 4)
    for step, record in enumerate(records):
        ids0, ids1 = ranks[0][step]["ids"], ranks[1][step]["ids"]
        # Whole groups: each process got 2 prompts x G completions, each prompt's G in a row.
        for ids in (ids0, ids1):
            assert len(ids) == 2 * G
            assert all(len(set(ids[g * G:(g + 1) * G])) == 1 for g in range(2))
        # Contiguous shares of the same global batch, in the same data order as one process.
        assert ids0 + ids1 == single[step]["ids"]
        # The logged metrics are over both processes' rollouts.
        scores = ranks[0][step]["rewards"] + ranks[1][step]["rewards"]
        scored = [x for x in scores if x is not None]  # a completion without a score is unscorable: left out
        assert record["reward"] == pytest.approx(sum(scored) / len(scored), abs=1e-6)
        assert record[f"rewards/{reward.rsplit(':', 1)[-1]}/mean"] == pytest.approx(sum(scored) / len(scored), abs=1e-6)
        assert record["rewards/unscorable"] == len(scores) - len(scored)

        def std(values):
            mean = sum(values) / len(values)
            return math.sqrt(sum((x - mean) ** 2 for x in values) / (len(values) - 1)) if len(values) > 1 else 0.0

        assert record["reward_std"] == pytest.approx(std(scored), abs=1e-5)  # the whole batch's, as TRL
        groups = [[x for x in scores[g * G:(g + 1) * G] if x is not None] for g in range(4)]
        assert record["reward_std/within_group"] == pytest.approx(sum(map(std, groups)) / 4, abs=1e-5)
        assert math.isfinite(record["loss"]) and math.isfinite(record["grad_norm"]) and record["grad_norm"] > 0

    # Resume in 2-process mode from the step-2 checkpoint: each process's RNG stream is restored, so
    # steps 3-4 sample the same completions and log the same numbers as the uninterrupted run.
    resumed = tmp_path / "resumed"
    shutil.copytree(two, resumed)
    for name in ("checkpoint-000004", "final"):
        shutil.rmtree(resumed / name)
    torchrun(base_args("grpo", tiny_model_dir, prompts, resumed, "train.batch_size=2", "train.resume=true", *common),
             tmp_path, {"REWARD_LOG": str(tmp_path / "log_resumed")})
    for r in (0, 1):
        again = read_reward_log(tmp_path / f"log_resumed.rank{r}")
        assert again == ranks[r][2:], f"process {r} sampled differently after resume"
    assert_same(train_records(two), train_records(resumed), ("loss", "grad_norm", "reward", "entropy"), tol=1e-6)
    assert "resumed from" in (resumed / "train.log").read_text()


@pytest.mark.slow
def test_grpo_two_processes_equal_one_on_identical_rollouts(tmp_path, tiny_model_dir, prompts, crc_reward, monkeypatch):
    """Completions drawn per prompt from a seed of its own (tests/fixed_rollouts.py), so 1 process x 4
    prompts and 2 processes x 2 prompts sample the same rollouts: then losses, KL, entropies,
    gradient norms and the final weights agree (the loss's normalisation over the whole step across
    processes, the advantage over the global batch, and DDP's reduction are exact)."""
    import fixed_rollouts
    from safetensors.torch import load_file

    common = ["train.lr=3e-3", "train.max_steps=3", f"grpo.num_generations={G}", "grpo.max_completion_length=8",
              "grpo.beta=0.05", "grpo.num_iterations=2", "grpo.temperature=0.8", f"grpo.rewards=[{crc_reward}]"]
    one, two = tmp_path / "one", tmp_path / "two"
    fixed_rollouts.install(monkeypatch.setattr)
    run_ok(base_args("grpo", tiny_model_dir, prompts, one, "train.batch_size=4", *common))
    monkeypatch.undo()
    torchrun(base_args("grpo", tiny_model_dir, prompts, two, "train.batch_size=2", *common), tmp_path,
             script=Path(fixed_rollouts.__file__))
    a, b = train_records(one), train_records(two)
    assert_same(a, b, ("loss", "grad_norm", "kl", "entropy", "reward", "clip_ratio"), tol=1e-5)
    assert all(r["grad_norm"] > 0 for r in a) and a[-1]["kl"] > 0
    first, second = load_file(one / "final" / "model.safetensors"), load_file(two / "final" / "model.safetensors")
    for name, weight in first.items():
        # Adam divides by sqrt(v): a summation-order difference in a tiny gradient moves a weight by ~1e-6.
        torch.testing.assert_close(second[name], weight, atol=2e-5, rtol=1e-4)


# ------------------------------------------------------------------------------ rank_slice


def test_rank_slice_keeps_groups_whole():
    from alignlab.engine.loop import TrainingRun

    for processes in (1, 2, 3, 4):
        for groups_per_rank in (1, 2, 5):
            items = [(g, j) for g in range(processes * groups_per_rank) for j in range(G)]
            shares = []
            for index in range(processes):
                run = TrainingRun.__new__(TrainingRun)
                run.accelerator = SimpleNamespace(num_processes=processes, process_index=index)
                shares.append(run.rank_slice(items))
            assert [x for share in shares for x in share] == items  # contiguous, in order, nothing lost
            for share in shares:
                assert len({g for g, _ in share}) * G == len(share)  # whole groups only
