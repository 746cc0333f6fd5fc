"""DeepSpeed ZeRO-2 and ZeRO-3 (through accelerate) on two CPU processes (gloo): the same numbers as
one process or as DDP, gradient accumulation at DeepSpeed's boundaries, engine checkpoints that
resume exactly, full weights in model/ and final/, and non-finite steps skipped as elsewhere.

Each run's train.log must name the ZeRO stage, so a silent fallback to DDP fails.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from conftest import base_args, read_jsonl, train_records
from launch import (accelerate_launch, assert_grpo_like_ddp, assert_same, assert_same_weights, assert_written_once,
                    deepspeed_env, run_ok, safetensors_of, torchrun)

pytest.importorskip("deepspeed", reason="DeepSpeed tests need `pip install --no-build-isolation deepspeed`")

TESTS = Path(__file__).resolve().parents[1]



def assert_zero(run_dir: Path, stage: int) -> None:
    assert f"2 processes (DeepSpeed ZeRO-{stage})" in (run_dir / "train.log").read_text()


def without_last_checkpoint(run_dir: Path, copy: Path, last: str) -> Path:
    shutil.copytree(run_dir, copy)
    for name in (last, "final"):
        shutil.rmtree(copy / name)
    return copy


@pytest.mark.slow
def test_zero2_sft_accumulates_like_one_process_and_resumes(tmp_path, tiny_model_dir, sft_train, cli):
    """Full fine-tuning, two micro-batches per step: accelerate launch with deepspeed_zero2.yaml,
    2 x 2 rows x 2 == 1 x 4 rows x 2 (DeepSpeed scales each micro-batch's loss by 1/accumulation and
    averages over processes; alignlab's losses are already normalised by the step's whole count).
    Its checkpoint resumes exactly under DeepSpeed; one process refuses it with what to do."""
    common = ["train.lr=3e-3", "train.save_every=2", "train.max_steps=4", "train.grad_accum=2",
              "train.warmup_steps=2", "train.lr_scheduler=cosine"]
    one, two = tmp_path / "one", tmp_path / "two"
    run_ok(base_args("sft", tiny_model_dir, sft_train, one, "train.batch_size=4", *common))
    accelerate_launch("deepspeed_zero2.yaml", base_args("sft", tiny_model_dir, sft_train, two, "train.batch_size=2", *common),
                      tmp_path)
    assert_zero(two, 2)
    keys = ("loss", "grad_norm", "lr")
    assert_same(train_records(one), train_records(two), keys)
    assert train_records(one)[-1]["loss"] < train_records(one)[0]["loss"]
    assert_written_once(two, 4)
    assert_same_weights(one / "checkpoint-000002" / "model", two / "checkpoint-000002" / "model")
    assert_same_weights(one / "final", two / "final")
    engine_files = {p.name for p in (two / "checkpoint-000002" / "deepspeed" / "state").iterdir()}
    assert {"zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= engine_files

    resumed = without_last_checkpoint(two, tmp_path / "resumed", "checkpoint-000004")
    torchrun(base_args("sft", tiny_model_dir, sft_train, resumed, "train.batch_size=2", "train.resume=true", *common),
             tmp_path, deepspeed_env(2))
    assert "resumed from" in (resumed / "train.log").read_text()
    assert_same(train_records(two), train_records(resumed), keys, tol=1e-6)
    assert_same_weights(two / "final", resumed / "final", atol=1e-6)

    # Across launch kinds, either way, a resume stops with what to do.
    elsewhere = cli(base_args("sft", tiny_model_dir, sft_train, resumed, "train.batch_size=4", "train.resume=true",
                              *common[:2], "train.max_steps=6"))
    assert elsewhere.code != 0 and "written under DeepSpeed" in elsewhere.err
    plain = without_last_checkpoint(one, tmp_path / "plain", "checkpoint-000004")
    output = torchrun(base_args("sft", tiny_model_dir, sft_train, plain, "train.batch_size=2", "train.resume=true",
                                *common), tmp_path, deepspeed_env(2), ok=False)
    assert "was written without DeepSpeed" in output


@pytest.mark.slow
def test_zero3_dpo_lora_matches_one_process_and_resumes(tmp_path, tiny_model_dir, prefs):
    """LoRA under ZeRO-3 (weights partitioned; the LM head is gathered by calling it, also when its
    chunks are recomputed in backward), gradient checkpointing, two micro-batches per step, reference
    log-probs precomputed in shares: == 1 process, and a resume continues exactly."""
    common = ["train.lr=1e-3", "train.max_steps=4", "train.save_every=2", "train.grad_accum=2", "lora.enabled=true",
              "lora.dropout=0.0", "data.eval_fraction=0.25", "train.gradient_checkpointing=true"]
    one, two = tmp_path / "one", tmp_path / "two"
    run_ok(base_args("dpo", tiny_model_dir, prefs, one, "train.batch_size=4", f"dpo.ref_cache_dir={tmp_path / 'c1'}",
                     *common))
    zero3 = deepspeed_env(3)
    torchrun(base_args("dpo", tiny_model_dir, prefs, two, "train.batch_size=2", f"dpo.ref_cache_dir={tmp_path / 'c2'}",
                       *common), tmp_path, zero3)
    assert_zero(two, 3)
    keys = ("loss", "grad_norm", "rewards/margins", "rewards/accuracies", "logps/chosen")
    assert_same(train_records(one), train_records(two), keys)
    assert train_records(one)[-1]["rewards/margins"] != 0.0
    final = lambda d: [r for r in read_jsonl(d / "metrics.jsonl") if "eval/loss" in r][-1]  # noqa: E731
    assert final(two)["eval/loss"] == pytest.approx(final(one)["eval/loss"], rel=1e-5)
    assert (two / "checkpoint-000002" / "model" / "adapter_model.safetensors").is_file()
    assert_same_weights(one / "checkpoint-000002" / "model", two / "checkpoint-000002" / "model", atol=1e-5)
    assert_same_weights(one / "final", two / "final")

    resumed = without_last_checkpoint(two, tmp_path / "resumed", "checkpoint-000004")
    torchrun(base_args("dpo", tiny_model_dir, prefs, resumed, "train.batch_size=2", "train.resume=true",
                       f"dpo.ref_cache_dir={tmp_path / 'c2'}", *common), tmp_path, zero3)
    assert_same(train_records(two), train_records(resumed), keys, tol=1e-6)


@pytest.mark.slow
def test_zero3_grpo_matches_data_parallel(tmp_path, tiny_model_dir, prompts, sharded_grpo_args, grpo_ddp_run):
    """GRPO, full fine-tuning with a KL term (frozen reference copy, not partitioned) and two updates
    per rollout: ZeRO-3 == DDP with the same seed. Every forward gathers weights from both
    processes, so generation and evaluation decode in lockstep; the completions must still be DDP's."""
    ddp, zero3 = grpo_ddp_run, tmp_path / "zero3"
    torchrun(base_args("grpo", tiny_model_dir, prompts, zero3, *sharded_grpo_args), tmp_path, deepspeed_env(3))
    assert_zero(zero3, 3)
    assert_grpo_like_ddp(ddp, zero3)
    assert_same_weights(ddp / "final", zero3 / "final")


@pytest.mark.slow
def test_zero2_skips_nan_gradient_steps_like_one_process(tmp_path, tiny_model_dir, sft_train, poison):
    """DeepSpeed steps inside the last backward of a step; when the gradient norm is not finite it
    drops the step itself. alignlab reads that from the engine: the step is counted as skipped and
    the LR schedule does not move, exactly as in one process."""
    common = ["train.lr=3e-3", "train.max_steps=3", "train.warmup_steps=3", "train.lr_scheduler=linear",
              "train.max_bad_steps=3"]
    one, two = tmp_path / "one", tmp_path / "two"
    poison([2])
    run_ok(base_args("sft", tiny_model_dir, sft_train, one, "train.batch_size=4", *common))
    torchrun(base_args("sft", tiny_model_dir, sft_train, two, "train.batch_size=2", *common), tmp_path,
             {**deepspeed_env(2), "POISON_STEPS": "2"}, script=TESTS / "poison.py")
    assert_zero(two, 2)
    assert [r["skipped_steps"] for r in train_records(two)] == [0, 1, 1]
    assert_same(train_records(one), train_records(two), ("loss", "grad_norm", "lr", "skipped_steps"))
    assert all(torch.isfinite(w).all() for w in safetensors_of(two / "final").values())
