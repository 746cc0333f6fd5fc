"""The trainer's side of `grpo.vllm_mode=server`: generate on an `alignlab vllm-serve` endpoint and push
the policy's weights to it after each optimizer step, with the colocated engine's interface
(`generate` -> `Rollout`, `load_weights(model)`), so the trainer does not know which one it has.

Several training processes share one server: each generates for its own prompts (the server takes
requests one at a time), the main process alone pushes the weights, and the others wait at a
barrier until it has, so no process samples from the weights before the step. Under FSDP or ZeRO-3
every process takes part in each gather (a collective) and only the main one sends.

Failures stop the run with what to do: a server that cannot be reached, one that refuses the token
(ALIGNLAB_VLLM_API_KEY, sent as a Bearer token and never written anywhere), one serving another model
than the policy, one that dies mid-run (the last checkpoint stays as it was).

A weight push is three steps: the server accepts the tensor list (or refuses it, before anything is
sent), the trainer broadcasts, then asks how the load ended. A refusal thus never leaves the trainer
waiting at a broadcast that nobody receives.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from typing import Callable, Optional

from alignlab.errors import AlignlabError
from alignlab.generation import weight_sync
from alignlab.generation.serve_guard import TOKEN_VARIABLES
from alignlab.generation.vllm import check_engine_sync, policy_weights, to_rollout
from alignlab.generation.vllm_server import model_shape
from alignlab.model.loading import stop_token_ids


class VLLMServerClient:
    """`is_main`: this process pushes the weights; `barrier`: all training processes wait there after a
    push (None with one process); `sharded`: the weights are gathered collectively (FSDP, ZeRO-3)."""

    def __init__(self, address: str, tokenizer, policy_config, generation_config=None, *, timeout_s: float = 600.0,
                 is_main: bool = True, barrier: Optional[Callable[[], None]] = None, sharded: bool = False):
        self.base = address if address.startswith("http") else f"http://{address}"
        self.tokenizer, self.timeout_s = tokenizer, timeout_s
        self.is_main, self.barrier, self.sharded = is_main, barrier, sharded
        self.stop_ids = stop_token_ids(tokenizer, generation_config)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        self.group, self.specs, self.checked = None, None, False
        token = next((os.environ[name] for name in TOKEN_VARIABLES if os.environ.get(name)), None)
        self.headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
        info = self._call("/info", None, timeout_s=10.0)
        theirs, ours = info["shape"], model_shape(policy_config)
        if theirs != ours:
            raise AlignlabError(f"the vLLM server at {self.base} serves {info['model']} ({theirs}), which is not the "
                                f"policy's architecture ({ours}): start it with the run's model.name_or_path")

    def _call(self, path: str, body: Optional[dict], *, timeout_s: Optional[float] = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout_s or self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            if exc.code == 401:
                sent = "a token that is not the server's" if "Authorization" in self.headers else "no token"
                raise AlignlabError(f"the vLLM server at {self.base} refused {path}: this process sent {sent}; set "
                                    "ALIGNLAB_VLLM_API_KEY to the server's token for every training process") from None
            raise AlignlabError(f"the vLLM server at {self.base} failed on {path}: {detail}") from None
        except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            if self.group is None and path == "/info":
                raise AlignlabError(f"cannot reach the vLLM server at {self.base} ({reason}): start one with "
                                    "`alignlab vllm-serve MODEL --host HOST --port PORT`, then set "
                                    "grpo.vllm_server=HOST:PORT") from None
            raise AlignlabError(f"the vLLM server at {self.base} stopped answering ({reason}) during {path}; the run "
                                "stops here, its last checkpoint intact: restart the server and resume "
                                "(train.resume=true)") from None

    def generate(self, prompts: list[list[int]], *, num_generations: int = 1, max_new_tokens: int = 64,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, greedy: bool = False,
                 seed: Optional[int] = None):
        out = self._call("/generate", {"prompts": [list(p) for p in prompts], "n": num_generations,
                                       "max_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p,
                                       "top_k": top_k, "greedy": greedy, "seed": seed})
        return to_rollout(prompts, out["completions"], out["logprobs"], num_generations, self.tokenizer,
                          self.stop_ids, self.pad_id)

    def load_weights(self, model) -> None:
        """The main process broadcasts every weight to the server over the weight group (joined on
        first use); every process returns once the server has them."""
        if not self.checked:  # on every process, so that all stop together
            check_engine_sync(model, "merged")  # the server is given merged weights
            self.checked = True
        if self.specs is None and (self.is_main or self.sharded):
            # Names, dtypes and shapes (no LoRA merge needed) stay the same all run: read once, not at
            # every sync, where under FSDP/ZeRO-3 it would gather the whole model a second time.
            self.specs = [(name, str(t.dtype).replace("torch.", ""), list(t.shape))
                          for name, t in policy_weights(model, merge=False)]
        if self.is_main:
            self._push(model)
        elif self.sharded:  # the main process's pass over the weights gathers collectively: join it
            for _ in policy_weights(model):
                pass
        if self.barrier is not None:
            self.barrier()

    def _push(self, model) -> None:
        import torch

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if self.group is None:
            self._join(backend)
        accepted = self._call("/weights/update", {"tensors": self.specs, "backend": backend})  # or refused here
        device = "cuda" if backend == "nccl" else "cpu"
        try:
            weight_sync.send(self.group, (t.to(device) for _, t in policy_weights(model)))
            self._call("/weights/result", {"op": accepted["op"]})
        except (AlignlabError, RuntimeError) as exc:  # the server left the group (it does on a failed update)
            self.group = None
            if isinstance(exc, AlignlabError):
                raise
            raise AlignlabError(f"the weight push to the vLLM server at {self.base} broke off ({exc}); the run stops "
                                "here, its last checkpoint intact: check the server's log, then resume "
                                "(train.resume=true)") from None

    def _join(self, backend: str) -> None:
        host = socket.gethostbyname(socket.gethostname()) if not self.base.startswith(("http://127.", "http://localhost")) \
            else "127.0.0.1"
        with socket.socket() as probe:  # a free port for the group's store
            probe.bind(("", 0))
            port = probe.getsockname()[1]
        accepted = self._call("/weights/init", {"host": host, "port": port, "backend": backend})
        group = weight_sync.weight_group(host, port, 0, backend)  # returns once the server has joined
        self._call("/weights/result", {"op": accepted["op"]})
        self.group = group
