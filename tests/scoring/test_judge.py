"""The judge client on recorded replies from a stand-in server (tests/scoring/judge_server.py): each mode's
prompt and parsing, group mapping, position swaps, the cache across clients, the concurrency bound,
retries, the budget, rubric templates. No model and no vLLM: each test takes well under a second."""

from __future__ import annotations

import re
import threading

import pytest

from alignlab.config.sections import JudgeConfig
from alignlab.errors import ConfigError
from alignlab.scoring.judge import JudgeClient, JudgeError
from alignlab.scoring.judge_rubrics import load_rubric, parse_group, parse_pairwise, parse_pointwise
from judge_server import JudgeServer


def settings(server, tmp_path, **overrides) -> JudgeConfig:
    values = dict(base_url=server.url, model=server.model, cache_dir=str(tmp_path / "cache"), backoff=0.0)
    values.update(overrides)
    return JudgeConfig(**values)


def response_of(prompt: str) -> str:
    return re.search(r"\[Response\]\n(.*?)\n\n", prompt, re.S).group(1)


def test_pointwise_prompt_constraint_and_scores(tmp_path):
    # The judge echoes the number in the response: "7" -> 7 on the 1..10 scale -> 6/9.
    with JudgeServer(lambda body: (200, response_of(body["messages"][0]["content"]))) as server:
        client = JudgeClient(settings(server, tmp_path))
        scores = client.score(["What is 3+4?", "Say hi"], ["7", "no number"])
        metrics = client.step_metrics()
    assert scores == [pytest.approx(6 / 9), None]  # unparsed -> None, never 0
    body = next(r for r in server.requests if "What is 3+4?" in r["messages"][0]["content"])
    assert "[Response]\n7\n" in body["messages"][0]["content"]
    assert body["structured_outputs"] == {"choice": [str(i) for i in range(1, 11)]}
    assert body["model"] == "judge-model" and body["temperature"] == 0.0
    assert metrics["judge/requests"] == 2 and metrics["judge/unparsed"] == 1 and metrics["judge/tokens"] == 24
    assert client.step_metrics()["judge/requests"] == 0  # per step: reset once read


def test_pointwise_parser_on_free_text():
    rubric = load_rubric("helpful", "pointwise")
    assert parse_pointwise("Score: 8/10 - clear and correct.", rubric) == pytest.approx(7 / 9)
    assert parse_pointwise("I would rate it 3 out of 10", rubric) == pytest.approx(2 / 9)
    assert parse_pointwise("Rating: **10**", rubric) == 1.0
    assert parse_pointwise("42", rubric) is None  # off the scale: the judge broke the rubric
    assert parse_pointwise("", rubric) is None and parse_pointwise(None, rubric) is None


def test_pairwise_asks_both_orders_and_cancels_position_bias(tmp_path):
    # A judge that always prefers position A: every completion wins once and loses once -> 0.5.
    with JudgeServer(lambda body: (200, "A")) as server:
        client = JudgeClient(settings(server, tmp_path, mode="pairwise"))
        assert client.score(["2+2=?"], ["4"], ["5"]) == [0.5]
    first, second = sorted(server.prompts(), key=lambda text: "[Response A]\n4" not in text)
    assert first.index("[Response A]\n4") < first.index("[Response B]\n5")
    assert second.index("[Response A]\n5") < second.index("[Response B]\n4")
    assert server.requests[0]["structured_outputs"] == {"choice": ["A", "B", "tie"]}


def test_pairwise_consistent_verdicts(tmp_path):
    def prefer_four(body):  # picks whichever position holds "4"; a tie when neither does
        text = body["messages"][0]["content"]
        if "[Response A]\n4\n" in text:
            return 200, "A"
        return 200, "B" if "[Response B]\n4\n" in text else "tie"

    with JudgeServer(prefer_four) as server:
        client = JudgeClient(settings(server, tmp_path, mode="pairwise"))
        assert client.score(["q", "q", "q"], ["4", "5", "6"], ["5", "4", "7"]) == [1.0, 0.0, 0.5]
    assert parse_pairwise("The better response is B.") == "B" and parse_pairwise("Tie.") == "tie"
    assert parse_pairwise("A and B are both fine") is None


def test_group_one_request_per_prompt_mapped_back_when_reordered_or_skipped(tmp_path):
    replies = {"p1": "3: 2\n1: 10\n2: 1\n", "p2": "2: 5\n1: 5\n2: 6\n"}  # p2: 1 skipped? no: 2 twice, 3 skipped
    with JudgeServer(lambda body: (200, replies[re.search(r"\[Request\]\n(\w+)", body["messages"][0]["content"])[1]])
                     ) as server:
        client = JudgeClient(settings(server, tmp_path, mode="group", max_tokens=4))
        scores = client.score(["p1"] * 3 + ["p2"] * 3, list("abcdef"), group_size=3)
        metrics = client.step_metrics()
    assert scores == [1.0, 0.0, pytest.approx(1 / 9), pytest.approx(4 / 9), None, None]
    assert len(server.requests) == 2 and metrics["judge/unparsed"] == 2
    text = next(t for t in server.prompts() if "p1" in t)
    assert text.index("[Response 1]\na") < text.index("[Response 2]\nb") < text.index("[Response 3]\nc")
    body = next(r for r in server.requests if "p1" in r["messages"][0]["content"])
    assert re.fullmatch(body["structured_outputs"]["regex"], "1: 10\n2: 1\n3: 7\n")
    assert not re.fullmatch(body["structured_outputs"]["regex"], "2: 10\n1: 1\n3: 7\n")  # order enforced when constrained
    assert body["max_tokens"] >= 6 * 3  # room for every line
    rubric = load_rubric("helpful", "group")
    assert parse_group("Response 2: 7/10\n[1] - 1", rubric, 2) == [0.0, pytest.approx(6 / 9)]


