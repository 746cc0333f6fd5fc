"""`alignlab vllm-serve` for real: vLLM's server app with alignlab's routes, in its own process on 127.0.0.1,
serving the tiny model with a token. It starts ONCE for this module (1-4 minutes on 2 loaded cores) and every
check shares it: the token on every route, bounded input, a mismatched tensor list, a trainer killed mid-update
and the run after it, GRPO in server mode (one and two training processes), an OpenAI client and a judge.
The refusal to listen beyond loopback without a token starts no engine."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm")

from conftest import base_args, run_cli, train_records  # noqa: E402
from launch import clean_env, free_port  # noqa: E402

TOKEN = "tok-served-5b1e77c2"
HERE = Path(__file__).parent
PROMPTS = [[5, 6, 7, 8], [9, 10, 11]]
SEVENS = """
def sevens(completions, **_):
    return [c.count("7") / max(len(c), 1) for c in completions]
"""


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """The tiny model with 2 heads of 32 (vLLM's CPU attention has no kernel for the suite's 16-wide heads)."""
    from alignlab.model.tiny import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny_served") / "model", layers=2, hidden=64, heads=2)


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    """(host:port, server log) of `alignlab vllm-serve` with a token; this module's processes hold the token in
    ALIGNLAB_VLLM_API_KEY, as a user's training processes would. Small limits, so that passing them is cheap; a
    length of 512 for the judge's rubric prompt."""
    port, log = free_port(), tmp_path_factory.mktemp("served") / "serve.log"
    command = [sys.executable, "-m", "alignlab", "vllm-serve", str(tiny_model_dir), "--port", str(port), "--dtype",
               "float32", "--max-model-len", "512", "--max-body-mb", "1", "--max-prompts", "16", "--max-n", "8"]
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env=clean_env({"VLLM_CPU_KVCACHE_SPACE": "1", "ALIGNLAB_VLLM_API_KEY": TOKEN}))
    deadline = time.time() + 420
    while time.time() < deadline and _status(port, "GET", "/health", token=TOKEN) != 200:
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(2)
    if time.time() >= deadline:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("alignlab vllm-serve did not answer within 7 minutes:\n" + log.read_text()[-3000:])
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ALIGNLAB_VLLM_API_KEY", TOKEN)
        yield f"127.0.0.1:{port}", log
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)


