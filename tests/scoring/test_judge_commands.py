"""The judge where users meet it, against the stand-in server (tests/scoring/judge_server.py): `judge` as a
GRPO reward (metrics, cache hits on a rerun, the API key in no file), the preflight before any model loads,
`alignlab pairs --judge`, and `alignlab eval eval.judge=... eval.baseline=...`. The tiny model; seconds each."""

from __future__ import annotations

import json
import re

import pytest

from conftest import base_args, read_jsonl, train_records, write_jsonl
from judge_server import JudgeServer

SECRET = "sk-judge-test-5b1f0c9e"


def group_reply(body) -> tuple[int, str]:
    """Rates response 1 of each group 1 and the rest 0, listed in reverse order (the mapping must undo it)."""
    size = len(re.findall(r"\[Response \d+\]", body["messages"][0]["content"]))
    return 200, "".join(f"{i}: {int(i == 1)}\n" for i in range(size, 0, -1))


def grpo_args(tiny_model_dir, prompts, out, server, tmp_path, *extra):
    return base_args("grpo", tiny_model_dir, prompts, out, "train.max_steps=2", "train.batch_size=2",
                     "grpo.num_generations=3", "grpo.max_completion_length=6", "grpo.rewards=[judge,answer_format]",
                     "judge.mode=group", "judge.rubric=correct", f"judge.base_url={server.url}",
                     f"judge.model={server.model}", f"judge.cache_dir={tmp_path / 'judge_cache'}", *extra)


