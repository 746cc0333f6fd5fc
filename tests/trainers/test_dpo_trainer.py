"""DPO end to end on the tiny model: every reference strategy learns, the reference cache, log-probs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from alignlab.model.logprobs import full_logits_token_logps, token_logps
from conftest import base_args, eval_records, read_jsonl, run_cli, train_records

CHATML_PROMPT = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
EOS = "<|im_end|>"

STRATEGIES = {
    # name: (overrides, the reference the trainer reports)
    "precomputed": ([], "precomputed"),
    "copy": (["dpo.precompute_ref=false"], "copy"),
    "adapter": (["lora.enabled=true", "dpo.precompute_ref=false", "train.lr=3e-3"], "adapter"),
    "none": (["dpo.reference=none"], "none"),
}


def sequence_logp(model, tokenizer, prompt: str, response: str) -> float:
    """Summed log-prob of response + EOS after the ChatML prompt, from full float64 log-softmax."""
    p = tokenizer(CHATML_PROMPT.format(prompt), add_special_tokens=False)["input_ids"]
    r = tokenizer(response + EOS, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + r])
    with torch.no_grad():
        logp = model(ids).logits[0, :-1].double().log_softmax(-1)
    targets = ids[0, 1:]
    return float(logp[torch.arange(len(targets)), targets][len(p) - 1 :].sum())


@pytest.fixture(scope="module")
def dpo_root(tmp_path_factory):
    """Runs share this parent, so they share its .ref_cache."""
    return tmp_path_factory.mktemp("dpo")


@pytest.fixture(scope="module")
def strategy_runs(dpo_root, tiny_model_dir, prefs):
    """20 steps per strategy with eval on the training pairs after every step."""
    runs = {}
    for name, (extra, _) in STRATEGIES.items():
        out = dpo_root / name
        result = run_cli(base_args(
            "dpo", tiny_model_dir, prefs, out, f"data.eval={prefs}",
            "train.max_steps=20", "train.batch_size=8", "train.lr=1e-3", "train.eval_every=1", *extra,
        ))
        assert result.code == 0, name
        runs[name] = out
    return runs


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_each_reference_strategy_learns(strategy_runs, name):
    out = strategy_runs[name]
    assert f"reference: {STRATEGIES[name][1]}" in (out / "train.log").read_text()
    losses = [r["loss"] for r in train_records(out)]
    assert len(losses) == 20
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.04, losses
    evals = eval_records(out)
    assert [r["step"] for r in evals] == list(range(1, 21))
    accuracy = [r["eval/rewards/accuracies"] for r in evals]
    assert accuracy[-1] >= accuracy[0] + 0.15, accuracy
    assert accuracy[-1] >= 0.8
    assert evals[-1]["eval/loss"] < evals[0]["eval/loss"]
    assert evals[-1]["eval/rewards/margins"] > evals[0]["eval/rewards/margins"]


@pytest.mark.parametrize("name", ["precomputed", "copy", "adapter"])
def test_reference_equals_policy_at_the_first_step(strategy_runs, name):
    """Before the first update the policy is the reference: every margin is 0 and the loss is log 2."""
    first = train_records(strategy_runs[name])[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert abs(first["rewards/chosen"]) < 1e-5 and abs(first["rewards/rejected"]) < 1e-5


def test_precomputed_and_on_the_fly_reference_agree(strategy_runs):
    pre, copy = train_records(strategy_runs["precomputed"]), train_records(strategy_runs["copy"])
    assert pre[0]["loss"] == pytest.approx(copy[0]["loss"], abs=1e-5)
    assert pre[0]["grad_norm"] == pytest.approx(copy[0]["grad_norm"], rel=1e-5)
    # Same reference numbers, so the same updates all the way through.
    for a, b in zip(pre, copy):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)
        assert a["rewards/margins"] == pytest.approx(b["rewards/margins"], abs=1e-4)


def test_eval_logs_greedy_samples_of_the_current_model(strategy_runs, tiny_tokenizer, prefs):
    """At each eval, 4 distinct eval prompts answered greedily, beside the pair's chosen and rejected
    responses; the last ones are what the final model answers."""
    from alignlab.generation.sampler import generate

    out = strategy_runs["precomputed"]
    samples = read_jsonl(out / "samples.jsonl")
    assert sorted({s["step"] for s in samples}) == list(range(1, 21))
    last = [s for s in samples if s["step"] == 20]
    assert len(last) == 4 and len({s["prompt"] for s in last}) == 4
    rows = read_jsonl(prefs)
    for sample in last:
        row = next(r for r in rows if f"\n{r['prompt']}{EOS}" in sample["prompt"])
        assert sample["chosen"] == row["chosen"] and sample["rejected"] == row["rejected"]
    model = AutoModelForCausalLM.from_pretrained(out / "final")
    prompt_ids = [tiny_tokenizer(s["prompt"], add_special_tokens=False)["input_ids"] for s in last]
    again = generate(model, tiny_tokenizer, prompt_ids, greedy=True, max_new_tokens=64)
    assert again.texts == [s["completion"] for s in last] and all(again.texts)


def test_reference_free_first_step_loss(tmp_path, tiny_model_dir, tiny_tokenizer, prefs):
    """reference=none: loss = mean -log sigmoid(beta * (log pi(chosen) - log pi(rejected))), computed
    here independently for all 32 pairs (one batch of 32 = the whole file)."""
    out = tmp_path / "none"
    assert run_cli(base_args("dpo", tiny_model_dir, prefs, out, "dpo.reference=none", "dpo.beta=0.5",
                             "train.max_steps=1", "train.batch_size=32")).code == 0
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    losses, correct = [], 0
    for row in read_jsonl(prefs):
        margin = sequence_logp(model, tiny_tokenizer, row["prompt"], row["chosen"]) - sequence_logp(
            model, tiny_tokenizer, row["prompt"], row["rejected"])
        losses.append(-F.logsigmoid(torch.tensor(0.5 * margin, dtype=torch.float64)).item())
        correct += margin > 0
    first = train_records(out)[0]
    assert first["loss"] == pytest.approx(sum(losses) / len(losses), abs=1e-5)
    assert first["rewards/accuracies"] == pytest.approx(correct / len(losses))


def test_reference_cache_values_and_reuse(strategy_runs, dpo_root, tiny_model_dir, tiny_tokenizer, prefs):
    cache_dir = dpo_root / ".ref_cache"
    first_log = (strategy_runs["precomputed"] / "train.log").read_text()
    assert "computed and cached" in first_log
    cached_files = sorted(cache_dir.glob("*.pt"))
    train_cache = (strategy_runs["precomputed"] / "ref_cache_train.txt").read_text().strip()
    assert Path(train_cache) in cached_files
    # The eval file is the train file: the same token ids give the same key, so one file serves both.
    assert (strategy_runs["precomputed"] / "ref_cache_eval.txt").read_text().strip() == train_cache
    assert "reused from" in first_log

    # The cached numbers are the initial model's summed log-probs of chosen and rejected, in file order.
    values = torch.load(train_cache)
    rows = read_jsonl(prefs)
    assert values.shape == (len(rows), 2)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    for i, row in enumerate(rows[:8]):
        assert values[i, 0].item() == pytest.approx(sequence_logp(model, tiny_tokenizer, row["prompt"], row["chosen"]), abs=1e-4)
        assert values[i, 1].item() == pytest.approx(sequence_logp(model, tiny_tokenizer, row["prompt"], row["rejected"]), abs=1e-4)

    # Another run on the same data and model (another beta) reuses the file instead of recomputing.
    out = dpo_root / "reuse"
    assert run_cli(base_args("dpo", tiny_model_dir, prefs, out, "dpo.beta=0.3", "train.max_steps=1")).code == 0
    log = (out / "train.log").read_text()
    assert "reused from" in log and "computed and cached" not in log
    assert sorted(cache_dir.glob("*.pt")) == cached_files
    assert (out / "ref_cache_train.txt").read_text().strip() == train_cache


def test_reference_cache_not_reused_for_another_model(dpo_root, tmp_path, prefs):
    from alignlab.model.tiny import write_tiny_model

    cache_dir = dpo_root / ".ref_cache"
    before = set(cache_dir.glob("*.pt"))
    other = write_tiny_model(tmp_path / "other", layers=1, hidden=32, heads=2, seed=3)
    out = dpo_root / "other_model"
    assert run_cli(base_args("dpo", other, prefs, out, "train.max_steps=1")).code == 0
    assert "computed and cached" in (out / "train.log").read_text()
    assert len(set(cache_dir.glob("*.pt")) - before) == 1


# ------------------------------------------------------------------------------ memory-efficient log-probs


def padded_batch(vocab: int, pad_id: int, generator: torch.Generator):
    """4 rows of width 10: full, right-padded, and two left-padded; random loss masks on real tokens."""
    width = 10
    layouts = [(0, 10), (0, 6), (3, 10), (6, 10)]  # [start, end) of the real tokens
    ids = torch.full((4, width), pad_id, dtype=torch.long)
    attention = torch.zeros(4, width, dtype=torch.long)
    for row, (start, end) in enumerate(layouts):
        ids[row, start:end] = torch.randint(0, vocab, (end - start,), generator=generator)
        attention[row, start:end] = 1
    loss_mask = (torch.rand(4, width, generator=generator) < 0.7).long() * attention
    loss_mask[:, -1] = attention[:, -1]
    loss_mask[1, 5] = 1  # right-padded row: score its last real token too
    for row, (start, _) in enumerate(layouts):
        loss_mask[row, start] = 0  # a row's first token has nothing before it to predict it
    return ids, attention, loss_mask, layouts


@pytest.mark.parametrize("chunk_size", [3, 1024])
def test_token_logps_equals_full_logits_values_and_gradients(tiny_model_dir, chunk_size):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.train()
    generator = torch.Generator().manual_seed(0)
    ids, attention, loss_mask, _ = padded_batch(model.config.vocab_size, model.config.pad_token_id, generator)
    weights = torch.randn(ids.shape, generator=generator)
    params = [p for p in model.parameters() if p.requires_grad]

    ours = token_logps(model, ids, attention, loss_mask, chunk_size=chunk_size)
    grads_ours = torch.autograd.grad((ours * weights).sum(), params)
    reference = full_logits_token_logps(model, ids, attention, loss_mask)
    grads_reference = torch.autograd.grad((reference * weights).sum(), params)

    assert ours.shape == ids.shape
    assert torch.allclose(ours, reference, atol=1e-5)
    assert torch.all(ours[loss_mask == 0] == 0) and torch.all(ours[:, 0] == 0)
    assert torch.all(ours[:, 1:][loss_mask[:, 1:].bool()] < 0)  # scored tokens are real log-probs
    for g1, g2 in zip(grads_ours, grads_reference):
        assert torch.allclose(g1, g2, atol=1e-5, rtol=1e-4)
    assert any(g.abs().max() > 0 for g in grads_ours)

    with torch.no_grad():
        no_grad = token_logps(model, ids, attention, loss_mask, chunk_size=chunk_size)
        with_entropy, entropy = token_logps(model, ids, attention, loss_mask, chunk_size=chunk_size, with_entropy=True)
    assert torch.allclose(no_grad, reference, atol=1e-5)
    assert torch.allclose(with_entropy, reference, atol=1e-5)
    assert torch.all(entropy[loss_mask == 0] == 0)
    assert torch.all(entropy[:, 1:][loss_mask[:, 1:].bool()] > 0)


def test_token_logps_padding_does_not_change_values(tiny_model_dir):
    """Each padded row scores the same as that row alone without padding (positions from the mask)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    generator = torch.Generator().manual_seed(1)
    ids, attention, loss_mask, layouts = padded_batch(model.config.vocab_size, model.config.pad_token_id, generator)
    with torch.no_grad():
        batch = token_logps(model, ids, attention, loss_mask)
        for row, (start, end) in enumerate(layouts):
            alone_ids = ids[row : row + 1, start:end]
            alone = token_logps(model, alone_ids, torch.ones_like(alone_ids), loss_mask[row : row + 1, start:end])
            # Independent: plain forward of the unpadded row with default positions.
            logp = model(alone_ids).logits[0, :-1].log_softmax(-1)
            expected = torch.zeros(end - start)
            expected[1:] = logp[torch.arange(end - start - 1), alone_ids[0, 1:]] * loss_mask[row, start + 1 : end]
            assert torch.allclose(batch[row, start:end], alone[0], atol=1e-5), row
            assert torch.allclose(alone[0], expected, atol=1e-5), row
