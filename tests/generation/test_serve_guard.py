"""`alignlab vllm-serve`'s guards without an engine: the token on every route, the refusal to listen beyond
loopback without one, bounded bodies, and the gate that keeps weight operations apart from generation.
The same guards on the real server are checked in test_vllm_server.py."""

from __future__ import annotations

import asyncio
import logging

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from alignlab.errors import AlignlabError
from alignlab.generation.serve_guard import BoundedBody, Limits, TokenAuth, check_bind, is_loopback, resolve_token

TOKEN = "tok-3f9a1c0d"


def _app(limits: Limits = Limits()):
    async def echo(request):
        body = await request.body()
        return JSONResponse({"path": request.url.path, "bytes": len(body)})

    routes = [Route(path, echo, methods=["GET", "POST"]) for path in ("/health", "/generate", "/v1/completions")]
    return TokenAuth(BoundedBody(Starlette(routes=routes), limits), TOKEN)  # as the server stacks them


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.3.0.9", True), ("::1", True), ("[::1]", True),
                                             ("localhost", True), ("0.0.0.0", False), ("", False), ("::", False),
                                             ("10.1.2.3", False), ("no-such-host.invalid", False)])
def test_which_hosts_are_loopback(host, loopback):
    assert is_loopback(host) == loopback


def test_beyond_loopback_needs_a_token():
    with pytest.raises(AlignlabError, match=r"refusing to listen on 0\.0\.0\.0 without a token.*ALIGNLAB_VLLM_API_KEY"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", TOKEN)
    check_bind("127.0.0.1", None)


def test_the_token_comes_from_the_flag_then_the_environment(monkeypatch):
    for name in ("ALIGNLAB_VLLM_API_KEY", "VLLM_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert resolve_token(None) is None
    monkeypatch.setenv("VLLM_API_KEY", "from-vllm")
    assert resolve_token(None) == "from-vllm"
    monkeypatch.setenv("ALIGNLAB_VLLM_API_KEY", "from-alignlab")
    assert resolve_token(None) == "from-alignlab"
    assert resolve_token("from-flag") == "from-flag"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                                     {"Authorization": f"Basic {TOKEN}"}, {"Authorization": f"Bearer {TOKEN}x"}])
def test_a_missing_or_wrong_token_is_refused_and_logged(headers, caplog):
    client = TestClient(_app())
    with caplog.at_level(logging.WARNING, logger="alignlab"):
        for method, path in (("get", "/health"), ("post", "/generate"), ("post", "/v1/completions")):
            response = getattr(client, method)(path, headers=headers)
            assert response.status_code == 401 and "Bearer" in response.json()["error"]
            assert response.headers["www-authenticate"] == "Bearer"
    assert caplog.text.count("401 for") == 3 and "from testclient:" in caplog.text  # the peer's address
    assert TOKEN not in caplog.text


def test_the_right_token_passes():
    client = TestClient(_app())
    response = client.post("/generate", headers={"Authorization": f"bearer {TOKEN}"}, content=b"x" * 10)
    assert response.status_code == 200 and response.json() == {"path": "/generate", "bytes": 10}


def test_bodies_over_the_limit_are_refused():
    client = TestClient(_app(Limits(max_body_bytes=100, max_prompts=2, max_n=3)))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert client.post("/generate", headers=auth, content=b"x" * 100).status_code == 200
    response = client.post("/generate", headers=auth, content=b"x" * 101)
    assert response.status_code == 413 and "over 100 bytes" in response.json()["error"]
    # Without a length up front (chunked): refused once the bytes read pass the limit.
    chunks = (b"x" * 40 for _ in range(5))
    assert client.post("/generate", headers=auth, content=chunks).status_code == 413
    # vLLM's counted routes: n and the number of prompts.
    assert client.post("/v1/completions", headers=auth, json={"prompt": "a", "n": 3}).status_code == 200
    response = client.post("/v1/completions", headers=auth, json={"prompt": "a", "n": 4})
    assert response.status_code == 400 and "--max-n" in response.json()["error"]
    response = client.post("/v1/completions", headers=auth, json={"prompt": ["a", "b", "c"]})
    assert response.status_code == 400 and "--max-prompts" in response.json()["error"]
    assert client.post("/v1/completions", headers=auth, json={"prompt": [1, 2, 3]}).status_code == 200  # token ids


def test_the_body_check_comes_after_the_token():
    """An unauthenticated request is refused before its body is read (even a huge declared one)."""
    client = TestClient(_app(Limits(max_body_bytes=10)))
    assert client.post("/generate", content=b"x" * 50).status_code == 401


def test_weight_operations_wait_for_generations_and_hold_new_ones():
    from alignlab.generation.vllm_routes import Gate

    async def scenario():
        gate, events = Gate(), []

        async def generation(name, seconds):
            async with gate.generation():
                events.append(f"{name} start")
                await asyncio.sleep(seconds)
                events.append(f"{name} end")

        async def operation():
            async with gate.operation():
                events.append("op start")
                await asyncio.sleep(0.05)
                events.append("op end")

        first = asyncio.create_task(generation("g1", 0.05))
        await asyncio.sleep(0.01)
        op = asyncio.create_task(operation())
        await asyncio.sleep(0.01)
        late = asyncio.create_task(generation("g2", 0.0))  # arrives while the operation waits
        await asyncio.gather(first, op, late)
        return events

    assert asyncio.run(scenario()) == ["g1 start", "g1 end", "op start", "op end", "g2 start", "g2 end"]
