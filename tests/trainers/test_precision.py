"""The precision matrix on CPU: {float32, bfloat16} weights x {no, bf16} mixed precision x {LoRA, full}
x {gradient checkpointing on, off}.

1. Log-probs: the chunked LM head under the run's autocast (`TrainingRun.autocast`) equals the
   log-softmax of the model's own logits under the same precision, on the plain and the
   shared-prefix paths, in train mode (where checkpointing drops the KV cache).
2. Each trainer runs a step in every combination, with finite losses.
Combinations that cannot train (fp16 without CUDA, float16 weights under bf16) are refused at start.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from conftest import base_args, run_cli, train_records

MATRIX = list(itertools.product(["float32", "bfloat16"], ["no", "bf16"], [True, False], [True, False]))
IDS = [f"{d}-mp_{m}-{'lora' if l else 'full'}-{'gc' if g else 'nogc'}" for d, m, l, g in MATRIX]
# bfloat16 keeps ~3 significant digits: log-probs of ~5.6 nats agree to a few hundredths between
# two computation orders (the shared-prefix path attends through the cache); float32 to ~1e-5.
# float32 weights under bf16 mixed precision compute in bf16: ~1e-3 apart on a CPU without AMX
# (an AMD EPYC here), within 1e-4 on one with it.
TOLERANCE = {"float32": 1e-4, "bfloat16": 0.1}


@pytest.mark.parametrize("dtype, mixed, lora, checkpointing", MATRIX, ids=IDS)
def test_log_probs_match_the_models_own_logits(tiny_model_dir, dtype, mixed, lora, checkpointing):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from alignlab.config import LoraConfig, ModelConfig
    from alignlab.model.logprobs import full_logits_token_logps, shared_prefix_token_logps, token_logps
    from alignlab.model.loading import load_model

    AcceleratorState._reset_state()
    accelerator = Accelerator(mixed_precision=mixed)
    model = load_model(ModelConfig(name_or_path=str(tiny_model_dir), dtype=dtype),
                       LoraConfig(enabled=lora, r=4, alpha=8, dropout=0.0), gradient_checkpointing=checkpointing)
    model = accelerator.prepare(model)
    model.train()
    torch.manual_seed(0)
    prompt = torch.randint(3, 200, (2, 5))
    completion = torch.randint(3, 200, (4, 6))
    completion_mask = torch.ones_like(completion)
    completion_mask[1, 4:] = 0
    index = torch.tensor([0, 0, 1, 1])
    ids = torch.cat([prompt[index], completion], 1)
    attention = torch.cat([torch.ones_like(prompt[index]), completion_mask], 1)
    loss_mask = torch.cat([torch.zeros_like(prompt[index]), completion_mask], 1)
    with accelerator.autocast():
        plain = token_logps(model, ids, attention, loss_mask)[:, 5:]
        shared = shared_prefix_token_logps(model, prompt, torch.ones_like(prompt), completion, completion_mask, index)
        with torch.no_grad():
            want = full_logits_token_logps(model, ids, attention, loss_mask)[:, 5:]
    tol = TOLERANCE["bfloat16" if mixed == "bf16" else dtype]  # under bf16 autocast the matmuls are bf16
    torch.testing.assert_close(plain.detach(), want, atol=tol, rtol=0)
    torch.testing.assert_close(shared.detach(), want, atol=tol, rtol=0)
    assert plain.requires_grad and torch.isfinite(plain).all()
    (plain.sum() + shared.sum()).backward()  # the chunked head's recomputation runs under the same autocast
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


TRAINER_ARGS = {
    "sft": [],
    "dpo": [],
    "grpo": ["grpo.num_generations=2", "grpo.max_completion_length=4", "grpo.temperature=0.9"],
}


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(TRAINER_ARGS))
@pytest.mark.parametrize("dtype, mixed, lora, checkpointing", MATRIX, ids=IDS)
def test_every_trainer_steps_in_every_precision(tmp_path, tiny_model_dir, sft_train, prefs, prompts, command,
                                                dtype, mixed, lora, checkpointing):
    data = {"sft": sft_train, "dpo": prefs, "grpo": prompts}[command]
    out = tmp_path / "run"
    result = run_cli(base_args(command, tiny_model_dir, data, out, "train.max_steps=1", "train.batch_size=2",
                               f"model.dtype={dtype}", f"train.mixed_precision={mixed}", f"lora.enabled={str(lora).lower()}",
                               f"train.gradient_checkpointing={str(checkpointing).lower()}", *TRAINER_ARGS[command]))
    assert result.code == 0
    (record,) = train_records(out)
    assert math.isfinite(record["loss"]) and math.isfinite(record["grad_norm"])


@pytest.mark.parametrize("dtype, mixed, message", [
    ("float32", "fp16", "needs a CUDA GPU"),
    ("float16", "bf16", "two half-precision formats"),
])
def test_combinations_that_cannot_train_are_refused(tmp_path, tiny_model_dir, sft_train, cli, dtype, mixed, message):
    if mixed == "fp16" and torch.cuda.is_available():
        pytest.skip("fp16 is available here")
    out = tmp_path / "run"
    result = cli(base_args("sft", tiny_model_dir, sft_train, out, f"model.dtype={dtype}",
                           f"train.mixed_precision={mixed}"))
    assert result.code == 2 and message in result.err


@pytest.mark.parametrize("command, extra, key", [
    ("grpo", ["grpo.beta=0.1", "grpo.num_generations=2", "grpo.max_completion_length=4"], "kl"),
    ("dpo", ["dpo.reference=copy"], "rewards/margins"),
    ("dpo", ["dpo.precompute_ref=true"], "rewards/margins"),
])
def test_reference_runs_in_the_policys_precision(tmp_path, tiny_model_dir, prefs, prompts, command, extra, key):
    """At the first step the policy is the reference: under bf16 mixed precision with float32 weights
    the frozen copy (and DPO's precomputed pass) must run under the same autocast as the policy, or
    KL and reward margins start away from 0 by the bf16-vs-float32 rounding."""
    data = prompts if command == "grpo" else prefs
    out = tmp_path / "run"
    assert run_cli(base_args(command, tiny_model_dir, data, out, "train.max_steps=1", "train.batch_size=2",
                             "train.mixed_precision=bf16", f"dpo.ref_cache_dir={tmp_path / 'cache'}" if command == "dpo"
                             else "grpo.temperature=1.0", *extra)).code == 0
    (record,) = train_records(out)
    assert abs(record[key]) < 1e-9  # exactly 0 when both run alike; ~7e-7 KL when the copy ran in float32


@pytest.mark.parametrize("command", ["dpo", "grpo"])
def test_checkpointing_turned_on_behind_the_configs_back(tmp_path, tiny_model_dir, prefs, prompts, monkeypatch,
                                                         command):
    """QLoRA's prepare_model_for_kbit_training turns gradient checkpointing on without
    train.gradient_checkpointing; in train mode transformers then returns no KV cache, and the
    shared-prefix log-prob path used to crash. The path is chosen from the model's own state."""
    import importlib

    trainer = importlib.import_module(f"alignlab.trainers.{command}")
    load_model = trainer.load_model

    def load_like_qlora(*args, **kwargs):
        model = load_model(*args, **kwargs)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model

    monkeypatch.setattr(trainer, "load_model", load_like_qlora)
    data = prompts if command == "grpo" else prefs
    extra = ["grpo.num_generations=2", "grpo.max_completion_length=4"] if command == "grpo" else []
    out = tmp_path / "run"
    assert run_cli(base_args(command, tiny_model_dir, data, out, "train.max_steps=2", "train.batch_size=2",
                             "lora.enabled=true", *extra)).code == 0
    assert all(math.isfinite(r["loss"]) for r in train_records(out))
