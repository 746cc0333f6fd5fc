"""Weighted data mixtures for SFT and DPO: proportions within sampling error, reproducible, validated, per-source metrics."""

from __future__ import annotations

import math

import pytest
from conftest import base_args, read_jsonl, train_records, write_jsonl

from alignlab.data.mixture import mix, mixture_indices, parse_sources
from alignlab.errors import ConfigError


def test_proportions_within_sampling_error():
    total = 6000
    draws = mixture_indices([50, 300, 1000], [3.0, 1.0, 2.0], total, seed=0)
    for source, p in enumerate([0.5, 1 / 6, 1 / 3]):
        share = sum(s == source for s, _ in draws) / total
        assert abs(share - p) < 4 * math.sqrt(p * (1 - p) / total), (source, share, p)
    # A small source repeats only after all of its items were used.
    small = [i for s, i in draws if s == 0]
    assert sorted(small[:50]) == list(range(50))


def test_reproducible_and_seeded():
    a = mix([list("abcdef"), list("XYZ")], [1.0, 1.0], seed=3)
    assert a == mix([list("abcdef"), list("XYZ")], [1.0, 1.0], seed=3) and len(a) == 9
    assert a != mix([list("abcdef"), list("XYZ")], [1.0, 1.0], seed=4)


def test_source_validation():
    sources = parse_sources([{"path": "data/helpful.jsonl", "weight": 2}, {"path": "h.jsonl", "name": "harmless",
                             "columns": {"prompt": "question"}, "split": "test"}], columns={"chosen": "good"}, split="train")
    assert [(s.name, s.weight, s.split) for s in sources] == [("helpful", 2.0, "train"), ("harmless", 1.0, "test")]
    assert sources[1].columns == {"chosen": "good", "prompt": "question"}
    with pytest.raises(ConfigError, match=r"unknown key 'wieght' in data.train\[0\]. Did you mean 'weight'"):
        parse_sources([{"path": "a.jsonl", "wieght": 2}], columns={}, split="train")
    with pytest.raises(ConfigError, match=r"data.train\[1\] needs a 'path'"):
        parse_sources([{"path": "a.jsonl"}, {"weight": 1}], columns={}, split="train")
    with pytest.raises(ConfigError, match=r"data.train\[0\].weight must be a positive number"):
        parse_sources([{"path": "a.jsonl", "weight": -1}], columns={}, split="train")
    with pytest.raises(ConfigError, match="named 'a'"):
        parse_sources([{"path": "a.jsonl"}, {"path": "x/a.jsonl"}], columns={}, split="train")