def _request(port, method: str, path: str, body=None, token=None):
    """(status, JSON reply) of one request; an error status is returned, not raised."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw[:1] in (b"{", b"[") else raw
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw[:1] == b"{" else raw
    except OSError:
        return None, None


def _status(port, method, path, body=None, token=None):
    return _request(port, method, path, body, token)[0]


def _port(served) -> int:
    return int(served[0].rsplit(":", 1)[1])


def test_without_a_token_beyond_loopback_it_refuses_to_start(tiny_model_dir, tmp_path):
    port, start = free_port(), time.time()
    proc = subprocess.run([sys.executable, "-m", "alignlab", "vllm-serve", str(tiny_model_dir), "--host", "0.0.0.0",
                           "--port", str(port)], capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in clean_env(None).items() if not k.endswith("API_KEY")})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing to listen on 0.0.0.0 without a token" in lines[0]
    assert time.time() - start < 60  # no engine was started (that takes minutes here)
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # nothing listens


def test_every_route_needs_the_token(served):
    """Every route of the app (from its own OpenAPI list, vLLM's and ours, /health too) refuses a request
    without the token or with a wrong one; with it, they answer. Refusals are logged with the peer, the token never."""
    port, log = _port(served), served[1]
    status, schema = _request(port, "GET", "/openapi.json", token=TOKEN)
    assert status == 200
    routes = [(method.upper(), path.replace("{response_id}", "x")) for path, methods in schema["paths"].items()
              for method in methods]
    ours = {("GET", "/info"), ("POST", "/generate"), ("POST", "/weights/init"), ("POST", "/weights/update"),
            ("POST", "/weights/result"), ("GET", "/health"), ("GET", "/v1/models"), ("POST", "/v1/chat/completions")}
    assert ours <= set(routes)
    for method, path in routes + [("GET", "/docs"), ("GET", "/metrics"), ("GET", "/openapi.json")]:
        for token in (None, "wrong-" + TOKEN, TOKEN[:-1]):
            assert _status(port, method, path, token=token) == 401, (method, path, token)
    for path in ("/health", "/info", "/v1/models", "/metrics", "/version"):
        assert _status(port, "GET", path, token=TOKEN) == 200, path
    for path in ("/generate", "/weights/init", "/weights/update", "/weights/result"):
        assert _status(port, "POST", path, {}, token=TOKEN) in (400, 422), path  # in, then refused for its body
    text = log.read_text()
    assert "401 for GET /info from 127.0.0.1:" in text and TOKEN not in text


def test_input_is_bounded_and_the_server_keeps_serving(served):
    port = _port(served)
    ok = {"prompts": PROMPTS, "n": 2, "max_tokens": 4, "seed": 1}
    cases = [({"prompts": [[5]] * 17}, "--max-prompts"), ({**ok, "n": 9}, "--max-n"),
             ({**ok, "max_tokens": 509}, "over the model length 512"), ({**ok, "prompts": [[5, 100000]]}, "token ids"),
             ({**ok, "prompts": [[]]}, "empty"), ({**ok, "temperature": -1.0}, "temperature")]
    for body, message in cases:
        status, reply = _request(port, "POST", "/generate", body, token=TOKEN)
        assert status == 400 and message in reply["error"], (body, reply)
    status, reply = _request(port, "POST", "/v1/completions", {"model": "m", "prompt": "1+1", "n": 9}, token=TOKEN)
    assert status == 400 and "--max-n" in reply["error"]

    # Over --max-body-mb (1 MiB): a declared length is refused before the body is sent...
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        raw.sendall(f"POST /generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: "
                    f"application/json\r\nContent-Length: {64 * 2**20}\r\n\r\n".encode())
        assert raw.recv(4096).split(b"\r\n")[0].endswith(b"413 Request Entity Too Large")
    # ... and a chunked one once the bytes read pass the limit.
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        raw.sendall(f"POST /generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: "
                    "chunked\r\n\r\n".encode())
        chunk = b"x" * 2**16
        try:
            for _ in range(20):  # 1.25 MiB
                raw.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except OSError:
            pass  # the server answered and closed
        assert raw.recv(4096).split(b"\r\n")[0].endswith(b"413 Request Entity Too Large")

    status, reply = _request(port, "POST", "/generate", ok, token=TOKEN)
    assert status == 200 and len(reply["completions"]) == 4 and all(len(c) >= 1 for c in reply["completions"])


def _client(served, model, tokenizer):
    from alignlab.generation.vllm_client import VLLMServerClient

    return VLLMServerClient(served[0], tokenizer, model.config, model.generation_config, timeout_s=120)


def _perturbed(tiny_model_dir, seed):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    return model


def _greedy(model, tokenizer):
    from alignlab.generation.sampler import generate

    return generate(model, tokenizer, PROMPTS, max_new_tokens=8, greedy=True).completion_ids.tolist()


def test_a_mismatched_tensor_list_is_refused_before_anything_is_sent(served, tiny_model_dir, tiny_tokenizer):
    """A policy whose weights are not the served model's (same /info shape, another MLP width): the server
    refuses its list at once, naming the weights, and the trainer gets the error instead of a hung broadcast."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from alignlab.errors import AlignlabError

    port = _port(served)
    for tensors, message in [([["model.norm.weight", "float32", [3]]], "model.norm.weight: shape [3], the model has [64]"),
                             ([["model.nope.weight", "float32", [3]]], "model.nope.weight: not a weight of this model")]:
        status, reply = _request(port, "POST", "/weights/update", {"tensors": tensors}, token=TOKEN)
        assert status == 400 and message in reply["error"]
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.intermediate_size += 8
    other = AutoModelForCausalLM.from_config(config)
    start = time.time()
    with pytest.raises(AlignlabError, match=r"does not match the served model: model\.layers\.0\.mlp\.gate_proj\.weight"):
        _client(served, other, tiny_tokenizer).load_weights(other)
    assert time.time() - start < 60
    assert _status(port, "POST", "/generate", {"prompts": PROMPTS, "max_tokens": 2}, token=TOKEN) == 200


def test_a_trainer_without_the_token_is_told_what_to_set(served, tiny_model_dir, tiny_tokenizer, monkeypatch):
    from alignlab.errors import AlignlabError

    monkeypatch.delenv("ALIGNLAB_VLLM_API_KEY")
    model = _perturbed(tiny_model_dir, seed=0)
    with pytest.raises(AlignlabError, match="sent no token; set ALIGNLAB_VLLM_API_KEY"):
        _client(served, model, tiny_tokenizer)


def test_a_trainer_killed_mid_update_leaves_the_server_usable(served, tiny_model_dir, tiny_tokenizer):
    """The trainer dies halfway through a push: the server tears its group down and reloads the model's own
    weights (not a half-updated mix), keeps serving, and the next run joins anew and pushes its weights."""
    died = subprocess.run([sys.executable, str(HERE / "vllm_dying_trainer.py"), served[0], str(tiny_model_dir)],
                          capture_output=True, text=True, timeout=300, env=clean_env(None))
    assert died.returncode == -signal.SIGKILL, died.stderr[-3000:]
    assert "killed" in died.stdout
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    served_greedy = _client(served, base, tiny_tokenizer).generate(PROMPTS, max_new_tokens=8, greedy=True)
    assert served_greedy.completion_ids.tolist() == _greedy(base, tiny_tokenizer)  # the model's own weights again
    assert "failed" in served[1].read_text()

    model = _perturbed(tiny_model_dir, seed=4)  # the next run
    client = _client(served, model, tiny_tokenizer)
    client.load_weights(model)
    client.load_weights(model)  # and again on the same group
    assert client.generate(PROMPTS, max_new_tokens=8, greedy=True).completion_ids.tolist() == _greedy(model, tiny_tokenizer)


def test_an_openai_client_and_a_judge_on_the_same_server(served, tiny_model_dir, tmp_path):
    import openai

    from alignlab.config.sections import JudgeConfig
    from alignlab.scoring.judge import JudgeClient, JudgeError

    base_url, name = f"http://{served[0]}/v1", str(tiny_model_dir)
    reply = openai.OpenAI(base_url=base_url, api_key=TOKEN, max_retries=0).chat.completions.create(
        model=name, messages=[{"role": "user", "content": "2+2=?"}], max_tokens=4)
    assert reply.choices[0].message.content is not None and reply.usage.completion_tokens >= 1
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0).models.list()

    judge = JudgeClient(JudgeConfig(base_url=base_url, model=name, api_key_env="ALIGNLAB_VLLM_API_KEY", cache=False,
                                    max_retries=0, max_tokens=4))
    try:
        [score] = judge.score(["2+2=?"], ["4"])
        assert score is not None and 0.0 <= score <= 1.0  # constrained decoding: always a score on the scale
    finally:
        judge.close()
    refused = JudgeClient(JudgeConfig(base_url=base_url, model=name, api_key_env="NO_SUCH_VARIABLE", cache=False,
                                      max_retries=0))
    with pytest.raises(JudgeError, match="refused the API key"):
        refused.score(["2+2=?"], ["4"])
    refused.close()


