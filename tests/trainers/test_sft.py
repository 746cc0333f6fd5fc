"""Supervised fine-tuning end to end on the tiny model: loss masking, learning, LoRA, run directory."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from alignlab.config import load_config
from alignlab.data.io import Row
from alignlab.data.sft import encode_sft_row
from alignlab.data.templates import Templater
from conftest import base_args, read_jsonl, run_cli, train_records, write_jsonl

CHATML_PROMPT = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
EOS = "<|im_end|>"


def masked_runs(tokenizer, ids, mask) -> list[str]:
    """The decoded text of each maximal run of loss-mask-1 tokens."""
    runs, current = [], []
    for token, m in zip(ids, mask):
        if m:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


# ------------------------------------------------------------------------------ loss masks


def test_prompt_completion_mask_covers_completion_and_eos_only(tiny_tokenizer):
    templater = Templater(tiny_tokenizer)
    row = Row({"prompt": "37+48=?", "completion": "<answer>85</answer>"}, "x.jsonl", 1)
    ids, mask = encode_sft_row(row, templater)
    # Independent: the ChatML text, tokenised piece by piece.
    prompt_ids = tiny_tokenizer(CHATML_PROMPT.format("37+48=?"), add_special_tokens=False)["input_ids"]
    completion_ids = tiny_tokenizer("<answer>85</answer>" + EOS, add_special_tokens=False)["input_ids"]
    assert ids == prompt_ids + completion_ids
    assert mask == [0] * len(prompt_ids) + [1] * len(completion_ids)
    assert ids[-1] == tiny_tokenizer.eos_token_id and mask[-1] == 1


def test_messages_mask_covers_only_assistant_turns(tiny_tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2=?"},
        {"role": "assistant", "content": "<answer>4</answer>"},
        {"role": "user", "content": "and 3+3=?"},
        {"role": "assistant", "content": "6"},
    ]
    ids, mask = encode_sft_row(Row({"messages": messages}, "x.jsonl", 1), Templater(tiny_tokenizer))
    expected_text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    assert ids == tiny_tokenizer(expected_text, add_special_tokens=False)["input_ids"]
    assert masked_runs(tiny_tokenizer, ids, mask) == ["<answer>4</answer>" + EOS, "6" + EOS]
    # Nothing of the system or user turns is trained, nor the newline after an end-of-turn.
    assert sum(mask) == len(tiny_tokenizer("<answer>4</answer>" + EOS + "6" + EOS, add_special_tokens=False)["input_ids"])


def test_system_prompt_goes_before_conversations_without_their_own(tiny_tokenizer):
    """data.system_prompt applies to multi-turn rows as to single-turn ones; a row's own system turn wins."""
    chat = [{"role": "user", "content": "2+2=?"}, {"role": "assistant", "content": "4"}]
    templater = Templater(tiny_tokenizer, system_prompt="Be brief.")
    ids, mask = encode_sft_row(Row({"messages": chat}, "x.jsonl", 1), templater)
    expected = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
                       for m in [{"role": "system", "content": "Be brief."}, *chat])
    assert ids == tiny_tokenizer(expected, add_special_tokens=False)["input_ids"]
    assert masked_runs(tiny_tokenizer, ids, mask) == ["4" + EOS]  # the system turn is context, not trained
    own = [{"role": "system", "content": "Be verbose."}, *chat]
    ids, _ = encode_sft_row(Row({"messages": own}, "x.jsonl", 1), templater)
    assert "Be brief." not in tiny_tokenizer.decode(ids) and "Be verbose." in tiny_tokenizer.decode(ids)
    plain = Templater(tiny_tokenizer, use_chat_template=False, system_prompt="Be brief.")
    ids, _ = encode_sft_row(Row({"messages": chat}, "x.jsonl", 1), plain)
    assert tiny_tokenizer.decode(ids).startswith("system: Be brief.\n")


# ------------------------------------------------------------------------------ a full run


@pytest.fixture(scope="module")
def overfit_run(tmp_path_factory, tiny_model_dir, sft_train, sft_eval):
    """30 steps on 16 rows, the whole set in every batch."""
    out = tmp_path_factory.mktemp("sft") / "run"
    result = run_cli(base_args(
        "sft", tiny_model_dir, sft_train, out, f"data.eval={sft_eval}",
        "train.max_steps=30", "train.batch_size=16", "train.lr=3e-3", "train.save_every=10",
    ))
    assert result.code == 0
    return out