def test_dpo_on_a_mixture_logs_per_source_metrics(tmp_path, tiny_model_dir, prefs, cli):
    rows = read_jsonl(prefs)
    helpful = write_jsonl(rows[:16], tmp_path / "helpful.jsonl")
    # The second source names its prompt column differently: a per-source column mapping.
    harmless = write_jsonl([{"question": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows[16:]],
                           tmp_path / "harmless.jsonl")
    train = (f"[{{path: {helpful}, weight: 3}}, {{path: {harmless}, weight: 1, name: safety, "
             f"columns: {{prompt: question}}}}]")
    out = tmp_path / "run"
    result = cli(base_args("dpo", tiny_model_dir, "x", out, f"data.train={train}", "data.eval_fraction=0.25",
                           "train.max_steps=3", "train.batch_size=8", "train.max_length=64"))
    assert result.code == 0, result.err
    records = train_records(out)
    assert all("rewards/accuracies" in r for r in records)
    keys = {k for r in records for k in r}
    assert {"rewards/accuracies/helpful", "rewards/accuracies/safety"} <= keys
    assert not any(k.startswith("pairs/") for k in keys)
    final_eval = read_jsonl(out / "metrics.jsonl")[-1]
    assert {"eval/rewards/accuracies/helpful", "eval/rewards/accuracies/safety"} <= set(final_eval)
    log = (out / "train.log").read_text()
    assert "data mixture: helpful" in log and "safety" in log


def test_sft_on_a_mixture_draws_by_weight_and_maps_columns_per_source(tmp_path, tiny_model_dir, tiny_tokenizer, cli):
    """SFT takes the same source lists: 3:1 weights over two equal sources give ~3/4 of the mixed set
    from the first; the second source's own column names are mapped; each source holds out its share."""
    from alignlab.config import load_config
    from alignlab.data.sft import load_sft_data
    from alignlab.data.templates import Templater

    math_rows = [{"prompt": f"{a}+{a}=?", "completion": f"<answer>{2 * a}</answer>"} for a in range(100)]
    chat_rows = [{"question": f"say {a}", "reply": f"{a}"} for a in range(100)]
    first, second = write_jsonl(math_rows, tmp_path / "math.jsonl"), write_jsonl(chat_rows, tmp_path / "chat.jsonl")
    train = f"[{{path: {first}, weight: 3}}, {{path: {second}, weight: 1, columns: {{prompt: question, completion: reply}}}}]"
    config = load_config("sft", None, [f"model.name_or_path={tiny_model_dir}", f"data.train={train}",
                                       "data.eval_fraction=0.1"])
    train_set, eval_set = load_sft_data(config, Templater(tiny_tokenizer))
    assert len(train_set) == 180 and len(eval_set) == 20  # 90 + 90 mixed; 10 held out per source
    assert sorted({e.group for e in eval_set}) == ["chat", "math"] and sum(e.group == "chat" for e in eval_set) == 10
    share = sum(e.group == "math" for e in train_set) / len(train_set)
    assert abs(share - 0.75) < 4 * math.sqrt(0.75 * 0.25 / len(train_set)), share
    chat_text = [tiny_tokenizer.decode(e.input_ids) for e in train_set if e.group == "chat"]
    assert all(t.count("say ") == 1 for t in chat_text)  # the mapped question is the prompt
    trained = [tiny_tokenizer.decode([i for i, m in zip(e.input_ids, e.loss_mask) if m]) for e in train_set if e.group == "chat"]
    assert all(t.removesuffix("<|im_end|>").isdigit() for t in trained)  # only the mapped reply is trained

    out = tmp_path / "run"
    result = cli(base_args("sft", tiny_model_dir, "x", out, f"data.train={train}", "train.max_steps=3", "data.eval_fraction=0.1",
                           "train.batch_size=8", "train.lr=3e-3"))
    assert result.code == 0, result.err
    log = (out / "train.log").read_text()
    assert "data mixture: math" in log and "chat" in log
    records = train_records(out)
    assert len(records) == 3 and records[-1]["loss"] < records[0]["loss"]
    # Held-out loss per source; the overall one is their token-weighted mean, so it lies between them.
    final = read_jsonl(out / "metrics.jsonl")[-1]
    low, high = sorted([final["eval/loss/math"], final["eval/loss/chat"]])
    assert low < final["eval/loss"] < high


def test_grpo_on_a_prompt_mixture_maps_each_sources_columns(tmp_path, tiny_model_dir, cli, monkeypatch):
    """GRPO prompts may come from weighted sources too; a source's column mapping reaches the rewards
    (its `result` column arrives as `answer`), and the mean reward is logged per source."""
    reward = tmp_path / "seen.py"
    reward.write_text(
        "import json, os\n"
        "def seen(completions, answer=None, **_):\n"
        "    with open(os.environ['SEEN_LOG'], 'a') as handle:\n"
        "        handle.write(json.dumps(answer) + '\\n')\n"
        "    return [1.0 if a.startswith('a') else 0.0 for a in answer]\n"
    )
    first = write_jsonl([{"prompt": f"{a}+1=?", "answer": f"a{a}"} for a in range(40)], tmp_path / "first.jsonl")
    second = write_jsonl([{"question": f"{a}*1=?", "result": f"b{a}"} for a in range(40)], tmp_path / "second.jsonl")
    train = f"[{{path: {first}, weight: 1}}, {{path: {second}, weight: 1, columns: {{prompt: question, answer: result}}}}]"
    monkeypatch.setenv("SEEN_LOG", str(tmp_path / "seen.jsonl"))
    out = tmp_path / "run"
    result = cli(base_args("grpo", tiny_model_dir, "x", out, f"data.train={train}", "train.max_steps=3",
                           "train.batch_size=8", "grpo.num_generations=2", "grpo.max_completion_length=4",
                           f"grpo.rewards=[{reward}:seen]"))
    assert result.code == 0, result.err
    answers = [a for line in read_jsonl(tmp_path / "seen.jsonl") for a in line]
    assert len(answers) == 3 * 8 * 2 and None not in answers
    assert {a[0] for a in answers} == {"a", "b"}  # prompts from both sources, each with its own answer column
    assert "data mixture: first" in (out / "train.log").read_text()
    # The mean reward per source: every completion of a first-source prompt scores 1, the others 0.
    records = train_records(out)
    assert all(r["reward/first"] == 1.0 and r["reward/second"] == 0.0 for r in records if "reward/first" in r)
    assert any("reward/first" in r and "reward/second" in r for r in records)
