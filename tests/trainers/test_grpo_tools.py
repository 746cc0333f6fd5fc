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

    columns = []
    real_score = grpo_module.score_completions

    def recording_score(fns, weights, texts, cols, **kwargs):
        columns.append(cols)
        return real_score(fns, weights, texts, cols, **kwargs)

    monkeypatch.setattr(grpo_module, "grpo_loss", recording_loss)
    monkeypatch.setattr(grpo_module.GRPOTrainer, "_rollout", recording_rollout)
    monkeypatch.setattr(grpo_module, "score_completions", recording_score)
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
        # lengths, for the metrics and for length rewards, count the model's tokens, not the tool's
        model_tokens = rollout.loss_mask.sum(1)
        assert record["completions/mean_length"] == pytest.approx(float(model_tokens.float().mean()))
    assert [c["completion_lengths"] for c in columns] == [r.loss_mask.sum(1).tolist() for r in rollouts]
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


def test_tool_prompts_follow_data_on_long(tmp_path, tiny_model_dir, prompts, crc_reward, monkeypatch):
    """Multi-turn prompts are rendered at rollout time; they keep the limit the single-turn ones keep:
    truncated from the left to train.max_length - grpo.max_completion_length."""
    seen = []
    real_rollout = grpo_module.GRPOTrainer._rollout

    def recording_rollout(self, indices):
        rollout, scores = real_rollout(self, indices)
        whole = [self.templater.ids(self.templater.prompt_text(self.prompts[i].prompt)) for i in indices]
        used = [ids[mask.bool()].tolist() for ids, mask in zip(rollout.prompt_ids, rollout.prompt_mask)]
        seen.append((whole, used))
        return rollout, scores

    monkeypatch.setattr(grpo_module.GRPOTrainer, "_rollout", recording_rollout)
    completion, max_length = 16, 40
    assert run_cli(base_args("grpo", tiny_model_dir, prompts, tmp_path / "run", "train.max_steps=1", "train.batch_size=1",
                             "grpo.num_generations=2", f"grpo.max_completion_length={completion}",
                             f"train.max_length={max_length}", "data.on_long=truncate", "grpo.tools=[multiply]",
                             f"grpo.rewards=[{crc_reward}]")).code == 0
    ((whole,), used), = seen
    limit = max_length - completion
    assert len(whole) > limit and used == [whole[-limit:]] * 2


# Process 0's trajectories call the tool on their first turn (a second turn follows); process 1's answer
# at once (no second turn). Under FSDP every forward is a collective: process 1 must decode process 0's
# second turn with it. The first turn's texts are forced after our (synced) sampler has run.
UNEVEN_TURNS = f"""
import sys

import torch

import alignlab.trainers.grpo as grpo_module
from alignlab.cli import main
from alignlab.generation.sampler import generate
from alignlab.generation.vllm import to_rollout


def uneven(model, tokenizer, prompts, *, num_generations=1, **kwargs):
    out = generate(model, tokenizer, prompts, num_generations=num_generations, **kwargs)
    if num_generations == 1:  # a later turn: sampled
        return out
    text = {CALL!r} if torch.distributed.get_rank() == 0 else "<answer>1</answer>"
    forced = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    rows = len(prompts) * num_generations
    return to_rollout(prompts, [forced] * rows, [[0.0] * len(forced)] * rows, num_generations, tokenizer,
                      [tokenizer.eos_token_id], tokenizer.pad_token_id)


grpo_module.generate = uneven
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_fsdp_processes_whose_trajectories_take_different_turns_stay_in_lockstep(tmp_path, tiny_model_dir, prompts,
                                                                                crc_reward):
    import subprocess
    import sys

    from launch import FSDP_ENV, clean_env

    script = tmp_path / "uneven_turns.py"
    script.write_text(UNEVEN_TURNS)
    out = tmp_path / "run"
    argv = base_args("grpo", tiny_model_dir, prompts, out, "train.max_steps=1", "train.batch_size=1",
                     "grpo.num_generations=2", "grpo.max_completion_length=100", "train.max_length=200",
                     "grpo.tools=[multiply]", f"grpo.rewards=[{crc_reward}]")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
               *[str(a) for a in argv]]
    # Hung before: process 1 left the rollout while process 0 decoded its second turn.
    proc = subprocess.run(command, cwd=tmp_path, env=clean_env(FSDP_ENV), capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "2 processes (FSDP: weights, gradients and optimizer state sharded)" in (out / "train.log").read_text()
    record, = train_records(out)
    assert record["turns/mean"] == 1.5 and record["tools/call_frequency"] == 0.5  # 2 turns on process 0, 1 on 1