def test_grpo_judge_reward_metrics_cache_and_key(cli, tiny_model_dir, prompts, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with JudgeServer(group_reply, api_key=SECRET) as server:
        first = cli(grpo_args(tiny_model_dir, prompts, tmp_path / "run", server, tmp_path))
        assert first.code == 0, first.err
        sent = len(server.requests)
        again = cli(grpo_args(tiny_model_dir, prompts, tmp_path / "rerun", server, tmp_path))  # same seed
        assert again.code == 0, again.err
    records = train_records(tmp_path / "run")
    assert [r["judge/requests"] for r in records] == [2, 2]  # one request per group of 3 (2 prompts a step)
    assert all(r["judge/unparsed"] == 0 and r["judge/tokens"] == 24 for r in records)
    assert all(r["rewards/judge/mean"] == pytest.approx(1 / 3) for r in records)  # 1 of each 3 rated 1
    rerun = train_records(tmp_path / "rerun")
    assert [r["judge/requests"] for r in rerun] == [0, 0] and [r["judge/cache_hits"] for r in rerun] == [2, 2]
    assert len(server.requests) == sent + 1  # the rerun paid for nothing but its preflight request
    assert all(h.get("authorization") == f"Bearer {SECRET}" for h in server.headers)
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert files and not [p for p in files if SECRET.encode() in p.read_bytes()]
    assert "OPENAI_API_KEY" in (tmp_path / "run" / "config.yaml").read_text()  # the variable's name only


@pytest.mark.parametrize("case", ["wrong model", "bad key", "down", "template"])
def test_grpo_judge_preflight_exits_2_before_loading(case, cli, tiny_model_dir, prompts, tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a model or tokenizer loaded before the judge was checked")

    monkeypatch.setattr("alignlab.trainers.grpo.load_model", forbidden)
    monkeypatch.setattr("alignlab.trainers.grpo.load_tokenizer", forbidden)
    monkeypatch.setenv("OPENAI_API_KEY", "wrong" if case == "bad key" else SECRET)
    template = tmp_path / "rubric.txt"
    template.write_text("{prompt} {completion} {reference}")
    extra = {"wrong model": ["judge.model=judge-modle"], "bad key": [], "down": ["judge.max_retries=0"],
             "template": [f"judge.rubric={template}", "judge.mode=pointwise"]}[case]
    expected = {"wrong model": "no model 'judge-modle'", "bad key": "refused the API key",
                "down": "Is the judge server running", "template": "unknown field {reference}"}[case]
    with JudgeServer(group_reply, api_key=SECRET) as server:
        if case == "down":
            server.close()
        result = cli(grpo_args(tiny_model_dir, prompts, tmp_path / "run", server, tmp_path, *extra))
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in result.err
    assert SECRET not in result.err and not (tmp_path / "run").exists()


def test_pairs_with_judge(cli, tmp_path):
    rows = [{"prompt": "2+2=?", "responses": ["4", "22", "four", "5"], "scores": [0, 0, 0, 0]},
            {"prompt": "name a colour", "responses": ["red", "blue"]}]
    source = write_jsonl(rows, tmp_path / "responses.jsonl")

    def by_length(body):  # pointwise: a longer response rates higher, "4" lowest
        text = re.search(r"\[Response\]\n(.*?)\n\n", body["messages"][0]["content"], re.S).group(1)
        return 200, str(min(len(text), 9) + 1)

    with JudgeServer(by_length) as server:
        result = cli(["pairs", source, tmp_path / "pairs.jsonl", "--judge", f"judge.base_url={server.url}",
                      f"judge.model={server.model}", f"judge.cache_dir={tmp_path / 'cache'}"])
    assert result.code == 0, result.err
    pairs = read_jsonl(tmp_path / "pairs.jsonl")
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("four", "4"), ("blue", "red")]
    assert pairs[0]["score_chosen"] == pytest.approx(4 / 9) and pairs[0]["score_rejected"] == pytest.approx(1 / 9)
    assert len(server.requests) == 6 + 1  # each response once, plus the preflight
    bad = cli(["pairs", source, tmp_path / "x.jsonl", "--judge", "model=x"])
    assert bad.code == 2 and "judge.KEY=VALUE" in bad.err


def test_eval_judged_win_rate_position_swapped(cli, tiny_model_dir, sft_eval, tmp_path):
    # A judge that always picks position A: each pair wins once and loses once, so every pair is a tie.
    with JudgeServer(lambda body: (200, "A")) as server:
        result = cli(["eval", tiny_model_dir, f"data.prompts={sft_eval}", "eval.judge=helpful",
                      f"eval.baseline={tiny_model_dir}", "eval.max_new_tokens=4", f"judge.base_url={server.url}",
                      f"judge.model={server.model}", f"judge.cache_dir={tmp_path / 'cache'}",
                      f"eval.output={tmp_path / 'eval.json'}"])
    assert result.code == 0, result.err
    judged = json.loads((tmp_path / "eval.json").read_text())["judge"]
    assert judged["judge/pairs"] == 8 and judged["judge/ties"] == 8 and judged["judge/win_rate"] == 0.5
    assert judged["judge/wins"] == judged["judge/losses"] == 0 and judged["baseline"] == str(tiny_model_dir)
    assert "judged vs" in result.out and "50.0%" in result.out
    missing = cli(["eval", tiny_model_dir, f"data.prompts={sft_eval}", "eval.judge=helpful"])
    assert missing.code == 2 and "eval.baseline" in missing.err


def test_iterate_scores_with_the_judge(cli, tiny_model_dir, prompts, tmp_path):
    """iterate.rewards: [judge] in group mode: each prompt's K samples judged in one request, then paired; a sample
    the judge skipped (None, a NaN total) is left out, never paired."""
    out = tmp_path / "it"
    with JudgeServer(lambda body: (200, "2: 0\n1: 1\n3: 0\n")) as server:  # response 4 skipped
        result = cli(["iterate", "--rounds", "1", f"model.name_or_path={tiny_model_dir}", f"iterate.prompts={prompts}",
                      "data.max_rows=3", "iterate.samples_per_prompt=4", "iterate.max_new_tokens=4",
                      "iterate.rewards=[judge]", "iterate.strategy=best-vs-rest", f"train.output_dir={out}",
                      "train.progress=false", "train.max_steps=1", "train.batch_size=4", "train.max_length=64",
                      "judge.mode=group", "judge.rubric=correct", f"judge.base_url={server.url}",
                      f"judge.model={server.model}", f"judge.cache_dir={tmp_path / 'cache'}"])
    assert result.code == 0, result.err
    assert len(server.requests) == 1 + 3  # the preflight, then one request per prompt's 4 samples
    pairs = read_jsonl(out / "data" / "round_1_pairs.jsonl")
    assert len(pairs) == 3 * 2  # best-vs-rest: sample 1 against samples 2 and 3 of each prompt, never sample 4
    assert all(p["score_chosen"] == 1.0 and p["score_rejected"] == 0.0 for p in pairs)