@pytest.fixture(scope="module")
def sevens_reward(tmp_path_factory):
    path = tmp_path_factory.mktemp("served_reward") / "sevens.py"
    path.write_text(SEVENS)
    return f"{path}:sevens"


def grpo_args(model_dir, prompts, out, reward, address, *extra):
    return base_args("grpo", model_dir, prompts, out, "grpo.num_generations=4", "grpo.max_completion_length=8",
                     "train.batch_size=4", "train.lr=5e-3", "grpo.temperature=0.9", f"grpo.rewards=[{reward}]",
                     "grpo.backend=vllm", "grpo.vllm_mode=server", f"grpo.vllm_server={address}", *extra)


@pytest.mark.slow
def test_grpo_against_a_vllm_server(tmp_path, tiny_model_dir, prompts, sevens_reward, served):
    """GRPO generates on the server and pushes its weights there after every step (over a gloo group):
    the server's sampled-token log-probs keep matching the trainer's, so the weights did arrive."""
    out = tmp_path / "server"
    assert run_cli(grpo_args(tiny_model_dir, prompts, out, sevens_reward, served[0], "train.max_steps=3")).code == 0
    records = train_records(out)
    assert len(records) == 3
    for record in records:
        assert record["sampling/sampling_logp_difference/mean"] < 1e-3  # step 2+ samples with the updated weights
    assert TOKEN not in "".join(p.read_text(errors="replace") for p in out.rglob("*") if p.suffix in (".yaml", ".log", ".jsonl"))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp-lora"])
def test_two_training_processes_share_one_vllm_server(tmp_path, tiny_model_dir, prompts, sevens_reward, served, mode):
    """2 training processes against one server: each generates its own prompts there, the main process
    pushes the weights (under FSDP both gather them, a collective) and the other waits for it, so both
    keep sampling what they score."""
    from launch import accelerate_launch, torchrun

    out = tmp_path / mode
    argv = grpo_args(tiny_model_dir, prompts, out, sevens_reward, served[0], "train.max_steps=3", "train.batch_size=2",
                     "train.lr=1e-2", *(["lora.enabled=true", "lora.r=4"] if mode == "fsdp-lora" else []))
    if mode == "fsdp-lora":
        accelerate_launch("fsdp.yaml", argv, tmp_path)
    else:
        torchrun(argv, tmp_path)
    records = train_records(out)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert ("FSDP" in (out / "train.log").read_text()) == (mode == "fsdp-lora")
    assert any(r["grad_norm"] > 0 for r in records[:2])  # the weights moved before the later rollouts
    # The gap is the token mean over both processes: one that sampled stale weights would open it.
    assert all(r["sampling/sampling_logp_difference/mean"] < 1e-3 for r in records)
