"""A stand-in OpenAI-compatible server on 127.0.0.1 that answers with recorded judge replies.

It speaks the two routes the judge uses (POST /v1/chat/completions, GET /v1/models) over real HTTP, so
the `openai` client, timeouts, status codes and concurrency are exercised as with a real server; what
it answers is decided by `reply(body) -> (status, text)`. It records every request body and header,
and the most requests it ever had in flight at once.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional


class JudgeServer:
    def __init__(self, reply: Callable[[dict], tuple[int, str]], *, model: str = "judge-model",
                 api_key: Optional[str] = None, delay: float = 0.0):
        self.reply, self.model, self.api_key, self.delay = reply, model, api_key, delay
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self) -> bool:
                if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    self._send(401, {"error": {"message": "Unauthorized", "type": "invalid_api_key"}})
                    return False
                return True

            def do_GET(self):
                if self._authorised():
                    self._send(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.requests.append(body)
                    server.headers.append({k.lower(): v for k, v in self.headers.items()})
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if not self._authorised():
                        return
                    if body.get("model") != server.model:
                        self._send(404, {"error": {"message": f"The model `{body.get('model')}` does not exist.",
                                                   "type": "NotFoundError"}})
                        return
                    time.sleep(server.delay)
                    status, text = server.reply(body)
                    if status != 200:
                        self._send(status, {"error": {"message": text, "type": "error"}})
                        return
                    self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": server.model,
                                     "choices": [{"index": 0, "finish_reason": "stop",
                                                  "message": {"role": "assistant", "content": text}}],
                                     "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}})
                finally:
                    with server._lock:
                        server.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "JudgeServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def prompts(self) -> list[str]:
        """The user message of every chat request, in arrival order."""
        return [r["messages"][-1]["content"] for r in self.requests]
