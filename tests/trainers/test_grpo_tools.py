"""GRPO with tools on the tiny model: half of each group's first turns are forced to call the
multiply tool (with the model's own log-probs of those tokens), the rest and every later turn are
sampled by the model. The trainer must score every model token in the context it was sampled in,
train on no tool token, log the tool metrics, and resume a tool-using run exactly."""

from __future__ import annotations

import json

import pytest
import torch

import alignlab.trainers.grpo as grpo_module
from alignlab.generation.sampler import generate
from alignlab.generation.vllm import to_rollout
from alignlab.model.logprobs import token_logps
from conftest import base_args, run_cli, train_records

CALL = '<tool_call>{"name": "multiply", "arguments": {"a": 12, "b": 34}}</tool_call>'


def forcing_generate(model, tokenizer, prompts, *, num_generations=1, temperature=1.0, **kwargs):
    """Our sampler, except that on a first turn (G > 1) the even rows of each group write CALL."""
    out = generate(model, tokenizer, prompts, num_generations=num_generations, temperature=temperature, **kwargs)
    if num_generations == 1:
        return out
    forced = tokenizer(CALL, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids, logps = [], []
    for row in range(len(out.texts)):
        keep = out.completion_mask[row].bool()
        if row % 2:
            ids.append(out.completion_ids[row][keep].tolist())
            logps.append(out.sampling_logps[row][keep].tolist())
            continue
        prompt = prompts[row // num_generations]
        sequence = torch.tensor([prompt + forced])
        mask = torch.tensor([[0] * len(prompt) + [1] * len(forced)])
        device = next(model.parameters()).device
        with torch.no_grad():
            scored = token_logps(model, sequence.to(device), torch.ones_like(sequence).to(device), mask.to(device),
                                 temperature=temperature)[0, len(prompt):]
        ids.append(forced)
        logps.append(scored.cpu().tolist())
    return to_rollout(prompts, ids, logps, num_generations, tokenizer, [tokenizer.eos_token_id], tokenizer.pad_token_id)


TOOL_ARGS = ["train.batch_size=2", "grpo.num_generations=4", "grpo.max_completion_length=120", "train.max_length=200",
             "grpo.tools=[multiply]", "grpo.temperature=0.8", "train.lr=3e-3"]


@pytest.fixture
def forced_calls(monkeypatch):
    monkeypatch.setattr(grpo_module, "generate", forcing_generate)


def test_tool_metrics_and_no_tool_token_trained(tmp_path, tiny_model_dir, prompts, crc_reward, forced_calls, monkeypatch):
    seen = []
    real_loss = grpo_module.grpo_loss

    def recording_loss(logps, old, ref, advantages, mask, **kwargs):
        seen.append(float(mask.sum()))
        return real_loss(logps, old, ref, advantages, mask, **kwargs)

    rollouts = []
    real_rollout = grpo_module.GRPOTrainer._rollout

    def recording_rollout(self, indices):
        rollout, scores = real_rollout(self, indices)
        rollouts.append(rollout)
        return rollout, scores

    monkeypatch.setattr(grpo_module, "grpo_loss", recording_loss)
    monkeypatch.setattr(grpo_module.GRPOTrainer, "_rollout", recording_rollout)
    out = tmp_path / "run"
    result = run_cli(base_args("grpo", tiny_model_dir, prompts, out, "train.max_steps=2", f"grpo.rewards=[{crc_reward}]",
                               f"data.eval={prompts}", "train.eval_every=2", "grpo.eval_max_prompts=2", *TOOL_ARGS))
    assert result.code == 0
    records = train_records(out)
    for record, rollout in zip(records, rollouts):
        assert record["tools/call_frequency"] == 0.5 and record["tools/failure_frequency"] == 0.0
        assert record["turns/mean"] == 1.5
        # the model's tokens of the second turn were sampled after the tool's result: scored in that context
        assert record["sampling/sampling_logp_difference/mean"] < 1e-4
        called = [t for t in rollout.trajectories if t["tool_calls"]]
        assert all(t["messages"][1] == {"role": "tool", "name": "multiply", "content": "408"} for t in called)
    # every loss call saw exactly the policy's tokens: no tool token, every model token
    assert seen == [float(r.loss_mask.sum()) for r in rollouts]
    assert all(r.tool_mask.sum() > 0 and r.loss_mask.sum() < r.completion_mask.sum() for r in rollouts)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert samples and all("trajectory" in s for s in samples)
    # alignlab eval of the run uses its tools, whatever prompts it is given
    assert run_cli(["eval", out, f"data.prompts={prompts}", "data.max_rows=4", "eval.max_new_tokens=16",
                    f"eval.output={tmp_path / 'eval.json'}"]).code == 0
    evaluation = json.loads((tmp_path / "eval.json").read_text())
    assert "tools/call_frequency" in json.dumps(evaluation) and "Tools: multiply(a, b)" in json.dumps(evaluation)


def test_tool_using_run_resumes_exactly(tmp_path, tiny_model_dir, prompts, crc_reward, forced_calls):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = ["train.save_every=2", f"grpo.rewards=[{crc_reward}]", *TOOL_ARGS]
    assert run_cli(base_args("grpo", tiny_model_dir, prompts, straight, "train.max_steps=4", *common)).code == 0
    assert run_cli(base_args("grpo", tiny_model_dir, prompts, resumed, "train.max_steps=2", *common)).code == 0
    assert run_cli(base_args("grpo", tiny_model_dir, prompts, resumed, "train.max_steps=4", "train.resume=true",
                             *common)).code == 0
    a, b = {r["step"]: r for r in train_records(straight)}, {r["step"]: r for r in train_records(resumed)}
    for step in (3, 4):
        for key in ("loss", "grad_norm", "reward", "completions/mean_length", "tools/call_frequency"):
            assert a[step][key] == pytest.approx(b[step][key], abs=1e-6), (step, key)


def test_unknown_tool_and_schema_errors_are_clear(tmp_path, tiny_model_dir, prompts):
    result = run_cli(base_args("grpo", tiny_model_dir, prompts, tmp_path / "x", "grpo.tools=[nope]"))
    assert result.code != 0 and not (tmp_path / "x").exists()  # refused before the run directory is made
    plugin = tmp_path / "t.py"
    plugin.write_text("def f(x):\n    return x\n")  # no type hints, no docstring: no schema
    from alignlab.errors import ConfigError
    from alignlab.generation.tools import load_tools, tool_schemas

    with pytest.raises(ConfigError, match="tool 'f': cannot build its JSON schema"):
        tool_schemas(load_tools([f"{plugin}:f"]))
    with pytest.raises(ConfigError, match="unknown tool 'nope'"):
        load_tools(["nope"])


def test_dropout_is_off_so_the_trained_forward_is_the_sampler(tmp_path, tiny_model_dir, prompts, crc_reward):
    """LoRA's default dropout (0.05) would make the trained forward another random function than the
    sampler's: after one update the gap would open. grpo.disable_dropout (default) keeps it ~0."""
    out = {}
    for flag in ("true", "false"):
        run = tmp_path / flag
        assert run_cli(base_args("grpo", tiny_model_dir, prompts, run, "train.max_steps=3", "train.batch_size=2",
                                 "grpo.num_generations=4", "grpo.max_completion_length=8", "train.lr=1e-2",
                                 "lora.enabled=true", "lora.r=4", "lora.dropout=0.3", f"grpo.rewards=[{crc_reward}]",
                                 f"grpo.disable_dropout={flag}")).code == 0
        out[flag] = [r["sampling/sampling_logp_difference/mean"] for r in train_records(run)]
    assert max(out["true"]) < 1e-5
    assert max(out["false"][1:]) > 1e-3  # dropout on: the trainer scores another function
