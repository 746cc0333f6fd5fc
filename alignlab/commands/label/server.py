"""The web side of `alignlab label`: a FastAPI app serving one static page and a four-call JSON API.

Why FastAPI/Starlette + uvicorn and a plain HTML/JS page: they are already installed wherever vLLM is
(`alignlab vllm-serve` runs on them), they are widely used and maintained, pydantic checks every request
body, and `FileResponse` serves the page with no template engine. The page is one HTML file, one script
and one stylesheet with no build step, so a reader can audit all of it. Gradio was the other candidate:
it would add a large dependency, and its components own the keyboard and the state, where this tool
needs exact control of both (keys 1-9, ties, undo) and of when a label reaches the disk (every label is
appended and fsync'd by `store.LabelStore` before the request returns).

Access: bound to 127.0.0.1 by default, where only this machine can reach it; requests whose Host header
is not a loopback name are refused (a web page cannot reach the server through DNS rebinding). Bound to
any other address, or with `--require-token`, every request for the page or the API must carry a random
token (the `token` query parameter, or the `X-Alignlab-Token` header the page sends): it is generated at
start, printed once in the URL, and never written to a file. The access log is off, so the token does not
reach the log either. The API takes only `application/json` bodies, which another site's page cannot send
here without a CORS preflight that this server never grants. The static files (the page's code, no data)
are served without the token.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
from pathlib import Path
from typing import Optional

import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from alignlab.commands.label.store import LabelConflict, LabelStore, check_annotator, shown_groups, tiers_from_ranks
from alignlab.errors import AlignlabError

STATIC = Path(__file__).parent / "static"
TOKEN_HEADER = "x-alignlab-token"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def needs_token(host: str, require_token: bool = False) -> bool:
    """Anything but a loopback address is reachable from other machines: the token is then required."""
    return require_token or not is_loopback(host)


def _host_name(header: str) -> str:
    """The name in a Host header, without its port ("[::1]:8765" -> "::1")."""
    if header.startswith("["):
        return header[1:header.find("]")]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def state(store: LabelStore, annotator: str, previous: Optional[dict] = None) -> dict:
    """What the page shows: progress, and the annotator's next prompt with its responses in shown order
    (with the ranking of an undone label, to start from)."""
    item = store.next_item(annotator)
    body = {"annotator": annotator, "progress": store.progress(annotator), "out": store.path.name,
            "left_out": store.left_out, "item": None}
    if item is not None:
        responses = item.values["responses"]
        cards = [{"indices": list(group), "text": responses[group[0]]}
                 for group in shown_groups(item, annotator, store.seed)]
        again = previous if previous and previous["source_row"] == item.row and not previous.get("skipped") else None
        body["item"] = {"row": item.row, "prompt": item.values["prompt"], "cards": cards,
                        "previous": tiers_from_ranks(again["ranks"]) if again else None}
    return body


class Label(BaseModel):
    annotator: str
    row: int
    tiers: Optional[list[list[int]]] = None  # None: a skip
    seconds: Optional[float] = None


class Who(BaseModel):
    annotator: str


def create_app(store: LabelStore, *, token: Optional[str] = None):
    """The app. With a token, the page and the API need it; without, only loopback Host names are served."""
    app = FastAPI(title="alignlab label", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if request.url.path.startswith("/static/"):
            response = await call_next(request)
        elif token is not None:
            given = request.query_params.get("token") or request.headers.get(TOKEN_HEADER) or ""
            if not secrets.compare_digest(given.encode(), token.encode()):
                return JSONResponse({"detail": "this server needs the token printed when it started: open the "
                                     "URL it printed, with ?token=..."}, status_code=403)
            response = await call_next(request)
        elif not is_loopback(_host_name(request.headers.get("host", ""))):
            return JSONResponse({"detail": "only served to this machine (Host must be 127.0.0.1 or localhost)"},
                                status_code=403)
        else:
            response = await call_next(request)
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response

    def annotator_of(name: str) -> str:
        try:
            return check_annotator(name)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None

    @app.get("/")
    def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/favicon.ico")
    def favicon():
        return Response(status_code=204)

    @app.get("/api/next")
    def next_prompt(annotator: str):
        return state(store, annotator_of(annotator))

    @app.post("/api/label")
    def label(body: Label):
        name = annotator_of(body.annotator)
        try:
            store.record(name, body.row, body.tiers, body.seconds)
        except LabelConflict as exc:
            raise HTTPException(409, str(exc)) from None
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        return state(store, name)

    @app.post("/api/undo")
    def undo(body: Who):
        name = annotator_of(body.annotator)
        try:
            removed = store.undo(name)
        except LabelConflict as exc:
            raise HTTPException(409, str(exc)) from None
        return state(store, name, previous=removed)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _lock(path: Path):
    """Hold an exclusive lock on <out>.lock while serving: a second server on the same file would undo
    (rewrite) over the first one's labels. None where the platform has no flock."""
    try:
        import fcntl
    except ImportError:
        return None
    handle = path.with_name(f".{path.name}.lock").open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise AlignlabError(f"{path}: another `alignlab label` is writing to this file; stop it or choose "
                            "another --out") from None
    return handle


def serve(source: str, out: str, *, host: str = "127.0.0.1", port: int = 8765, seed: int = 0,
          require_token: bool = False) -> None:
    """`alignlab label IN --out OUT`: serve the page until Ctrl-C. Port 0 picks a free port."""
    store = LabelStore(source, out, seed=seed)
    lock = _lock(store.path)
    token = secrets.token_urlsafe(24) if needs_token(host, require_token) else None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        raise AlignlabError(f"cannot listen on {host}:{port} ({exc.strerror}); pass another --port, or 0 for a free one") from None
    sock.listen(128)  # before the URL is printed: a browser opening it at once waits in the queue, not refused
    port = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    if shown in ("0.0.0.0", "[::]"):
        shown = socket.gethostname()
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    print(f"{len(store.items)} prompts to rank from {source}" +
          (f" ({store.left_out} rows with fewer than two different responses left out)" if store.left_out else "") +
          f"; labels go to {store.path} ({len(store.labels)} there already)")
    print(f"open {url}" + ("   (the token is shown only here)" if token else ""), flush=True)
    config = uvicorn.Config(create_app(store, token=token), log_level="warning", access_log=False)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        if lock is not None:
            lock.close()
