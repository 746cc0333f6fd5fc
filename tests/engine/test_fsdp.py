"""FSDP (version 2) on two CPU processes (gloo): the same numbers as one process or as DDP, full
weights in every checkpoint, resume on any number of processes.

SFT runs through the documented entry point, `accelerate launch --config_file
configs/accelerate/fsdp.yaml -m alignlab ...`; the others through torchrun with the variables that
launcher exports. Each run's train.log must say FSDP was on, so a silent fallback to DDP fails.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import base_args, read_jsonl, train_records
from launch import (FSDP_ENV, accelerate_launch, assert_grpo_like_ddp, assert_same, assert_same_weights,
                    assert_written_once, run_ok, torchrun)

ROOT = Path(__file__).resolve().parents[2]
FSDP_LOG_LINE = "2 processes (FSDP: weights, gradients and optimizer state sharded)"



def accelerate_fsdp(argv: list, cwd: Path) -> str:
    return accelerate_launch("fsdp.yaml", argv, cwd)


def assert_fsdp(run_dir: Path) -> None:
    assert FSDP_LOG_LINE in (run_dir / "train.log").read_text()


@pytest.mark.slow
def test_fsdp_sft_full_weights_match_one_process_and_resume_anywhere(tmp_path, tiny_model_dir, sft_train):
    """Full fine-tuning (tied embeddings and LM head, so the LM head used outside the model's own
    forward gets its gradient): FSDP 2 x 4 rows == 1 x 8 rows; the FSDP checkpoint resumes under
    FSDP and in one process alike; final/ is a plain transformers model."""
    common = ["train.lr=3e-3", "train.save_every=2"]
    one, two = tmp_path / "one", tmp_path / "two"
    run_ok(base_args("sft", tiny_model_dir, sft_train, one, "train.max_steps=4", "train.batch_size=8", *common))
    accelerate_fsdp(base_args("sft", tiny_model_dir, sft_train, two, "train.max_steps=2", "train.batch_size=4", *common),
                    tmp_path)
    assert_fsdp(two)
    # Written by the main process from gathered shards: the same weights as the 1-process run's.
    assert_same_weights(one / "checkpoint-000002" / "model", two / "checkpoint-000002" / "model")
    single = tmp_path / "single"
    shutil.copytree(two, single)
    shutil.rmtree(single / "final")

    accelerate_fsdp(base_args("sft", tiny_model_dir, sft_train, two, "train.max_steps=4", "train.batch_size=4",
                              "train.resume=true", *common), tmp_path)
    run_ok(base_args("sft", tiny_model_dir, sft_train, single, "train.max_steps=4", "train.batch_size=8",
                     "train.resume=true", *common))
    for run_dir in (two, single):
        assert_same(train_records(one), train_records(run_dir), ("loss", "grad_norm", "lr"))
        assert_written_once(run_dir, 4)
    assert train_records(one)[-1]["loss"] < train_records(one)[0]["loss"]

    assert_same_weights(one / "final", two / "final")
    from transformers import AutoModelForCausalLM

    config = json.loads((two / "final" / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]  # not the FSDP wrapper's class name
    model = AutoModelForCausalLM.from_pretrained(two / "final")
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied
    assert not any(p.is_meta for p in model.parameters())


@pytest.mark.slow
def test_fsdp_dpo_lora_matches_one_process_and_resumes(tmp_path, tiny_model_dir, prefs):
    """LoRA under FSDP (reference: adapter off, precomputed by both processes' shares), two
    micro-batches per step, gradient checkpointing inside the sharded blocks: == 1 process. Checkpoints hold the adapter alone; a resume from one
    continues exactly; final/ is the merged model."""
    common = ["train.lr=1e-3", "train.max_steps=4", "train.save_every=2", "train.grad_accum=2", "lora.enabled=true",
              "lora.dropout=0.0", "data.eval_fraction=0.25", "train.gradient_checkpointing=true"]
    one, two = tmp_path / "one", tmp_path / "two"
    run_ok(base_args("dpo", tiny_model_dir, prefs, one, "train.batch_size=4", f"dpo.ref_cache_dir={tmp_path / 'c1'}",
                     *common))
    torchrun(base_args("dpo", tiny_model_dir, prefs, two, "train.batch_size=2", f"dpo.ref_cache_dir={tmp_path / 'c2'}",
                       *common), tmp_path, FSDP_ENV)
    assert_fsdp(two)
    keys = ("loss", "grad_norm", "rewards/margins", "rewards/accuracies", "logps/chosen")
    assert_same(train_records(one), train_records(two), keys)
    assert train_records(one)[-1]["rewards/margins"] != 0.0
    final = lambda d: [r for r in read_jsonl(d / "metrics.jsonl") if "eval/loss" in r][-1]  # noqa: E731
    assert final(two)["eval/loss"] == pytest.approx(final(one)["eval/loss"], rel=1e-5)
    # Both processes scored shares of the pairs: the cached reference equals the 1-process one.
    for split in ("train", "eval"):
        cached = lambda d: torch.load(Path((d / f"ref_cache_{split}.txt").read_text().strip()))  # noqa: E731
        torch.testing.assert_close(cached(two), cached(one), atol=1e-5, rtol=1e-6)
    assert (two / "checkpoint-000002" / "model" / "adapter_model.safetensors").is_file()
    assert_same_weights(one / "checkpoint-000002" / "model", two / "checkpoint-000002" / "model", atol=1e-5)
    assert_same_weights(one / "final", two / "final")
    assert "adapter_config.json" not in {p.name for p in (two / "final").iterdir()}  # merged

    resumed = tmp_path / "resumed"
    shutil.copytree(two, resumed)
    for name in ("checkpoint-000004", "final"):
        shutil.rmtree(resumed / name)
    torchrun(base_args("dpo", tiny_model_dir, prefs, resumed, "train.batch_size=2", "train.resume=true",
                       f"dpo.ref_cache_dir={tmp_path / 'c2'}", *common), tmp_path, FSDP_ENV)
    assert_same(train_records(two), train_records(resumed), keys, tol=1e-6)
    assert "resumed from" in (resumed / "train.log").read_text()


@pytest.mark.slow
def test_fsdp_grpo_matches_data_parallel(tmp_path, tiny_model_dir, prompts, sharded_grpo_args, grpo_ddp_run):
    """GRPO, full fine-tuning with a KL term (frozen reference copy) and two updates per rollout:
    2-process FSDP == 2-process DDP with the same seed, so each process sampled the same groups.
    Under FSDP every decoding step is a collective: the processes keep decoding until all have
    finished, and the completions must still be the ones DDP sampled."""
    ddp, fsdp = grpo_ddp_run, tmp_path / "fsdp"
    torchrun(base_args("grpo", tiny_model_dir, prompts, fsdp, *sharded_grpo_args), tmp_path, FSDP_ENV)
    assert_fsdp(fsdp)
    assert_grpo_like_ddp(ddp, fsdp)


def test_fsdp1_is_refused_with_what_to_use():
    from accelerate.utils import DistributedType

    from alignlab.errors import AlignlabError
    from alignlab.engine.sharding import check_supported

    def accelerator(kind, version=2):
        return SimpleNamespace(distributed_type=kind, state=SimpleNamespace(fsdp_plugin=SimpleNamespace(fsdp_version=version)))

    with pytest.raises(AlignlabError, match="fsdp_version: 2"):
        check_supported(accelerator(DistributedType.FSDP, version=1))
    for kind in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU, DistributedType.FSDP,
                 DistributedType.DEEPSPEED):
        check_supported(accelerator(kind))


def test_adapter_keys_are_mapped_to_the_model_and_strangers_named():
    from alignlab.errors import AlignlabError
    from alignlab.engine.sharding import adapter_to_model_keys

    model_keys = ["base_model.model.layers.0.q_proj.base_layer.weight", "base_model.model.layers.0.q_proj.lora_A.default.weight",
                  "base_model.model.layers.0.q_proj.lora_B.default.weight"]
    saved = {"base_model.model.layers.0.q_proj.lora_A.weight": 1, "base_model.model.layers.0.q_proj.lora_B.weight": 2}
    assert adapter_to_model_keys(saved, model_keys, "default") == {model_keys[1]: 1, model_keys[2]: 2}
    with pytest.raises(AlignlabError, match="lora_C"):
        adapter_to_model_keys({"base_model.model.layers.0.q_proj.lora_C.weight": 3}, model_keys, "default")


def test_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    root = ROOT / "configs" / "accelerate"
    expected = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero2": "DEEPSPEED", "deepspeed_zero3": "DEEPSPEED"}
    for name, kind in expected.items():
        path = root / f"{name}.yaml"
        assert f"accelerate launch --config_file configs/accelerate/{name}.yaml -m alignlab" in path.read_text()
        config = load_config_from_file(str(path))
        assert str(config.distributed_type).endswith(kind)
    fsdp = load_config_from_file(str(root / "fsdp.yaml")).fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_cpu_ram_efficient_loading"] is False
