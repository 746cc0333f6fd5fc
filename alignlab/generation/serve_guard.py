"""What stands between `alignlab vllm-serve` and the network: a shared token on every route, the
refusal to listen beyond loopback without one, and a bound on what one request may carry.

Anyone who can reach the server and send `/weights/init` could make it join a torch.distributed
group at an address of their choosing, or replace the weights the policy is sampled from. vLLM's own
`--api-key` guards only its `/v1`-style prefixes (its docs say `/invocations`, which serves the same
models, stays open); here one check covers every route, `/health` and vLLM's routes included.

The token comes from `--api-key` or ALIGNLAB_VLLM_API_KEY (vLLM's VLLM_API_KEY also works) and is
never logged; the training side sends the same variable as `Authorization: Bearer <token>`.

Both guards are plain ASGI middleware (no vLLM import): they wrap vLLM's FastAPI app, the token check
outermost, so a request without the token is refused before its body is read.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import os
import socket
from dataclasses import dataclass
from typing import Optional

from alignlab.errors import AlignlabError

log = logging.getLogger("alignlab")

TOKEN_VARIABLES = ("ALIGNLAB_VLLM_API_KEY", "VLLM_API_KEY")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. Prompts and n bound a request's work for our /generate and vLLM's
    /v1/completions and /v1/chat/completions alike; the body size bounds every request's memory."""

    max_body_bytes: int = 32 * 2**20
    max_prompts: int = 1024
    max_n: int = 128


def resolve_token(api_key: Optional[str] = None) -> Optional[str]:
    """`--api-key`, else the first environment variable of TOKEN_VARIABLES that is set; None for none."""
    if api_key:
        return api_key
    return next((os.environ[name] for name in TOKEN_VARIABLES if os.environ.get(name)), None)


def is_loopback(host: str) -> bool:
    """Whether every address `host` names is a loopback one (127.0.0.0/8, ::1). '' and 0.0.0.0 mean
    every interface: not loopback. A name that does not resolve is not assumed to be loopback."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    if not host:
        return False
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def check_bind(host: str, token: Optional[str]) -> None:
    """Refuse, before anything starts, to listen beyond this machine without a token."""
    if token is None and not is_loopback(host):
        raise AlignlabError(
            f"refusing to listen on {host or 'every interface'} without a token: anyone who reaches the port could "
            "replace the weights being sampled. Set ALIGNLAB_VLLM_API_KEY (or --api-key) on the server and the same "
            "ALIGNLAB_VLLM_API_KEY for every training process, or listen on 127.0.0.1")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def _reply(send, status: int, message: str, headers: tuple = ()) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


def _peer(scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "an unknown peer"


class TokenAuth:
    """Every HTTP and WebSocket request must carry `Authorization: Bearer <token>`; others get 401,
    logged with the peer's address (never with what it sent)."""

    def __init__(self, app, token: str):
        self.app, self.digest = app, _digest(token)

    def authorized(self, scope) -> bool:
        header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, sent = header.partition(" ")
        # Compare digests in constant time: equal lengths, and no early exit that times the prefix.
        return scheme.lower() == "bearer" and hmac.compare_digest(_digest(sent.strip()), self.digest)

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or self.authorized(scope):
            return await self.app(scope, receive, send)
        log.warning("vllm-serve: 401 for %s %s from %s: missing or wrong token", scope.get("method", "WEBSOCKET"),
                    scope.get("path"), _peer(scope))
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        await _reply(send, 401, "missing or wrong token: send Authorization: Bearer <the server's token> "
                     "(ALIGNLAB_VLLM_API_KEY)", ((b"www-authenticate", b"Bearer"),))


# vLLM's generating routes whose JSON asks for work by count: n samples of each of several prompts.
COUNTED_ROUTES = ("/v1/completions", "/v1/chat/completions")


class BoundedBody:
    """Refuse (413) a body over `limits.max_body_bytes`: at once when its Content-Length says so, else as
    soon as the bytes read pass it. The body is read here, once, and handed on; vLLM's counted routes are
    also held to `limits` (n, the number of prompts): 400."""

    def __init__(self, app, limits: Limits):
        self.app, self.limits = app, limits

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limits.max_body_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_big = f"request body over {limit} bytes (the server's --max-body-mb)"
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await _reply(send, 413, too_big)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return await _reply(send, 413, too_big)
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        problem = self.counted_problem(scope, body)
        if problem:
            return await _reply(send, 400, problem)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: a disconnect, when it comes
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def counted_problem(self, scope, body: bytes) -> Optional[str]:
        if scope.get("method") != "POST" or scope.get("path") not in COUNTED_ROUTES:
            return None
        try:
            request = json.loads(body)
        except ValueError:
            return None  # vLLM answers a malformed body itself
        if not isinstance(request, dict):
            return None
        n = request.get("n")
        if isinstance(n, int) and n > self.limits.max_n:
            return f"n = {n} is over this server's limit of {self.limits.max_n} (--max-n)"
        prompt = request.get("prompt")
        if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) and len(prompt) > self.limits.max_prompts:
            return f"{len(prompt)} prompts is over this server's limit of {self.limits.max_prompts} (--max-prompts)"
        return None
