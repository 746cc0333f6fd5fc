"""`alignlab vllm-serve MODEL`: a vLLM engine behind a small HTTP endpoint, for generation on other
GPUs or another machine (`grpo.vllm_mode=server`).

Endpoints (JSON): GET /health; GET /info (the model's shape, checked against the policy);
POST /generate (token-id prompts and sampling settings -> completions and their sampled-token
log-probs); POST /weights/init (join the trainer's weight group, `alignlab.generation.weight_sync`);
POST /weights/update (receive the listed tensors over that group, loading each in place as it
arrives).
Requests are served one at a time (a lock): a weight update never interleaves with generation.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger("alignlab")


def model_shape(config) -> dict:
    """What must match between the server's model and the policy."""
    return {key: getattr(config, key, None) for key in ("model_type", "vocab_size", "hidden_size", "num_hidden_layers")}


class EngineServer:
    def __init__(self, model_path: str, *, dtype: str = "auto", max_model_len: int = 2048,
                 gpu_memory_utilization: float = 0.9, seed: int = 0):
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig

        from alignlab.generation.vllm import VLLMEngine

        self.model_path = model_path
        self.shape = model_shape(AutoConfig.from_pretrained(model_path))
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        try:
            generation_config = GenerationConfig.from_pretrained(model_path)
        except OSError:
            generation_config = None
        self.engine = VLLMEngine(model_path, tokenizer, dtype=dtype, max_model_len=max_model_len,
                                 gpu_memory_utilization=gpu_memory_utilization, seed=seed,
                                 generation_config=generation_config)
        self.lock = threading.Lock()
        self.group = None

    def handle(self, path: str, body: dict) -> dict:
        import torch

        from alignlab.generation import weight_sync

        if path == "/health":
            return {"ok": True}
        if path == "/info":
            return {"model": self.model_path, "shape": self.shape}
        with self.lock:
            if path == "/generate":
                rollout = self.engine.generate(
                    body["prompts"], num_generations=body["n"], max_new_tokens=body["max_tokens"],
                    temperature=body["temperature"], top_p=body["top_p"], top_k=body["top_k"],
                    greedy=body["greedy"], seed=body.get("seed"))
                mask = rollout.completion_mask.bool()
                return {"completions": [ids[m].tolist() for ids, m in zip(rollout.completion_ids, mask)],
                        "logprobs": [lp[m].tolist() for lp, m in zip(rollout.sampling_logps, mask)]}
            if path == "/weights/init":
                self.group = weight_sync.weight_group(body["host"], body["port"], 1, body["backend"])
                return {"ok": True}
            if path == "/weights/update":
                if self.group is None:
                    raise ValueError("POST /weights/init first")
                device = "cuda" if body["backend"] == "nccl" and torch.cuda.is_available() else "cpu"
                weight_sync.load_streamed(self.group, body["tensors"], device, self.engine.load_named)
                return {"ok": True, "tensors": len(body["tensors"])}
        raise KeyError(path)


def serve(model_path: str, *, host: str = "127.0.0.1", port: int = 8000, **engine_options) -> None:
    """Run the endpoint until interrupted."""
    server_state = EngineServer(model_path, **engine_options)

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, code: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _serve(self, body: dict) -> None:
            try:
                self._reply(200, server_state.handle(self.path, body))
            except KeyError:
                self._reply(404, {"error": f"no endpoint {self.path}"})
            except Exception as exc:  # the trainer gets the message, the server keeps serving
                log.exception("request %s failed", self.path)
                self._reply(500, {"error": f"{type(exc).__name__}: {exc}"})

        def do_GET(self):  # noqa: N802 (http.server's name)
            self._serve({})

        def do_POST(self):  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            self._serve(json.loads(self.rfile.read(length) or b"{}"))

        def log_message(self, format, *args):  # quiet: one line per request is noise at training speed
            log.debug("vllm-serve: " + format, *args)

    httpd = ThreadingHTTPServer((host, port), Handler)
    print(f"vllm-serve: {model_path} on http://{host}:{port} (Ctrl-C to stop)", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