def test_cache_is_shared_across_clients_and_keyed_by_model_and_rubric(tmp_path):
    with JudgeServer(lambda body: (200, "5")) as server:
        first = JudgeClient(settings(server, tmp_path))
        assert first.score(["q"] * 2, ["a", "b"]) == [pytest.approx(4 / 9)] * 2
        again = JudgeClient(settings(server, tmp_path))  # a resumed run, another process: same cache dir
        assert again.score(["q"] * 2, ["a", "b"]) == [pytest.approx(4 / 9)] * 2
        assert again.step_metrics()["judge/cache_hits"] == 2 and len(server.requests) == 2
        JudgeClient(settings(server, tmp_path, rubric="correct")).score(["q"], ["a"], ["a"])
        assert len(server.requests) == 3  # another rubric is another judgment
    assert all(not p.name.startswith(".tmp") for p in (tmp_path / "cache").rglob("*"))  # atomic writes leave no temp


def test_concurrency_bound_respected(tmp_path):
    with JudgeServer(lambda body: (200, "5"), delay=0.15) as server:
        client = JudgeClient(settings(server, tmp_path, max_concurrency=3, cache=False))
        client.score(["q"] * 9, [str(i) for i in range(9)])
    assert server.max_in_flight == 3  # concurrent, and never more than the bound


def test_retries_with_backoff_then_success(tmp_path):
    answers = iter([(503, "overloaded"), (429, "slow down"), (200, "9")])
    sleeps = []
    with JudgeServer(lambda body: next(answers)) as server:
        client = JudgeClient(settings(server, tmp_path, backoff=1.0, max_retries=2), sleep=sleeps.append)
        assert client.score(["q"], ["a"]) == [pytest.approx(8 / 9)]
        assert client.step_metrics()["judge/retries"] == 2
    assert len(sleeps) == 2 and 0.5 <= sleeps[0] <= 1.5 and 1.0 <= sleeps[1] <= 3.0  # exponential, with jitter


def test_errors_beyond_retries_and_budget(tmp_path):
    with JudgeServer(lambda body: (500, "boom")) as server:
        client = JudgeClient(settings(server, tmp_path, max_retries=1), sleep=lambda s: None)
        with pytest.raises(JudgeError, match="after 2 tries"):
            client.score(["q"], ["a"])
    with JudgeServer(lambda body: (200, "3")) as server:
        client = JudgeClient(settings(server, tmp_path, max_requests=2, cache=False))
        with pytest.raises(JudgeError, match="judge.max_requests=2"):
            client.score(["q"] * 3, ["a", "b", "c"])
    assert len(server.requests) == 2
    down = JudgeConfig(base_url=server.url, model="m", max_retries=0, cache=False)  # the server is closed now
    with pytest.raises(JudgeError, match="Is the judge server running"):
        JudgeClient(down).preflight()


def test_preflight_wrong_model_and_bad_key(tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", "right-key")
    with JudgeServer(lambda body: (200, "5"), api_key="right-key") as server:
        JudgeClient(settings(server, tmp_path, api_key_env="JUDGE_TEST_KEY")).preflight()
        with pytest.raises(JudgeError, match="no model 'other'"):
            JudgeClient(settings(server, tmp_path, api_key_env="JUDGE_TEST_KEY", model="other")).preflight()
        monkeypatch.setenv("JUDGE_TEST_KEY", "wrong-key")
        with pytest.raises(JudgeError, match="refused the API key.*JUDGE_TEST_KEY") as info:
            JudgeClient(settings(server, tmp_path, api_key_env="JUDGE_TEST_KEY")).preflight()
    assert "wrong-key" not in str(info.value) and "right-key" not in str(info.value)


def test_unconstrained_server_falls_back_to_parser(tmp_path):
    def no_structured(body):
        return (400, "unknown field structured_outputs") if body.get("structured_outputs") else (200, "Score: 10")

    with JudgeServer(no_structured) as server:
        client = JudgeClient(settings(server, tmp_path))
        assert client.score(["q", "q"], ["a", "b"]) == [1.0, 1.0]
        assert not client.constrained


def test_rubric_templates(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("Q: {prompt}\nA: {completion}\nRef: {answer}\nScore {min_score}-{max_score}; braces {{ok}}")
    rubric = load_rubric(str(good), "pointwise", [0, 4])
    assert rubric.fill(prompt="p", completion="c", answer="r") == "Q: p\nA: c\nRef: r\nScore 0-4; braces {ok}"
    assert rubric.normalise(3) == 0.75 and rubric.needs_answer
    bad = tmp_path / "bad.txt"
    bad.write_text("Q: {prompt}\nA: {completion}\n{reference}")
    with pytest.raises(ConfigError, match=r"bad.txt: unknown field \{reference\}"):
        load_rubric(str(bad), "pointwise")
    with pytest.raises(ConfigError, match=r"needs the field \{completions\}"):
        load_rubric(str(good), "group")
    with pytest.raises(ConfigError, match="neither a built-in rubric"):
        load_rubric("helpfull", "pointwise")


def test_missing_answer_column_is_a_config_error(tmp_path):
    with JudgeServer(lambda body: (200, "1")) as server:
        client = JudgeClient(settings(server, tmp_path, rubric="correct"))
        with pytest.raises(ConfigError, match="no 'answer' column"):
            client.score(["q"], ["a"])
    assert not server.requests