def test_overfit_lowers_loss(overfit_run):
    losses = [r["loss"] for r in train_records(overfit_run)]
    assert len(losses) == 30
    assert losses[-1] < 0.4 * losses[0], losses
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 2.0
    evals = [r["eval/loss"] for r in read_jsonl(overfit_run / "metrics.jsonl") if "eval/loss" in r]
    assert evals and math.isfinite(evals[-1])


def test_first_step_loss_is_mean_nll_of_completion_tokens(overfit_run, tiny_model_dir, tiny_tokenizer, sft_train):
    """Step 1 sees all 16 rows with the initial weights: its loss is the mean NLL over completion + EOS
    tokens, computed here with full logits on each unpadded row."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    total, count = 0.0, 0
    for row in read_jsonl(sft_train):
        prompt = tiny_tokenizer(CHATML_PROMPT.format(row["prompt"]), add_special_tokens=False)["input_ids"]
        answer = tiny_tokenizer(row["completion"] + EOS, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + answer])
        with torch.no_grad():
            logp = model(ids).logits[0, :-1].double().log_softmax(-1)
        targets = ids[0, 1:]
        token_logp = logp[torch.arange(len(targets)), targets]
        total -= float(token_logp[len(prompt) - 1 :].sum())
        count += len(answer)
    first = train_records(overfit_run)[0]
    assert first["step"] == 1
    assert first["loss"] == pytest.approx(total / count, rel=1e-5)


def test_run_directory_contents(overfit_run, sft_train):
    for name in ("config.yaml", "metrics.jsonl", "checkpoints.jsonl", "train.log"):
        assert (overfit_run / name).is_file(), name
    config_text = (overfit_run / "config.yaml").read_text()
    assert config_text.startswith("# alignlab sft")
    saved = yaml.safe_load(config_text)
    assert saved["train"]["lr"] == pytest.approx(3e-3) and saved["data"]["train"] == str(sft_train)
    assert saved["train"]["max_steps"] == 30

    records = train_records(overfit_run)
    assert [r["step"] for r in records] == list(range(1, 31))
    for record in records:
        for field in ("step", "loss", "lr", "grad_norm", "tokens_per_second", "elapsed"):
            assert field in record, field
        assert record["lr"] == pytest.approx(3e-3)  # constant schedule
        assert record["grad_norm"] > 0 and record["tokens_per_second"] > 0
    elapsed = [r["elapsed"] for r in records]
    assert elapsed == sorted(elapsed)

    checkpoints = read_jsonl(overfit_run / "checkpoints.jsonl")
    assert [c["step"] for c in checkpoints] == [10, 20, 30]
    for entry in checkpoints:
        path = overfit_run / entry["name"]
        assert json.loads((path / "state.json").read_text())["step"] == entry["step"]
        assert (path / "optimizer.pt").is_file() and (path / "model" / "model.safetensors").is_file()

    log = (overfit_run / "train.log").read_text()
    assert "SFT data: 16 examples" in log and "final model" in log


def test_final_and_checkpoint_weights_load_with_plain_transformers(overfit_run, tiny_model_dir):
    ids = torch.tensor([[5, 60, 61, 62, 63, 70]])
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    final = AutoModelForCausalLM.from_pretrained(overfit_run / "final").eval()
    last = AutoModelForCausalLM.from_pretrained(overfit_run / "checkpoint-000030" / "model").eval()
    with torch.no_grad():
        a, b, c = initial(ids).logits, final(ids).logits, last(ids).logits
    assert torch.equal(b, c)
    assert not torch.allclose(a, b, atol=1e-3)


def test_second_run_into_same_dir_without_resume_fails(overfit_run, tiny_model_dir, sft_train, cli):
    metrics_before = (overfit_run / "metrics.jsonl").read_text()
    config_before = (overfit_run / "config.yaml").read_text()
    result = cli(base_args("sft", tiny_model_dir, sft_train, overfit_run, "train.max_steps=2"))
    assert result.code == 2
    assert "already holds a run" in result.err and "train.resume=true" in result.err
    assert "Traceback" not in result.err
    # The existing run is untouched.
    assert (overfit_run / "metrics.jsonl").read_text() == metrics_before
    assert (overfit_run / "config.yaml").read_text() == config_before


# ------------------------------------------------------------------------------ LoRA


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir, sft_train):
    from alignlab.trainers.sft import train_sft

    out = tmp_path_factory.mktemp("sft_lora") / "run"
    config = load_config("sft", None, base_args(
        "sft", tiny_model_dir, sft_train, out,
        "train.max_steps=6", "train.batch_size=8", "train.lr=1e-2",
        "lora.enabled=true", "lora.r=4", "lora.alpha=8", "lora.dropout=0.0",
    )[1:])
    run = train_sft(config)
    return run, out


def _base_name(peft_name: str) -> str:
    return peft_name.removeprefix("base_model.model.").replace(".base_layer.", ".")


def test_lora_trains_adapter_and_leaves_base_untouched(lora_run, tiny_model_dir):
    run, _ = lora_run
    model = run.unwrapped
    original = dict(AutoModelForCausalLM.from_pretrained(tiny_model_dir).named_parameters())
    seen, lora_b = set(), []
    for name, param in model.named_parameters():
        if "lora_" in name:
            assert param.requires_grad
            if "lora_B" in name:
                lora_b.append((name, param))
            continue
        assert not param.requires_grad, name
        base = _base_name(name)
        assert torch.equal(param.detach(), original[base].detach()), f"base weight {base} changed"
        seen.add(base)
    assert seen == set(original)  # every base parameter was compared
    # lora_B starts at zero; training must have moved every one of them.
    assert len(lora_b) == 2 * 7  # 2 layers x q,k,v,o,gate,up,down
    for name, param in lora_b:
        assert param.detach().abs().max() > 0, name


def test_lora_final_is_merged_and_checkpoint_adapter_loads_with_peft(lora_run, tiny_model_dir):
    from peft import PeftModel

    run, out = lora_run
    peft_model = run.unwrapped.eval()
    final = AutoModelForCausalLM.from_pretrained(out / "final").eval()
    assert not (out / "final" / "adapter_config.json").exists()
    base = dict(AutoModelForCausalLM.from_pretrained(tiny_model_dir).named_parameters())
    final_params = dict(final.named_parameters())
    scale = 8 / 4  # alpha / r
    modules = dict(peft_model.named_modules())
    for name, module in modules.items():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            weight_name = _base_name(name + ".weight")
            delta = scale * module.lora_B["default"].weight @ module.lora_A["default"].weight
            assert torch.allclose(final_params[weight_name], base[weight_name] + delta, atol=1e-6), weight_name

    checkpoint = out / "checkpoint-000006" / "model"
    assert (checkpoint / "adapter_model.safetensors").is_file()
    assert not (checkpoint / "model.safetensors").exists()  # only the adapter is saved
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), checkpoint).eval()
    ids = torch.tensor([[5, 60, 61, 62, 63, 70, 80]])
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
        assert torch.allclose(reloaded(input_ids=ids).logits, expected, atol=1e-5)
        assert torch.allclose(final(input_ids=ids).logits, expected, atol=1e-5)
        plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()(input_ids=ids).logits
    assert not torch.allclose(plain, expected, atol=1e-4)  # the adapter did change the model


def test_length_sorted_micro_batches_keep_the_gradient_and_cut_padding(tmp_path, tiny_model_dir, cli):
    """train.sort_by_length groups a step's examples by length before splitting it into micro-batches:
    the same losses and gradient norms as without (the step's loss is normalised over the whole step),
    with fewer padded positions."""
    import contextlib
    import random
    from types import SimpleNamespace

    from alignlab.engine.loop import TrainingRun

    rng = random.Random(0)
    rows = [{"prompt": "x" * rng.randint(1, 60) + "=?", "completion": "y" * rng.randint(1, 30)} for _ in range(64)]
    data = write_jsonl(rows, tmp_path / "varied.jsonl")
    records = {}
    for sort in ("true", "false"):
        out = tmp_path / f"sort_{sort}"
        result = cli(base_args("sft", tiny_model_dir, data, out, "train.max_steps=3", "train.batch_size=4",
                               "train.grad_accum=4", "train.lr=3e-3", f"train.sort_by_length={sort}", "train.max_length=128"))
        assert result.code == 0, result.err
        records[sort] = train_records(out)
    for a, b in zip(records["true"], records["false"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)

    def padded_positions(sort: bool) -> int:
        run = TrainingRun.__new__(TrainingRun)
        run.config = SimpleNamespace(train=SimpleNamespace(sort_by_length=sort))
        run.accelerator = SimpleNamespace(no_sync=lambda model: contextlib.nullcontext())
        run.model, run.deepspeed = None, False
        lengths = [len(r["prompt"]) + len(r["completion"]) for r in rows[:16]]
        micro = list(run.micro_batches(list(range(16)), 4, length=lambda i: lengths[i]))
        assert sorted(i for m in micro for i in m) == list(range(16))  # every example once
        return sum(len(m) * max(lengths[i] for i in m) - sum(lengths[i] for i in m) for m in micro)

    assert padded_positions(True) < 0.5 * padded_positions(False)
