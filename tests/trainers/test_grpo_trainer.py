"""GRPO on the tiny model: completion masks, sampling, a learnable reward, LoRA, KL and dynamic sampling."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import alignlab.trainers.grpo as grpo_module
from alignlab.config import load_config
from alignlab.generation.sampler import completion_mask, generate
from conftest import base_args, read_jsonl, run_cli, train_records

REWARDS = """
import zlib

def sevens(completions, **_):
    return [c.count("7") / max(len(c), 1) for c in completions]

def spread(completions, **_):
    # distinct completions score differently: almost every group has reward variance
    return [float(zlib.crc32(c.encode()) % 1000) / 1000 for c in completions]

def even_answers_only(completions, answer, **_):
    # variance only for prompts with an even answer; odd-answer groups are all 0
    return [float(zlib.crc32(c.encode()) % 1000) / 1000 if int(a) % 2 == 0 else 0.0
            for c, a in zip(completions, answer)]

def answer_is_even(completions, answer, **_):
    return [1.0 if int(a) % 2 == 0 else 0.0 for a in answer]

def constant(completions, **_):
    return [1.0 for _ in completions]
"""

GRPO_SMALL = ["grpo.num_generations=8", "grpo.max_completion_length=8"]


@pytest.fixture(scope="module")
def reward_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("plugin") / "my_rewards.py"
    path.write_text(REWARDS)
    return path


# ------------------------------------------------------------------------------ completion mask

EOS = 2


@pytest.mark.parametrize(
    "ids, mask, ended",
    [
        ([5, 6, EOS, 7, EOS], [1, 1, 1, 0, 0], True),  # first EOS kept, everything after dropped
        ([EOS, 5, 6], [1, 0, 0], True),
        ([5, 6, 7], [1, 1, 1], False),  # no EOS: all ones
        ([5, EOS, EOS, EOS], [1, 1, 0, 0], True),  # pad == EOS: padding after the first EOS is dropped
        ([EOS, EOS], [1, 0], True),
        ([5, 6, EOS], [1, 1, 1], True),
    ],
)
def test_completion_mask_cases(ids, mask, ended):
    got_mask, got_ended = completion_mask(torch.tensor([ids]), EOS)
    assert got_mask.tolist() == [mask]
    assert got_ended.tolist() == [ended]


def test_completion_mask_matches_a_loop_on_random_batches():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 6, (64, 9), generator=generator)  # id 2 plays EOS, about 1 in 6 tokens
    got_mask, got_ended = completion_mask(ids, EOS)
    for row in range(ids.shape[0]):
        tokens = ids[row].tolist()
        cut = tokens.index(EOS) + 1 if EOS in tokens else len(tokens)
        assert got_mask[row].tolist() == [1] * cut + [0] * (len(tokens) - cut)
        assert bool(got_ended[row]) == (EOS in tokens)
    assert got_mask.dtype == torch.long


def test_greedy_generate_matches_step_by_step_argmax(tiny_model_dir, tiny_tokenizer):
    """Batched KV-cache generation with left padding = greedy decoding of each prompt alone."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompts = [tiny_tokenizer(t, add_special_tokens=False)["input_ids"] for t in ["1+2=?", "<answer>12345678+9"]]
    rollout = generate(model, tiny_tokenizer, prompts, num_generations=2, max_new_tokens=6, greedy=True)
    assert rollout.completion_ids.shape[0] == 4
    width = rollout.prompt_ids.shape[1]
    for row in range(4):
        prompt = prompts[row // 2]  # rows [i*G, (i+1)*G) belong to prompt i
        assert rollout.prompt_ids[row, width - len(prompt):].tolist() == prompt
        assert rollout.prompt_mask[row].tolist() == [0] * (width - len(prompt)) + [1] * len(prompt)
        ids = list(prompt)
        expected = []
        with torch.no_grad():
            for _ in range(6):
                token = int(model(torch.tensor([ids])).logits[0, -1].argmax())
                expected.append(token)
                ids.append(token)
                if token == tiny_tokenizer.eos_token_id:
                    break
        length = int(rollout.completion_mask[row].sum())
        assert rollout.completion_ids[row, :length].tolist() == expected
        assert rollout.texts[row] == tiny_tokenizer.decode(expected, skip_special_tokens=True)
        assert bool(rollout.ended[row]) == (expected[-1] == tiny_tokenizer.eos_token_id)


# ------------------------------------------------------------------------------ learning


@pytest.fixture(scope="module")
def sevens_run(tmp_path_factory, tiny_model_dir, prompts, reward_file):
    out = tmp_path_factory.mktemp("grpo") / "sevens"
    result = run_cli(base_args(
        "grpo", tiny_model_dir, prompts, out, *GRPO_SMALL,
        "train.max_steps=25", "train.batch_size=2", "train.lr=5e-3", f"grpo.rewards=[{reward_file}:sevens]",
    ))
    assert result.code == 0
    return out


def test_learnable_reward_rises(sevens_run, reward_file):
    records = train_records(sevens_run)
    assert len(records) == 25
    rewards = [r["reward"] for r in records]
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first + 0.2, rewards
    # One function with weight 1: its mean is the reward. (Plugin metrics are named by the full spec.)
    assert records[-1]["rewards/sevens/mean"] == pytest.approx(records[-1]["reward"])
    for r in records:
        assert 0.0 <= r["frac_reward_zero_std"] <= 1.0
        assert 1 <= r["completions/mean_length"] <= 8


def test_full_finetuning_changes_every_trained_tensor(sevens_run, tiny_model_dir):
    initial = dict(AutoModelForCausalLM.from_pretrained(tiny_model_dir).named_parameters())
    final = dict(AutoModelForCausalLM.from_pretrained(sevens_run / "final").named_parameters())
    assert initial.keys() == final.keys()
    changed = [name for name in initial if not torch.equal(initial[name], final[name])]
    # Everything on the path from input to loss gets a gradient; Adam moves all of it.
    assert set(changed) == set(initial), set(initial) - set(changed)


@pytest.fixture(scope="module")
def lora_kl_run(tmp_path_factory, tiny_model_dir, prompts, reward_file):
    from alignlab.trainers.grpo import train_grpo

    out = tmp_path_factory.mktemp("grpo_lora") / "run"
    config = load_config("grpo", None, base_args(
        "grpo", tiny_model_dir, prompts, out, *GRPO_SMALL,
        "train.max_steps=6", "train.batch_size=2", "train.lr=1e-2", f"grpo.rewards=[{reward_file}:spread]",
        "lora.enabled=true", "lora.r=4", "lora.alpha=8", "grpo.beta=0.1",
    )[1:])
    return train_grpo(config), out


def test_lora_grpo_trains_adapter_only(lora_kl_run, tiny_model_dir):
    run, _ = lora_kl_run
    original = dict(AutoModelForCausalLM.from_pretrained(tiny_model_dir).named_parameters())
    compared, lora_b = 0, []
    for name, param in run.unwrapped.named_parameters():
        if "lora_" in name:
            if "lora_B" in name:
                lora_b.append(param)
            continue
        base = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        assert not param.requires_grad
        assert torch.equal(param.detach(), original[base].detach()), base
        compared += 1
    assert compared == len(original)
    assert lora_b and all(float(p.detach().abs().max()) > 0 for p in lora_b)


def test_kl_with_adapter_disabled_reference(lora_kl_run):
    """beta > 0 with LoRA: the reference is the adapter-disabled policy, equal to it at step 1."""
    _, out = lora_kl_run
    kl = [r["kl"] for r in train_records(out)]
    assert kl[0] == pytest.approx(0.0, abs=1e-6)
    assert all(k >= 0 for k in kl)
    assert max(kl[2:]) > 1e-5


def test_kl_with_frozen_copy_reference(tmp_path, tiny_model_dir, prompts, reward_file):
    out = tmp_path / "kl"
    assert run_cli(base_args(
        "grpo", tiny_model_dir, prompts, out, *GRPO_SMALL,
        "train.max_steps=5", "train.batch_size=2", "train.lr=5e-3", f"grpo.rewards=[{reward_file}:spread]",
        "grpo.beta=0.1",
    )).code == 0
    kl = [r["kl"] for r in train_records(out)]
    assert kl[0] == pytest.approx(0.0, abs=1e-6)
    assert all(k >= 0 for k in kl) and max(kl[2:]) > 1e-5
    # beta = 0 has no reference at all: kl is not estimated and stays 0.
    out0 = tmp_path / "no_kl"
    assert run_cli(base_args(
        "grpo", tiny_model_dir, prompts, out0, *GRPO_SMALL,
        "train.max_steps=3", "train.batch_size=2", "train.lr=5e-3", f"grpo.rewards=[{reward_file}:spread]",
    )).code == 0
    assert all(r["kl"] == 0.0 for r in train_records(out0))


# ------------------------------------------------------------------------------ dynamic sampling


@pytest.fixture
def spy(monkeypatch):
    """Counts generate calls and records the advantages each update trains on."""
    calls = {"generate": 0, "advantages": []}
    real_generate, real_update = grpo_module.generate, grpo_module.GRPOTrainer._update

    def counting_generate(*args, **kwargs):
        calls["generate"] += 1
        return real_generate(*args, **kwargs)

    def recording_update(self, rollout, advantages, *args):
        calls["advantages"].append(advantages.clone())
        calls.setdefault("rollouts", []).append(rollout)
        return real_update(self, rollout, advantages, *args)

    monkeypatch.setattr(grpo_module, "generate", counting_generate)
    monkeypatch.setattr(grpo_module.GRPOTrainer, "_update", recording_update)
    return calls


def zero_groups(advantages: torch.Tensor, G: int) -> int:
    return int((advantages.view(-1, G).abs().sum(1) == 0).sum())


def test_skip_zero_std_groups_resamples_until_groups_have_variance(tmp_path, tiny_model_dir, prompts, reward_file, spy):
    out = tmp_path / "dyn"
    assert run_cli(base_args(
        "grpo", tiny_model_dir, prompts, out, *GRPO_SMALL,
        "train.max_steps=4", "train.batch_size=2", "train.lr=5e-3", f"grpo.rewards=[{reward_file}:even_answers_only]",
        "grpo.skip_zero_std_groups=true", "grpo.max_resample_rounds=8",
    )).code == 0
    records = train_records(out)
    assert all("frac_reward_zero_std" in r and 0.0 <= r["frac_reward_zero_std"] <= 1.0 for r in records)
    assert any(r["frac_reward_zero_std"] > 0 for r in records)  # odd answers did come up
    assert spy["generate"] > 4  # ... so it sampled more prompts
    assert len(spy["advantages"]) == 4
    for advantages in spy["advantages"]:
        assert advantages.shape == (16,)
        assert zero_groups(advantages, 8) == 0  # every trained group carries signal


def test_without_skipping_zero_std_groups_are_trained_on(tmp_path, tiny_model_dir, prompts, reward_file, spy):
    """Control for the test above; and frac_reward_zero_std is the share of flat groups trained on."""
    out = tmp_path / "plain"
    assert run_cli(base_args(
        "grpo", tiny_model_dir, prompts, out, *GRPO_SMALL,
        "train.max_steps=4", "train.batch_size=2", "train.lr=5e-3", f"grpo.rewards=[{reward_file}:even_answers_only]",
    )).code == 0
    assert spy["generate"] == 4
    records = train_records(out)
    flat = [zero_groups(a, 8) / 2 for a in spy["advantages"]]
    assert [r["frac_reward_zero_std"] for r in records] == pytest.approx(flat)
    assert any(f > 0 for f in flat)


def test_skip_zero_std_groups_gives_up_after_max_rounds(tmp_path, tiny_model_dir, prompts, reward_file, spy):
    """A constant reward never has variance: 1 + max_resample_rounds rollouts per step, then a zero update."""
    out = tmp_path / "flat"
    assert run_cli(base_args(
        "grpo", tiny_model_dir, prompts, out, *GRPO_SMALL,
        "train.max_steps=2", "train.batch_size=2", "train.lr=5e-3", f"grpo.rewards=[{reward_file}:constant]",
        "grpo.skip_zero_std_groups=true", "grpo.max_resample_rounds=2",
    )).code == 0
    assert spy["generate"] == 2 * (1 + 2)
    for record in train_records(out):
        assert record["frac_reward_zero_std"] == 1.0
        assert record["loss"] == 0.0 and record["grad_norm"] == 0.0
        assert record["reward"] == 1.0
    assert all(zero_groups(a, 8) == 2 for a in spy["advantages"])


def test_reward_plugin_gets_each_prompts_own_column(tmp_path, tiny_model_dir, prompts, reward_file):
    """answer_is_even reads the `answer` column by name: over one step that samples every prompt once
    (batch = the whole file), its mean must be the file's share of even answers."""
    out = tmp_path / "cols"
    assert run_cli(base_args(
        "grpo", tiny_model_dir, prompts, out, "grpo.num_generations=2", "grpo.max_completion_length=2",
        "train.max_steps=1", "train.batch_size=32", f"grpo.rewards=[{reward_file}:answer_is_even]",
    )).code == 0
    answers = [int(r["answer"]) for r in read_jsonl(prompts)]
    share = sum(a % 2 == 0 for a in answers) / len(answers)
    assert 0 < share < 1
    record = train_records(out)[0]
    assert record["reward"] == pytest.approx(share)
    assert record["frac_reward_zero_std"] == 1.0  # the reward ignores the completion


# ------------------------------------------------------------------------- temperature and mismatch


@pytest.mark.parametrize("extra", [
    ["grpo.temperature=0.6"],
    ["grpo.temperature=1.4", "grpo.top_k=20"],
    # The shipped Qwen recipe's path: LoRA with gradient checkpointing (no KV cache in train mode).
    ["grpo.temperature=0.9", "lora.enabled=true", "train.gradient_checkpointing=true", "grpo.num_iterations=2"],
])
def test_trainer_log_probs_match_the_samplers_at_any_temperature(tmp_path, tiny_model_dir, prompts, reward_file, extra):
    """The trainer scores softmax(logits / T), the distribution the rollout sampled from: in float32
    on CPU its log-prob of every sampled token equals the sampler's own (TRL's
    sampling/sampling_logp_difference). Scoring softmax(logits) instead differs by ~0.1-1 nats."""
    out = tmp_path / "temp"
    assert run_cli(base_args(
        "grpo", tiny_model_dir, prompts, out, *GRPO_SMALL, "train.max_steps=2", "train.batch_size=2",
        f"grpo.rewards=[{reward_file}:spread]", *extra,
    )).code == 0
    records = [r for r in train_records(out) if "sampling/sampling_logp_difference/mean" in r]
    assert records  # logged at the first update of each rollout
    for record in records:
        assert record["sampling/sampling_logp_difference/mean"] < 1e-4
        assert record["sampling/sampling_logp_difference/max"] < 1e-3
        assert 0 < record["entropy"]


def test_temperature_changes_the_scored_distribution(tiny_model_dir, tiny_tokenizer):
    """Direct check of the log-prob path: at T the log-probs are log_softmax(logits / T)."""
    from alignlab.model.logprobs import full_logits_token_logps, shared_prefix_token_logps

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    rollout = generate(model, tiny_tokenizer, [[5, 6, 7, 8], [9, 10]], num_generations=2, max_new_tokens=5,
                       temperature=0.5)
    index = torch.tensor([0, 0, 1, 1])
    heads = rollout.prompt_ids[::2], rollout.prompt_mask[::2]
    input_ids, attention, loss_mask = rollout.sequences()
    width = rollout.prompt_ids.shape[1]
    with torch.no_grad():
        ours = shared_prefix_token_logps(model, *heads, rollout.completion_ids, rollout.completion_mask, index,
                                         temperature=0.5)
        want = full_logits_token_logps(model, input_ids, attention, loss_mask, temperature=0.5)[:, width:]
        plain = shared_prefix_token_logps(model, *heads, rollout.completion_ids, rollout.completion_mask, index)
    torch.testing.assert_close(ours, want * rollout.completion_mask, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours, rollout.sampling_logps, atol=1e-5, rtol=1e-5)
    assert (ours - plain).abs().max() > 1e-2


# ------------------------------------------------------------------------- dynamic sampling top-up


def _fake_rollout(names: list[str]):
    from alignlab.generation.sampler import Rollout

    n = len(names)
    return Rollout(torch.ones(n, 2, dtype=torch.long), torch.ones(n, 2, dtype=torch.long),
                   torch.ones(n, 3, dtype=torch.long), torch.ones(n, 3, dtype=torch.long), names,
                   torch.ones(n, dtype=torch.bool), torch.zeros(n, 3))


def test_partial_top_up_never_repeats_kept_groups():
    """3 groups wanted, G=2. Round 0 has one informative group, round 1 (the last allowed) one more:
    the top-up takes round 1's uninformative groups, not round 1 again (which repeated its kept group)."""
    from types import SimpleNamespace

    from alignlab.rewards import RewardScores

    trainer = object.__new__(grpo_module.GRPOTrainer)
    trainer.grpo = SimpleNamespace(num_generations=2, max_resample_rounds=1, reward_aggregation="sum_then_normalize")
    trainer.run = SimpleNamespace(global_sum=lambda v: v, num_processes=1, rank_slice=lambda items: items)
    trainer.sampler = SimpleNamespace(take=lambda count: list(range(count)))
    trainer.tokenizer = SimpleNamespace(pad_token_id=0)
    second = _fake_rollout(["b0", "b1", "b2", "b3", "b4", "b5"])
    trainer._rollout = lambda indices: (second, RewardScores([1.0, 0.0, 2.0, 2.0, 3.0, 3.0], {}))
    first = _fake_rollout(["a0", "a1", "a2", "a3", "a4", "a5"])
    merged, rewards = trainer._refill(first, torch.tensor([[1.0], [1.0], [0.0], [5.0], [2.0], [2.0]]), count=3)  # [N, K]
    assert merged.texts == ["a2", "a3", "b0", "b1", "b2", "b3"]
    assert rewards[:, 0].tolist() == [0.0, 5.0, 1.0, 0.0, 2.0, 2.0]


# ------------------------------------------------------------------------- unscorable and failing rewards

SCORING = """
def none_if_even(completions, **_):
    return [None if len(c) % 2 == 0 else float(len(c)) for c in completions]

def fails_if_even(completions, **_):
    if any(len(c) % 2 == 0 for c in completions):
        raise ValueError("even length")
    return [1.0 for _ in completions]
"""


def test_unscorable_and_failed_rows_are_counted(tmp_path, tiny_model_dir, prompts, spy, cli):
    """Even-length completions get None from one function and fail in the other: unscorable (NaN,
    advantage 0, counted), the failures counted per function and the first message logged once."""
    plugin = tmp_path / "scoring.py"
    plugin.write_text(SCORING)
    out = tmp_path / "unscorable"
    result = cli(base_args(
        "grpo", tiny_model_dir, prompts, out, *GRPO_SMALL, "train.max_steps=3", "train.batch_size=2",
        f"grpo.rewards=[{plugin}:none_if_even,{plugin}:fails_if_even]", "grpo.reward_errors=none",
    ))
    assert result.code == 0
    records = train_records(out)
    assert len(records) == len(spy["rollouts"]) == 3
    seen_unscorable = 0
    for record, advantages, rollout in zip(records, spy["advantages"], spy["rollouts"]):
        even = torch.tensor([len(t) % 2 == 0 for t in rollout.texts])
        seen_unscorable += int(even.sum())
        assert record["rewards/fails_if_even/errors"] == record["rewards/unscorable"] == int(even.sum())
        assert record["rewards/none_if_even/errors"] == 0  # None by choice is not an error
        assert (advantages[even] == 0).all()
        if (~even).any():  # the mean over scorable completions only
            odd_lengths = [len(t) for t, e in zip(rollout.texts, even) if not e]
            assert record["reward"] == pytest.approx(sum(odd_lengths) / len(odd_lengths) + 1.0)  # + fails_if_even
    assert seen_unscorable > 0
    messages = [line for line in result.err.splitlines() if "the first error" in line]
    assert len(messages) == 1 and "even length" in messages[0]


def test_length_penalty_follows_max_completion_length(tmp_path, tiny_model_dir, prompts):
    """In GRPO the length penalty's limit is grpo.max_completion_length in tokens (it was 512 characters
    whatever the setting): completions cut at the limit score -1."""
    out = tmp_path / "length"
    assert run_cli(base_args(
        "grpo", tiny_model_dir, prompts, out, "grpo.num_generations=2", "grpo.max_completion_length=3",
        "train.max_steps=1", "train.batch_size=4", "grpo.rewards=[length_penalty]",
    )).code == 0
    record = train_records(out)[0]
    clipped = record["completions/clipped_ratio"]
    assert clipped > 0
    assert record["rewards/length_penalty/mean"] <= -clipped  # every cut completion scores -1
