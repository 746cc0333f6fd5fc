"""The judge against a REAL server: vLLM's own OpenAI-compatible server (`python -m vllm.entrypoints.openai.api_server`,
the CPU build here) serving the tiny model on 127.0.0.1 with an API key. It starts ONCE for this module (1-4 minutes
on 2 loaded cores) and every check shares it; the last test kills it mid-run.

A random-init judge's verdicts mean nothing; what is checked is the plumbing a user relies on: structured outputs
make every reply parseable (judge/unparsed = 0), group replies map back, the key reaches the server and no file,
errors are one line with exit code 2, and a run whose judge dies stops with its last checkpoint while the judge
cache keeps what was paid for."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from conftest import base_args, read_jsonl, run_cli, train_records, write_jsonl  # noqa: E402
from launch import clean_env, free_port  # noqa: E402

pytestmark = pytest.mark.slow
SECRET = "sk-real-judge-7d3c2a10"
MODEL = "tiny-judge"


@pytest.fixture(scope="module")
def judge_server(tmp_path_factory):
    """(base_url, process) of vLLM's OpenAI server with the tiny model (2 heads of 32: vLLM's CPU attention has no
    kernel for the suite's 16-wide heads), started in its own session so that the whole group can be killed."""
    from alignlab.model.tiny import write_tiny_model

    root = tmp_path_factory.mktemp("judge_vllm")
    model = write_tiny_model(root / "model", layers=2, hidden=64, heads=2)
    port, log = free_port(), root / "server.log"
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--host", "127.0.0.1",
               "--port", str(port), "--served-model-name", MODEL, "--dtype", "float32", "--max-model-len", "512",
               "--api-key", SECRET]
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env=clean_env({"VLLM_CPU_KVCACHE_SPACE": "1", "TRANSFORMERS_OFFLINE": "1"}))
    deadline = time.time() + 420
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            break
        except OSError:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(2)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("vLLM's server did not answer within 7 minutes:\n" + log.read_text()[-3000:])
    yield f"http://127.0.0.1:{port}/v1", proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)


def judge_args(url, tmp_path, *extra):
    return [f"judge.base_url={url}", f"judge.model={MODEL}", f"judge.cache_dir={tmp_path / 'cache'}", *extra]


def grpo_args(tiny_model_dir, prompts, out, url, tmp_path, *extra):
    return base_args("grpo", tiny_model_dir, prompts, out, "train.batch_size=2", "grpo.num_generations=3",
                     "grpo.max_completion_length=6", "grpo.rewards=[judge,answer_format]", "judge.mode=group",
                     "judge.rubric=correct", *judge_args(url, tmp_path), *extra)


def test_grpo_with_a_real_judge(judge_server, key, tiny_model_dir, prompts, tmp_path):
    url, _ = judge_server
    out = tmp_path / "run"
    result = run_cli(grpo_args(tiny_model_dir, prompts, out, url, tmp_path, "train.max_steps=2"))
    assert result.code == 0
    records = train_records(out)
    assert [r["judge/requests"] for r in records] == [2, 2]  # one per prompt's group
    assert all(r["judge/unparsed"] == 0 and r["judge/tokens"] > 0 for r in records)  # constrained: always parsed
    assert all(0.0 <= r["rewards/judge/mean"] <= 1.0 for r in records)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files and not [p for p in files if SECRET.encode() in p.read_bytes()]


def test_pairs_with_a_real_judge(judge_server, key, tmp_path, cli):
    url, _ = judge_server
    rows = [{"prompt": f"{a}+{b}=?", "responses": [str(a + b), str(a + b + 1), str(a * b), "no idea"]}
            for a, b in [(2, 3), (10, 7), (4, 4)]]
    source = write_jsonl(rows, tmp_path / "responses.jsonl")
    result = cli(["pairs", source, tmp_path / "pairs.jsonl", "--strategy", "all-pairs", "--judge",
                  *judge_args(url, tmp_path, "judge.scale=[1,5]")])
    # A random judge may score every response of a prompt alike (no pair): what is checked is that each
    # response got a score on the scale and the file holds only pairs of different scores.
    if result.code == 0:
        for pair in read_jsonl(tmp_path / "pairs.jsonl"):
            assert 0.0 <= pair["score_rejected"] < pair["score_chosen"] <= 1.0
    else:
        assert "no pairs could be built" in result.err and "all have equal scores" in result.err


@pytest.mark.parametrize("case", ["wrong model", "bad key"])
def test_real_server_preflight_errors(case, judge_server, monkeypatch, tiny_model_dir, prompts, tmp_path, cli):
    url, _ = judge_server
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong" if case == "bad key" else SECRET)
    extra = ["judge.model=tiny-jugde"] if case == "wrong model" else []
    result = cli(grpo_args(tiny_model_dir, prompts, tmp_path / "run", url, tmp_path, *extra))
    expected = {"wrong model": "no model 'tiny-jugde'", "bad key": "refused the API key"}[case]
    assert result.code == 2 and expected in result.err and len(result.err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


KILLER = """
import os, signal

calls = 0


def kill_judge(completions, **_):
    '''Kills the judge server's process group during step 2 (after its judgments): step 3 has no judge.'''
    global calls
    calls += 1
    if calls == 2:
        os.killpg(int(os.environ["JUDGE_SERVER_PID"]), signal.SIGKILL)
    return [0.0] * len(completions)
"""


def test_killed_server_stops_the_run_and_the_cache_survives(judge_server, key, tiny_model_dir, prompts, tmp_path,
                                                            monkeypatch, cli):
    """Runs last: it kills the module's server."""
    from alignlab.config.sections import JudgeConfig
    from alignlab.scoring.judge import JudgeClient

    url, proc = judge_server
    settings = JudgeConfig(base_url=url, model=MODEL, cache_dir=str(tmp_path / "cache"), max_retries=1, backoff=0.1)
    before = JudgeClient(settings).score(["3+4=?", "3+4=?"], ["7", "8"])  # paid for now, cached
    plugin = tmp_path / "killer.py"
    plugin.write_text(KILLER)
    monkeypatch.setenv("JUDGE_SERVER_PID", str(proc.pid))
    out = tmp_path / "run"
    result = cli(grpo_args(tiny_model_dir, prompts, out, url, tmp_path, "train.max_steps=4", "train.save_every=1",
                           f"grpo.rewards=[judge,{plugin}:kill_judge]", "judge.max_retries=1", "judge.backoff=0.1"))
    proc.wait(timeout=60)
    assert result.code == 2  # a user error, not a crash: the judge could not be reached
    assert len(train_records(out)) == 2
    saved = read_jsonl(out / "checkpoints.jsonl")[-1]  # the last checkpoint before the failure, intact
    assert saved["step"] == 2 and any(Path(saved["model_path"]).glob("*.safetensors"))
    last = result.err.strip().splitlines()[-1]  # the run's own log lines come first
    assert "no answer from" in last and "judge.max_retries=1" in last and "Traceback" not in result.err
    # The server is gone, yet what was judged before is answered from the cache, without a request.
    again = JudgeClient(settings)
    assert again.score(["3+4=?", "3+4=?"], ["7", "8"]) == before
    metrics = again.step_metrics()
    assert metrics["judge/cache_hits"] == 2 and metrics["judge/requests"] == 0
    assert len(list((tmp_path / "cache").rglob("*.json"))) >= 2 + 2 * 2  # the run's group judgments were kept too
    down = run_cli(grpo_args(tiny_model_dir, prompts, tmp_path / "again", url, tmp_path, "judge.max_retries=0"))
    assert down.code == 2 and not (tmp_path / "again").exists()
